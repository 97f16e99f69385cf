"""COCO evaluation backends on the same predictions: time and every reported number.

mmdet ``CocoMetric`` (pycocotools), ``FastCocoMetric`` (faster_coco_eval) and torchmetrics
``MeanAveragePrecision`` (pycocotools and faster_coco_eval backends), on ``--images`` synthetic validation
images with the synthetic detections of the tests (jittered ground truth, wrong classes, false positives,
crowd objects, images without objects or predictions). Each backend runs ``--repeats`` times,
interleaved; printed: min / median / max seconds for process + evaluate, the ratio to CocoMetric, and the
six bbox numbers.

    python benchmarks/evaluation.py --images 3000 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

KEYS = ("mAP", "mAP_50", "mAP_75", "mAP_s", "mAP_m", "mAP_l")


def _mmdet(metric_type: str, ann_file: Path, samples: list[dict]) -> dict[str, float]:
    from tests.test_evaluation import _evaluate

    results = _evaluate(metric_type, ann_file, samples, ["bbox"])
    return {key: results[f"coco/bbox_{key}"] for key in KEYS}


def _torchmetrics(backend: str, ann_file: Path, samples: list[dict]) -> dict[str, float]:
    import json

    import torch
    from torchmetrics.detection import MeanAveragePrecision

    coco = json.loads(ann_file.read_text())
    targets: dict[int, dict[str, list]] = {i["id"]: {"boxes": [], "labels": [], "iscrowd": [], "area": []}
                                           for i in coco["images"]}
    for ann in coco["annotations"]:
        x, y, w, h = ann["bbox"]
        target = targets[ann["image_id"]]
        target["boxes"].append([x, y, x + w, y + h])
        target["labels"].append(ann["category_id"] - 1)
        target["iscrowd"].append(ann["iscrowd"])
        target["area"].append(ann["area"])
    metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend=backend)
    for sample in samples:
        pred = sample["pred_instances"]
        target = targets[sample["img_id"]]
        metric.update([{"boxes": pred["bboxes"], "scores": pred["scores"], "labels": pred["labels"]}],
                      [{"boxes": torch.tensor(target["boxes"], dtype=torch.float32).reshape(-1, 4),
                        "labels": torch.tensor(target["labels"], dtype=torch.int64),
                        "iscrowd": torch.tensor(target["iscrowd"], dtype=torch.int64),
                        "area": torch.tensor(target["area"], dtype=torch.float32)}])
    out = metric.compute()
    names = dict(zip(KEYS, ("map", "map_50", "map_75", "map_small", "map_medium", "map_large")))
    return {key: round(float(out[name]), 3) for key, name in names.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-root", default="data/bench_eval_shapes")
    args = parser.parse_args()

    from mmdet_lightning.synthetic import ShapesConfig, make_shapes_dataset
    from tests.test_evaluation import synthetic_predictions

    root = make_shapes_dataset(args.data_root, ShapesConfig(num_train=0, num_val=args.images, crowd_prob=0.1,
                                                            empty_prob=0.08, seed=5))
    ann_file = root / "annotations" / "instances_val.json"
    samples = synthetic_predictions(ann_file)
    for sample in samples:  # a box detector's predictions: no masks to encode
        sample["pred_instances"].pop("masks")
    backends: dict[str, Callable[[], dict[str, float]]] = {
        "CocoMetric (pycocotools)": lambda: _mmdet("CocoMetric", ann_file, samples),
        "FastCocoMetric (faster_coco_eval)": lambda: _mmdet("FastCocoMetric", ann_file, samples),
    }
    try:
        from torchmetrics.detection import MeanAveragePrecision  # noqa: F401  needs torchvision
    except ImportError as err:
        print(f"torchmetrics MeanAveragePrecision skipped: {err} (it needs torchvision)")
    else:
        backends["torchmetrics MAP (pycocotools)"] = lambda: _torchmetrics("pycocotools", ann_file, samples)
        backends["torchmetrics MAP (faster_coco_eval)"] = lambda: _torchmetrics("faster_coco_eval", ann_file, samples)
    times: dict[str, list[float]] = {name: [] for name in backends}
    numbers: dict[str, dict[str, float]] = {}
    for _ in range(args.repeats):
        for name, evaluate in backends.items():
            start = time.perf_counter()
            numbers[name] = evaluate()
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["CocoMetric (pycocotools)"])
    print(f"{args.images} images, {sum(len(s['pred_instances']['bboxes']) for s in samples)} detections")
    print(f"{'backend':36s} {'s min':>6s} {'median':>7s} {'max':>6s} {'speed-up':>8s}  " + " ".join(f"{k:>7s}" for k in KEYS))
    for name, values in times.items():
        print(f"{name:36s} {min(values):6.2f} {statistics.median(values):7.2f} {max(values):6.2f} "
              f"{base / statistics.median(values):8.2f}  " + " ".join(f"{numbers[name][k]:7.3f}" for k in KEYS))


if __name__ == "__main__":
    main()
