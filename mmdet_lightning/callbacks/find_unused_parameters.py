"""An mmdet config's ``find_unused_parameters=True`` for Lightning's DDP strategy."""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.strategies import DDPStrategy
from pytorch_lightning.utilities import rank_zero_info

__all__ = ["FindUnusedParameters"]


class FindUnusedParameters(pl.Callback):
    """Wraps the model in DDP with ``find_unused_parameters=True``, as mmengine's runner does for configs that
    set it (models whose heads leave some parameters without gradient in some iterations). Does nothing
    without DDP. Same as ``strategy="ddp_find_unused_parameters_true"``, from the config.

    Example::
        >>> trainer = pl.Trainer(strategy="ddp", devices=2, callbacks=[FindUnusedParameters()])  # doctest: +SKIP
    """

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # `setup` runs before the strategy wraps the model, so the DDP arguments still apply
        strategy = trainer.strategy
        if isinstance(strategy, DDPStrategy) and not strategy._ddp_kwargs.get("find_unused_parameters"):
            strategy._ddp_kwargs["find_unused_parameters"] = True
            rank_zero_info("FindUnusedParameters: DDP with find_unused_parameters=True (from the mmdet config).")
