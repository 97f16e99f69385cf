"""PyTorch's own predictions for the same images, to check an export against (tests, benchmark, ``--verify``)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["TorchPredictor", "compare_detections", "make_heads_decisive"]

#: a classification layer's name: ``retina_cls``, ``rpn_cls``, ``fc_cls``, ``rtm_cls.0``, ``conv_cls``, ``atss_cls``...
_CLS_LAYER = re.compile(r"(^|\.)\w*_cls(\.\d+)?$")


def make_heads_decisive(detector: nn.Module, seed: int = 0,
                        heads: tuple[str, ...] = ("bbox_head", "rpn_head", "roi_head")) -> None:
    """Give the convolutions and linear layers under ``heads`` fixed random weights of a trained net's scale (He
    init) and classification biases of -1 (other biases 0), so that an untrained detector scores many boxes
    above its threshold, with distinct scores: detections to compare an export on, without training.

    Example::
        >>> layer = nn.Sequential(); layer.add_module("fc_cls", nn.Linear(4, 2))
        >>> make_heads_decisive(layer, heads=("fc_cls",)); layer.fc_cls.bias.tolist()
        [-1.0, -1.0]
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, module in detector.named_modules():
            if not any(name.startswith(h) for h in heads) or not isinstance(module, (nn.Conv2d, nn.Linear)):
                continue
            fan_in = module.weight[0].numel()
            module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
            if module.bias is not None:
                module.bias.fill_(-1.0 if _CLS_LAYER.search(name) else 0.0)


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


def compare_detections(expected: dict[str, np.ndarray], actual: Any, image_size: Sequence[int],
                       box_tol: float = 1e-3, score_tol: float = 1e-4) -> dict[str, Any]:
    """How far ``actual`` (a :class:`~mmdet_lightning.deploy.Detections` or a dict of arrays) is from
    ``expected``, detection by detection.

    Detections are paired in order; where scores tie (within ``score_tol``) the order among them is free, so a
    detection is paired with the first unpaired one of the same label whose score and box are within tolerance
    (``box_tol`` times the image's larger side). Returns the counts, ``matched`` (every detection paired),
    ``same_order`` (paired in order), the largest box difference over the image's larger side, the largest
    score difference and the smallest mask IoU of the pairs."""
    get = (lambda k: getattr(actual, k, None)) if not isinstance(actual, dict) else actual.get
    boxes, scores = np.asarray(get("boxes"), np.float64), np.asarray(get("scores"), np.float64)
    labels = np.asarray(get("labels")).astype(np.int64)
    e_boxes, e_scores = np.asarray(expected["boxes"], np.float64), np.asarray(expected["scores"], np.float64)
    e_labels = np.asarray(expected["labels"]).astype(np.int64)
    side = float(max(image_size))
    pairs: list[tuple[int, int]] = []
    used = np.zeros(len(scores), dtype=bool)
    for i in range(len(e_scores)):
        order = [i] + [j for j in range(len(scores)) if j != i] if i < len(scores) else range(len(scores))
        for j in order:
            if used[j] or labels[j] != e_labels[i] or abs(scores[j] - e_scores[i]) > score_tol:
                continue
            if np.abs(boxes[j] - e_boxes[i]).max() / side > box_tol:
                continue
            used[j] = True
            pairs.append((i, j))
            break
    report: dict[str, Any] = {
        "count": (len(e_scores), len(scores)),
        "matched": len(pairs) == len(e_scores) == len(scores),
        "same_order": all(i == j for i, j in pairs) and len(pairs) == len(e_scores) == len(scores),
        "box_diff": max((float(np.abs(boxes[j] - e_boxes[i]).max() / side) for i, j in pairs), default=0.0),
        "score_diff": max((float(abs(scores[j] - e_scores[i])) for i, j in pairs), default=0.0),
    }
    masks = get("masks")
    if "masks" in expected and masks is not None:
        masks = np.asarray(masks)
        report["mask_iou_min"] = min((_mask_iou(expected["masks"][i], masks[j]) for i, j in pairs), default=1.0)
    return report
