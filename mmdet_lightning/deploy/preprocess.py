"""mmdet's test pipeline in NumPy and OpenCV: image loading, ``Resize``, ``Pad``, as mmcv and mmdet do them.

Only what an exported detector needs at inference: no torch, mmcv or mmdet. Every function reproduces the
mmcv / mmdet function named in its docstring, pixel for pixel (the same OpenCV calls, the same rounding).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["load_image", "rescale_size", "apply_pipeline", "IMAGE_SUFFIXES", "list_images"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

_INTERPOLATIONS = {"nearest": "INTER_NEAREST", "bilinear": "INTER_LINEAR", "bicubic": "INTER_CUBIC",
                   "area": "INTER_AREA", "lanczos": "INTER_LANCZOS4"}


def _cv2() -> Any:
    import cv2

    return cv2


def list_images(folder: str | Path) -> list[Path]:
    """The image files directly in ``folder``, sorted (as ``mmdet-lightning predict --data.predict_folder``).

    Raises:
        FileNotFoundError: the folder does not exist, or holds no image file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"Image folder {str(folder)!r} does not exist.")
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise FileNotFoundError(
            f"Image folder {str(folder)!r} holds no images (looked for {', '.join(IMAGE_SUFFIXES)})."
        )
    return images


def load_image(path: str | Path) -> np.ndarray:
    """The image at ``path`` as mmdet's ``LoadImageFromFile`` reads it: uint8 BGR, ``(H, W, 3)``
    (``mmcv.imfrombytes(..., flag="color", backend="cv2")``: ``cv2.imdecode`` with ``IMREAD_COLOR``).

    Raises:
        FileNotFoundError: no such file.
        ValueError: OpenCV cannot decode it.
    """
    cv2 = _cv2()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Image {str(path)!r} does not exist.")
    image = cv2.imdecode(np.fromfile(str(path), dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"Image {str(path)!r} could not be decoded by OpenCV.")
    return image


def rescale_size(width: int, height: int, scale: Sequence[float] | float) -> tuple[int, int]:
    """``mmcv.rescale_size``: the (width, height) that fits ``scale`` keeping the aspect ratio.

    Example::
        >>> rescale_size(200, 100, (128, 128))
        (128, 64)
        >>> rescale_size(640, 480, (1333, 800))
        (1067, 800)
    """
    if isinstance(scale, (int, float)):
        factor = float(scale)
    else:
        long_edge, short_edge = max(scale), min(scale)
        factor = min(long_edge / max(height, width), short_edge / min(height, width))
    return int(width * factor + 0.5), int(height * factor + 0.5)


def _resize(image: np.ndarray, size: tuple[int, int], interpolation: str) -> np.ndarray:
    cv2 = _cv2()
    if interpolation not in _INTERPOLATIONS:
        raise ValueError(f"Unsupported Resize interpolation {interpolation!r} (known: {sorted(_INTERPOLATIONS)}).")
    return cv2.resize(image, size, interpolation=getattr(cv2, _INTERPOLATIONS[interpolation]))


def apply_pipeline(image: np.ndarray, pipeline: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, dict[str, Any]]:
    """Run the test pipeline steps stored in an exported model (``Resize``, ``FixShapeResize``, ``Pad``) on a
    uint8 ``(H, W, C)`` image; returns the image and mmdet's meta: ``ori_shape``, ``img_shape`` (h, w) and
    ``scale_factor`` (w, h).

    Example::
        >>> image, meta = apply_pipeline(np.zeros((100, 200, 3), np.uint8),
        ...                              [{"type": "Resize", "scale": [128, 128], "keep_ratio": True}])
        >>> image.shape, meta["scale_factor"]
        ((64, 128, 3), (0.64, 0.64))
    """
    ori_h, ori_w = image.shape[:2]
    w_scale = h_scale = 1.0
    for step in pipeline:
        kind = step["type"]
        if kind in ("Resize", "FixShapeResize"):
            height, width = image.shape[:2]
            if kind == "FixShapeResize":
                size = (int(step["width"]), int(step["height"]))
                if step.get("keep_ratio", False):
                    raise ValueError("FixShapeResize with keep_ratio=True is not supported by the deploy pipeline.")
            elif step.get("keep_ratio", False):
                size = rescale_size(width, height, step["scale"])
            else:
                size = (int(step["scale"][0]), int(step["scale"][1]))
            image = _resize(image, size, step.get("interpolation", "bilinear"))
            w_scale *= image.shape[1] / width
            h_scale *= image.shape[0] / height
        elif kind == "Pad":
            image = _pad(image, step)
        else:
            raise ValueError(f"Pipeline step {kind!r} is not supported by the deploy pipeline.")
    meta = {"ori_shape": (ori_h, ori_w), "img_shape": tuple(image.shape[:2]), "scale_factor": (w_scale, h_scale)}
    return image, meta


def _pad(image: np.ndarray, step: Mapping[str, Any]) -> np.ndarray:
    """mmdet's ``Pad`` (``mmcv.impad`` at the bottom and right, constant value)."""
    height, width = image.shape[:2]
    if step.get("pad_to_square"):
        height = width = max(height, width)
    if step.get("size") is not None:
        width, height = int(step["size"][0]), int(step["size"][1])
    elif step.get("size_divisor"):
        divisor = int(step["size_divisor"])
        height = int(np.ceil(height / divisor)) * divisor
        width = int(np.ceil(width / divisor)) * divisor
    value = step.get("pad_val", 0)
    if isinstance(value, Mapping):
        value = value.get("img", 0)
    if image.shape[0] > height or image.shape[1] > width:
        raise ValueError(f"Pad to {width}x{height} is smaller than the image ({image.shape[1]}x{image.shape[0]}).")
    padded = np.empty((height, width) + image.shape[2:], dtype=image.dtype)
    padded[...] = np.asarray(value, dtype=image.dtype)
    padded[: image.shape[0], : image.shape[1]] = image
    return padded
