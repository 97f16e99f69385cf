"""COCO-format detection annotations as ODVG, the format of mmdet's ``ODVGDataset`` (MM-Grounding-DINO's
fine-tuning configs train from it): one JSON line an image (``filename``, ``height``, ``width``,
``detection.instances`` with ``bbox`` as ``[x1, y1, x2, y2]``, ``label`` and ``category``) and a label map
(``{"0": "circle", ...}``), as mmdet's ``tools/dataset_converters/coco2odvg.py`` writes them. Crowd annotations
are left out (``ODVGDataset`` has no ignore flag; ``CocoDataset`` ignores them). Command line::

    python -m mmdet_lightning.odvg data/shapes/annotations/instances_train.json
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

__all__ = ["coco_to_odvg"]


def coco_to_odvg(coco_json: str | Path, out: str | Path | None = None,
                 label_map: str | Path | None = None) -> tuple[Path, Path]:
    """Write the ODVG lines of ``coco_json`` to ``out`` (default: beside it, ``<name>_od.json``) and its label
    map to ``label_map`` (default: ``<name>_label_map.json``); labels are the categories' places (0-based) in
    ``coco_json``'s ``categories``. Returns both paths.

    Raises:
        ValueError: ``coco_json`` has no ``images`` or ``categories``, or an annotation names a category or an
            image it does not have.

    Example::
        >>> import json, tempfile, pathlib
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (folder / "a.json").write_text(json.dumps({"images": [dict(id=1, file_name="1.png", height=9,
        ...     width=9)], "categories": [dict(id=5, name="disc")], "annotations": [dict(id=1, image_id=1,
        ...     category_id=5, bbox=[1, 2, 3, 4], iscrowd=0)]}))
        >>> lines, labels = coco_to_odvg(folder / "a.json")
        >>> lines.read_text(), labels.read_text()
        ('{"filename": "1.png", "height": 9, "width": 9, "detection": {"instances": [{"bbox": [1, 2, 4, 6], \
"label": 0, "category": "disc"}]}}\\n', '{"0": "disc"}')
    """
    coco_json = Path(coco_json)
    coco = json.loads(coco_json.read_text())
    if not coco.get("images") or not coco.get("categories"):
        raise ValueError(f"{coco_json} has no `images` or no `categories`: not COCO-format detection annotations.")
    labels = {cat["id"]: (place, cat["name"]) for place, cat in enumerate(coco["categories"])}
    instances: dict[int, list[dict]] = {image["id"]: [] for image in coco["images"]}
    for ann in coco.get("annotations", []):
        if ann.get("iscrowd", 0):
            continue
        if ann["category_id"] not in labels or ann["image_id"] not in instances:
            raise ValueError(f"{coco_json}: annotation {ann.get('id')} names category {ann['category_id']} or "
                             f"image {ann['image_id']}, which the file does not have.")
        x, y, w, h = ann["bbox"]
        label, name = labels[ann["category_id"]]
        instances[ann["image_id"]].append({"bbox": [x, y, x + w, y + h], "label": label, "category": name})
    out = Path(out) if out else coco_json.with_name(f"{coco_json.stem}_od.json")
    label_map = Path(label_map) if label_map else coco_json.with_name(f"{coco_json.stem}_label_map.json")
    out.write_text("".join(json.dumps({"filename": image["file_name"], "height": image["height"],
                                       "width": image["width"], "detection": {"instances": instances[image["id"]]}})
                           + "\n" for image in coco["images"]))
    label_map.write_text(json.dumps({str(place): name for place, name in labels.values()}))
    return out, label_map


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m mmdet_lightning.odvg COCO_JSON [--out LINES] [--label-map MAP]``: :func:`coco_to_odvg`."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("coco_json", help="COCO-format detection annotations")
    parser.add_argument("--out", help="the ODVG lines to write (default: <name>_od.json beside it)")
    parser.add_argument("--label-map", help="the label map to write (default: <name>_label_map.json beside it)")
    args = parser.parse_args(argv)
    for path in coco_to_odvg(args.coco_json, args.out, args.label_map):
        print(path)


if __name__ == "__main__":
    main()
