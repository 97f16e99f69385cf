"""Object detection and instance segmentation: mmdet's ``DetDataSample.pred_instances`` (boxes, scores,
labels, and masks for instance segmentation), evaluated by ``CocoMetric`` (or its faster twins)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from .base import Task, is_proposal_head

if TYPE_CHECKING:
    from mmengine.evaluator import Evaluator

    from ..wandb.media import Instances

__all__ = ["DetectionTask"]

#: model types of the tasks that other task modules (or nobody yet) handle, with the task's name
_OTHER_TASK_MODELS: dict[str, str] = {
    "PanopticFPN": "panoptic segmentation",
    "TwoStagePanopticSegmentor": "panoptic segmentation",
    "MaskFormer": "panoptic segmentation",
    "Mask2Former": "panoptic segmentation",
    "SemiBaseDetector": "semi-supervised detection",
    "SoftTeacher": "semi-supervised detection",
    "GLIP": "grounding (open-vocabulary) detection",
    "GroundingDINO": "grounding (open-vocabulary) detection",
    "Mask2FormerVideo": "video instance segmentation",
    "MaskTrackRCNN": "video instance segmentation",
    "BaseReID": "re-identification (tracking)",
}
#: keys of a ``model`` config that mark those tasks
_OTHER_TASK_KEYS: dict[str, str] = {
    "panoptic_head": "panoptic segmentation",
    "panoptic_fusion_head": "panoptic segmentation",
    "semi_train_cfg": "semi-supervised detection",
    "language_model": "grounding (open-vocabulary) detection",
    "tracker": "tracking",
}
_COCO_ITEMS = ["mAP", "mAP_50", "mAP_75", "mAP_s", "mAP_m", "mAP_l"]


def other_task(model_cfg: Mapping[str, Any]) -> str | None:
    """The name of the task of ``model_cfg`` when it is not detection or instance segmentation, else None.

    Example::
        >>> other_task({"type": "PanopticFPN"}), other_task({"type": "RetinaNet"})
        ('panoptic segmentation', None)
        >>> other_task({"type": "Mask2Former", "panoptic_head": {}, "test_cfg": {"panoptic_on": False}}) is None
        True
        >>> other_task({"type": "Mask2Former", "panoptic_head": {}})
        'panoptic segmentation'

    """
    instance_only = (model_cfg.get("test_cfg") or {}).get("panoptic_on") is False  # Mask2Former for instances
    task = _OTHER_TASK_MODELS.get(str(model_cfg.get("type", "")).split(".")[-1])
    if task == "panoptic segmentation" and instance_only:
        task = None
    if task is None:
        task = next((t for key, t in _OTHER_TASK_KEYS.items()
                     if key in model_cfg and not (instance_only and key.startswith("panoptic"))), None)
    return task


class DetectionTask(Task):
    """Object detection and instance segmentation (every mmdet detector with ``pred_instances``).

    Example::
        >>> task = DetectionTask()
        >>> DetectionTask.handles({"type": "FasterRCNN"}), DetectionTask.handles({"type": "SoftTeacher"})
        (True, False)
    """

    name: ClassVar[str] = "detection"
    description: ClassVar[str] = "object detection and instance segmentation"

    @classmethod
    def handles(cls, model_cfg: Mapping[str, Any]) -> bool:
        return other_task(model_cfg) is None

    def predictions_to_float32(self, samples: Any) -> Any:
        """Cast the floating fields of each sample's ``pred_instances`` to float32 (in place; returned), so that
        evaluators and writers (``tensor.numpy()``) accept predictions made under bf16/fp16 autocast."""
        for sample in samples if isinstance(samples, (list, tuple)) else []:
            pred = getattr(sample, "pred_instances", None)
            if pred is None:
                continue
            for key in list(pred.keys()):
                value = pred.get(key)
                if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != torch.float32:
                    pred.set_field(value.float(), key)
        return samples

    def predicted_instances(self, sample: Any, score_thr: float) -> Instances | None:
        """``pred_instances`` with score > ``score_thr``, as numpy arrays on the CPU."""
        from ..wandb.media import instances_from_prediction

        if not hasattr(sample, "pred_instances"):
            return None
        return instances_from_prediction(sample, score_thr)

    def has_masks(self, sample: Any) -> bool:
        return hasattr(sample, "pred_instances") and "masks" in sample.pred_instances

    def class_counts(self, model: torch.nn.Module) -> dict[str, int]:
        """``num_classes`` of every class-predicting head (RPN heads excluded), by module name."""
        found = {}
        for name, module in model.named_modules():
            count = getattr(module, "num_classes", None)
            if isinstance(count, int) and not is_proposal_head(name, type(module).__name__):
                found[name or "model"] = count
        return found

    def metrics_without_detections(self, evaluator: Evaluator) -> dict[str, float]:
        """``CocoMetric`` (and its subclasses, such as ``FastCocoMetric``) returns nothing when no image has a
        detection (a new model, say): 0.0 for each of its keys instead, so that
        ``ModelCheckpoint(monitor="coco/bbox_mAP")`` and the loggers see the keys from the first epoch."""
        from mmdet.evaluation.metrics import CocoMetric

        scalars = {}
        for metric in evaluator.metrics:
            if not isinstance(metric, CocoMetric):
                continue
            items = metric.metric_items or _COCO_ITEMS
            for kind in metric.metrics:
                if kind != "proposal_fast":
                    scalars.update({f"{metric.prefix}/{kind}_{item}": 0.0 for item in items})
        return scalars
