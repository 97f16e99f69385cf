"""The Trainer's strategy made to run an mmdet model as mmengine's runner wraps it.

    prepare_strategy           at ``setup``, in every process before DDP wraps the model: only single-device
                               and DDP strategies; atomic, safe checkpoint files; SyncBN reverted where it
                               cannot run; DDP without buffer broadcasts, with the config's
                               ``find_unused_parameters``
    check_unused_parameters    after the first backward under DDP: parameters without gradient, named
    broadcast_buffers          before each evaluation under DDP: rank 0's BatchNorm statistics on every rank
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

from .._compat import lightning as lightning_compat
from ..checkpoint_io import CheckpointWriteError, SafeCheckpointIO
from ..lightning_package import pl

__all__ = ["prepare_strategy", "check_unused_parameters", "broadcast_buffers", "share_checkpoint_write_errors"]


def prepare_strategy(trainer: pl.Trainer, model: torch.nn.Module, cfg: Mapping[str, Any],
                     trust_checkpoint: bool) -> torch.nn.Module:
    """Check ``trainer``'s strategy and adapt it and ``model`` to each other; returns the model to train (its
    SyncBN layers reverted to BatchNorm on one process or on CPU, as mmengine's runner does)."""
    DDPStrategy, SingleDeviceStrategy = pl.strategies.DDPStrategy, pl.strategies.SingleDeviceStrategy
    strategy = trainer.strategy
    if not isinstance(strategy, (SingleDeviceStrategy, DDPStrategy)):
        raise ValueError(
            f"MMDetModule cannot run with strategy {type(strategy).__name__}: it trains with the config's "
            "mmengine optimizer, which needs the whole model in each process.\n"
            "Hint: use strategy='ddp' (or 'auto' on one device)."
        )
    if type(strategy.checkpoint_io) is lightning_compat.torch_checkpoint_io_class():  # Lightning's default
        strategy.checkpoint_io = SafeCheckpointIO(trust=trust_checkpoint)  # safe loads, atomic writes
    on_cpu = strategy.root_device.type == "cpu"
    cores = os.cpu_count() or 1
    if on_cpu and trainer.num_devices > cores:
        pl.utilities.rank_zero_warn(
            f"devices={trainer.num_devices} CPU processes per node, but this machine has {cores} CPU cores: "
            "the processes share the cores, so each runs slower (fine for debugging DDP).\n"
            f"Hint: pass devices <= {cores} with accelerator='cpu' for speed, or accelerator='gpu' on a machine "
            "with GPUs."
        )
    layer_sync = lightning_compat.layer_sync(strategy)
    if layer_sync is not None and on_cpu and trainer.world_size > 1:
        raise ValueError(
            "sync_batchnorm=True needs CUDA: torch's SyncBatchNorm does not run on CPU processes.\n"
            "Hint: drop sync_batchnorm on CPU (each process then keeps its own BatchNorm statistics)."
        )
    if trainer.world_size == 1 or on_cpu:
        # as mmengine's Runner when not distributed: SyncBN layers become BatchNorm (they cannot run here)
        from mmengine.model import revert_sync_batchnorm

        model = revert_sync_batchnorm(model)
    if isinstance(strategy, DDPStrategy):
        share_checkpoint_write_errors(strategy)
        # as mmengine's runner wraps the model: each process keeps its own buffers (BatchNorm statistics;
        # validation takes rank 0's), instead of a broadcast from rank 0 before every forward
        lightning_compat.ddp_kwargs(strategy).setdefault("broadcast_buffers", False)
        if cfg.get("find_unused_parameters"):
            # the config's top-level `find_unused_parameters`, which mmengine passes to its DDP wrapper
            lightning_compat.ddp_kwargs(strategy).setdefault("find_unused_parameters", True)
    return model


def share_checkpoint_write_errors(strategy: Any) -> None:
    """Under DDP, rank 0 writes each checkpoint while the others wait at a barrier: a write that fails there (disk
    full, read-only folder) would leave them waiting until the collective timeout. After each write the ranks
    agree whether it succeeded (one all-reduce per checkpoint, none per step), and every rank stops with the
    ``CheckpointWriteError``. Idempotent."""
    if getattr(strategy.save_checkpoint, "_shares_write_errors", False):
        return
    save = strategy.save_checkpoint

    def save_checkpoint(checkpoint: dict[str, Any], filepath: Any, storage_options: Any = None) -> None:
        error: CheckpointWriteError | None = None
        try:
            save(checkpoint, filepath, storage_options=storage_options)
        except CheckpointWriteError as err:
            error = err
        if not strategy.reduce_boolean_decision(error is None, all=True):
            raise error or CheckpointWriteError(
                f"Process 0 could not write checkpoint {str(filepath)!r} (its error says why); training stopped on "
                "every process.")

    save_checkpoint._shares_write_errors = True  # type: ignore[attr-defined]
    strategy.save_checkpoint = save_checkpoint


def check_unused_parameters(trainer: pl.Trainer, model: torch.nn.Module) -> None:
    """Under DDP without ``find_unused_parameters``, parameters that got no gradient make DDP fail at the
    next iteration with a long message; name them after the first backward instead."""
    strategy = trainer.strategy
    if not isinstance(strategy, pl.strategies.DDPStrategy) or \
            lightning_compat.ddp_kwargs(strategy).get("find_unused_parameters"):
        return
    unused = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    if unused:
        shown = ", ".join(unused[:5]) + (f" and {len(unused) - 5} more" if len(unused) > 5 else "")
        raise RuntimeError(
            f"DDP: {len(unused)} parameters received no gradient in the first iteration ({shown}); DDP "
            "would fail at the next one.\nHint: set `find_unused_parameters = True` at the top of the mmdet "
            "config, or pass strategy='ddp_find_unused_parameters_true' to the Trainer."
        )


def broadcast_buffers(trainer: pl.Trainer, model: torch.nn.Module) -> None:
    """Under DDP each process updates its own BatchNorm running statistics; evaluate (on every rank) with
    rank 0's, the ones its checkpoints hold, so the metric is that of the saved model. Collective: runs on
    all ranks."""
    if torch.distributed.is_available() and torch.distributed.is_initialized() and trainer.world_size > 1:
        for buffer in model.buffers():
            torch.distributed.broadcast(buffer.data, src=0)
