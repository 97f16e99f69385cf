"""Training scalars averaged over an interval of iterations, as mmengine's LoggerHook writes them."""

from __future__ import annotations

import resource
import time
from typing import Any

import torch

from .._compat import lightning as lightning_compat
from ..lightning_package import pl
from ._common import check_non_negative_int, find_wandb_logger

Callback = pl.callbacks.Callback

__all__ = ["WandbIntervalMetrics"]


class WandbIntervalMetrics(Callback):
    """Log training scalars every ``interval`` iterations to the ``WandbLogger``, averaged over the interval.

    Every loss term and the total (and other log variables such as ``acc``) from the module's
    ``training_step`` outputs, the learning rate and momentum (per parameter group where they differ),
    data time and iteration time in seconds, and the peak memory in MB (CUDA memory on GPUs, the
    process's peak RSS on CPUs). Evaluation metrics reach W&B through the module's ``self.log`` after each
    validation. Everything goes through ``WandbLogger.log_metrics`` with ``trainer/global_step`` as the one
    x-axis, so W&B never drops a value for a non-increasing step. Training scalars are then logged by this
    callback only (it turns the module's per-step logging off), so nothing is logged twice.

    Lifecycle::

        on_train_batch_start   data time = now - end of the previous batch
        on_train_batch_end     add outputs["log_vars"] (tensors, no sync); every `interval` iterations:
                               averages + lr + momentum + times + memory -> WandbLogger.log_metrics (rank 0)

    Args:
        interval: log every this many training iterations (the hook's ``interval``, default 50).

    Raises:
        ValueError: ``interval`` is not a positive int.
        MisconfigurationException: the trainer has no ``WandbLogger`` (at setup).

    Example::
        >>> from pytorch_lightning.loggers import WandbLogger
        >>> metrics = WandbIntervalMetrics(interval=10)
        >>> trainer = pl.Trainer(logger=WandbLogger(offline=True), callbacks=[metrics])  # doctest: +SKIP
    """

    def __init__(self, interval: int = 50) -> None:
        self.interval = check_non_negative_int("interval", interval, positive=True)
        self._sums: dict[str, torch.Tensor] = {}
        self._count = 0
        self._data_time = 0.0
        self._iter_time = 0.0
        self._last_end: float | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._logger = find_wandb_logger(trainer, type(self).__name__)
        module: Any = pl_module
        if hasattr(module, "log_train_scalars"):
            module.log_train_scalars = False

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_end = time.perf_counter()

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        now = time.perf_counter()
        self._data_time += now - (self._last_end if self._last_end is not None else now)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        now = time.perf_counter()
        self._iter_time += now - (self._last_end if self._last_end is not None else now)
        self._last_end = now
        for key, value in _log_vars(outputs).items():
            value = value.detach() if isinstance(value, torch.Tensor) else torch.tensor(float(value))
            self._sums[key] = self._sums[key] + value if key in self._sums else value.clone()
        self._count += 1
        iteration = lightning_compat.fit_batches_completed(trainer) + 1  # this batch included
        if iteration % self.interval == 0:
            self._flush(trainer, pl_module)

    def _flush(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        count = max(self._count, 1)
        metrics = {f"train/{k}": float(v) / count for k, v in self._sums.items()}
        metrics.update(_optimizer_scalars(trainer))
        metrics["train/data_time"] = self._data_time / count
        metrics["train/time"] = self._iter_time / count
        metrics["train/memory"] = _peak_memory_mb(pl_module.device)
        metrics["epoch"] = trainer.current_epoch
        self._logger.log_metrics(metrics, step=trainer.global_step)
        self._sums, self._count, self._data_time, self._iter_time = {}, 0, 0.0, 0.0


def _log_vars(outputs: Any) -> dict[str, Any]:
    if isinstance(outputs, dict):
        if isinstance(outputs.get("log_vars"), dict):
            return outputs["log_vars"]
        return {k: v for k, v in outputs.items() if isinstance(v, (torch.Tensor, float, int))}
    if isinstance(outputs, torch.Tensor):
        return {"loss": outputs}
    return {}


def _optimizer_scalars(trainer: pl.Trainer) -> dict[str, float]:
    """``train/lr`` and ``train/momentum``, or ``train/lr/group_<i>`` where the groups differ."""
    scalars: dict[str, float] = {}
    for opt_index, optimizer in enumerate(trainer.optimizers):
        prefix = "train" if len(trainer.optimizers) == 1 else f"train/optimizer_{opt_index}"
        groups = optimizer.param_groups
        for name in ("lr", "momentum"):
            given = [_momentum(g) if name == "momentum" else g.get("lr") for g in groups]
            values = [float(v) for v in given if v is not None]
            if not values:
                continue
            if len(set(values)) == 1:
                scalars[f"{prefix}/{name}"] = values[0]
            else:
                scalars.update({f"{prefix}/{name}/group_{i}": v for i, v in enumerate(values)})
    return scalars


def _momentum(group: dict[str, Any]) -> float | None:
    if "momentum" in group:
        return group["momentum"]
    betas = group.get("betas")
    return betas[0] if betas else None


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
        torch.cuda.reset_peak_memory_stats(device)
        return peak
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
