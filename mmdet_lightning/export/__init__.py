"""Export a trained mmdet detector to ONNX: pre-processing, network and post-processing in one graph.

    from mmdet_lightning.export import export_onnx
    export_onnx(module, "model.onnx")                    # module: an MMDetModule (or a detector + config=)

    mmdet-lightning export configs/mmdet/shapes_faster_rcnn.py --ckpt_path model.pth --output model.onnx

Run the file with :class:`mmdet_lightning.deploy.OnnxDetector` (onnxruntime, NumPy, OpenCV only).
See docs/export.md for the families that export and how they were checked against PyTorch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_attributes
from .errors import ExportError

if TYPE_CHECKING:
    from .core import deploy_pipeline, export_onnx, load_for_export
    from .families import check_exportable
    from .ops import export_friendly_ops

__all__ = ["export_onnx", "ExportError", "export_friendly_ops", "load_for_export", "deploy_pipeline",
           "check_exportable"]
_HOMES = {"export_onnx": ".core", "load_for_export": ".core", "deploy_pipeline": ".core",
          "export_friendly_ops": ".ops", "check_exportable": ".families"}


__getattr__ = lazy_attributes(__name__, _HOMES)
