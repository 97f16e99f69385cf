"""Synthetic COCO-format detection data: coloured shapes on textured backgrounds.

Nothing can be downloaded on the machines this project is tested on, so the demo, the tests and the
benchmarks train on images made here. Every image is drawn from its own seed (derived from the
dataset seed, the split and the index), so any count and size is deterministic and cheap.

Layout written under ``root``::

    root/train/000000.png ...          root/val/000000.png ...
    root/annotations/instances_train.json
    root/annotations/instances_val.json
    root/unlabeled/000000.png ...       (``num_unlabeled`` > 0: semi-supervised detection's unlabeled source)
    root/annotations/instances_unlabeled.json   its images and categories, no annotations (as mmdet's
                                                semi-supervised docs prepare COCO's unlabeled2017)
    root/meta.json                      (the arguments; a second call with the same ones is a no-op)

With ``panoptic=True`` (``--panoptic``) the images also get a "floor" region below a random horizon, and the
COCO panoptic annotations are written beside the instance ones: things are the shapes, stuff the textured
``background`` and the ``floor`` (:data:`STUFF_CLASSES`)::

    root/annotations/panoptic_train.json   root/annotations/panoptic_train/000000.png ...
    root/annotations/panoptic_val.json     root/annotations/panoptic_val/000000.png ...

Command line::

    python -m mmdet_lightning.synthetic --out data/shapes --num-train 400 --num-val 100 --size 128
    python -m mmdet_lightning.synthetic --out data/shapes_panoptic --panoptic
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["CLASSES", "STUFF_CLASSES", "ShapesConfig", "make_shapes_dataset"]

CLASSES: tuple[str, ...] = ("circle", "square", "triangle")
#: the stuff classes of the panoptic mode (category ids after the things')
STUFF_CLASSES: tuple[str, ...] = ("background", "floor")
_PALETTE = np.array(
    [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
     (70, 240, 240), (240, 50, 230), (250, 250, 250), (20, 20, 20)],
    dtype=np.uint8,
)


@dataclass(frozen=True)
class ShapesConfig:
    """Arguments of one synthetic dataset; stored as ``meta.json`` beside it.

    Example::
        >>> ShapesConfig(num_train=8, num_val=4, width=64, height=48).num_val
        4
    """

    num_train: int = 400
    num_val: int = 100
    width: int = 128
    height: int = 128
    seed: int = 0
    max_objects: int = 4
    empty_prob: float = 0.08
    crowd_prob: float = 0.0
    min_size: float = 0.15
    max_size: float = 0.4
    panoptic: bool = False
    #: images of an unlabeled split (drawn like the training images, their annotations left out)
    num_unlabeled: int = 0

    def __post_init__(self) -> None:
        for name in ("num_train", "num_val", "num_unlabeled"):
            if getattr(self, name) < 0:
                raise ValueError(f"Expected argument `{name}` to be >= 0, but got {getattr(self, name)}.")
        if self.width < 16 or self.height < 16:
            raise ValueError(f"Expected an image size of at least 16x16, but got {self.width}x{self.height}.")
        if not 0 < self.min_size <= self.max_size <= 1:
            raise ValueError(
                f"Expected 0 < min_size <= max_size <= 1, but got {self.min_size} and {self.max_size}."
            )
        for name in ("empty_prob", "crowd_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"Expected argument `{name}` in [0, 1], but got {getattr(self, name)}.")


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A textured background: a colour gradient, low-frequency noise and faint stripes."""
    base = rng.integers(40, 200, size=3).astype(np.float32)
    tint = rng.integers(-60, 60, size=3).astype(np.float32)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    ramp = (np.cos(angle) * xs / width + np.sin(angle) * ys / height)[..., None]
    coarse = rng.normal(0, 18, size=(height // 8 + 2, width // 8 + 2, 3)).astype(np.float32)
    coarse = np.kron(coarse, np.ones((8, 8, 1), dtype=np.float32))[:height, :width]
    period = rng.uniform(6, 20)
    stripes = (6 * np.sin(2 * math.pi * (xs * np.cos(angle + 1) + ys * np.sin(angle + 1)) / period))[..., None]
    fine = rng.normal(0, 6, size=(height, width, 3)).astype(np.float32)
    image = base + tint * ramp + coarse + stripes + fine
    return np.clip(image, 0, 255).astype(np.uint8)


def _polygon(kind: str, cx: float, cy: float, radius: float, angle: float) -> np.ndarray:
    """Vertices (N, 2) of a shape centred at (cx, cy)."""
    if kind == "circle":
        count, radius_scale = 24, 1.0
    elif kind == "square":
        count, radius_scale, angle = 4, math.sqrt(2) * 0.8, angle + math.pi / 4
    else:
        count, radius_scale = 3, 1.15
    theta = angle + np.arange(count) * 2 * math.pi / count
    r = radius * radius_scale
    return np.stack([cx + r * np.cos(theta), cy + r * np.sin(theta)], axis=1)


def _polygon_area(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    return float(0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def _overlaps(box: Sequence[float], boxes: list[list[float]], margin: float = 2.0) -> bool:
    x0, y0, x1, y1 = box
    return any(
        x0 < b[2] + margin and b[0] < x1 + margin and y0 < b[3] + margin and b[1] < y1 + margin for b in boxes
    )


def _floor(rng: np.random.Generator, image: np.ndarray) -> int:
    """Paint a tiled "floor" below a random horizon (in place); the horizon's row."""
    height, width = image.shape[:2]
    horizon = int(rng.uniform(0.55, 0.8) * height)
    light, dark = rng.integers(90, 230, size=3), rng.integers(20, 90, size=3)
    tile = int(rng.integers(6, 12))
    ys, xs = np.mgrid[horizon:height, 0:width]
    checker = ((ys // tile + xs // tile) % 2).astype(bool)[..., None]
    floor = np.where(checker, light, dark).astype(np.float32) + rng.normal(0, 5, size=(*checker.shape[:2], 3))
    image[horizon:] = np.clip(floor, 0, 255).astype(np.uint8)
    return horizon


def _draw_image(cfg: ShapesConfig, rng: np.random.Generator
                ) -> tuple[Image.Image, list[dict[str, Any]], list[dict[str, Any]], np.ndarray | None]:
    """The image, its instance annotations and, in panoptic mode, its segments and their (H, W) id map."""
    pixels = _background(rng, cfg.width, cfg.height)
    segment_ids: np.ndarray | None = None
    segments: list[dict[str, Any]] = []
    if cfg.panoptic:
        horizon = _floor(rng, pixels)
        segment_ids = np.ones((cfg.height, cfg.width), dtype=np.int32)  # 1: background, 2: floor, 3...: shapes
        segment_ids[horizon:] = 2
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    objects: list[dict[str, Any]] = []
    if rng.random() >= cfg.empty_prob:
        boxes: list[list[float]] = []
        short = min(cfg.width, cfg.height)
        for _ in range(int(rng.integers(1, cfg.max_objects + 1))):
            for _attempt in range(20):
                kind_index = int(rng.integers(len(CLASSES)))
                radius = rng.uniform(cfg.min_size, cfg.max_size) * short / 2
                cx = rng.uniform(radius, cfg.width - radius)
                cy = rng.uniform(radius, cfg.height - radius)
                points = _polygon(CLASSES[kind_index], cx, cy, radius, rng.uniform(0, 2 * math.pi))
                points[:, 0] = np.clip(points[:, 0], 0, cfg.width - 1)
                points[:, 1] = np.clip(points[:, 1], 0, cfg.height - 1)
                box = [*points.min(axis=0).tolist(), *points.max(axis=0).tolist()]
                if not _overlaps(box, boxes):
                    break
            else:
                continue
            colour = tuple(int(c) for c in _PALETTE[rng.integers(len(_PALETTE))])
            vertices = [tuple(p) for p in points.tolist()]
            draw.polygon(vertices, fill=colour)
            boxes.append(box)
            objects.append(
                {
                    "category_id": kind_index + 1,
                    "bbox": [round(box[0], 2), round(box[1], 2), round(box[2] - box[0], 2),
                             round(box[3] - box[1], 2)],
                    "segmentation": [[round(v, 2) for v in points.reshape(-1).tolist()]],
                    "area": round(_polygon_area(points), 2),
                    "iscrowd": int(rng.random() < cfg.crowd_prob),
                }
            )
            if segment_ids is not None:  # the same rasterisation as the drawn shape
                mask = Image.new("L", (cfg.width, cfg.height))
                ImageDraw.Draw(mask).polygon(vertices, fill=1)
                segment_ids[np.asarray(mask, dtype=bool)] = len(objects) + 2
    if segment_ids is not None:
        categories = [len(CLASSES) + 1, len(CLASSES) + 2] + [obj["category_id"] for obj in objects]
        crowds = [0, 0] + [obj["iscrowd"] for obj in objects]
        for segment_id, (category_id, crowd) in enumerate(zip(categories, crowds, strict=True), start=1):
            ys, xs = np.nonzero(segment_ids == segment_id)
            if len(xs) == 0:
                continue
            x0, y0 = int(xs.min()), int(ys.min())
            segments.append({"id": segment_id, "category_id": category_id, "area": len(xs), "iscrowd": crowd,
                             "bbox": [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1]})
    return image, objects, segments, segment_ids


def _write_split(root: Path, split: str, count: int, cfg: ShapesConfig) -> Path:
    split_index = {"train": 0, "val": 1, "unlabeled": 2}[split]
    (root / split).mkdir(parents=True, exist_ok=True)
    png_folder = root / "annotations" / f"panoptic_{split}"
    if cfg.panoptic:
        png_folder.mkdir(parents=True, exist_ok=True)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    panoptic: list[dict[str, Any]] = []
    for index in range(count):
        rng = np.random.default_rng([cfg.seed, split_index, index])
        image, objects, segments, segment_ids = _draw_image(cfg, rng)
        file_name = f"{index:06d}.png"
        image.save(root / split / file_name)
        images.append({"id": index + 1, "file_name": file_name, "width": cfg.width, "height": cfg.height})
        for obj in objects if split != "unlabeled" else []:
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1, **obj})
        if segment_ids is not None:
            from .panoptic_quality import id2rgb

            Image.fromarray(id2rgb(segment_ids)).save(png_folder / file_name)
            panoptic.append({"image_id": index + 1, "file_name": file_name, "segments_info": segments})
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(CLASSES)]
    coco = {
        "info": {"description": f"mmdet-lightning synthetic shapes ({split})"},
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    ann_file = root / "annotations" / f"instances_{split}.json"
    ann_file.parent.mkdir(parents=True, exist_ok=True)
    ann_file.write_text(json.dumps(coco))
    if cfg.panoptic:
        stuff = [{"id": len(CLASSES) + i + 1, "name": name, "supercategory": "stuff", "isthing": 0}
                 for i, name in enumerate(STUFF_CLASSES)]
        panoptic_coco = {**coco, "info": {"description": f"mmdet-lightning synthetic shapes, panoptic ({split})"},
                         "annotations": panoptic, "categories": [{**c, "isthing": 1} for c in categories] + stuff}
        (root / "annotations" / f"panoptic_{split}.json").write_text(json.dumps(panoptic_coco))
    return ann_file


def make_shapes_dataset(root: str | Path, config: ShapesConfig | None = None, **kwargs: Any) -> Path:
    """Write the synthetic dataset under ``root`` and return ``root``.

    A folder that already holds a dataset made with the same arguments is kept as it is.

    Args:
        root: output folder.
        config: the dataset's arguments; keyword arguments build one when it is not given.

    Example::
        >>> import tempfile, json
        >>> root = make_shapes_dataset(tempfile.mkdtemp(), num_train=3, num_val=2, width=48, height=48)
        >>> len(json.loads((root / "annotations" / "instances_val.json").read_text())["images"])
        2
        >>> root = make_shapes_dataset(tempfile.mkdtemp(), num_train=1, num_val=1, width=48, height=48, panoptic=True)
        >>> [c["name"] for c in json.loads((root / "annotations" / "panoptic_val.json").read_text())["categories"]]
        ['circle', 'square', 'triangle', 'background', 'floor']
    """
    cfg = config if config is not None else ShapesConfig(**kwargs)
    root = Path(root)
    meta = root / "meta.json"
    # `panoptic` and `num_unlabeled` are recorded only when set, so that datasets made before they existed are kept
    arguments = {k: v for k, v in asdict(cfg).items() if k not in ("panoptic", "num_unlabeled") or v}
    if meta.is_file() and json.loads(meta.read_text()) == arguments:
        return root
    _write_split(root, "train", cfg.num_train, cfg)
    _write_split(root, "val", cfg.num_val, cfg)
    if cfg.num_unlabeled:
        _write_split(root, "unlabeled", cfg.num_unlabeled, cfg)
    meta.write_text(json.dumps(arguments, indent=1))
    return root


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the synthetic shapes dataset in COCO format.")
    parser.add_argument("--out", default="data/shapes", help="output folder (default: data/shapes)")
    parser.add_argument("--num-train", type=int, default=ShapesConfig.num_train)
    parser.add_argument("--num-val", type=int, default=ShapesConfig.num_val)
    parser.add_argument("--size", type=int, default=ShapesConfig.width, help="image width and height in pixels")
    parser.add_argument("--seed", type=int, default=ShapesConfig.seed)
    parser.add_argument("--crowd-prob", type=float, default=ShapesConfig.crowd_prob)
    parser.add_argument("--panoptic", action="store_true",
                        help="add a floor and write COCO panoptic annotations (PNGs + JSON) too")
    parser.add_argument("--num-unlabeled", type=int, default=ShapesConfig.num_unlabeled,
                        help="images of an unlabeled split, for semi-supervised detection (default: 0)")
    args = parser.parse_args(argv)
    root = make_shapes_dataset(
        args.out, num_train=args.num_train, num_val=args.num_val, width=args.size, height=args.size,
        seed=args.seed, crowd_prob=args.crowd_prob, panoptic=args.panoptic, num_unlabeled=args.num_unlabeled,
    )
    print(f"synthetic dataset ready in {root} ({args.num_train} train, {args.num_val} val images)")


if __name__ == "__main__":
    main()
