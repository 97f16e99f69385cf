"""Export forms of the mmcv ops a detector's inference uses, as torch custom ops with ONNX translations.

* ``mmdet_lightning::nms``: mmcv's ``nms`` (greedy, IoU ``>`` threshold suppresses, ties by index) -> ONNX
  ``NonMaxSuppression``; the eager kernel is mmcv's own, so an export graph run in PyTorch gives mmdet's numbers.
* ``mmdet_lightning::roi_align``: mmcv's ``RoIAlign`` (average pooling, adaptive sampling when
  ``sampling_ratio=0``; ``aligned=True`` shifts by half a pixel) -> ONNX ``RoiAlign`` (opset 16,
  ``coordinate_transformation_mode="half_pixel"`` / ``"output_half_pixel"``).

:func:`export_friendly_ops` switches them into the mmcv modules for the duration of an export and restores
the originals afterwards (multi-scale deformable attention is switched to mmcv's own pure-torch form, and
deformable convolutions, v1 and v2, to ``mmdet_lightning.mmcv_ext``'s gather-based bilinear im2col and matmul: the
numbers of mmcv's kernel, as ONNX ``GatherElements`` / ``MatMul``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

__all__ = ["nms", "roi_align", "deform_conv", "export_friendly_ops", "onnx_translations", "SUPPORTED_MMCV_OPS"]

#: mmcv op modules that have an export form here (others found in a model stop the export with a clear error)
SUPPORTED_MMCV_OPS = ("RoIAlign", "MultiScaleDeformableAttention", "DeformConv2d", "DeformConv2dPack",
                      "ModulatedDeformConv2d", "ModulatedDeformConv2dPack")


@torch.library.custom_op("mmdet_lightning::nms", mutates_args=())
def nms(boxes: Tensor, scores: Tensor, iou_threshold: float, score_threshold: float, max_output: int) -> Tensor:
    """Indices (int64, highest score first) of the boxes kept by greedy NMS among those scoring above
    ``score_threshold``, at most ``max_output`` of them: mmcv's ``nms`` on the boxes above the threshold."""
    from mmcv.ops import nms as mmcv_nms

    candidates = torch.nonzero(scores > score_threshold).reshape(-1)
    if candidates.numel() == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    _, keep = mmcv_nms(boxes[candidates].contiguous(), scores[candidates].contiguous(), iou_threshold)
    return candidates[keep[:max_output]].to(torch.int64)


@nms.register_fake
def _nms_fake(boxes: Tensor, scores: Tensor, iou_threshold: float, score_threshold: float,
              max_output: int) -> Tensor:
    count = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((count,), dtype=torch.int64)


@torch.library.custom_op("mmdet_lightning::roi_align", mutates_args=())
def roi_align(features: Tensor, rois: Tensor, output_height: int, output_width: int, spatial_scale: float,
              sampling_ratio: int, aligned: bool) -> Tensor:
    """mmcv's ``roi_align`` (average mode) of ``(K, 5)`` rois (batch index, x1, y1, x2, y2)."""
    from mmcv.ops import roi_align as mmcv_roi_align

    if rois.shape[0] == 0:
        return features.new_zeros((0, features.shape[1], output_height, output_width))
    return mmcv_roi_align(features, rois, (output_height, output_width), spatial_scale, sampling_ratio, "avg",
                          aligned)


@roi_align.register_fake
def _roi_align_fake(features: Tensor, rois: Tensor, output_height: int, output_width: int, spatial_scale: float,
                    sampling_ratio: int, aligned: bool) -> Tensor:
    return features.new_empty((rois.shape[0], features.shape[1], output_height, output_width))


def onnx_translations() -> dict[Any, Any]:
    """``custom_translation_table`` for ``torch.onnx.export(dynamo=True)``: the custom ops as ONNX ops."""
    from onnxscript import opset18 as op

    def onnx_nms(boxes: Any, scores: Any, iou_threshold: float, score_threshold: float, max_output: int) -> Any:
        selected = op.NonMaxSuppression(
            op.Unsqueeze(boxes, op.Constant(value_ints=[0])),
            op.Unsqueeze(scores, op.Constant(value_ints=[0, 1])),
            op.Constant(value_ints=[max_output]),
            op.Constant(value_floats=[iou_threshold]),
            op.Constant(value_floats=[score_threshold]),
        )  # (K, 3): batch index, class index, box index
        return op.Reshape(op.Slice(selected, op.Constant(value_ints=[2]), op.Constant(value_ints=[3]),
                                   op.Constant(value_ints=[1])), op.Constant(value_ints=[-1]))

    def onnx_roi_align(features: Any, rois: Any, output_height: int, output_width: int, spatial_scale: float,
                       sampling_ratio: int, aligned: bool) -> Any:
        batch = op.Cast(op.Reshape(op.Slice(rois, op.Constant(value_ints=[0]), op.Constant(value_ints=[1]),
                                            op.Constant(value_ints=[1])), op.Constant(value_ints=[-1])),
                        to=7)  # INT64
        boxes = op.Slice(rois, op.Constant(value_ints=[1]), op.Constant(value_ints=[5]), op.Constant(value_ints=[1]))
        return op.RoiAlign(features, boxes, batch, mode="avg", output_height=output_height,
                           output_width=output_width, sampling_ratio=sampling_ratio, spatial_scale=spatial_scale,
                           coordinate_transformation_mode="half_pixel" if aligned else "output_half_pixel")

    return {torch.ops.mmdet_lightning.nms.default: onnx_nms,
            torch.ops.mmdet_lightning.roi_align.default: onnx_roi_align}


def _roi_align_forward(self: Any, input: Tensor, rois: Tensor) -> Tensor:
    if self.pool_mode != "avg":
        raise NotImplementedError(f"RoIAlign with pool_mode={self.pool_mode!r} has no ONNX form (only 'avg').")
    height, width = self.output_size
    return torch.ops.mmdet_lightning.roi_align(input, rois, int(height), int(width), float(self.spatial_scale),
                                               int(self.sampling_ratio), bool(self.aligned))


def deform_conv(input: Tensor, offset: Tensor, mask: Tensor | None, weight: Tensor, bias: Tensor | None,
                stride: Any = 1, padding: Any = 0, dilation: Any = 1, groups: int = 1,
                deform_groups: int = 1) -> Tensor:
    """mmcv's deformable convolution (``mask``: v2, modulated) in plain tensor operations (``mmcv_ext``'s)."""
    from torch.nn.modules.utils import _pair

    from ..mmcv_ext.torch_ext import _deform_apply, _deform_columns

    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    kh, kw = int(weight.shape[2]), int(weight.shape[3])
    cols = _deform_columns(input, offset, mask, kh, kw, sh, sw, ph, pw, dh, dw, deform_groups)
    ho = (input.shape[2] + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    wo = (input.shape[3] + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    out = _deform_apply(cols, weight, groups, ho, wo)
    return out if bias is None else out + bias.view(1, -1, 1, 1)


def _deform_conv2d(input: Tensor, offset: Tensor, weight: Tensor, stride: Any = 1, padding: Any = 0,
                   dilation: Any = 1, groups: int = 1, deform_groups: int = 1, bias: bool = False,
                   im2col_step: int = 32) -> Tensor:
    return deform_conv(input, offset, None, weight, None, stride, padding, dilation, groups, deform_groups)


def _modulated_deform_conv2d(input: Tensor, offset: Tensor, mask: Tensor, weight: Tensor, bias: Tensor | None = None,
                             stride: Any = 1, padding: Any = 0, dilation: Any = 1, groups: int = 1,
                             deform_groups: int = 1) -> Tensor:
    return deform_conv(input, offset, mask, weight, bias, stride, padding, dilation, groups, deform_groups)


def _deform_conv_forward(self: Any, x: Tensor, offset: Tensor) -> Tensor:
    """``DeformConv2d.forward`` without its padding of inputs smaller than the kernel (for the CUDA kernel; a
    size-dependent branch that a dynamic-size trace cannot take)."""
    return _deform_conv2d(x, offset, self.weight, self.stride, self.padding, self.dilation, self.groups,
                          self.deform_groups)


@contextlib.contextmanager
def export_friendly_ops() -> Iterator[None]:
    """Within the block, mmcv's ``RoIAlign`` modules run as ``mmdet_lightning::roi_align`` (same numbers, an
    ONNX form) and multi-scale deformable attention takes mmcv's pure-torch path; restored on exit."""
    import mmcv.ops.deform_conv as dcn
    import mmcv.ops.modulated_deform_conv as mdcn
    import mmcv.ops.multi_scale_deform_attn as msda
    from mmcv.ops import RoIAlign

    saved_forward = RoIAlign.forward
    saved_dcn = (dcn.deform_conv2d, mdcn.modulated_deform_conv2d, dcn.DeformConv2d.forward)
    dcn.deform_conv2d, mdcn.modulated_deform_conv2d = _deform_conv2d, _modulated_deform_conv2d
    dcn.DeformConv2d.forward = _deform_conv_forward
    saved_cuda = getattr(msda, "IS_CUDA_AVAILABLE", None)
    saved_mlu = getattr(msda, "IS_MLU_AVAILABLE", None)
    RoIAlign.forward = _roi_align_forward
    if saved_cuda is not None:
        msda.IS_CUDA_AVAILABLE = False
    if saved_mlu is not None:
        msda.IS_MLU_AVAILABLE = False
    try:
        yield
    finally:
        RoIAlign.forward = saved_forward
        dcn.deform_conv2d, mdcn.modulated_deform_conv2d, dcn.DeformConv2d.forward = saved_dcn
        if saved_cuda is not None:
            msda.IS_CUDA_AVAILABLE = saved_cuda
        if saved_mlu is not None:
            msda.IS_MLU_AVAILABLE = saved_mlu
