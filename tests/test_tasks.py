"""Task objects: the registry that picks a task from the config, and detection's behaviour."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch

from mmdet_lightning import MMDetDataModule, MMDetModule
from mmdet_lightning.lightning_package import pl
from mmdet_lightning.tasks import TASKS, DetectionTask, Task, is_proposal_head, register_task, task_for_model, task_of


@pytest.mark.parametrize("model_cfg, task", [
    ({"type": "MaskTrackRCNN"}, "video instance segmentation"),
    ({"type": "MyDetector", "tracker": {}}, "tracking"),
])
def test_models_of_other_tasks_are_refused_with_the_task(model_cfg: dict, task: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"is a {task} model; mmdet-lightning trains object detection")):
        task_for_model(model_cfg)


def test_detection_and_instance_segmentation_go_to_the_detection_task() -> None:
    assert isinstance(task_for_model({"type": "RetinaNet"}), DetectionTask)
    instance_mask2former = {"type": "Mask2Former", "panoptic_head": {}, "test_cfg": {"panoptic_on": False}}
    assert isinstance(task_for_model(instance_mask2former), DetectionTask)


def test_a_registered_task_is_asked_first() -> None:
    class Toy(Task):
        name = "toy"

        @classmethod
        def handles(cls, model_cfg: Any) -> bool:
            return model_cfg.get("type") == "PanopticFPN"

    register_task(Toy)
    try:
        assert type(task_for_model({"type": "PanopticFPN"})) is Toy
    finally:
        TASKS.remove(Toy)
    assert isinstance(task_of(object()), DetectionTask)


def test_proposal_heads_are_one_rule() -> None:
    assert is_proposal_head("rpn_head") and is_proposal_head("model.rpn_head.rpn_conv")
    assert is_proposal_head("neck", "CascadeRPNHead")
    assert not is_proposal_head("roi_head.bbox_head", "Shared2FCBBoxHead")


def test_class_counts_skip_the_rpn(shapes_config: Any) -> None:
    module = MMDetModule(shapes_config("shapes_faster_rcnn.py"))
    counts = module.task.class_counts(module.model)
    assert counts and set(counts.values()) == {3} and not any("rpn" in name for name in counts)
    with pytest.raises(ValueError, match=r"has 2 classes \('a', 'b'\).*roi_head.bbox_head.num_classes=3"):
        module.task.check_classes(module.model, ["a", "b"], "val")


def test_predictions_to_float32_casts_every_floating_field() -> None:
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData

    sample = DetDataSample()
    sample.pred_instances = InstanceData(bboxes=torch.ones(2, 4, dtype=torch.bfloat16),
                                         scores=torch.ones(2, dtype=torch.float16),
                                         labels=torch.zeros(2, dtype=torch.long))
    (out,) = DetectionTask().predictions_to_float32([sample])
    assert out.pred_instances.bboxes.dtype == torch.float32 and out.pred_instances.scores.dtype == torch.float32
    assert out.pred_instances.labels.dtype == torch.long
    shown = DetectionTask().predicted_instances(out, score_thr=0.5)
    assert shown is not None and shown.boxes.shape == (2, 4) and shown.masks is None


@pytest.mark.parametrize("backend", ["pycocotools", "faster_coco_eval"])
def test_validation_without_detections_logs_zeros_with_every_backend(
        shapes_config: Any, tmp_path: Path, backend: str) -> None:
    """Failed before the task objects with faster_coco_eval: the check named ``CocoMetric`` exactly, so
    ``FastCocoMetric`` logged no ``coco/*`` key and ``ModelCheckpoint(monitor="coco/bbox_mAP")`` failed."""
    cfg = shapes_config("shapes_retinanet.py", batch_size=4)
    cfg.model.test_cfg.score_thr = 1.01  # nothing is detected
    module = MMDetModule(cfg, evaluator_backend=backend)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=str(tmp_path))
    with pytest.warns(UserWarning, match="no detections on the whole dataset"):
        (metrics,) = trainer.validate(module, datamodule=MMDetDataModule(cfg), verbose=False)
    assert metrics["coco/bbox_mAP"] == 0.0 and metrics["coco/bbox_mAP_50"] == 0.0
