"""Image tasks: one module each, chosen from the config's ``model`` by :func:`task_for_model`.

    base.py        Task: what differs by task (losses, predictions, class checks, metrics, W&B media)
    detection.py   DetectionTask: object detection and instance segmentation (``pred_instances``)
    panoptic.py    PanopticTask: panoptic segmentation (``pred_panoptic_seg``: PanopticFPN, MaskFormer, Mask2Former)
    semi_supervised.py  SemiSupervisedTask: mmdet's SemiBaseDetector family (SoftTeacher), teacher and student
    grounding.py   GroundingTask: GLIP, Grounding DINO, MM-Grounding-DINO (detection prompted with text)

Example::
    >>> task_for_model({"type": "FasterRCNN"})
    DetectionTask()
    >>> task_for_model({"type": "SoftTeacher"})
    SemiSupervisedTask()
    >>> task_for_model({"type": "PanopticFPN"})
    PanopticTask()
    >>> task_for_model({"type": "MaskTrackRCNN"})
    Traceback (most recent call last):
    ...
    ValueError: The config's model `MaskTrackRCNN` is a video instance segmentation model; ...
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .base import Task, is_proposal_head
from .detection import DetectionTask, other_task
from .grounding import GroundingTask
from .panoptic import PanopticTask
from .semi_supervised import SemiSupervisedTask

__all__ = ["Task", "DetectionTask", "GroundingTask", "PanopticTask", "SemiSupervisedTask", "TASKS", "register_task",
           "task_for_model", "task_of", "is_proposal_head"]

#: the task classes, asked in order; the first whose ``handles`` accepts the model trains it
TASKS: list[type[Task]] = [GroundingTask, SemiSupervisedTask, PanopticTask, DetectionTask]


def register_task(task: type[Task]) -> type[Task]:
    """Add a task class, asked before those already registered (usable as a class decorator)."""
    TASKS.insert(0, task)
    return task


def task_for_model(model_cfg: Mapping[str, Any]) -> Task:
    """The task that trains the config's ``model``; ``ValueError`` naming the task when none does."""
    for task in TASKS:
        if task.handles(model_cfg):
            return task()
    model_type = str(model_cfg.get("type", ""))
    raise ValueError(
        f"The config's model `{model_type}` is a {other_task(model_cfg) or 'model of an unknown task'} model; "
        f"mmdet-lightning trains {_trained()} only.\n"
        "Hint: use MMDetection's own tools/train.py for this config."
    )


def _trained() -> str:
    """What the registered tasks train, in words: ``object detection and instance segmentation, panoptic
    segmentation and ... models``."""
    names = [task.description for task in reversed(TASKS)]
    return (", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0]) + " models"


def task_of(pl_module: Any) -> Task:
    """The task of a LightningModule: ``MMDetModule.task``, or detection for modules without one (a user's own
    LightningModule around an mmdet detector)."""
    task = getattr(pl_module, "task", None)
    return task if isinstance(task, Task) else DetectionTask()
