"""mmcv ops without half-precision kernels run in float32 under mixed precision.

Under ``precision="bf16-mixed"`` (CPU or CUDA) or ``"16-mixed"``, autocast hands mmcv's compiled ops
bfloat16 or float16 tensors; ``nms`` and ``RoIAlign`` have no such kernels on the CPU ("expected scalar
type Float but found BFloat16"). :func:`keep_mmcv_ops_in_fp32` wraps them once, so they compute in float32
and return the caller's dtype: users keep their model and their precision flag.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["keep_mmcv_ops_in_fp32", "predictions_to_float32"]

_PATCHED = False


def keep_mmcv_ops_in_fp32() -> None:
    """Make mmcv's ``nms`` (and so ``batched_nms``) and ``RoIAlign`` compute in float32 (idempotent).

    Example::
        >>> keep_mmcv_ops_in_fp32()
        >>> from mmcv.ops import nms
        >>> boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10]], dtype=torch.bfloat16)
        >>> nms(boxes, torch.tensor([0.9, 0.8], dtype=torch.bfloat16), 0.5)[1].tolist()
        [0]
    """
    global _PATCHED
    if _PATCHED:
        return
    import importlib

    nms_module = importlib.import_module("mmcv.ops.nms")
    roi_align_module = importlib.import_module("mmcv.ops.roi_align")

    nms_forward = nms_module.NMSop.forward

    def nms_in_fp32(ctx: Any, bboxes: torch.Tensor, scores: torch.Tensor, *args: Any) -> torch.Tensor:
        return nms_forward(ctx, bboxes.float(), scores.float(), *args)

    nms_module.NMSop.forward = staticmethod(nms_in_fp32)

    roi_align_forward = roi_align_module.RoIAlign.forward

    def roi_align_in_fp32(self: Any, input: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        if input.dtype == torch.float32 and rois.dtype == torch.float32:
            return roi_align_forward(self, input, rois)
        with torch.autocast(device_type=input.device.type, enabled=False):
            return roi_align_forward(self, input.float(), rois.float()).to(input.dtype)

    roi_align_module.RoIAlign.forward = roi_align_in_fp32
    _PATCHED = True


def predictions_to_float32(samples: Any) -> Any:
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
