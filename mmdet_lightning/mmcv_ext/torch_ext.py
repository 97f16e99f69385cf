"""The functions of mmcv's compiled extension ``mmcv._ext`` that mmdet's detectors call, in PyTorch.

Each function has the signature and the calling convention of mmcv 2.1's binding (outputs are written into the
preallocated tensors that ``mmcv/ops/*.py`` pass in; scalar parameters have the binding's names, since mmcv passes
them by keyword) and computes the numbers of mmcv's kernels: the same sampling positions, clamping rules,
bilinear weights and tie rules, up to the order of floating-point summation. Nothing loops in Python over boxes,
RoIs or pixels: NMS is exact greedy NMS by blocks with a fixed-point iteration inside each block; RoIAlign
gathers the 4 corners of every bilinear sample (each RoI with its own sampling grid, nothing padded) and adds them
into their bins; deformable convolutions are a gather-based bilinear im2col and a matmul; backward passes scatter
the same weights back (the transposed linear map) or take autograd of the forward.

Functions of ``mmcv._ext`` with no implementation here (3D point ops, rotated boxes, CARAFE, SyncBN, ...) are
stubs raising :class:`~mmdet_lightning.mmcv_ext.MissingCompiledOpError` when called, so that ``import mmcv.ops``
(which asks for every name at import) works and only a model that calls them fails, with a message naming the op.

Where torchvision's compiled ops load beside this torch, ``nms`` (offset 0) and average-mode ``roi_align`` use them
(same algorithms); ``MMDET_LIGHTNING_TORCHVISION_OPS=0`` turns that off.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from . import COMPILED_OPS_HINT, MissingCompiledOpError

# every name mmcv 2.1's ops ask ``load_ext`` for; the ones implemented below are replaced by functions
_MMCV_EXT_NAMES = """
active_rotated_filter_forward active_rotated_filter_backward assign_score_withk_forward assign_score_withk_backward
ball_query_forward stack_ball_query_forward bbox_overlaps bezier_align_forward bezier_align_backward bias_act
border_align_forward border_align_backward box_iou_quadri box_iou_rotated carafe_naive_forward
carafe_naive_backward carafe_forward carafe_backward chamfer_distance_forward chamfer_distance_backward
contour_expand convex_iou convex_giou correlation_forward correlation_backward deform_conv_forward
deform_conv_backward_input deform_conv_backward_parameters deform_roi_pool_forward deform_roi_pool_backward
diff_iou_rotated_sort_vertices_forward filtered_lrelu filtered_lrelu_act_ sigmoid_focal_loss_forward
sigmoid_focal_loss_backward softmax_focal_loss_forward softmax_focal_loss_backward furthest_point_sampling_forward
furthest_point_sampling_with_dist_forward fused_bias_leakyrelu gather_points_forward gather_points_backward
group_points_forward group_points_backward stack_group_points_forward stack_group_points_backward
get_compiler_version get_compiling_cuda_version iou3d_boxes_overlap_bev_forward iou3d_nms3d_forward
iou3d_nms3d_normal_forward knn_forward masked_im2col_forward masked_col2im_forward min_area_polygons
modulated_deform_conv_forward modulated_deform_conv_backward ms_deform_attn_backward ms_deform_attn_forward nms
softnms nms_match nms_rotated nms_quadri pixel_group points_in_boxes_part_forward points_in_boxes_cpu_forward
points_in_boxes_all_forward points_in_polygons_forward prroi_pool_forward prroi_pool_backward
prroi_pool_coor_backward psamask_forward psamask_backward riroi_align_rotated_forward riroi_align_rotated_backward
roi_align_forward roi_align_backward roi_align_rotated_forward roi_align_rotated_backward roi_pool_forward
roi_pool_backward roiaware_pool3d_forward roiaware_pool3d_backward roipoint_pool3d_forward
rotated_feature_align_forward rotated_feature_align_backward dynamic_point_to_voxel_forward
dynamic_point_to_voxel_backward get_indice_pairs_2d_forward get_indice_pairs_3d_forward get_indice_pairs_4d_forward
get_indice_pairs_2d_backward get_indice_pairs_3d_backward indice_conv_forward indice_conv_backward
fused_indice_conv_forward indice_maxpool_forward indice_maxpool_backward sync_bn_forward_mean sync_bn_forward_var
sync_bn_forward_output sync_bn_backward_param sync_bn_backward_data three_interpolate_forward
three_interpolate_backward three_nn_forward tin_shift_forward tin_shift_backward upfirdn2d dynamic_voxelize_forward
hard_voxelize_forward
""".split()

IMPLEMENTED = (
    "nms",
    "softnms",
    "nms_match",
    "bbox_overlaps",
    "roi_align_forward",
    "roi_align_backward",
    "roi_pool_forward",
    "roi_pool_backward",
    "deform_conv_forward",
    "deform_conv_backward_input",
    "deform_conv_backward_parameters",
    "modulated_deform_conv_forward",
    "modulated_deform_conv_backward",
    "sigmoid_focal_loss_forward",
    "sigmoid_focal_loss_backward",
    "softmax_focal_loss_forward",
    "softmax_focal_loss_backward",
    "ms_deform_attn_forward",
    "ms_deform_attn_backward",
    "get_compiler_version",
    "get_compiling_cuda_version",
)
STUBBED = tuple(n for n in _MMCV_EXT_NAMES if n not in IMPLEMENTED)
__all__ = list(_MMCV_EXT_NAMES)

_FLT_MIN = 1.1754943508222875e-38  # FLT_MIN, the floor mmcv's focal-loss kernels put under log()


def _stub(name: str) -> Callable[..., Any]:
    def stub(*args: Any, **kwargs: Any) -> Any:
        raise MissingCompiledOpError(
            f"mmcv op `{name}` needs mmcv's compiled ops, which are not installed (mmdet-lightning's PyTorch "
            f"implementation of mmcv._ext covers NMS, RoIAlign, RoIPool, deformable convolutions, focal losses and "
            f"multi-scale deformable attention, not this one). To use it, {COMPILED_OPS_HINT}."
        )

    stub.__name__ = stub.__qualname__ = name
    stub.__doc__ = f"Stub: mmcv's compiled `{name}` has no PyTorch implementation here; raises MissingCompiledOpError."
    return stub


def __getattr__(name: str) -> Any:
    # a later mmcv may ask load_ext for names we do not know: a stub, so that `import mmcv.ops` still works; mmcv's
    # op names never start with "_" or "pytest" (pytest's doctest collection asks this module for `pytest_plugins`)
    if name.startswith("_") or name.startswith("pytest"):
        raise AttributeError(name)
    return _stub(name)


# --------------------------------------------------------------------------------------------------------------
# torchvision's kernels, where they load beside this torch
# --------------------------------------------------------------------------------------------------------------
_TV: Any = None


def _torchvision_ops() -> Any:
    """``torch.ops.torchvision`` when its nms and roi_align run here, else False (checked once)."""
    global _TV
    if _TV is None:
        _TV = False
        if os.environ.get("MMDET_LIGHTNING_TORCHVISION_OPS", "1") != "0":
            try:
                import torchvision  # noqa: F401  (registers torch.ops.torchvision)

                ops = torch.ops.torchvision
                b = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 2.0, 2.1]])
                ops.nms(b, torch.tensor([1.0, 0.5]), 0.5)
                ops.roi_align(torch.zeros(1, 1, 4, 4), torch.tensor([[0.0, 0, 0, 2, 2]]), 1.0, 2, 2, 0, True)
                _TV = ops
            except Exception:  # noqa: BLE001  (no torchvision, or its ops do not load with this torch)
                _TV = False
    return _TV


# --------------------------------------------------------------------------------------------------------------
# NMS family
# --------------------------------------------------------------------------------------------------------------
_NMS_BLOCK = 256
_NMS_TILE = 256  # block and tile sizes measured on RPN proposals (2000 boxes): about the compiled kernel's time


def _iou_rows(bi: Tensor, ai: Tensor, bj: Tensor, aj: Tensor, offset: float) -> Tensor:
    """IoU of boxes i (rows) with boxes j (columns), with mmcv's CPU arithmetic: inter / (area_i + area_j - inter).

    Boxes (n, 4)."""
    return _iou_cols(bi.t().contiguous(), ai, bj.t().contiguous(), aj, offset)


def _iou_cols(bi: Tensor, ai: Tensor, bj: Tensor, aj: Tensor, offset: float) -> Tensor:
    """:func:`_iou_rows` of boxes given as (4, n): one contiguous row per coordinate."""
    w = torch.minimum(bi[2, :, None], bj[2, None, :])
    w.sub_(torch.maximum(bi[0, :, None], bj[0, None, :]))
    if offset:
        w.add_(offset)
    w.clamp_(min=0)
    h = torch.minimum(bi[3, :, None], bj[3, None, :])
    h.sub_(torch.maximum(bi[1, :, None], bj[1, None, :]))
    if offset:
        h.add_(offset)
    h.clamp_(min=0)
    inter = w.mul_(h)
    union = ai[:, None] + aj[None, :]
    return inter.div_(union.sub_(inter))


def _greedy_keep(boxes: Tensor, areas: Tensor, thr: float, offset: float, inclusive: bool) -> Tensor:
    """Exact greedy NMS over boxes already sorted by descending score: a bool mask of the boxes kept.

    Box j is kept iff no kept box before it overlaps it above ``thr`` (``>=`` when ``inclusive``). The boxes are
    taken in blocks: a block is first thinned by the boxes kept in earlier blocks, then solved inside by iterating
    keep[j] = alive[j] and not any(keep[i] and suppresses[i, j] for i < j), whose unique fixed point (the
    dependencies only go forward) is the greedy answer; it is reached in as many rounds as the longest chain of
    suppressions, and a round that changes nothing proves it.
    """
    n = boxes.size(0)
    keep = torch.zeros(n, dtype=torch.bool, device=boxes.device)
    cols = boxes.t().contiguous()  # (4, n)
    kept_b = cols[:, :0]
    kept_a = areas[:0]
    thr_t = torch.tensor(thr, dtype=boxes.dtype, device=boxes.device)  # mmcv compares with a float32 threshold
    for start in range(0, n, _NMS_BLOCK):
        b = cols[:, start : start + _NMS_BLOCK]
        a = areas[start : start + _NMS_BLOCK]
        m = b.size(1)
        alive = torch.ones(m, dtype=torch.bool, device=boxes.device)
        for ks in range(0, kept_b.size(1), _NMS_TILE):  # tiles that stay in cache
            ov = _iou_cols(kept_b[:, ks : ks + _NMS_TILE], kept_a[ks : ks + _NMS_TILE], b, a, offset)
            hit = (ov >= thr_t) if inclusive else (ov > thr_t)
            alive &= ~hit.any(0)
        ov = _iou_cols(b, a, b, a, offset)
        sup = (ov >= thr_t) if inclusive else (ov > thr_t)
        sup = torch.triu(sup, diagonal=1) & alive[:, None] & alive[None, :]
        k = alive
        if bool(sup.any()):
            supf = sup.to(boxes.dtype if boxes.is_floating_point() else torch.float32)
            while True:
                k_new = alive & ((k.to(supf.dtype) @ supf) == 0)
                if torch.equal(k_new, k):
                    break
                k = k_new
        keep[start : start + m] = k
        if bool(k.any()):
            kept_b = torch.cat([kept_b, b[:, k]], 1)
            kept_a = torch.cat([kept_a, a[k]])
    return keep


def _areas(boxes: Tensor, offset: float) -> Tensor:
    return (boxes[:, 2] - boxes[:, 0] + offset) * (boxes[:, 3] - boxes[:, 1] + offset)


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float, offset: int) -> Tensor:
    """Greedy NMS: indices of the kept boxes, by descending score (mmcv ``nms_impl``)."""
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.long, device=boxes.device)
    iou_threshold = float(torch.tensor(float(iou_threshold), dtype=torch.float32))
    tv = _torchvision_ops() if int(offset) == 0 and boxes.dtype == scores.dtype else None
    if tv:
        return tv.nms(boxes, scores, iou_threshold)
    areas = _areas(boxes, offset)
    order = scores.sort(0, descending=True)[1]
    keep = _greedy_keep(boxes[order], areas[order], iou_threshold, float(offset), inclusive=False)
    return order[keep]


def softnms(
    boxes: Tensor,
    scores: Tensor,
    dets: Tensor,
    iou_threshold: float,
    sigma: float,
    min_score: float,
    method: int,
    offset: int,
) -> Tensor:
    """Soft-NMS (mmcv ``softnms_cpu``): fills ``dets`` (x1, y1, x2, y2, score) in selection order, returns inds.

    Soft-NMS is sequential by nature (each pick rescales the rest): one vectorised step per selected box.
    Equal scores are broken by position among the remaining boxes, where mmcv's in-place swaps may order them
    differently.
    """
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.long, device=boxes.device)
    f32 = torch.float32
    thr = float(torch.tensor(float(iou_threshold), dtype=f32))
    sigma = float(torch.tensor(float(sigma), dtype=f32))
    min_score = float(torch.tensor(float(min_score), dtype=f32))
    bx = boxes.contiguous()
    sc = scores.clone()
    areas = _areas(bx, offset)
    alive = torch.ones(bx.size(0), dtype=torch.bool, device=bx.device)
    order: list[int] = []
    neg_inf = torch.tensor(-math.inf, dtype=sc.dtype, device=sc.device)
    while True:
        masked = torch.where(alive, sc, neg_inf)
        if not bool(alive.any()):
            break
        i = int(torch.argmax(masked))
        dets[len(order), :4] = bx[i]
        dets[len(order), 4] = sc[i]
        order.append(i)
        alive[i] = False
        ov = _iou_rows(bx[i : i + 1], areas[i : i + 1], bx, areas, float(offset))[0]
        if method == 0:
            weight = torch.where(ov >= thr, torch.zeros_like(ov), torch.ones_like(ov))
        elif method == 1:
            weight = torch.where(ov >= thr, 1 - ov, torch.ones_like(ov))
        else:
            weight = torch.exp(-(ov * ov) / sigma)
        sc = torch.where(alive, sc * weight, sc)
        alive &= ~(sc < min_score)
    return torch.tensor(order, dtype=torch.long, device=boxes.device)


def nms_match(dets: Tensor, iou_threshold: float) -> list[list[int]]:
    """Groups of (kept box, the boxes it suppressed) of greedy NMS with ``>=`` (mmcv ``nms_match_cpu``)."""
    if dets.size(0) == 0:
        return []
    thr = float(torch.tensor(float(iou_threshold), dtype=torch.float32))
    boxes = dets[:, :4]
    areas = _areas(boxes, 0.0)
    order = dets[:, 4].sort(0, descending=True)[1]
    sb, sa = boxes[order], areas[order]
    keep = _greedy_keep(sb, sa, thr, 0.0, inclusive=True)
    kept_pos = keep.nonzero().squeeze(1)
    ov = _iou_rows(sb[kept_pos], sa[kept_pos], sb, sa, 0.0) >= thr  # (K, N)
    pos = torch.arange(sb.size(0), device=dets.device)
    ov &= pos[None, :] > kept_pos[:, None]  # a kept box suppresses later boxes only
    ov &= ~keep[None, :]
    owner = torch.where(ov.any(0), ov.to(torch.int8).argmax(0), -1)  # the first kept box that suppressed it
    groups: list[list[int]] = [[int(order[p])] for p in kept_pos.tolist()]
    owner_l, order_l = owner.tolist(), order.tolist()
    for p, o in enumerate(owner_l):
        if o >= 0:
            groups[o].append(order_l[p])
    return groups


def bbox_overlaps(bboxes1: Tensor, bboxes2: Tensor, ious: Tensor, mode: int, aligned: bool, offset: int) -> None:
    """IoU (mode 0) or IoF (mode 1) of two box sets, written into ``ious`` (mmcv ``bbox_overlaps_cpu``)."""
    if aligned:
        lt = torch.max(bboxes1[:, :2], bboxes2[:, :2])
        rb = torch.min(bboxes1[:, 2:], bboxes2[:, 2:])
        wh = (rb - lt + offset).clamp(min=0)
        overlap = wh[:, 0] * wh[:, 1]
        area1 = _areas(bboxes1, offset)
        if mode == 0:
            res = overlap / (area1 + _areas(bboxes2, offset) - overlap)
        else:
            res = overlap / area1
    else:
        lt = torch.max(bboxes1[:, None, :2], bboxes2[:, :2])
        rb = torch.min(bboxes1[:, None, 2:], bboxes2[:, 2:])
        wh = (rb - lt + offset).clamp(min=0)
        overlap = wh[..., 0] * wh[..., 1]
        area1 = _areas(bboxes1, offset)
        if mode == 0:
            res = overlap / (area1[:, None] + _areas(bboxes2, offset) - overlap)
        else:
            res = overlap / area1[:, None]
    ious.copy_(res)


# --------------------------------------------------------------------------------------------------------------
# RoIAlign, RoIPool
# --------------------------------------------------------------------------------------------------------------
def _f32(x: float) -> float:
    """The value a C ``float`` parameter of the binding receives."""
    return float(torch.tensor(float(x), dtype=torch.float32))


def _roi_geometry(
    rois: Tensor, ph: int, pw: int, spatial_scale: float, sampling_ratio: int, aligned: bool
) -> tuple[Tensor, ...]:
    dt = rois.dtype
    scale = _f32(spatial_scale)
    off = 0.5 if aligned else 0.0
    batch = rois[:, 0].to(torch.long)  # C truncation toward zero
    start_w = rois[:, 1] * scale - off
    start_h = rois[:, 2] * scale - off
    roi_w = rois[:, 3] * scale - off - start_w
    roi_h = rois[:, 4] * scale - off - start_h
    if not aligned:
        roi_w = roi_w.clamp(min=1.0)
        roi_h = roi_h.clamp(min=1.0)
    bin_h = roi_h / ph
    bin_w = roi_w / pw
    if sampling_ratio > 0:
        gh = torch.full_like(batch, sampling_ratio)
        gw = torch.full_like(batch, sampling_ratio)
    else:
        gh = torch.ceil((roi_h / ph).float()).to(torch.long)
        gw = torch.ceil((roi_w / pw).float()).to(torch.long)
    del dt
    return batch, start_h, start_w, bin_h, bin_w, gh, gw


def _axis_bilinear(c: Tensor, size: int) -> tuple[Tensor, ...]:
    """mmcv's per-axis clamping: (low index, high index, low weight, high weight, valid)."""
    valid = (c >= -1.0) & (c <= size)
    c = c.clamp(min=0)
    low = c.to(torch.long)
    at_edge = low >= size - 1
    low = torch.where(at_edge, torch.full_like(low, size - 1), low)
    high = torch.where(at_edge, low, low + 1)
    c = torch.where(at_edge, low.to(c.dtype), c)
    lw = c - low.to(c.dtype)
    hw = 1.0 - lw
    return low, high, hw, lw, valid


def _channels_last_flat(x: Tensor) -> Tensor:
    return x.permute(0, 2, 3, 1).reshape(-1, x.size(1))


def _from_channels_last_flat(x: Tensor, n: int, c: int, h: int, w: int) -> Tensor:
    return x.view(n, h, w, c).permute(0, 3, 1, 2)


def _roi_align_samples(rois: Tensor, height: int, width: int, ph: int, pw: int, spatial_scale: float,
                       sampling_ratio: int, aligned: bool) -> tuple[Tensor, ...]:
    """Every bilinear sample of every RoIAlign bin, ragged (each RoI has its own grid, nothing padded).

    Returns the output row (roi * ph * pw + bin) of each sample, the flat indices (batch * H * W + y * W + x)
    and weights of its 4 corners, each (4, P) (weights 0 outside the image), the sample count of each output row
    and the samples' coordinates y and x.
    """
    dev = rois.device
    dt = rois.dtype
    r = rois.size(0)
    batch, start_h, start_w, bin_h, bin_w, gh, gw = _roi_geometry(rois, ph, pw, spatial_scale, sampling_ratio, aligned)
    per_bin = gh * gw
    per_roi = per_bin * (ph * pw)
    total = int(per_roi.sum())
    roi_id = torch.repeat_interleave(torch.arange(r, device=dev), per_roi, output_size=total)
    local = torch.arange(total, device=dev) - (torch.cumsum(per_roi, 0) - per_roi)[roi_id]
    pb = per_bin[roi_id]
    bin_ = torch.div(local, pb, rounding_mode="floor")
    s = local - bin_ * pb
    g_w = gw[roi_id]
    iy = torch.div(s, g_w, rounding_mode="floor")
    ix = s - iy * g_w
    p_h = torch.div(bin_, pw, rounding_mode="floor")
    p_w = bin_ - p_h * pw
    b_h = bin_h[roi_id]
    b_w = bin_w[roi_id]
    # mmcv: roi_start + ph * bin_size + (iy + .5) * bin_size / grid, in this order
    y = start_h[roi_id] + p_h.to(dt) * b_h + ((iy.to(dt) + 0.5) * b_h) / gh[roi_id].to(dt)
    x = start_w[roi_id] + p_w.to(dt) * b_w + ((ix.to(dt) + 0.5) * b_w) / g_w.to(dt)
    yl, yh, wyl, wyh, vy = _axis_bilinear(y, height)
    xl, xh, wxl, wxh, vx = _axis_bilinear(x, width)
    ok = (vy & vx).to(dt)  # samples outside the image weigh 0 (their clamped indices stay in range)
    rows = roi_id * (ph * pw) + bin_
    base = batch[roi_id] * (height * width)
    yl = yl * width
    yh = yh * width
    idx = torch.stack([base + yl + xl, base + yl + xh, base + yh + xl, base + yh + xh])
    wts = torch.stack([wyl * wxl, wyl * wxh, wyh * wxl, wyh * wxh]) * ok
    count = per_bin.clamp(min=1).to(dt).repeat_interleave(ph * pw)
    return rows, idx, wts, count, y, x


_ROI_CHUNK = 1 << 22  # samples x channels per step: bounds the temporaries (16 MiB in float32)


def _roi_align_avg_forward(input: Tensor, rois: Tensor, ph: int, pw: int, spatial_scale: float,
                           sampling_ratio: int, aligned: bool) -> Tensor:
    n, c, h, w = input.shape
    r = rois.size(0)
    rows, idx, wts, count, _, _ = _roi_align_samples(rois, h, w, ph, pw, spatial_scale, sampling_ratio, aligned)
    flat = _channels_last_flat(input)
    # each output row is a bag of its samples' 4 corners (w1 v1 + w2 v2 + w3 v3 + w4 v4, sample after sample, as
    # mmcv sums them): one weighted embedding_bag, rows in order, empty bags (no sample) give 0
    per_row = torch.bincount(rows, minlength=r * ph * pw) * 4
    offsets = torch.cumsum(per_row, 0) - per_row
    out = F.embedding_bag(idx.t().reshape(-1), flat, offsets, mode="sum",
                          per_sample_weights=wts.t().reshape(-1).to(input.dtype))
    out = out / count[:, None].to(input.dtype)
    return out.view(r, ph, pw, c).permute(0, 3, 1, 2)


def _roi_align_avg_backward(grad_output: Tensor, rois: Tensor, n: int, h: int, w: int, spatial_scale: float,
                            sampling_ratio: int, aligned: bool) -> Tensor:
    r, c, ph, pw = grad_output.shape
    rows, idx, wts, count, _, _ = _roi_align_samples(rois, h, w, ph, pw, spatial_scale, sampling_ratio, aligned)
    g = grad_output.permute(0, 2, 3, 1).reshape(r * ph * pw, c)
    gi = grad_output.new_zeros((n * h * w, c))
    step = max(1, _ROI_CHUNK // max(c, 1))
    for s0 in range(0, rows.numel(), step):
        sl = slice(s0, s0 + step)
        gs = g.index_select(0, rows[sl])
        wk = (wts[:, sl] / count.index_select(0, rows[sl])[None]).to(g.dtype)  # mmcv: grad * w / count
        for k in range(4):
            gi.index_add_(0, idx[k, sl], gs * wk[k, :, None])
    return _from_channels_last_flat(gi, n, c, h, w)


def roi_align_forward(input: Tensor, rois: Tensor, output: Tensor, argmax_y: Tensor, argmax_x: Tensor,
                      aligned_height: int, aligned_width: int, spatial_scale: float, sampling_ratio: int,
                      pool_mode: int, aligned: bool) -> None:
    """RoIAlign (mmcv ``roi_align_forward``): ``pool_mode`` 1 averages the bilinear samples of each bin, 0 takes
    their maximum and records its sample position in ``argmax_y``/``argmax_x``."""
    n, c, h, w = input.shape
    r, ph, pw = rois.size(0), aligned_height, aligned_width
    if r == 0:
        return
    if pool_mode == 1:
        tv = _torchvision_ops()
        if tv and input.dtype == rois.dtype:
            output.copy_(tv.roi_align(input, rois, _f32(spatial_scale), ph, pw, sampling_ratio, aligned))
            return
        output.copy_(_roi_align_avg_forward(input, rois, ph, pw, spatial_scale, sampling_ratio, aligned))
        return
    # max mode: the first sample of each bin with the largest value (mmcv: `val > maxval`, from -10000)
    rows, idx, wts, _, ys, xs = _roi_align_samples(rois, h, w, ph, pw, spatial_scale, sampling_ratio, aligned)
    flat = _channels_last_flat(input)
    wts = wts.to(input.dtype)
    val = flat.index_select(0, idx[0]) * wts[0, :, None]
    for k in (1, 2, 3):
        val += flat.index_select(0, idx[k]) * wts[k, :, None]
    n_out, n_s = r * ph * pw, rows.numel()
    at = rows[:, None].expand(-1, c)
    best = input.new_full((n_out, c), -10000.0).scatter_reduce_(0, at, val, "amax", include_self=True)
    sample = torch.arange(n_s, device=input.device)[:, None].expand(-1, c)
    cand = torch.where((val == best.index_select(0, rows)) & (val > -10000.0), sample, n_s)
    first = torch.full((n_out, c), n_s, dtype=torch.long, device=input.device)
    first.scatter_reduce_(0, at, cand, "amin", include_self=True)
    found = first < n_s
    pick = first.clamp(max=max(n_s - 1, 0))
    neg = input.new_full((), -1.0)
    best_y = torch.where(found, ys.to(input.dtype)[pick], neg) if n_s else input.new_full((n_out, c), -1.0)
    best_x = torch.where(found, xs.to(input.dtype)[pick], neg) if n_s else input.new_full((n_out, c), -1.0)
    output.copy_(best.view(r, ph, pw, c).permute(0, 3, 1, 2))
    argmax_y.copy_(best_y.view(r, ph, pw, c).permute(0, 3, 1, 2))
    argmax_x.copy_(best_x.view(r, ph, pw, c).permute(0, 3, 1, 2))


def roi_align_backward(grad_output: Tensor, rois: Tensor, argmax_y: Tensor, argmax_x: Tensor, grad_input: Tensor,
                       aligned_height: int, aligned_width: int, spatial_scale: float, sampling_ratio: int,
                       pool_mode: int, aligned: bool) -> None:
    """Gradient of :func:`roi_align_forward`, added into ``grad_input``: the same bilinear weights scattered back."""
    n, c, h, w = grad_input.shape
    r, ph, pw = rois.size(0), aligned_height, aligned_width
    if r == 0:
        return
    if pool_mode == 1:
        tv = _torchvision_ops()
        if tv and grad_output.dtype == rois.dtype:
            grad_input.add_(tv._roi_align_backward(grad_output.contiguous(), rois, _f32(spatial_scale), ph, pw,
                                                   n, c, h, w, sampling_ratio, aligned))
            return
        grad_input.add_(_roi_align_avg_backward(grad_output, rois, n, h, w, spatial_scale, sampling_ratio, aligned))
        return
    # max mode: bilinear weights at the recorded sample of each (roi, channel, bin)
    batch = rois[:, 0].to(torch.long)
    yl, yh, wyl, wyh, vy = _axis_bilinear(argmax_y, h)
    xl, xh, wxl, wxh, vx = _axis_bilinear(argmax_x, w)
    ok = vy & vx & (argmax_y != -1.0)
    base = (batch[:, None, None, None] * c + torch.arange(c, device=rois.device)[None, :, None, None]) * (h * w)
    flat = grad_input.new_zeros(n * c * h * w)
    g = grad_output
    for yi, xi, wt in ((yl, xl, wyl * wxl), (yl, xh, wyl * wxh), (yh, xl, wyh * wxl), (yh, xh, wyh * wxh)):
        flat.index_add_(0, (base + yi * w + xi)[ok], (g * wt)[ok])
    grad_input.add_(flat.view(n, c, h, w))


def roi_pool_forward(input: Tensor, rois: Tensor, output: Tensor, argmax: Tensor, pooled_height: int,
                     pooled_width: int, spatial_scale: float) -> None:
    """RoIPool (mmcv ``roi_pool_forward``): the max over each bin's pixels, its flat index in ``argmax``
    (-1 and 0 for an empty bin). One masked step per pixel offset inside the largest bin."""
    n, c, h, w = input.shape
    r, ph, pw = rois.size(0), pooled_height, pooled_width
    if r == 0:
        return
    scale = _f32(spatial_scale)
    batch = rois[:, 0].to(torch.long)
    x1, y1 = rois[:, 1] * scale, rois[:, 2] * scale
    x2, y2 = (rois[:, 3] + 1) * scale, (rois[:, 4] + 1) * scale
    rw, rh = x2 - x1, y2 - y1
    malformed = (rw <= 0) | (rh <= 0)
    bw, bh = rw / pw, rh / ph
    dt = rois.dtype
    pwv = torch.arange(pw, device=rois.device, dtype=dt)
    phv = torch.arange(ph, device=rois.device, dtype=dt)
    bx1 = torch.floor(pwv[None] * bw[:, None] + x1[:, None]).long().clamp(0, w)
    by1 = torch.floor(phv[None] * bh[:, None] + y1[:, None]).long().clamp(0, h)
    bx2 = torch.ceil((pwv[None] + 1) * bw[:, None] + x1[:, None]).long().clamp(0, w)
    by2 = torch.ceil((phv[None] + 1) * bh[:, None] + y1[:, None]).long().clamp(0, h)
    empty = (by2[:, :, None] <= by1[:, :, None]) | (bx2[:, None, :] <= bx1[:, None, :])  # (R, PH, PW)
    max_h = int((by2 - by1).max().clamp(min=0))
    max_w = int((bx2 - bx1).max().clamp(min=0))
    feat = input.reshape(n, c, h * w)[batch]  # (R, C, HW)
    # an empty bin pools to 0; otherwise the max starts at -FLT_MAX (mmcv's kernel, in float and double)
    best = torch.where(empty, 0.0, -3.4028234663852886e38).to(input.dtype)[:, None].expand(r, c, ph, pw).clone()
    best_i = torch.full((r, c, ph, pw), -1, dtype=torch.long, device=input.device)
    for dy in range(max_h):
        yy = by1 + dy  # (R, PH)
        for dx in range(max_w):
            xx = bx1 + dx  # (R, PW)
            inside = (yy < by2)[:, :, None] & (xx < bx2)[:, None, :]
            pos = (yy.clamp(max=h - 1)[:, :, None] * w + xx.clamp(max=w - 1)[:, None, :])  # (R, PH, PW)
            v = feat.gather(2, pos.view(r, 1, ph * pw).expand(r, c, ph * pw)).view(r, c, ph, pw)
            better = (v > best) & inside[:, None]
            best = torch.where(better, v, best)
            best_i = torch.where(better, pos[:, None].expand_as(best_i), best_i)
    skip = malformed[:, None, None, None]
    output.copy_(torch.where(skip, output, best))
    argmax.copy_(torch.where(skip, argmax.long(), best_i).to(argmax.dtype))


def roi_pool_backward(grad_output: Tensor, rois: Tensor, argmax: Tensor, grad_input: Tensor, pooled_height: int,
                      pooled_width: int, spatial_scale: float) -> None:
    """Gradient of :func:`roi_pool_forward`, added into ``grad_input`` at the recorded maxima."""
    n, c, h, w = grad_input.shape
    r = rois.size(0)
    if r == 0:
        return
    batch = rois[:, 0].to(torch.long)
    am = argmax.long()
    base = (batch[:, None, None, None] * c + torch.arange(c, device=rois.device)[None, :, None, None]) * (h * w)
    ok = am != -1
    flat = grad_input.new_zeros(n * c * h * w)
    flat.index_add_(0, (base + am)[ok], grad_output[ok])
    grad_input.add_(flat.view(n, c, h, w))


# --------------------------------------------------------------------------------------------------------------
# Deformable convolutions (DCN v1 and v2)
# --------------------------------------------------------------------------------------------------------------
def _deform_columns(input: Tensor, offset: Tensor, mask: Tensor | None, kh: int, kw: int, sh: int, sw: int,
                    ph: int, pw: int, dh: int, dw: int, dg: int) -> Tensor:
    """mmcv's deformable im2col: (N, C * kh * kw, Hout * Wout), differentiable in input, offset and mask."""
    n, c, h, w = input.shape
    ho = (h + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    wo = (w + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    k = kh * kw
    dt = input.dtype
    dev = input.device
    if mask is not None and offset[0].numel() != dg * k * 2 * ho * wo:
        # mmcv's modulated kernel reads each sample's offset and mask as (dg * k * 2, Ho, Wo) from their start
        # whatever their shape: mmdet's DyHead passes a larger level's offsets to a smaller output
        offset = offset.reshape(n, -1)[:, : dg * k * 2 * ho * wo]
        mask = mask.reshape(n, -1)[:, : dg * k * ho * wo]
    off = offset.reshape(n, dg, k, 2, ho, wo)
    ki = torch.arange(kh, device=dev).repeat_interleave(kw)
    kj = torch.arange(kw, device=dev).repeat(kh)
    base_h = (torch.arange(ho, device=dev)[None, :] * sh - ph + ki[:, None] * dh).to(dt)  # (K, Ho)
    base_w = (torch.arange(wo, device=dev)[None, :] * sw - pw + kj[:, None] * dw).to(dt)  # (K, Wo)
    hh = base_h[None, None, :, :, None] + off[:, :, :, 0]  # (N, dg, K, Ho, Wo)
    ww = base_w[None, None, :, None, :] + off[:, :, :, 1]
    valid = (hh > -1) & (ww > -1) & (hh < h) & (ww < w)
    h_low = torch.floor(hh.detach())
    w_low = torch.floor(ww.detach())
    lh = hh - h_low
    lw = ww - w_low
    hl = h_low.long()
    wl = w_low.long()
    cd = c // dg
    img = input.reshape(n, dg, cd, h * w)
    out: Tensor | None = None
    for oy, ox, wt in ((0, 0, (1 - lh) * (1 - lw)), (0, 1, (1 - lh) * lw), (1, 0, lh * (1 - lw)), (1, 1, lh * lw)):
        yy = hl + oy
        xx = wl + ox
        ok = valid & (yy >= 0) & (yy <= h - 1) & (xx >= 0) & (xx <= w - 1)
        idx = (yy.clamp(0, h - 1) * w + xx.clamp(0, w - 1)).view(n, dg, 1, -1).expand(n, dg, cd, k * ho * wo)
        v = img.gather(3, idx).view(n, dg, cd, k, ho, wo)
        term = (wt * ok)[:, :, None] * v
        out = term if out is None else out + term
    assert out is not None
    if mask is not None:
        out = out * mask.view(n, dg, 1, k, ho, wo)
    return out.reshape(n, c * k, ho * wo)


def _deform_apply(cols: Tensor, weight: Tensor, group: int, ho: int, wo: int) -> Tensor:
    n = cols.size(0)
    o = weight.size(0)
    wmat = weight.reshape(group, o // group, -1)
    out = torch.matmul(wmat[None], cols.view(n, group, -1, cols.size(2)))
    return out.reshape(n, o, ho, wo)


def _deform_grad_weight(cols: Tensor, grad_output: Tensor, group: int, weight_shape: torch.Size) -> Tensor:
    n = cols.size(0)
    o = weight_shape[0]
    g = grad_output.reshape(n, group, o // group, -1)
    gw = torch.matmul(g, cols.view(n, group, -1, cols.size(2)).transpose(2, 3)).sum(0)
    return gw.reshape(weight_shape)


def deform_conv_forward(input: Tensor, weight: Tensor, offset: Tensor, output: Tensor, columns: Tensor, ones: Tensor,
                        kW: int, kH: int, dW: int, dH: int, padW: int, padH: int, dilationW: int, dilationH: int,
                        group: int, deformable_group: int, im2col_step: int) -> None:
    """Deformable convolution v1 (mmcv ``deform_conv_forward``), written into ``output``."""
    cols = _deform_columns(input, offset, None, kH, kW, dH, dW, padH, padW, dilationH, dilationW, deformable_group)
    output.copy_(_deform_apply(cols, weight, group, output.size(2), output.size(3)))


def deform_conv_backward_input(input: Tensor, offset: Tensor, gradOutput: Tensor, gradInput: Tensor,
                               gradOffset: Tensor, weight: Tensor, columns: Tensor, kW: int, kH: int, dW: int,
                               dH: int, padW: int, padH: int, dilationW: int, dilationH: int, group: int,
                               deformable_group: int, im2col_step: int) -> None:
    """Gradients of deformable convolution v1 in input and offset, added into ``gradInput``/``gradOffset``."""
    with torch.enable_grad():
        x = input.detach().requires_grad_(True)
        off = offset.detach().requires_grad_(True)
        cols = _deform_columns(x, off, None, kH, kW, dH, dW, padH, padW, dilationH, dilationW, deformable_group)
        out = _deform_apply(cols, weight.detach(), group, gradOutput.size(2), gradOutput.size(3))
        gx, goff = torch.autograd.grad(out, (x, off), gradOutput)
    gradInput.add_(gx)
    gradOffset.add_(goff)


def deform_conv_backward_parameters(input: Tensor, offset: Tensor, gradOutput: Tensor, gradWeight: Tensor,
                                    columns: Tensor, ones: Tensor, kW: int, kH: int, dW: int, dH: int, padW: int,
                                    padH: int, dilationW: int, dilationH: int, group: int, deformable_group: int,
                                    scale: float, im2col_step: int) -> None:
    """Gradient of deformable convolution v1 in its weight: ``gradWeight += scale * dL/dW``."""
    with torch.no_grad():
        cols = _deform_columns(input, offset, None, kH, kW, dH, dW, padH, padW, dilationH, dilationW,
                               deformable_group)
        gradWeight.add_(_deform_grad_weight(cols, gradOutput, group, gradWeight.shape), alpha=scale)


def modulated_deform_conv_forward(input: Tensor, weight: Tensor, bias: Tensor, ones: Tensor, offset: Tensor,
                                  mask: Tensor, output: Tensor, columns: Tensor, kernel_h: int, kernel_w: int,
                                  stride_h: int, stride_w: int, pad_h: int, pad_w: int, dilation_h: int,
                                  dilation_w: int, group: int, deformable_group: int, with_bias: bool) -> None:
    """Modulated deformable convolution, DCNv2 (mmcv ``modulated_deform_conv_forward``), into ``output``."""
    cols = _deform_columns(input, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
                           dilation_w, deformable_group)
    out = _deform_apply(cols, weight, group, output.size(2), output.size(3))
    if with_bias:
        out = out + bias.view(1, -1, 1, 1)
    output.copy_(out)


def modulated_deform_conv_backward(input: Tensor, weight: Tensor, bias: Tensor, ones: Tensor, offset: Tensor,
                                   mask: Tensor, columns: Tensor, grad_input: Tensor, grad_weight: Tensor,
                                   grad_bias: Tensor, grad_offset: Tensor, grad_mask: Tensor, grad_output: Tensor,
                                   kernel_h: int, kernel_w: int, stride_h: int, stride_w: int, pad_h: int,
                                   pad_w: int, dilation_h: int, dilation_w: int, group: int, deformable_group: int,
                                   with_bias: bool) -> None:
    """Gradients of DCNv2 in input, offset, mask, weight and bias, added into the ``grad_*`` tensors."""
    with torch.enable_grad():
        x = input.detach().requires_grad_(True)
        off = offset.detach().requires_grad_(True)
        m = mask.detach().requires_grad_(True)
        cols = _deform_columns(x, off, m, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
                               dilation_w, deformable_group)
        out = _deform_apply(cols, weight.detach(), group, grad_output.size(2), grad_output.size(3))
        gx, goff, gm = torch.autograd.grad(out, (x, off, m), grad_output)
    grad_input.add_(gx)
    grad_offset.add_(goff)
    grad_mask.add_(gm)
    grad_weight.add_(_deform_grad_weight(cols.detach(), grad_output, group, grad_weight.shape))
    if with_bias:
        grad_bias.add_(grad_output.sum((0, 2, 3)))


# --------------------------------------------------------------------------------------------------------------
# Focal losses (mmcv's CUDA kernels' formulas)
# --------------------------------------------------------------------------------------------------------------
def _class_weight(weight: Tensor, target: Tensor) -> Tensor | None:
    if weight.numel() == 0:
        return None
    # mmcv reads weight[target] unchecked; a background target (= num_classes) gets weight 1 here
    inside = (target >= 0) & (target < weight.numel())
    return torch.where(inside, weight[target.clamp(0, weight.numel() - 1)], torch.ones_like(weight[:1]))


def _targets_and_sigmoid(input: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """One-hot targets (``flag_p``), their complement and the sigmoid of ``input``, as mmcv's focal-loss kernels."""
    flag_p = (target[:, None] == torch.arange(input.size(1), device=input.device)[None, :]).to(input.dtype)
    return flag_p, 1 - flag_p, torch.sigmoid(input)


def sigmoid_focal_loss_forward(input: Tensor, target: Tensor, weight: Tensor, output: Tensor, gamma: float,
                               alpha: float) -> None:
    """Element-wise sigmoid focal loss (mmcv ``sigmoid_focal_loss_forward``), into ``output``."""
    flag_p, flag_n, p = _targets_and_sigmoid(input, target)
    term_p = torch.pow(1 - p, gamma) * torch.log(p.clamp(min=_FLT_MIN))
    term_n = torch.pow(p, gamma) * torch.log((1 - p).clamp(min=_FLT_MIN))
    out = -flag_p * alpha * term_p - flag_n * (1 - alpha) * term_n
    cw = _class_weight(weight, target)
    if cw is not None:
        out = out * cw[:, None]
    output.copy_(out)


def sigmoid_focal_loss_backward(input: Tensor, target: Tensor, weight: Tensor, grad_input: Tensor, gamma: float,
                                alpha: float) -> None:
    """d(sigmoid focal loss)/d(input), element-wise (mmcv ``sigmoid_focal_loss_backward``), into ``grad_input``."""
    flag_p, flag_n, p = _targets_and_sigmoid(input, target)
    term_p = torch.pow(1 - p, gamma) * (1 - p - gamma * p * torch.log(p.clamp(min=_FLT_MIN)))
    term_n = torch.pow(p, gamma) * (gamma * (1 - p) * torch.log((1 - p).clamp(min=_FLT_MIN)) - p)
    g = -flag_p * alpha * term_p - flag_n * (1 - alpha) * term_n
    cw = _class_weight(weight, target)
    if cw is not None:
        g = g * cw[:, None]
    grad_input.copy_(g)


def softmax_focal_loss_forward(softmax: Tensor, target: Tensor, weight: Tensor, output: Tensor, gamma: float,
                               alpha: float) -> None:
    """Softmax focal loss per sample from softmax probabilities (mmcv ``softmax_focal_loss_forward``)."""
    valid = target >= 0
    pred = softmax.gather(1, target.clamp(min=0)[:, None])[:, 0]
    out = -alpha * torch.pow(1 - pred, gamma) * torch.log(pred.clamp(min=_FLT_MIN))
    out = torch.where(valid, out, torch.zeros_like(out))
    cw = _class_weight(weight, target)
    if cw is not None:
        out = out * cw
    output.copy_(out)


def softmax_focal_loss_backward(softmax: Tensor, target: Tensor, weight: Tensor, buff: Tensor, grad_input: Tensor,
                                gamma: float, alpha: float) -> None:
    """d(softmax focal loss)/d(logits) (mmcv ``softmax_focal_loss_backward``), into ``buff`` and ``grad_input``."""
    valid = target >= 0
    pred = softmax.gather(1, target.clamp(min=0)[:, None])[:, 0]
    b = alpha * (-torch.pow(1 - pred, gamma)
                 + gamma * torch.pow(1 - pred, gamma - 1) * pred * torch.log(pred.clamp(min=_FLT_MIN)))
    b = torch.where(valid, b, torch.zeros_like(b))
    cw = _class_weight(weight, target)
    if cw is not None:
        b = b * cw
    buff.copy_(b)
    flag = (target[:, None] == torch.arange(softmax.size(1), device=softmax.device)[None, :]).to(softmax.dtype)
    g = b[:, None] * (flag - softmax)
    grad_input.copy_(torch.where(valid[:, None], g, torch.zeros_like(g)))


# --------------------------------------------------------------------------------------------------------------
# Multi-scale deformable attention (Deformable DETR, DINO)
# --------------------------------------------------------------------------------------------------------------
def _ms_deform_attn(value: Tensor, spatial_shapes: Tensor, sampling_locations: Tensor,
                    attention_weights: Tensor) -> Tensor:
    """mmcv's ``multi_scale_deformable_attn_pytorch`` (grid_sample, zeros outside, align_corners=False): the
    CUDA kernel's bilinear sampling at ``loc * size - 0.5``."""
    bs, _, num_heads, embed_dims = value.shape
    _, num_queries, _, num_levels, num_points, _ = sampling_locations.shape
    shapes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    value_list = value.split([h * w for h, w in shapes], dim=1)
    grids = 2 * sampling_locations - 1
    sampled = []
    for level, (h, w) in enumerate(shapes):
        v = value_list[level].flatten(2).transpose(1, 2).reshape(bs * num_heads, embed_dims, h, w)
        g = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    aw = attention_weights.transpose(1, 2).reshape(bs * num_heads, 1, num_queries, num_levels * num_points)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * aw).sum(-1).view(bs, num_heads * embed_dims, num_queries)
    return out.transpose(1, 2).contiguous()


def ms_deform_attn_forward(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                           sampling_loc: Tensor, attn_weight: Tensor, im2col_step: int) -> Tensor:
    """Multi-scale deformable attention (mmcv ``ms_deform_attn_forward``): returns (bs, queries, heads * dims)."""
    return _ms_deform_attn(value, spatial_shapes, sampling_loc, attn_weight)


def ms_deform_attn_backward(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor, sampling_loc: Tensor,
                            attn_weight: Tensor, grad_output: Tensor, grad_value: Tensor, grad_sampling_loc: Tensor,
                            grad_attn_weight: Tensor, im2col_step: int) -> None:
    """Gradients of :func:`ms_deform_attn_forward`, added into ``grad_value``, ``grad_sampling_loc`` and
    ``grad_attn_weight``."""
    with torch.enable_grad():
        v = value.detach().requires_grad_(True)
        loc = sampling_loc.detach().requires_grad_(True)
        aw = attn_weight.detach().requires_grad_(True)
        out = _ms_deform_attn(v, spatial_shapes, loc, aw)
        gv, gl, ga = torch.autograd.grad(out, (v, loc, aw), grad_output)
    grad_value.add_(gv)
    grad_sampling_loc.add_(gl)
    grad_attn_weight.add_(ga)


# --------------------------------------------------------------------------------------------------------------
def get_compiler_version() -> str:
    return "none (mmcv._ext served by mmdet_lightning.mmcv_ext: PyTorch ops, no compiled code)"


def get_compiling_cuda_version() -> str:
    return "not available"


for _name in STUBBED:
    globals()[_name] = _stub(_name)
del _name
