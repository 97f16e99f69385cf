"""Kept for configs that name ``mmdet_lightning.wandb_logger.ResilientWandbLogger``: see :mod:`mmdet_lightning.wandb`."""

from .wandb.logger import ResilientWandbLogger, wandb_credentials

__all__ = ["ResilientWandbLogger", "wandb_credentials"]
