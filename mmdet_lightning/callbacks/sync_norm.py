"""mmdet's ``SyncNormHook`` as a Lightning callback: BatchNorm statistics averaged over processes."""

from __future__ import annotations

from ..lightning_package import pl

__all__ = ["SyncNorm"]


class SyncNorm(pl.Callback):
    """Before each validation, replaces every BatchNorm's running statistics (and affine weights) by their
    mean over all processes, with mmdet's own ``get_norm_states`` and ``all_reduce_dict``, as mmdet's
    ``SyncNormHook`` (YOLOX, RTMDet). Nothing to do in a single process. Collective: runs on every rank.

    Example::
        >>> trainer = pl.Trainer(strategy="ddp", devices=2, callbacks=[SyncNorm()])  # doctest: +SKIP
    """

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.world_size == 1:
            return
        from mmdet.engine.hooks.sync_norm_hook import get_norm_states
        from mmdet.utils import all_reduce_dict

        model = getattr(pl_module, "model", pl_module)
        states = get_norm_states(model)
        if states:
            model.load_state_dict(all_reduce_dict(states, op="mean"), strict=False)
