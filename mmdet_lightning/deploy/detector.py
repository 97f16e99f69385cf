"""``OnnxDetector``: an exported detector run by onnxruntime, with mmdet's test pipeline in NumPy.

Needs onnxruntime, NumPy and OpenCV only: nothing of torch, mmcv, mmdet or Lightning is imported.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .masks import paste_masks
from .preprocess import apply_pipeline, load_image

__all__ = ["OnnxDetector", "Detections", "METADATA_KEY", "read_metadata"]

#: the ONNX ``metadata_props`` key under which ``export_onnx`` stores the pipeline and class names (JSON)
METADATA_KEY = "mmdet_lightning"


@dataclass
class Detections:
    """What :class:`OnnxDetector` returns for one image, in the original image's pixel coordinates.

    Attributes:
        boxes: ``(N, 4)`` float32, x1, y1, x2, y2.
        scores: ``(N,)`` float32, highest first.
        labels: ``(N,)`` int64, class indices.
        class_names: ``N`` names (``classes[label]``).
        masks: ``(N, H, W)`` bool for instance segmentation models, else None.
        meta: ``ori_shape``, ``img_shape``, ``scale_factor`` of the pipeline run.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    masks: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.scores)


def read_metadata(model: Any) -> dict[str, Any]:
    """The ``mmdet_lightning`` metadata of an exported model (an ``onnxruntime.InferenceSession``).

    Raises:
        ValueError: the file was not written by ``export_onnx``.
    """
    props = model.get_modelmeta().custom_metadata_map
    if METADATA_KEY not in props:
        raise ValueError("This ONNX file holds no mmdet_lightning metadata: export it with "
                         "`mmdet-lightning export` (or `mmdet_lightning.export.export_onnx`).")
    return json.loads(props[METADATA_KEY])


class OnnxDetector:
    """An ONNX detector written by ``mmdet-lightning export``, run by onnxruntime.

    Takes an image path or a uint8 ``(H, W, 3)`` array (BGR, as OpenCV reads it; pass ``channel_order="rgb"``
    for an RGB array), resizes and pads it as the config's test pipeline does (the steps are stored in the file),
    and returns :class:`Detections` in the original image's coordinates.

    Args:
        path: the ``.onnx`` file.
        providers: onnxruntime execution providers (default: CPU).
        score_thr: drop detections scoring at or below this (the graph keeps those above the config's
            ``score_thr``; this filters further).
        num_threads: onnxruntime intra-op threads (0: onnxruntime's default).

    Example::
        >>> detector = OnnxDetector("model.onnx")  # doctest: +SKIP
        >>> found = detector("image.jpg")  # doctest: +SKIP
        >>> found.boxes, found.scores, found.class_names  # doctest: +SKIP
    """

    def __init__(self, path: str | Path, providers: Sequence[str] | None = None, score_thr: float = 0.0,
                 num_threads: int = 0) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX model {str(self.path)!r} does not exist.")
        options = ort.SessionOptions()
        if num_threads:
            options.intra_op_num_threads = int(num_threads)
        self.session = ort.InferenceSession(str(self.path), sess_options=options,
                                            providers=list(providers or ["CPUExecutionProvider"]))
        self.metadata = read_metadata(self.session)
        self.classes: list[str] = list(self.metadata.get("classes") or [])
        self.pipeline: list[dict[str, Any]] = list(self.metadata.get("pipeline") or [])
        self.input_size: list[int] | None = self.metadata.get("input_size")
        self.pad_value = np.asarray(self.metadata.get("pad_value", [0.0, 0.0, 0.0]), dtype=np.float32)
        self.size_divisor = int(self.metadata.get("size_divisor", 1) or 1)
        self.score_thr = float(score_thr)
        self._inputs = [i.name for i in self.session.get_inputs()]
        self._outputs = [o.name for o in self.session.get_outputs()]

    @property
    def with_masks(self) -> bool:
        return "masks" in self._outputs

    def preprocess(self, image: str | Path | np.ndarray,
                   channel_order: str = "bgr") -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The graph's inputs for one image, and mmdet's meta (``ori_shape``, ``img_shape``, ``scale_factor``)."""
        if isinstance(image, (str, Path)):
            pixels = load_image(image)
        else:
            pixels = np.asarray(image)
            if pixels.ndim == 2:
                pixels = np.repeat(pixels[:, :, None], 3, axis=2)
            if pixels.ndim != 3 or pixels.shape[2] != 3:
                raise ValueError(f"Expected an image of shape (H, W, 3), but got {pixels.shape}.")
            if channel_order.lower() == "rgb":
                pixels = pixels[:, :, ::-1]
            elif channel_order.lower() != "bgr":
                raise ValueError(f"Expected channel_order 'bgr' or 'rgb', but got {channel_order!r}.")
        pixels, meta = apply_pipeline(pixels, self.pipeline)
        chw = np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32)
        if self.input_size is not None:  # a fixed-size graph: pad bottom/right to it
            height, width = self.input_size
            if chw.shape[1] > height or chw.shape[2] > width:
                raise ValueError(f"The image after the pipeline is {chw.shape[2]}x{chw.shape[1]}, larger than the "
                                 f"model's fixed input size {width}x{height}: export with a dynamic input size.")
        else:  # to a multiple of the size divisor, as mmdet's data preprocessor pads
            divisor = self.size_divisor
            height = -(-chw.shape[1] // divisor) * divisor
            width = -(-chw.shape[2] // divisor) * divisor
        if (height, width) != chw.shape[1:]:  # with the pixel value that normalises to 0
            full = np.empty((3, height, width), dtype=np.float32)
            full[...] = self.pad_value[:, None, None]
            full[:, : chw.shape[1], : chw.shape[2]] = chw
            chw = full
        feeds = {"image": chw[None],
                 "img_shape": np.asarray(meta["img_shape"], dtype=np.int64),
                 "scale_factor": np.asarray(meta["scale_factor"], dtype=np.float32)}
        return {k: v for k, v in feeds.items() if k in self._inputs}, meta

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The graph's raw outputs (``boxes``, ``scores``, ``labels`` and, for masks, ``masks``) by name."""
        return dict(zip(self._outputs, self.session.run(self._outputs, feeds), strict=False))

    def __call__(self, image: str | Path | np.ndarray, channel_order: str = "bgr") -> Detections:
        feeds, meta = self.preprocess(image, channel_order)
        out = self.run(feeds)
        boxes, scores, labels = out["boxes"], out["scores"], out["labels"].astype(np.int64)
        keep = scores > self.score_thr
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        masks = None
        if "masks" in out:
            height, width = meta["ori_shape"]
            masks = paste_masks(out["masks"][keep], boxes, height, width,
                                float(self.metadata.get("mask_thr_binary", 0.5)))
        names = [self.classes[i] if 0 <= i < len(self.classes) else str(i) for i in labels.tolist()]
        return Detections(boxes=boxes, scores=scores, labels=labels, class_names=names, masks=masks, meta=meta)
