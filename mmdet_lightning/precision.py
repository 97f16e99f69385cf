"""mmcv ops without half-precision kernels run in float32 under mixed precision.

Under ``precision="bf16-mixed"`` (CPU or CUDA) or ``"16-mixed"``, autocast hands mmcv's compiled ops
bfloat16 or float16 tensors, for which many have no kernel: ``nms`` and ``RoIAlign`` on the CPU ("expected
scalar type Float but found BFloat16"), the focal loss on CUDA ("sigmoid_focal_loss_forward_cuda_kernel" not
implemented for 'BFloat16'), and the others dispatch on float, double and at most half.
:func:`keep_mmcv_ops_in_fp32` makes each of them compute in float32 once and for all: users keep their model
and their precision flag.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch

__all__ = ["keep_mmcv_ops_in_fp32", "FP32_MMCV_OPS", "FP32_OUTPUT_MMCV_OPS"]

#: mmcv's autograd functions (``module.Class`` under ``mmcv.ops``) computed in float32 under mixed precision,
#: with their floating outputs in the inputs' dtype (features that mmdet writes into tensors of that dtype)
FP32_MMCV_OPS = (
    "roi_align.RoIAlignFunction", "roi_pool.RoIPoolFunction", "roi_align_rotated.RoIAlignRotatedFunction",
    "deform_roi_pool.DeformRoIPoolFunction", "deform_conv.DeformConv2dFunction",
    "modulated_deform_conv.ModulatedDeformConv2dFunction", "multi_scale_deform_attn.MultiScaleDeformableAttnFunction",
    "carafe.CARAFEFunction", "carafe.CARAFENaiveFunction", "masked_conv.MaskedConv2dFunction",
)
#: the same, with float32 outputs (losses, indices)
FP32_OUTPUT_MMCV_OPS = ("nms.NMSop", "focal_loss.SigmoidFocalLossFunction", "focal_loss.SoftmaxFocalLossFunction")
_LOW_PRECISION = (torch.float16, torch.bfloat16)
_PATCHED = False


def _up(values: Any) -> Any:
    return tuple(v.float() if isinstance(v, torch.Tensor) and v.dtype in _LOW_PRECISION else v for v in values)


def _cast_floats(output: Any, dtype: torch.dtype) -> Any:
    if isinstance(output, torch.Tensor):
        return output.to(dtype) if output.is_floating_point() else output
    if isinstance(output, tuple):
        return tuple(_cast_floats(item, dtype) for item in output)
    return output


def _compute_in_fp32(function: Any, output_in_input_dtype: bool) -> None:
    """Wrap an autograd function's ``forward``/``backward``: half/bfloat16 tensors go in as float32 (autocast
    off), floating outputs come back in the inputs' dtype (or stay float32), gradients go in as float32;
    autograd casts the gradients it returns to each input's dtype."""
    forward, backward = function.forward, function.backward

    def forward_in_fp32(ctx: Any, *args: Any, **kwargs: Any) -> Any:
        low = [a.dtype for a in args if isinstance(a, torch.Tensor) and a.dtype in _LOW_PRECISION]
        if not low:
            return forward(ctx, *args, **kwargs)
        device = next(a.device.type for a in args if isinstance(a, torch.Tensor))
        with torch.autocast(device_type=device, enabled=False):
            output = forward(ctx, *_up(args), **kwargs)
        return _cast_floats(output, low[0]) if output_in_input_dtype else output

    def backward_in_fp32(ctx: Any, *grads: Any) -> Any:
        return backward(ctx, *_up(grads))

    function.forward = staticmethod(forward_in_fp32)
    function.backward = staticmethod(backward_in_fp32)


def keep_mmcv_ops_in_fp32() -> None:
    """Make the mmcv ops of :data:`FP32_MMCV_OPS` and :data:`FP32_OUTPUT_MMCV_OPS` compute in float32 (idempotent).

    Process-wide on purpose: the ops are mmcv's autograd classes, called from inside mmdet's modules, whose
    forward can run on any thread (DDP, dataloaders never call them) and outside any call of ours (a predict
    on the model after training). For float32 inputs nothing changes: the wrappers pass them straight through.

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
    for names, output_in_input_dtype in ((FP32_MMCV_OPS, True), (FP32_OUTPUT_MMCV_OPS, False)):
        for name in names:
            module_name, class_name = name.rsplit(".", 1)
            function = getattr(importlib.import_module(f"mmcv.ops.{module_name}"), class_name)
            _compute_in_fp32(function, output_in_input_dtype)
    _PATCHED = True
