"""What the W&B callbacks share: finding the WandbLogger, argument checks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lightning_utilities.core.imports import RequirementCache
from pytorch_lightning.utilities.exceptions import MisconfigurationException

if TYPE_CHECKING:
    import pytorch_lightning as pl
    from pytorch_lightning.loggers import WandbLogger

_WANDB_AVAILABLE = RequirementCache("wandb>=0.17")


def find_wandb_logger(trainer: "pl.Trainer", owner: str) -> "WandbLogger":
    """The first ``WandbLogger`` of ``trainer.loggers``; a clear error listing the loggers otherwise."""
    if not _WANDB_AVAILABLE:
        raise ModuleNotFoundError(f"{owner} needs wandb. {_WANDB_AVAILABLE}")
    from pytorch_lightning.loggers import WandbLogger

    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            return logger
    found = [type(logger).__name__ for logger in trainer.loggers] or "none"
    raise MisconfigurationException(
        f"{owner} logs through Lightning's WandbLogger, but trainer.loggers has {found}.\n"
        "Hint: pl.Trainer(logger=WandbLogger(project=...), callbacks=[...]); offline runs need no account: "
        "WandbLogger(offline=True)."
    )


def check_non_negative_int(name: str, value: Any, positive: bool = False) -> int:
    """``"Expected argument `interval` to be a positive int, but got -1."``"""
    low = 1 if positive else 0
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        kind = "a positive int" if positive else "an int >= 0"
        raise ValueError(f"Expected argument `{name}` to be {kind}, but got {value!r}.")
    return value


def check_unit_interval(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"Expected argument `{name}` to be a float in [0, 1], but got {value!r}.")
    return float(value)
