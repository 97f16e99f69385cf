"""The validation metrics of an exported file: onnxruntime's detections scored by the config's own evaluator."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["evaluate_onnx"]


def evaluate_onnx(path: str | os.PathLike, dataset: Any, cfg: Mapping[str, Any], task: Any = None) -> dict[str, float]:
    """Run the ``.onnx`` file at ``path`` with :class:`~mmdet_lightning.deploy.OnnxDetector` on every image of
    ``dataset`` (an mmdet dataset: ``get_data_info(i)`` with ``img_path``, ``img_id``, ``height``, ``width``) and
    score the detections with the config's ``val_evaluator`` (mmdet's ``CocoMetric``...): the numbers
    ``MMDetModule`` logs for PyTorch's predictions, e.g. ``{"coco/bbox_mAP": 0.25, ...}``.

    Only this process evaluates (no gathering across DDP ranks), so rank 0 may call it alone.

    Example::
        >>> metrics = evaluate_onnx("model.onnx", module.trainer.datamodule.val_dataset, module.cfg)  # doctest: +SKIP
    """
    from ..console import library_output
    from ..deploy import OnnxDetector
    from ..engine.evaluation_loop import StageEvaluation
    from ..tasks import DetectionTask

    if dataset is None or not hasattr(dataset, "get_data_info"):
        raise ValueError(f"evaluate_onnx needs an mmdet dataset (get_data_info), got {type(dataset).__name__}")
    task = task if task is not None else DetectionTask()
    evaluator = StageEvaluation(cfg, task).evaluator("val")
    evaluator.dataset_meta = getattr(dataset, "metainfo", None)
    detector = OnnxDetector(path)
    for index in range(len(dataset)):
        info = dataset.get_data_info(index)
        found = detector(info["img_path"])
        pred: dict[str, Any] = {"bboxes": torch.from_numpy(found.boxes).float(),
                                "scores": torch.from_numpy(found.scores).float(),
                                "labels": torch.from_numpy(found.labels).long()}
        if found.masks is not None:
            pred["masks"] = torch.from_numpy(found.masks)
        sample = {"img_id": info["img_id"], "img_path": info["img_path"], "ori_shape": (info["height"], info["width"]),
                  "pred_instances": pred, "instances": info.get("instances", [])}
        evaluator.process(data_samples=[sample], data_batch=None)
    results: dict[str, float] = {}
    with library_output():  # pycocotools' prints go to mmdet.log, as in validation
        for metric in evaluator.metrics:
            values = metric.compute_metrics(metric.results) if metric.results else {}
            metric.results.clear()
            prefix = f"{metric.prefix}/" if metric.prefix else ""
            results.update({prefix + key: float(value) for key, value in values.items()
                            if isinstance(value, (int, float))})
    return results or task.metrics_without_detections(evaluator)
