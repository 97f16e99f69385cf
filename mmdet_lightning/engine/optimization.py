"""The config's optimizer and parameter schedules, built and stepped as mmengine's runner does.

    configure_optimizers    build_optim_wrapper (``optim_wrapper``; ``AmpOptimWrapper`` -> plain, the Trainer's
                            precision does mixed precision), scale_lr (``auto_scale_lr``), build_param_schedulers
                            (``param_scheduler``, ``end`` defaulting to the run's length)
    each batch's end        ScheduleStepper.end_batch: iteration-based schedulers; on an epoch's last batch the
                            epoch-based ones too (ParamSchedulerHook.after_train_iter / after_train_epoch)
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..lightning_package import pl

if TYPE_CHECKING:
    from mmengine.optim import OptimWrapper
    from mmengine.optim.scheduler.param_scheduler import _ParamScheduler

__all__ = ["plain_optim_wrapper_cfg", "build_optim_wrapper", "scale_lr", "max_epochs_and_iters",
           "build_param_schedulers", "ScheduleStepper"]

_AMP_ONLY_KEYS = ("loss_scale", "dtype", "use_fsdp")


def plain_optim_wrapper_cfg(config: Mapping[str, Any], warn: bool = True) -> dict[str, Any]:
    """``optim_wrapper`` with an ``AmpOptimWrapper`` turned into a plain ``OptimWrapper`` (a copy): mixed precision
    is the Trainer's ``precision`` here.

    Example::
        >>> plain_optim_wrapper_cfg(dict(type="AmpOptimWrapper", loss_scale="dynamic", dtype="bfloat16",
        ...                              optimizer=dict(type="SGD", lr=0.01)), warn=False)
        {'type': 'OptimWrapper', 'optimizer': {'type': 'SGD', 'lr': 0.01}}
    """
    wrapper_cfg: dict[str, Any] = copy.deepcopy(dict(config))
    if wrapper_cfg.get("type", "OptimWrapper") != "AmpOptimWrapper":
        return wrapper_cfg
    if warn:
        pl.utilities.rank_zero_warn(
            "The config's `AmpOptimWrapper` is used as a plain `OptimWrapper`: mixed precision is the "
            "Trainer's job here. Hint: pass `precision='16-mixed'` (or 'bf16-mixed') to `pl.Trainer`."
        )
    wrapper_cfg["type"] = "OptimWrapper"
    for key in _AMP_ONLY_KEYS:
        wrapper_cfg.pop(key, None)
    return wrapper_cfg


def build_optim_wrapper(model: Any, cfg: Mapping[str, Any]) -> OptimWrapper:
    """The config's ``optim_wrapper`` for ``model`` (``paramwise_cfg``, ``clip_grad``, ``accumulative_counts``)."""
    from mmengine.optim import OptimWrapper
    from mmengine.optim import build_optim_wrapper as build

    if not cfg.get("optim_wrapper"):
        raise ValueError("The config has no `optim_wrapper`; add one, e.g. dict(optimizer=dict(type='SGD', lr=0.02)).")
    wrapper = build(model, plain_optim_wrapper_cfg(cfg["optim_wrapper"]))
    if not isinstance(wrapper, OptimWrapper) or type(wrapper).__name__ == "OptimWrapperDict":
        raise ValueError("Configs with several optimizers (OptimWrapperDict) are not supported.")
    return wrapper


def scale_lr(cfg: Mapping[str, Any], wrapper: OptimWrapper, batch_size: int) -> None:
    """mmengine's ``Runner.scale_lr``: the linear scaling rule when ``auto_scale_lr.enable``, for ``batch_size``
    images per optimizer step over all processes."""
    auto_scale_lr = cfg.get("auto_scale_lr") or {}
    if not auto_scale_lr.get("enable", False):
        return
    ratio = batch_size / auto_scale_lr["base_batch_size"]
    pl.utilities.rank_zero_info(
        f"auto_scale_lr: batch size {batch_size} vs base {auto_scale_lr['base_batch_size']}: LR x {ratio}")
    for group in wrapper.optimizer.param_groups:
        group["lr"] = group["lr"] * ratio


def loader_batch_size(loader: Any) -> int:
    """Images per batch of one process's train loader (mmdet's batch samplers hold it, not the loader)."""
    if getattr(loader, "batch_size", None):
        return int(loader.batch_size)
    return int(loader.batch_sampler.batch_size)


def max_epochs_and_iters(trainer: pl.Trainer) -> tuple[int, int]:
    """The run's length in epochs and iterations as mmengine's train loops count it, from the Trainer's
    ``max_epochs`` / ``max_steps`` and the epoch length (a ``max_steps`` that ends mid-epoch ends the last epoch)."""
    epoch_length = trainer.num_training_batches
    steps: int | None = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
    epochs: int | None = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs > 0 else None
    if epochs is None and steps is None:
        raise ValueError("Set `max_epochs` or `max_steps` on the Trainer: the config's schedules need an end.")
    if math.isinf(epoch_length):
        return epochs or 0, steps or 0
    length = int(epoch_length)
    if steps is None:
        assert epochs is not None
        return epochs, epochs * length
    if epochs is None or epochs * length > steps:
        epochs = math.ceil(steps / length)
    return epochs, min(steps, epochs * length)


def build_param_schedulers(cfg: Mapping[str, Any], wrapper: OptimWrapper, epoch_length: int | float,
                           max_epochs: int, max_iters: int) -> list[_ParamScheduler]:
    """The config's ``param_scheduler`` list, each ``end`` defaulting to the run's end as mmengine's runner sets it."""
    from mmengine.registry import PARAM_SCHEDULERS

    schedulers = []
    schedulers_cfg = cfg.get("param_scheduler") or []
    for scheduler_cfg in [schedulers_cfg] if isinstance(schedulers_cfg, Mapping) else schedulers_cfg:
        scheduler_cfg = dict(copy.deepcopy(scheduler_cfg))
        scheduler_cfg.setdefault("end", max_epochs if scheduler_cfg.get("by_epoch", True) else max_iters)
        default_args = dict(optimizer=wrapper.optimizer, epoch_length=epoch_length)
        schedulers.append(PARAM_SCHEDULERS.build(scheduler_cfg, default_args=default_args))
    return schedulers


class ScheduleStepper:
    """Steps parameter schedulers when mmengine's ``ParamSchedulerHook`` does: iteration-based ones after every
    batch, epoch-based ones once at the epoch's end (its last batch, or the epoch end hook for epochs of unknown
    length).

    Example::
        >>> stepper = ScheduleStepper([])
        >>> stepper.begin_batch(last_of_epoch=True); stepper.state_dict()
        {'epoch_schedulers_stepped': False, 'batch_end_pending': True}
    """

    def __init__(self, schedulers: list[_ParamScheduler]) -> None:
        self.schedulers = schedulers
        self.epoch_stepped = False
        #: between the training step and the batch's end: whether that batch ends the epoch; None otherwise
        self.batch_end_pending: bool | None = None

    def begin_epoch(self) -> None:
        self.epoch_stepped = False

    def begin_batch(self, last_of_epoch: bool) -> None:
        self.batch_end_pending = last_of_epoch

    def end_batch(self, last_of_epoch: bool) -> None:
        self.batch_end_pending = None
        for scheduler in self.schedulers:
            if not scheduler.by_epoch:
                scheduler.step()
        if last_of_epoch:
            self.end_epoch()

    def end_epoch(self) -> None:
        if self.epoch_stepped:
            return
        self.epoch_stepped = True
        for scheduler in self.schedulers:
            if scheduler.by_epoch:
                scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint written between a batch's step and its end hooks needs to finish that batch."""
        return {"epoch_schedulers_stepped": self.epoch_stepped, "batch_end_pending": self.batch_end_pending}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore, and run the end of a batch whose hooks had not run when the checkpoint was written."""
        self.epoch_stepped = bool(state["epoch_schedulers_stepped"])
        if state.get("batch_end_pending") is not None:
            self.end_batch(bool(state["batch_end_pending"]))
