"""mmcv ops without half-precision kernels run in float32 under mixed precision.

Under ``precision="bf16-mixed"`` (CPU or CUDA) or ``"16-mixed"``, autocast hands mmcv's compiled ops
bfloat16 or float16 tensors, for which many have no kernel: ``nms`` and ``RoIAlign`` on the CPU ("expected
scalar type Float but found BFloat16"), the focal loss on CUDA ("sigmoid_focal_loss_forward_cuda_kernel" not
implemented for 'BFloat16'), and the others dispatch on float, double and at most half.
:func:`keep_mmcv_ops_in_fp32` makes each of them compute in float32 once and for all: users keep their model
and their precision flag. Their outputs stay float32; autograd casts the gradients back to the inputs' dtypes.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

import torch

__all__ = ["keep_mmcv_ops_in_fp32", "predictions_to_float32", "FP32_MMCV_OPS"]

#: mmcv's autograd functions (``module.Class`` under ``mmcv.ops``) computed in float32 under mixed precision
FP32_MMCV_OPS = (
    "nms.NMSop", "roi_align.RoIAlignFunction", "roi_pool.RoIPoolFunction",
    "roi_align_rotated.RoIAlignRotatedFunction", "deform_roi_pool.DeformRoIPoolFunction",
    "focal_loss.SigmoidFocalLossFunction", "focal_loss.SoftmaxFocalLossFunction",
    "deform_conv.DeformConv2dFunction", "modulated_deform_conv.ModulatedDeformConv2dFunction",
    "multi_scale_deform_attn.MultiScaleDeformableAttnFunction", "carafe.CARAFEFunction",
    "carafe.CARAFENaiveFunction", "masked_conv.MaskedConv2dFunction",
)
_LOW_PRECISION = (torch.float16, torch.bfloat16)
_PATCHED = False


def _in_fp32(forward: Callable[..., Any]) -> Callable[..., Any]:
    """``forward(ctx, *args)`` of an autograd function, with half/bfloat16 tensors cast to float32, autocast off."""

    def forward_in_fp32(ctx: Any, *args: Any, **kwargs: Any) -> Any:
        low = [a for a in args if isinstance(a, torch.Tensor) and a.dtype in _LOW_PRECISION]
        if not low:
            return forward(ctx, *args, **kwargs)
        args = tuple(a.float() if isinstance(a, torch.Tensor) and a.dtype in _LOW_PRECISION else a for a in args)
        with torch.autocast(device_type=low[0].device.type, enabled=False):
            return forward(ctx, *args, **kwargs)

    return forward_in_fp32


def keep_mmcv_ops_in_fp32() -> None:
    """Make the mmcv ops of :data:`FP32_MMCV_OPS` compute in float32 (idempotent).

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
    for name in FP32_MMCV_OPS:
        module_name, class_name = name.rsplit(".", 1)
        function = getattr(importlib.import_module(f"mmcv.ops.{module_name}"), class_name)
        function.forward = staticmethod(_in_fp32(function.forward))
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
