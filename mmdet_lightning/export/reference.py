"""PyTorch's own predictions for the same images, to check an export against (tests, benchmark, ``--verify``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

__all__ = ["TorchPredictor", "compare_detections"]


class TorchPredictor:
    """mmdet's inference on one image file: the config's test pipeline, the data preprocessor and
    ``detector.test_step`` (batch of one, as ``mmdet.apis.inference_detector``).

    Returns dicts of NumPy arrays: ``boxes``, ``scores``, ``labels`` and ``masks`` (bool ``(N, H, W)``), in the
    original image's coordinates.
    """

    def __init__(self, module: Any, config: Any = None) -> None:
        from mmcv.transforms import Compose

        from ..config import init_mmdet_scope
        from .core import _resolve, _steps

        init_mmdet_scope()
        self.detector, self.cfg = _resolve(module, config)
        steps = [s for s in _steps(self.cfg) if not str(s.get("type", "")).endswith("LoadAnnotations")]
        self.pipeline = Compose(steps)

    @torch.no_grad()
    def __call__(self, image: str | Path) -> dict[str, np.ndarray]:
        was_training = self.detector.training
        self.detector.eval()
        try:
            data = self.pipeline({"img_path": str(image), "img_id": 0})
            batch = {"inputs": [data["inputs"]], "data_samples": [data["data_samples"]]}
            result = self.detector.test_step(batch)[0].pred_instances
        finally:
            self.detector.train(was_training)
        out = {"boxes": result.bboxes.float().cpu().numpy(), "scores": result.scores.float().cpu().numpy(),
               "labels": result.labels.cpu().numpy().astype(np.int64)}
        if "masks" in result:
            masks = result.masks
            out["masks"] = masks.cpu().numpy().astype(bool) if isinstance(masks, torch.Tensor) else np.asarray(masks)
        return out


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def compare_detections(expected: dict[str, np.ndarray], actual: Any, image_size: Sequence[int]) -> dict[str, Any]:
    """How far ``actual`` (a :class:`~mmdet_lightning.deploy.Detections` or a dict) is from ``expected``: detection
    counts, whether labels agree in order, the largest box difference divided by the image's larger side,
    the largest score difference, and the smallest mask IoU."""
    get = (lambda k: getattr(actual, k)) if not isinstance(actual, dict) else actual.get
    boxes, scores, labels = np.asarray(get("boxes")), np.asarray(get("scores")), np.asarray(get("labels"))
    report: dict[str, Any] = {"count": (len(expected["scores"]), len(scores))}
    n = min(len(scores), len(expected["scores"]))
    report["labels_equal"] = len(scores) == len(expected["scores"]) and bool(
        np.array_equal(labels.astype(np.int64), expected["labels"]))
    side = float(max(image_size))
    report["box_diff"] = float(np.abs(boxes[:n] - expected["boxes"][:n]).max() / side) if n else 0.0
    report["score_diff"] = float(np.abs(scores[:n] - expected["scores"][:n]).max()) if n else 0.0
    masks = get("masks")
    if "masks" in expected and masks is not None:
        ious = [_mask_iou(a, b) for a, b in zip(expected["masks"][:n], np.asarray(masks)[:n])]
        report["mask_iou_min"] = min(ious) if ious else 1.0
    return report
