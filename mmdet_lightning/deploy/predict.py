"""Predict a folder of images with an exported detector: the COCO results JSON ``mmdet-lightning predict`` writes.

    python -m mmdet_lightning.deploy predict model.onnx images/ --output predictions/ [--ann-file val.json]
    mmdet-lightning predict model.onnx images/ --output predictions/     # the same, from the main CLI
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .masks import encode_rle
from .preprocess import list_images

__all__ = ["predict_folder", "main", "RESULTS_FILE", "SEGM_RESULTS_FILE"]

#: the file names ``DetectionWriter`` (``mmdet-lightning predict``) writes
RESULTS_FILE = "results.bbox.json"
SEGM_RESULTS_FILE = "results.segm.json"

_COLOURS = [(75, 25, 230), (75, 180, 60), (25, 225, 255), (200, 130, 0), (48, 130, 245), (180, 30, 145),
            (240, 240, 70), (230, 50, 240), (60, 245, 210), (212, 190, 250)]  # DetectionWriter's, as BGR


def _ids_from_annotations(ann_file: str | Path, images: Sequence[Path], classes: Sequence[str]
                          ) -> tuple[list[Any], list[int]]:
    """Image ids by file name and category ids by class name, from a COCO annotation file."""
    coco = json.loads(Path(ann_file).read_text())
    by_name = {Path(image["file_name"]).name: image["id"] for image in coco.get("images", [])}
    missing = [p.name for p in images if p.name not in by_name]
    if missing:
        raise ValueError(f"{len(missing)} images are not in {str(ann_file)!r}: {', '.join(missing[:5])}")
    by_class = {c["name"]: c["id"] for c in coco.get("categories", [])}
    cat_ids = [by_class.get(name, index + 1) for index, name in enumerate(classes)]
    return [by_name[p.name] for p in images], cat_ids


def predict_folder(model: Any, folder: str | Path, output_dir: str | Path, ann_file: str | Path | None = None,
                   draw: bool = False, score_thr: float = 0.3) -> dict[str, Any]:
    """Run ``model`` (an :class:`~mmdet_lightning.deploy.OnnxDetector` or the path of an ``.onnx`` file) on every
    image in ``folder`` and write ``output_dir/results.bbox.json`` (and ``results.segm.json`` for masks).

    The JSON is what ``mmdet-lightning predict --data.predict_folder`` writes: COCO results (``image_id``,
    ``category_id``, ``score``, ``bbox`` as x, y, w, h), image ids the images' indices in name order and
    category ids ``label + 1``; with ``ann_file`` (a COCO annotation file) the images' and classes' ids there,
    so the file can be evaluated against it. ``draw`` also writes one PNG per image with the detections
    scoring above ``score_thr``.

    Returns:
        ``{"images": N, "detections": M, "seconds": s, "results": path}``.
    """
    from .detector import OnnxDetector

    detector = model if isinstance(model, OnnxDetector) else OnnxDetector(model)
    images = list_images(folder)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if ann_file is not None:
        image_ids, cat_ids = _ids_from_annotations(ann_file, images, detector.classes)
    else:
        image_ids, cat_ids = list(range(len(images))), [i + 1 for i in range(len(detector.classes))]
    boxes_json: list[dict[str, Any]] = []
    segm_json: list[dict[str, Any]] = []
    start = time.perf_counter()
    for path, image_id in zip(images, image_ids, strict=False):
        found = detector(path)
        for index, (box, label, score) in enumerate(zip(found.boxes.tolist(), found.labels.tolist(),
                                                        found.scores.tolist(), strict=False)):
            category = cat_ids[label] if label < len(cat_ids) else label + 1
            boxes_json.append({"image_id": image_id, "category_id": int(category), "score": float(score),
                               "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]})
            if found.masks is not None:
                segm_json.append({"image_id": image_id, "category_id": int(category), "score": float(score),
                                  "segmentation": encode_rle(found.masks[index])})
        if draw:
            _draw(path, found, detector.classes, score_thr, output_dir / f"{path.stem}.png")
    seconds = time.perf_counter() - start
    results = output_dir / RESULTS_FILE
    results.write_text(json.dumps(boxes_json))
    if detector.with_masks:
        (output_dir / SEGM_RESULTS_FILE).write_text(json.dumps(segm_json))
    return {"images": len(images), "detections": len(boxes_json), "seconds": seconds, "results": str(results)}


def _draw(path: Path, found: Any, classes: Sequence[str], score_thr: float, out: Path) -> None:
    import cv2

    from .preprocess import load_image

    image = load_image(path)
    shown = found.scores > score_thr
    if found.masks is not None:
        for mask, label in zip(found.masks[shown], found.labels[shown].tolist(), strict=False):
            colour = np.array(_COLOURS[label % len(_COLOURS)], dtype=np.float32)
            image[mask] = (0.5 * image[mask] + 0.5 * colour).astype(np.uint8)
    for box, label, score in zip(found.boxes[shown].tolist(), found.labels[shown].tolist(),
                                 found.scores[shown].tolist(), strict=False):
        colour = _COLOURS[label % len(_COLOURS)]
        name = classes[label] if label < len(classes) else str(label)
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        cv2.rectangle(image, (x1, y1), (x2, y2), colour, 2)
        cv2.putText(image, f"{name} {score:.2f}", (x1 + 2, y1 + 10), cv2.FONT_HERSHEY_SIMPLEX, 0.35, colour, 1)
    cv2.imwrite(str(out), image)


def main(argv: Sequence[str] | None = None) -> None:
    """``predict MODEL.onnx FOLDER --output DIR [--ann-file F] [--draw] [--score-thr T]``."""
    parser = argparse.ArgumentParser(
        prog="python -m mmdet_lightning.deploy",
        description="Predict a folder of images with an exported ONNX detector (onnxruntime only).")
    sub = parser.add_subparsers(dest="command", required=True)
    predict = sub.add_parser("predict", help="write COCO results JSON for every image of a folder")
    predict.add_argument("model", help="the .onnx file written by `mmdet-lightning export`")
    predict.add_argument("folder", help="folder of images")
    predict.add_argument("--output", default="predictions", help="output folder (default: predictions)")
    predict.add_argument("--ann-file", default=None,
                         help="COCO annotation file whose image and category ids the results use")
    predict.add_argument("--draw", action="store_true", help="also write the images with detections drawn")
    predict.add_argument("--score-thr", type=float, default=0.3, help="score above which --draw draws")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    summary = predict_folder(args.model, args.folder, args.output, ann_file=args.ann_file, draw=args.draw,
                             score_thr=args.score_thr)
    print(f"predict: {summary['detections']} detections on {summary['images']} images in "
          f"{summary['seconds']:.2f} s, written to {summary['results']}")
