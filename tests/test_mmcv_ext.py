"""mmdet_lightning.mmcv_ext: PyTorch implementations of mmcv._ext against mmcv's compiled kernels.

Where the compiled mmcv is installed, each implemented function is called side by side with the compiled one on
the same inputs (forward and gradients, float32 and float64, edge cases); those comparisons are skipped with the
reason where it is not (mmcv-lite). Kernels that compiled mmcv has only for CUDA (RoIPool, focal losses,
multi-scale deformable attention) are compared with reference computations instead, and with the compiled kernel
on a CUDA machine.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from mmdet_lightning.mmcv_ext import MissingCompiledOpError
from mmdet_lightning.mmcv_ext import torch_ext as ours

REPO = Path(__file__).resolve().parents[1]


def _load_compiled() -> types.ModuleType | None:
    try:
        import mmcv
    except ImportError:
        return None
    spec = importlib.machinery.PathFinder.find_spec("mmcv._ext", mmcv.__path__)
    if spec is None:
        return None
    loaded = sys.modules.get("mmcv._ext")
    if loaded is not None and not getattr(loaded, "MMDET_LIGHTNING_TORCH_OPS", False):
        return loaded
    module = importlib.util.module_from_spec(spec)  # beside ours when the torch ops were forced
    spec.loader.exec_module(module)
    return module


COMPILED = _load_compiled()
needs_compiled = pytest.mark.skipif(
    COMPILED is None, reason="mmcv's compiled ops are not installed here (mmcv-lite): nothing to compare against"
)
CUDA = torch.cuda.is_available()
DTYPES = [torch.float32, torch.float64]
TOL = {torch.float32: dict(rtol=1e-4, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-12)}


def _boxes(n: int, size: float = 60.0, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * size
    wh = torch.rand(n, 2, generator=g) * size / 3
    b = torch.cat([xy, xy + wh], 1)
    if n > 4:
        b[: n // 4] = b[n // 4 : 2 * (n // 4)] + torch.rand(n // 4, 4, generator=g)  # many near-duplicates
    return b.to(dtype)


# ----------------------------------------------------------------------------------------------------------- NMS
@needs_compiled
@pytest.mark.parametrize("n", [0, 1, 7, 300, 1500])
@pytest.mark.parametrize("offset", [0, 1])
@pytest.mark.parametrize("thr", [0.3, 0.7])
def test_nms_equals_compiled(n: int, offset: int, thr: float) -> None:
    boxes = _boxes(n, seed=n)
    scores = torch.rand(n, generator=torch.Generator().manual_seed(1))
    if n > 10:
        scores[::3] = scores[1::3][: scores[::3].numel()]  # ties
        boxes[-3:] = torch.tensor([[-50.0, -50, -10, -10], [500, 500, 600, 600], [5, 5, 5, 5]])  # outside, empty
    expected = COMPILED.nms(boxes, scores, iou_threshold=thr, offset=offset)
    got = ours.nms(boxes, scores, iou_threshold=thr, offset=offset)
    assert got.dtype == torch.long
    assert torch.equal(got, expected)


@needs_compiled
@pytest.mark.parametrize("method", [0, 1, 2])
def test_softnms_equals_compiled(method: int) -> None:
    n = 200
    boxes = _boxes(n, seed=3)
    scores = torch.rand(n, generator=torch.Generator().manual_seed(4)) * 0.9 + 0.1
    kw = dict(iou_threshold=0.3, sigma=0.5, min_score=0.05, method=method, offset=0)
    dets_c, dets_o = boxes.new_empty((n, 5)), boxes.new_empty((n, 5))
    inds_c = COMPILED.softnms(boxes, scores, dets_c, **kw)
    inds_o = ours.softnms(boxes, scores, dets_o, **kw)
    assert torch.equal(inds_o, inds_c)
    torch.testing.assert_close(dets_o[: inds_o.numel()], dets_c[: inds_c.numel()])


@needs_compiled
@pytest.mark.parametrize("n", [0, 1, 400])
def test_nms_match_equals_compiled(n: int) -> None:
    dets = torch.cat([_boxes(n, seed=5), torch.rand(n, 1, generator=torch.Generator().manual_seed(6))], 1)
    got = ours.nms_match(dets, iou_threshold=0.5)
    assert got == [list(m) for m in COMPILED.nms_match(dets, iou_threshold=0.5)]


@needs_compiled
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("mode", [0, 1])
@pytest.mark.parametrize("offset", [0, 1])
def test_bbox_overlaps_equals_compiled(dtype, aligned: bool, mode: int, offset: int) -> None:
    b1, b2 = _boxes(30, seed=7, dtype=dtype), _boxes(30 if aligned else 20, seed=8, dtype=dtype)
    shape = (30,) if aligned else (30, 20)
    exp, got = b1.new_zeros(shape), b1.new_zeros(shape)
    COMPILED.bbox_overlaps(b1, b2, exp, mode=mode, aligned=aligned, offset=offset)
    ours.bbox_overlaps(b1, b2, got, mode=mode, aligned=aligned, offset=offset)
    torch.testing.assert_close(got, exp, **TOL[dtype])


# ------------------------------------------------------------------------------------------------------ RoIAlign
def _rois(dtype, aligned: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(9)
    xy = torch.rand(40, 2, generator=g) * 70 - 5
    wh = torch.rand(40, 2, generator=g) * 50
    rois = torch.cat([torch.randint(0, 2, (40, 1), generator=g).float(), xy, xy + wh], 1)
    extra = torch.tensor(
        [
            [0, 10, 10, 10, 10],  # empty
            [1, 100, 100, 140, 150],  # outside the image
            [0, -30, -30, -2, -2],  # outside, negative
            [1, -10, -10, 90, 90],  # covers more than the image
            [0, 3.3, 4.7, 3.9, 60.2],  # thin
        ]
    )
    return torch.cat([rois, extra]).to(dtype)


def _roi_align_pair(ext, x, rois, grad, out_size, scale, ratio, pool_mode, aligned):
    r, c = rois.size(0), x.size(1)
    shape = (r, c, out_size, out_size)
    out = x.new_zeros(shape)
    ay = x.new_zeros(shape) if pool_mode == 0 else x.new_zeros(0)
    ax = x.new_zeros(shape) if pool_mode == 0 else x.new_zeros(0)
    kw = dict(aligned_height=out_size, aligned_width=out_size, spatial_scale=scale, sampling_ratio=ratio,
              pool_mode=pool_mode, aligned=aligned)
    ext.roi_align_forward(x, rois, out, ay, ax, **kw)
    gi = torch.zeros_like(x)
    ext.roi_align_backward(grad, rois, ay, ax, gi, **kw)
    return out, ay, ax, gi


@needs_compiled
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("ratio", [0, 2])
@pytest.mark.parametrize("pool_mode", [1, 0])
def test_roi_align_equals_compiled(dtype, aligned: bool, ratio: int, pool_mode: int) -> None:
    g = torch.Generator().manual_seed(10)
    x = torch.randn(2, 3, 17, 23, generator=g).to(dtype)
    rois = _rois(dtype, aligned)
    grad = torch.randn(rois.size(0), 3, 7, 7, generator=g).to(dtype)
    exp = _roi_align_pair(COMPILED, x, rois, grad, 7, 0.25, ratio, pool_mode, aligned)
    got = _roi_align_pair(ours, x, rois, grad, 7, 0.25, ratio, pool_mode, aligned)
    for name, e, o in zip(("output", "argmax_y", "argmax_x", "grad_input"), exp, got, strict=False):
        torch.testing.assert_close(o, e, **TOL[dtype], msg=lambda m, name=name: f"{name}: {m}")


@needs_compiled
def test_roi_align_no_rois_and_scale_one() -> None:
    x = torch.randn(1, 4, 9, 9)
    exp = _roi_align_pair(COMPILED, x, torch.zeros(0, 5), torch.zeros(0, 4, 3, 3), 3, 1.0, 0, 1, True)
    got = _roi_align_pair(ours, x, torch.zeros(0, 5), torch.zeros(0, 4, 3, 3), 3, 1.0, 0, 1, True)
    for e, o in zip(exp, got, strict=False):
        torch.testing.assert_close(o, e)
    rois = torch.tensor([[0, 0.5, 0.5, 8.5, 8.5], [0, 2, 3, 4, 5.0]])
    grad = torch.randn(2, 4, 3, 3)
    for e, o in zip(_roi_align_pair(COMPILED, x, rois, grad, 3, 1.0, 0, 1, False),
                    _roi_align_pair(ours, x, rois, grad, 3, 1.0, 0, 1, False), strict=False):
        torch.testing.assert_close(o, e)


def test_roi_align_through_mmcv_matches_autograd_check() -> None:
    """Our backward is the exact transpose of our forward (double precision gradcheck through the Function)."""
    pytest.importorskip("mmcv")
    x = torch.randn(1, 2, 8, 8, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, 1.2, 0.7, 6.3, 5.9], [0, -2.0, 3.0, 9.5, 9.0]], dtype=torch.float64)

    def f(inp):
        out = inp.new_zeros(2, 2, 3, 3)
        ours.roi_align_forward(inp, rois, out, inp.new_zeros(0), inp.new_zeros(0), aligned_height=3,
                               aligned_width=3, spatial_scale=1.0, sampling_ratio=0, pool_mode=1, aligned=True)
        return out

    grad = torch.randn(2, 2, 3, 3, dtype=torch.float64)
    gi = torch.zeros_like(x)
    ours.roi_align_backward(grad, rois, x.new_zeros(0), x.new_zeros(0), gi, aligned_height=3, aligned_width=3,
                            spatial_scale=1.0, sampling_ratio=0, pool_mode=1, aligned=True)
    _, vjp = torch.func.vjp(f, x.detach())
    torch.testing.assert_close(gi, vjp(grad)[0])


# ------------------------------------------------------------------------------------------------------- RoIPool
def _roi_pool_reference(x, rois, ph, pw, scale):
    """mmcv's CUDA kernel, transcribed loop by loop."""
    import math

    r, c = rois.size(0), x.size(1)
    h, w = x.shape[2:]
    out = torch.zeros(r, c, ph, pw, dtype=x.dtype)
    arg = torch.zeros(r, c, ph, pw, dtype=torch.int32)
    s = float(torch.tensor(scale, dtype=torch.float32))
    for n in range(r):
        b = int(rois[n, 0])
        x1, y1 = float(rois[n, 1]) * s, float(rois[n, 2]) * s
        x2, y2 = (float(rois[n, 3]) + 1) * s, (float(rois[n, 4]) + 1) * s
        rw, rh = x2 - x1, y2 - y1
        if rw <= 0 or rh <= 0:
            continue
        bw, bh = rw / pw, rh / ph
        for i in range(ph):
            for j in range(pw):
                bx1 = min(max(math.floor(j * bw + x1), 0), w)
                by1 = min(max(math.floor(i * bh + y1), 0), h)
                bx2 = min(max(math.ceil((j + 1) * bw + x1), 0), w)
                by2 = min(max(math.ceil((i + 1) * bh + y1), 0), h)
                empty = by2 <= by1 or bx2 <= bx1
                for ch in range(c):
                    best, bi = (0.0 if empty else -3.4028234663852886e38), -1
                    for yy in range(by1, by2):
                        for xx in range(bx1, bx2):
                            v = float(x[b, ch, yy, xx])
                            if v > best:
                                best, bi = v, yy * w + xx
                    out[n, ch, i, j] = best
                    arg[n, ch, i, j] = bi
    return out, arg


@pytest.mark.parametrize("dtype", DTYPES)
def test_roi_pool_matches_kernel_transcription(dtype) -> None:
    g = torch.Generator().manual_seed(11)
    x = torch.randn(2, 3, 12, 14, generator=g).to(dtype)
    rois = torch.tensor([[0, 4, 4, 30, 40], [1, -8, -8, 10, 12], [0, 60, 60, 80, 80], [1, 20, 8, 20, 8],
                         [0, 12, 30, 9, 20]], dtype=dtype)
    out, arg = x.new_zeros(5, 3, 3, 4), torch.zeros(5, 3, 3, 4, dtype=torch.int32)
    ours.roi_pool_forward(x, rois, out, arg, pooled_height=3, pooled_width=4, spatial_scale=0.25)
    ref_out, ref_arg = _roi_pool_reference(x, rois, 3, 4, 0.25)
    torch.testing.assert_close(out, ref_out)
    assert torch.equal(arg, ref_arg)
    grad = torch.randn(5, 3, 3, 4, generator=g).to(dtype)
    gi = torch.zeros_like(x)
    ours.roi_pool_backward(grad, rois, arg, gi, pooled_height=3, pooled_width=4, spatial_scale=0.25)
    ref = torch.zeros_like(x).view(2, 3, -1)
    for n in range(5):
        for ch in range(3):
            for a, gv in zip(ref_arg[n, ch].flatten().tolist(), grad[n, ch].flatten().tolist(), strict=False):
                if a >= 0:
                    ref[int(rois[n, 0]), ch, a] += gv
    torch.testing.assert_close(gi, ref.view_as(x))


# ------------------------------------------------------------------------------------------- deformable convolution
def _dcn_inputs(dtype, modulated: bool):
    g = torch.Generator().manual_seed(12)
    n, c, h, w, o, k = 2, 4, 9, 11, 6, 3
    groups, dg, stride, pad, dil = 2, 2, 2, 1, 1
    x = torch.randn(n, c, h, w, generator=g).to(dtype)
    weight = torch.randn(o, c // groups, k, k, generator=g).to(dtype)
    ho = (h + 2 * pad - (dil * (k - 1) + 1)) // stride + 1
    wo = (w + 2 * pad - (dil * (k - 1) + 1)) // stride + 1
    offset = (torch.randn(n, dg * 2 * k * k, ho, wo, generator=g) * 3).to(dtype)  # some samples fall outside
    offset[0, 0, 0, 0] = 2.0  # an integer position
    mask = torch.rand(n, dg * k * k, ho, wo, generator=g).to(dtype) if modulated else None
    bias = torch.randn(o, generator=g).to(dtype)
    grad = torch.randn(n, o, ho, wo, generator=g).to(dtype)
    return x, weight, offset, mask, bias, grad, dict(k=k, stride=stride, pad=pad, dil=dil, groups=groups, dg=dg)


def _deform_conv_run(ext, x, weight, offset, grad, p):
    kw = dict(kW=p["k"], kH=p["k"], dW=p["stride"], dH=p["stride"], padW=p["pad"], padH=p["pad"],
              dilationW=p["dil"], dilationH=p["dil"], group=p["groups"], deformable_group=p["dg"])
    out = x.new_zeros(grad.shape)
    ext.deform_conv_forward(x, weight, offset, out, x.new_empty(0), x.new_empty(0), **kw, im2col_step=2)
    gx, goff, gw = torch.zeros_like(x), torch.zeros_like(offset), torch.zeros_like(weight)
    ext.deform_conv_backward_input(x, offset, grad, gx, goff, weight, x.new_empty(0), **kw, im2col_step=2)
    ext.deform_conv_backward_parameters(x, offset, grad, gw, x.new_empty(0), x.new_empty(0), **kw, scale=1,
                                        im2col_step=2)
    return out, gx, goff, gw


@needs_compiled
@pytest.mark.parametrize("dtype", DTYPES)
def test_deform_conv_equals_compiled(dtype) -> None:
    x, weight, offset, _, _, grad, p = _dcn_inputs(dtype, False)
    exp = _deform_conv_run(COMPILED, x, weight, offset, grad, p)
    got = _deform_conv_run(ours, x, weight, offset, grad, p)
    for name, e, o in zip(("output", "grad_input", "grad_offset", "grad_weight"), exp, got, strict=False):
        torch.testing.assert_close(o, e, **TOL[dtype], msg=lambda m, name=name: f"{name}: {m}")


def _modulated_run(ext, x, weight, offset, mask, bias, grad, p, with_bias):
    kw = dict(kernel_h=p["k"], kernel_w=p["k"], stride_h=p["stride"], stride_w=p["stride"], pad_h=p["pad"],
              pad_w=p["pad"], dilation_h=p["dil"], dilation_w=p["dil"], group=p["groups"],
              deformable_group=p["dg"], with_bias=with_bias)
    b = bias if with_bias else x.new_empty(0)
    out = x.new_zeros(grad.shape)
    ext.modulated_deform_conv_forward(x, weight, b, x.new_empty(0), offset, mask, out, x.new_empty(0), **kw)
    grads = [torch.zeros_like(t) for t in (x, weight, b, offset, mask)]
    ext.modulated_deform_conv_backward(x, weight, b, x.new_empty(0), offset, mask, x.new_empty(0), *grads, grad,
                                       **kw)
    return [out, *grads]


@needs_compiled
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_modulated_deform_conv_equals_compiled(dtype, with_bias: bool) -> None:
    x, weight, offset, mask, bias, grad, p = _dcn_inputs(dtype, True)
    exp = _modulated_run(COMPILED, x, weight, offset, mask, bias, grad, p, with_bias)
    got = _modulated_run(ours, x, weight, offset, mask, bias, grad, p, with_bias)
    names = ("output", "grad_input", "grad_weight", "grad_bias", "grad_offset", "grad_mask")
    for name, e, o in zip(names, exp, got, strict=False):
        torch.testing.assert_close(o, e, **TOL[dtype], msg=lambda m, name=name: f"{name}: {m}")


@needs_compiled
@pytest.mark.parametrize("dtype", DTYPES)
def test_modulated_deform_conv_with_a_larger_offset_equals_compiled(dtype) -> None:
    """mmdet's DyHead (GLIP) passes a larger level's offsets and masks to a smaller output: mmcv's kernel reads each
    sample's first (dg * k * 2, Ho, Wo) values, and gives the rest no gradient."""
    x, weight, offset, mask, bias, grad, p = _dcn_inputs(dtype, True)
    g = torch.Generator().manual_seed(14)
    n, _, ho, wo = offset.shape
    offset = (torch.randn(n, offset.size(1), ho + 3, wo + 2, generator=g) * 3).to(dtype)
    mask = torch.rand(n, mask.size(1), ho + 3, wo + 2, generator=g).to(dtype)
    exp = _modulated_run(COMPILED, x, weight, offset, mask, bias, grad, p, True)
    got = _modulated_run(ours, x, weight, offset, mask, bias, grad, p, True)
    names = ("output", "grad_input", "grad_weight", "grad_bias", "grad_offset", "grad_mask")
    for name, e, o in zip(names, exp, got, strict=False):
        torch.testing.assert_close(o, e, **TOL[dtype], msg=lambda m, name=name: f"{name}: {m}")


# ---------------------------------------------------------------------------------------------------- focal losses
def _sigmoid_focal_reference(x, t, gamma, alpha):
    p = torch.sigmoid(x)
    onehot = torch.nn.functional.one_hot(t, x.size(1) + 1)[:, :-1].to(x.dtype)
    pt = p * onehot + (1 - p) * (1 - onehot)
    at = alpha * onehot + (1 - alpha) * (1 - onehot)
    return -at * (1 - pt).pow(gamma) * torch.log(pt)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_focal_loss_forward_and_gradient(dtype) -> None:
    g = torch.Generator().manual_seed(13)
    x = (torch.randn(50, 4, generator=g) * 3).to(dtype)
    t = torch.randint(0, 5, (50,), generator=g)  # 4 = background
    out = torch.zeros_like(x)
    ours.sigmoid_focal_loss_forward(x, t, x.new_empty(0), out, gamma=2.0, alpha=0.25)
    xr = x.clone().requires_grad_(True)
    ref = _sigmoid_focal_reference(xr, t, 2.0, 0.25)
    torch.testing.assert_close(out, ref.detach(), **TOL[dtype])
    gi = torch.zeros_like(x)
    ours.sigmoid_focal_loss_backward(x, t, x.new_empty(0), gi, gamma=2.0, alpha=0.25)
    torch.testing.assert_close(gi, torch.autograd.grad(ref.sum(), xr)[0], **TOL[dtype])
    # class weights (mmcv multiplies each row by weight[target])
    weight = torch.rand(4, generator=g).to(dtype)
    t_fg = t.clamp(max=3)
    out_w = torch.zeros_like(x)
    ours.sigmoid_focal_loss_forward(x, t_fg, weight, out_w, gamma=2.0, alpha=0.25)
    expected = _sigmoid_focal_reference(x, t_fg, 2.0, 0.25) * weight[t_fg][:, None]
    torch.testing.assert_close(out_w, expected, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_focal_loss_forward_and_gradient(dtype) -> None:
    g = torch.Generator().manual_seed(14)
    x = torch.randn(30, 5, generator=g).to(dtype).requires_grad_(True)
    t = torch.randint(0, 5, (30,), generator=g)
    soft = torch.softmax(x, 1)
    pt = soft.gather(1, t[:, None])[:, 0]
    ref = -0.25 * (1 - pt).pow(2.0) * torch.log(pt)
    out = x.new_zeros(30)
    ours.softmax_focal_loss_forward(soft.detach(), t, x.new_empty(0), out, gamma=2.0, alpha=0.25)
    torch.testing.assert_close(out, ref.detach(), **TOL[dtype])
    buff, gi = x.new_zeros(30), torch.zeros_like(x)
    ours.softmax_focal_loss_backward(soft.detach(), t, x.new_empty(0), buff, gi, gamma=2.0, alpha=0.25)
    torch.testing.assert_close(gi, torch.autograd.grad(ref.sum(), x)[0], **TOL[dtype])


# ------------------------------------------------------------------------------ multi-scale deformable attention
@pytest.mark.parametrize("dtype", DTYPES)
def test_ms_deform_attn_equals_mmcv_pytorch_version(dtype) -> None:
    mmcv_msda = pytest.importorskip("mmcv.ops.multi_scale_deform_attn")
    g = torch.Generator().manual_seed(15)
    shapes = torch.tensor([[6, 8], [3, 4]])
    start = torch.tensor([0, 48])
    bs, heads, dims, nq, nl, npnt = 2, 2, 4, 5, 2, 3
    value = torch.randn(bs, 60, heads, dims, generator=g).to(dtype)
    loc = (torch.rand(bs, nq, heads, nl, npnt, 2, generator=g) * 1.2 - 0.1).to(dtype)  # some outside
    aw = torch.rand(bs, nq, heads, nl, npnt, generator=g).to(dtype)
    out = ours.ms_deform_attn_forward(value, shapes, start, loc, aw, im2col_step=64)
    v, lr, ar = (t.clone().requires_grad_(True) for t in (value, loc, aw))
    ref = mmcv_msda.multi_scale_deformable_attn_pytorch(v, shapes, lr, ar)
    torch.testing.assert_close(out, ref.detach(), **TOL[dtype])
    grad = torch.randn(ref.shape, generator=g).to(dtype)
    gv, gl, ga = torch.zeros_like(value), torch.zeros_like(loc), torch.zeros_like(aw)
    ours.ms_deform_attn_backward(value, shapes, start, loc, aw, grad, gv, gl, ga, im2col_step=64)
    for o, e in zip((gv, gl, ga), torch.autograd.grad(ref, (v, lr, ar), grad), strict=False):
        torch.testing.assert_close(o, e, **TOL[dtype])
    if CUDA and COMPILED is not None:
        dev = [t.cuda() for t in (value, shapes, start, loc, aw)]
        torch.testing.assert_close(COMPILED.ms_deform_attn_forward(*dev, im2col_step=64).cpu(), out, **TOL[dtype])


@pytest.mark.skipif(not (CUDA and COMPILED is not None), reason="compiled mmcv has CUDA kernels only for these")
def test_cuda_only_kernels_equal_compiled_on_cuda() -> None:
    g = torch.Generator().manual_seed(16)
    x = torch.randn(40, 6, generator=g).cuda()
    t = torch.randint(0, 7, (40,), generator=g).cuda()
    for fwd, bwd in (("sigmoid_focal_loss_forward", "sigmoid_focal_loss_backward"),):
        e, o = torch.zeros_like(x), torch.zeros_like(x)
        getattr(COMPILED, fwd)(x, t, x.new_empty(0), e, gamma=2.0, alpha=0.25)
        getattr(ours, fwd)(x, t, x.new_empty(0), o, gamma=2.0, alpha=0.25)
        torch.testing.assert_close(o, e)
        e, o = torch.zeros_like(x), torch.zeros_like(x)
        getattr(COMPILED, bwd)(x, t, x.new_empty(0), e, gamma=2.0, alpha=0.25)
        getattr(ours, bwd)(x, t, x.new_empty(0), o, gamma=2.0, alpha=0.25)
        torch.testing.assert_close(o, e)
    feat = torch.randn(2, 3, 12, 14, generator=g).cuda()
    rois = torch.tensor([[0, 4, 4, 30, 40], [1, -8, -8, 10, 12], [0, 60, 60, 80, 80]]).cuda()
    outs = []
    for ext in (COMPILED, ours):
        out, arg = feat.new_zeros(3, 3, 7, 7), torch.zeros(3, 3, 7, 7, dtype=torch.int32, device="cuda")
        ext.roi_pool_forward(feat, rois, out, arg, pooled_height=7, pooled_width=7, spatial_scale=0.25)
        outs.append((out, arg))
    torch.testing.assert_close(outs[1][0], outs[0][0])
    assert torch.equal(outs[1][1], outs[0][1])


# ------------------------------------------------------------------------------------------ stubs and registration
def test_stub_raises_clear_error() -> None:
    assert "carafe_forward" in ours.STUBBED
    with pytest.raises(MissingCompiledOpError, match=r"`carafe_forward`.*mmdet-lightning\[mmcv-ops\]"):
        ours.carafe_forward(torch.zeros(1))
    # a name a later mmcv may ask for is a stub too, so that `import mmcv.ops` keeps working
    with pytest.raises(MissingCompiledOpError, match="`some_future_op`"):
        ours.some_future_op()
    assert isinstance(MissingCompiledOpError("x"), NotImplementedError)


def test_every_name_mmcv_ops_asks_for_is_present() -> None:
    mmcv = pytest.importorskip("mmcv")
    import re

    ops_dir = Path(mmcv.__file__).parent / "ops"
    names = set()
    for f in ops_dir.glob("*.py"):
        for block in re.findall(r"load_ext\(\s*'_ext',\s*\[(.*?)\]\)", f.read_text(), re.S):
            names.update(re.findall(r"'(\w+)'", block))
    assert names and names <= set(ours.__all__), sorted(names - set(ours.__all__))


def _run(code: str, mode: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "MMDET_LIGHTNING_MMCV_OPS"}
    if mode:
        env["MMDET_LIGHTNING_MMCV_OPS"] = mode
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout.strip()


def test_registration_is_light_and_chooses_the_backend() -> None:
    pytest.importorskip("mmcv")
    code = (
        "import sys, mmdet_lightning; light = 'torch' not in sys.modules and 'mmcv' not in sys.modules\n"
        "import mmcv.ops\n"
        "from mmdet_lightning.mmcv_ext import ops_backend\n"
        "print(light, ops_backend(), mmcv.ops.nms.__module__)"
    )
    light, backend, _ = _run(code, "torch").split()
    assert light == "True" and backend == "torch"
    light, backend, _ = _run(code, None).split()
    assert backend == ("compiled" if COMPILED is not None else "torch")
    if COMPILED is not None:
        out = _run("import mmdet_lightning, mmcv.ops", "compiled")
        assert out == ""
