"""Run an exported detector (``mmdet-lightning export``) with onnxruntime: no torch, mmcv, mmdet or Lightning.

Needs only ``onnxruntime``, ``numpy`` and ``opencv-python`` (or ``-headless``): ``pip install
"mmdet-lightning[deploy]"`` on a serving machine, or copy this folder.

    from mmdet_lightning.deploy import OnnxDetector
    found = OnnxDetector("model.onnx")("image.jpg")   # boxes, scores, labels, class_names (and masks)

    python -m mmdet_lightning.deploy predict model.onnx images/ --output predictions/
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .detector import Detections, OnnxDetector
    from .predict import predict_folder

__all__ = ["OnnxDetector", "Detections", "predict_folder"]
_HOMES = {"OnnxDetector": ".detector", "Detections": ".detector", "predict_folder": ".predict"}


# not mmdet_lightning._lazy (the package's own helper): this folder runs on its own, copied to a serving machine
def __getattr__(name: str) -> Any:
    if name in _HOMES:
        value = getattr(importlib.import_module(_HOMES[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
