"""What mmengine's runner keeps in a checkpoint besides weights, optimizer and schedulers (which Lightning
saves): the ``MessageHub``, the optimizer wrapper's counter, the schedule steps of a batch whose end hooks had
not run when the checkpoint was written, the skipped-step count; and the ``dataset_meta`` that mmdet's tools
read from a checkpoint's ``meta`` (``init_detector``: the class names)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._compat import mmengine as mmengine_compat
from ..resume import load_message_hub_state, message_hub_state
from ..utilities import first_dataset

if TYPE_CHECKING:
    from ..module import MMDetModule

__all__ = ["RUN_STATE_KEY", "save_run_state", "restore_run_state"]

#: the checkpoint key of the run state
RUN_STATE_KEY = "mmdet_lightning"


def save_run_state(module: MMDetModule, checkpoint: dict[str, Any]) -> None:
    """Write ``module``'s run state (and the dataset's metainfo as ``meta.dataset_meta``) into ``checkpoint``.
    ``ModelCheckpoint`` saves in the callbacks' ``on_train_batch_end``, before the module's, hence the pending
    schedule steps."""
    from mmengine.logging import MessageHub

    wrapper = module.optim_wrapper
    checkpoint[RUN_STATE_KEY] = {
        "message_hub": message_hub_state(MessageHub.get_current_instance()),
        "inner_count": mmengine_compat.optim_wrapper_inner_count(wrapper) if wrapper is not None else 0,
        **module.schedules.state_dict(),
        "skipped_steps": module.invalid_loss_check.skipped_steps,
    }
    metainfo = dataset_meta(module.trainer)
    if metainfo is not None:
        checkpoint["meta"] = {"dataset_meta": metainfo}


def dataset_meta(trainer: Any) -> dict[str, Any] | None:
    """The metainfo (class names, palette) of the trainer's training data, else of its validation data; None
    where neither names classes. What mmdet's tools read from a checkpoint's ``meta.dataset_meta``."""
    for loaders in (trainer.train_dataloader, trainer.val_dataloaders):
        metainfo = getattr(first_dataset(loaders), "metainfo", None) or {}
        if metainfo.get("classes"):
            return dict(metainfo)
    return None


def restore_run_state(module: MMDetModule, state: dict[str, Any] | None) -> None:
    """At ``on_train_start`` of a resumed fit (weights, optimizer and schedulers are loaded by then)."""
    from mmengine.logging import MessageHub

    if not state:
        return
    load_message_hub_state(MessageHub.get_current_instance(), state["message_hub"])
    module.invalid_loss_check.skipped_steps = int(state.get("skipped_steps", 0))
    module.schedules.load_state_dict(state)
    if module.optim_wrapper is not None:
        mmengine_compat.set_optim_wrapper_inner_count(module.optim_wrapper, int(state["inner_count"]))
