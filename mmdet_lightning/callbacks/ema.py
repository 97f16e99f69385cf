"""mmengine's ``EMAHook`` as a Lightning callback: an averaged copy of the detector, used to evaluate and save."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

import torch

from .._compat import lightning as lightning_compat
from ..lightning_package import pl

if TYPE_CHECKING:
    from mmengine.model import BaseAveragedModel

__all__ = ["ModelEMA"]


class ModelEMA(pl.Callback):
    """Keeps a moving average of the detector's weights as mmengine's ``EMAHook`` does, with mmengine's and
    mmdet's own averaging models (``ExponentialMovingAverage``, ``MomentumAnnealingEMA``, ``StochasticWeightAverage``,
    ``ExpMomentumEMA``, built from mmdet's ``MODELS`` registry).

    Lifecycle, as under mmengine's runner::

        on_train_batch_end             average updated (before `begin_iter` / `begin_epoch`: a plain copy)
        validation / test / predict    run with the averaged weights, then the trained ones are put back
        checkpoint                     `state_dict` holds the averaged weights, `ema_state_dict` the
                                       averaged model's state with the trained weights (mmengine's layout)
        resume (fit from a checkpoint) trained weights and average restored from those two

    Args:
        ema_type: averaging model registered in mmengine's / mmdet's ``MODELS``.
        begin_iter: iteration from which the average is updated (a copy of the weights before).
        begin_epoch: epoch from which the average is updated; not together with ``begin_iter``.
        strict_load: load ``ema_state_dict`` strictly on resume.
        **kwargs: arguments of the averaging model (``momentum``, ``update_buffers``, ``gamma``, ``interval``).

    Raises:
        ValueError: both ``begin_iter`` and ``begin_epoch`` are set, or one is negative.

    Example::
        >>> ema = ModelEMA("ExpMomentumEMA", momentum=0.0002, update_buffers=True)
        >>> trainer = pl.Trainer(callbacks=[ema])  # doctest: +SKIP
    """

    def __init__(self, ema_type: str = "ExponentialMovingAverage", begin_iter: int = 0, begin_epoch: int = 0,
                 strict_load: bool = False, **kwargs: Any) -> None:
        if begin_iter and begin_epoch:
            raise ValueError(f"Set `begin_iter` or `begin_epoch`, not both (got {begin_iter} and {begin_epoch}).")
        if begin_iter < 0 or begin_epoch < 0:
            raise ValueError(f"Expected `begin_iter` and `begin_epoch` >= 0, but got {begin_iter} and {begin_epoch}.")
        self.ema_cfg = dict(type=ema_type, **kwargs)
        self.begin_iter = begin_iter
        self.begin_epoch = begin_epoch
        self.strict_load = strict_load
        self.ema_model: BaseAveragedModel | None = None
        self._swapped = False

    @staticmethod
    def _source(pl_module: pl.LightningModule) -> torch.nn.Module:
        return getattr(pl_module, "model", pl_module)

    def _prefix(self, pl_module: pl.LightningModule) -> str:
        return "model." if self._source(pl_module) is not pl_module else ""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.ema_model is None:
            from mmdet.registry import MODELS

            self.ema_model = MODELS.build(dict(self.ema_cfg), default_args=dict(model=self._source(pl_module)))

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        assert self.ema_model is not None
        self.ema_model.to(pl_module.device)  # the model was moved after `setup`
        if self.begin_epoch:
            if trainer.max_epochs is not None and 0 < trainer.max_epochs < self.begin_epoch:
                raise ValueError(f"ModelEMA: begin_epoch={self.begin_epoch} is after the last epoch "
                                 f"(max_epochs={trainer.max_epochs}).")
        elif self.begin_iter and 0 < trainer.max_steps < self.begin_iter:
            raise ValueError(f"ModelEMA: begin_iter={self.begin_iter} is after the last iteration "
                             f"(max_steps={trainer.max_steps}).")

    def _started(self, trainer: pl.Trainer) -> bool:
        if self.begin_epoch:
            return trainer.current_epoch + 1 >= self.begin_epoch
        iteration = lightning_compat.fit_batches_completed(trainer)  # mmengine's runner.iter
        return iteration + 1 >= self.begin_iter

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        assert self.ema_model is not None
        source = self._source(pl_module)
        if self._started(trainer):
            self.ema_model.update_parameters(source)
        else:
            averaged, current = self.ema_model.module.state_dict(), source.state_dict()
            for key, tensor in averaged.items():
                tensor.data.copy_(current[key].data)

    # ------------------------------------------------------------------ evaluate with the average
    def _swap(self, pl_module: pl.LightningModule) -> None:
        assert self.ema_model is not None
        averaged, source = self.ema_model.module, self._source(pl_module)
        if self.ema_model.update_buffers:
            pairs = zip(itertools.chain(averaged.parameters(), averaged.buffers()),
                        itertools.chain(source.parameters(), source.buffers()), strict=True)
        else:
            pairs = zip(averaged.parameters(), source.parameters(), strict=True)
        for p_avg, p_src in pairs:
            kept = p_avg.data.clone()
            p_avg.data.copy_(p_src.data)
            p_src.data.copy_(kept)
        self._swapped = not self._swapped

    def _swap_in(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.ema_model is not None and not self._swapped:
            self.ema_model.to(pl_module.device)
            self._swap(pl_module)

    def _swap_out(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._swapped:
            self._swap(pl_module)

    on_validation_epoch_start = _swap_in
    on_validation_epoch_end = _swap_out
    on_test_epoch_start = _swap_in
    on_test_epoch_end = _swap_out
    on_predict_epoch_start = _swap_in
    on_predict_epoch_end = _swap_out

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        assert self.ema_model is not None
        ema_state = self.ema_model.state_dict()
        checkpoint["ema_state_dict"] = ema_state
        if not self._swapped:  # the model holds the trained weights: exchange them with the averaged ones
            self._swap_state_dicts(checkpoint["state_dict"], ema_state, self._prefix(pl_module))

    @staticmethod
    def _swap_state_dicts(model_state: dict[str, Any], ema_state: dict[str, Any], prefix: str) -> None:
        for key in ema_state:
            if key.startswith("module.") and prefix + key[7:] in model_state:
                model_key = prefix + key[7:]
                ema_state[key], model_state[model_key] = model_state[model_key], ema_state[key]

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        # Lightning has loaded `state_dict` (the averaged weights) into the model already.
        if self.ema_model is None:
            self.setup(trainer, pl_module, "fit")
        assert self.ema_model is not None
        source = self._source(pl_module)
        prefix = self._prefix(pl_module)
        fitting = trainer.state.fn == "fit"
        if fitting and "ema_state_dict" in checkpoint:
            model_state = {k: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
            ema_state = dict(checkpoint["ema_state_dict"])
            self._swap_state_dicts(model_state, ema_state, prefix)
            self.ema_model.load_state_dict(ema_state, strict=self.strict_load)
            source.load_state_dict({k[len(prefix):]: v for k, v in model_state.items()}, strict=False)
        else:
            if fitting:
                pl.utilities.rank_zero_warn(
                    "ModelEMA: the checkpoint has no `ema_state_dict`; the average starts from its weights.")
            self.ema_model.module.load_state_dict(source.state_dict(), strict=self.strict_load)
        self._swapped = False
