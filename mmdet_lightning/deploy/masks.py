"""Instance masks without torch: mmdet's mask pasting and COCO's RLE, in NumPy."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["paste_masks", "encode_rle"]


def _grid_sample_1d_weights(coords: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``grid_sample(align_corners=False, padding_mode="zeros")`` along one axis: for normalised ``coords``
    the two source indices and their weights (0 for a source outside ``[0, size)``)."""
    pos = ((coords + np.float32(1)) * np.float32(size) - np.float32(1)) / np.float32(2)
    low = np.floor(pos)
    frac = (pos - low).astype(np.float32)
    low = low.astype(np.int64)
    high = low + 1
    w_low = (np.float32(1) - frac) * ((low >= 0) & (low < size))
    w_high = frac * ((high >= 0) & (high < size))
    return np.clip(low, 0, size - 1), np.clip(high, 0, size - 1), w_low.astype(np.float32), w_high.astype(np.float32)


def paste_masks(mask_probs: np.ndarray, boxes: np.ndarray, height: int, width: int,
                threshold: float = 0.5) -> np.ndarray:
    """Paste ``(N, M, M)`` mask probabilities into ``(N, height, width)`` boolean masks at ``boxes``
    (``(N, 4)`` x1, y1, x2, y2 in the same image), as mmdet's ``FCNMaskHead`` does (``_do_paste_mask``:
    bilinear ``grid_sample`` of each mask over its box, then ``>= threshold``).

    Example::
        >>> probs = np.ones((1, 28, 28), np.float32)
        >>> int(paste_masks(probs, np.array([[2.0, 2.0, 6.0, 5.0]], np.float32), 8, 8)[0].sum())
        12
    """
    mask_probs = np.asarray(mask_probs, dtype=np.float32)
    boxes = np.asarray(boxes, dtype=np.float32)
    out = np.zeros((len(mask_probs), height, width), dtype=bool)
    for index, (probs, box) in enumerate(zip(mask_probs, boxes, strict=False)):
        x0, y0, x1, y1 = (np.float32(v) for v in box)
        # the region mmdet pastes on CPU (skip_empty): the box, one pixel more on each side, inside the image
        left = int(max(np.floor(x0) - 1, 0))
        top = int(max(np.floor(y0) - 1, 0))
        right = int(min(np.ceil(x1) + 1, width))
        bottom = int(min(np.ceil(y1) + 1, height))
        if right <= left or bottom <= top:
            continue
        with np.errstate(divide="ignore", invalid="ignore"):
            gx = ((np.arange(left, right, dtype=np.float32) + np.float32(0.5)) - x0) / (x1 - x0)
            gy = ((np.arange(top, bottom, dtype=np.float32) + np.float32(0.5)) - y0) / (y1 - y0)
        gx = gx * np.float32(2) - np.float32(1)
        gy = gy * np.float32(2) - np.float32(1)
        gx[np.isinf(gx)] = 0
        gy[np.isinf(gy)] = 0
        gx = np.nan_to_num(gx, nan=0.0).astype(np.float32)
        gy = np.nan_to_num(gy, nan=0.0).astype(np.float32)
        mh, mw = probs.shape
        x_lo, x_hi, wx_lo, wx_hi = _grid_sample_1d_weights(gx, mw)
        y_lo, y_hi, wy_lo, wy_hi = _grid_sample_1d_weights(gy, mh)
        # bilinear: the four corners weighted as grid_sample weights them (nw, ne, sw, se)
        value = (probs[np.ix_(y_lo, x_lo)] * (wy_lo[:, None] * wx_lo[None, :])
                 + probs[np.ix_(y_lo, x_hi)] * (wy_lo[:, None] * wx_hi[None, :])
                 + probs[np.ix_(y_hi, x_lo)] * (wy_hi[:, None] * wx_lo[None, :])
                 + probs[np.ix_(y_hi, x_hi)] * (wy_hi[:, None] * wx_hi[None, :]))
        out[index, top:bottom, left:right] = value >= np.float32(threshold)
    return out


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO's compressed RLE of a boolean ``(H, W)`` mask (``pycocotools.mask.encode``, column-major), as
    ``{"size": [H, W], "counts": str}``: what ``COCO.loadRes`` reads in a ``segm`` results file.

    Example::
        >>> encode_rle(np.array([[0, 1], [1, 1]], bool))
        {'size': [2, 2], 'counts': '13'}
    """
    flat = np.asarray(mask, dtype=np.uint8).reshape(-1, order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate(([0], changes, [flat.size]))
    runs = np.diff(bounds).tolist()
    if flat.size and flat[0] == 1:
        runs = [0] + runs
    # rleToString in pycocotools' maskApi.c: each count as 5-bit groups, delta-coded after the third
    chars = []
    for i, count in enumerate(runs):
        x = int(count)
        if i > 2:
            x -= int(runs[i - 2])
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            chars.append(chr(c + 48))
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": "".join(chars)}
