"""mmdet's ``PipelineSwitchHook`` and ``YOLOXModeSwitchHook`` as Lightning callbacks: a new train pipeline
(no strong augmentation) for the last epochs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .._compat import lightning as lightning_compat
from .._compat import torch as torch_compat
from ..lightning_package import pl
from ..utilities import first_dataset

rank_zero_info = pl.utilities.rank_zero_info

__all__ = ["PipelineSwitch", "YOLOXModeSwitch"]


class _EpochSwitch(pl.Callback):
    """Runs :meth:`switch` once, at the start of the first epoch for which :meth:`due` holds, so that the
    epoch's batches come from the switched pipeline (also with persistent workers, also on resume)."""

    def __init__(self) -> None:
        self._has_switched = False
        self._first_epoch: int | None = None

    def due(self, trainer: pl.Trainer) -> bool:
        raise NotImplementedError

    def switch(self, trainer: pl.Trainer, pl_module: pl.LightningModule, dataset: Any) -> None:
        raise NotImplementedError

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._first_epoch = trainer.current_epoch

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._has_switched or not self.due(trainer):
            return
        loader = trainer.train_dataloader
        self.switch(trainer, pl_module, first_dataset(loader))
        self._has_switched = True
        if getattr(loader, "persistent_workers", False):
            # workers hold a copy of the dataset: start new ones (as mmdet does)
            torch_compat.drop_dataloader_iterator(loader)
        if trainer.current_epoch == self._first_epoch:
            # Lightning made this epoch's iterator (and prefetched a batch) before `on_train_epoch_start`
            # when the run started or resumed: make it again, from the switched pipeline
            lightning_compat.restart_train_data_fetcher(trainer)


class PipelineSwitch(_EpochSwitch):
    """mmdet's ``PipelineSwitchHook``: from ``switch_epoch`` (0-based) on, the train dataset uses
    ``switch_pipeline`` (RTMDet's last epochs without Mosaic and MixUp).

    Example::
        >>> switch = PipelineSwitch(switch_epoch=280, switch_pipeline=[dict(type="LoadImageFromFile")])
        >>> trainer = pl.Trainer(max_epochs=300, callbacks=[switch])  # doctest: +SKIP
    """

    def __init__(self, switch_epoch: int, switch_pipeline: Sequence[dict]) -> None:
        super().__init__()
        self.switch_epoch = switch_epoch
        self.switch_pipeline = list(switch_pipeline)

    def due(self, trainer: pl.Trainer) -> bool:
        return trainer.current_epoch >= self.switch_epoch

    def switch(self, trainer: pl.Trainer, pl_module: pl.LightningModule, dataset: Any) -> None:
        from mmcv.transforms import Compose

        rank_zero_info(f"PipelineSwitch: epoch {trainer.current_epoch}: switching the train pipeline.")
        dataset.pipeline = Compose(self.switch_pipeline)


class YOLOXModeSwitch(_EpochSwitch):
    """mmdet's ``YOLOXModeSwitchHook``: for the last ``num_last_epochs`` epochs, the train dataset (a
    ``MultiImageMixDataset``) skips ``skip_type_keys`` (Mosaic, RandomAffine, MixUp) and the head adds its
    L1 loss (``bbox_head.use_l1``).

    Example::
        >>> trainer = pl.Trainer(max_epochs=300, callbacks=[YOLOXModeSwitch(num_last_epochs=15)])  # doctest: +SKIP
    """

    def __init__(self, num_last_epochs: int = 15,
                 skip_type_keys: Sequence[str] = ("Mosaic", "RandomAffine", "MixUp")) -> None:
        super().__init__()
        self.num_last_epochs = num_last_epochs
        self.skip_type_keys = tuple(skip_type_keys)

    def due(self, trainer: pl.Trainer) -> bool:
        return trainer.current_epoch + 1 >= (trainer.max_epochs or 0) - self.num_last_epochs

    def switch(self, trainer: pl.Trainer, pl_module: pl.LightningModule, dataset: Any) -> None:
        rank_zero_info(f"YOLOXModeSwitch: epoch {trainer.current_epoch}: no {', '.join(self.skip_type_keys)} "
                       "from now on; L1 loss added.")
        dataset.update_skip_type_keys(self.skip_type_keys)
        model: Any = getattr(pl_module, "model", pl_module)
        model = getattr(model, "detector", model)
        model.bbox_head.use_l1 = True
