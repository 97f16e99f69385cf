"""COCO evaluation backends on the same predictions: time and the largest difference from pycocotools.

mmdet ``CocoMetric`` (pycocotools), ``FastCocoMetric`` (faster_coco_eval) and ``HotCocoMetric`` (hotcoco), on
synthetic validation sets of each ``--images`` size with the synthetic detections of the tests (jittered ground
truth with box masks, wrong classes, false positives, crowd objects, images without objects or predictions), for
each ``--iou-types``. Each backend's metric is built once (its ground truth loaded, as a training run builds it)
and validates ``--repeats`` times, the backends interleaved. Printed for each: the median seconds of a validation
(``process`` + ``evaluate``: mask encoding, result files and pycocotools' ``loadRes`` included, which every
backend shares) and of its COCOeval alone (``evaluate`` + ``accumulate`` + ``summarize``; wall and CPU seconds,
the CPU time being steadier on a shared machine), the speed-up of each over pycocotools, the COCOeval seconds of
the first validation (``HotCocoMetric`` converts the ground truth to hotcoco's then, once per metric), and the
largest absolute difference from pycocotools of any of the 12 unrounded COCO statistics and of any reported
(rounded) metric. torchmetrics' ``MeanAveragePrecision`` is added,
bbox only, where torchvision is installed.

    python benchmarks/evaluation.py --images 500 5000 --iou-types bbox segm --repeats 3
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

KEYS = ("mAP", "mAP_50", "mAP_75", "mAP_s", "mAP_m", "mAP_l")
METRICS = {"pycocotools": "CocoMetric", "faster_coco_eval": "FastCocoMetric", "hotcoco": "HotCocoMetric"}


@contextlib.contextmanager
def timed(cls: type, seconds: list[tuple[float, float]]) -> Iterator[None]:
    """Add the wall and CPU seconds of every ``evaluate``, ``accumulate`` and ``summarize`` of ``cls`` to
    ``seconds``."""
    names = ("evaluate", "accumulate", "summarize")
    own = {name: cls.__dict__.get(name) for name in names}
    for name in names:
        method = getattr(cls, name)

        def wrapper(self: Any, *args: Any, __method: Callable = method, **kwargs: Any) -> Any:
            start, cpu = time.perf_counter(), time.process_time()
            try:
                return __method(self, *args, **kwargs)
            finally:
                seconds.append((time.perf_counter() - start, time.process_time() - cpu))

        setattr(cls, name, wrapper)
    try:
        yield
    finally:
        for name, method in own.items():
            if method is None:
                delattr(cls, name)
            else:
                setattr(cls, name, method)


def coco_eval_class(backend: str) -> type:
    if backend == "faster_coco_eval":
        from faster_coco_eval import COCOeval_faster

        return COCOeval_faster
    if backend == "hotcoco":
        from mmdet_lightning.evaluation import HotCocoEval

        return HotCocoEval
    from mmdet.datasets.api_wrappers import COCOeval

    return COCOeval


def build_metric(backend: str, ann_file: Path) -> Any:
    """The backend's metric, built once as a training run builds it (the ground truth loaded)."""
    from mmdet.registry import METRICS as REGISTRY

    from mmdet_lightning.config import init_mmdet_scope

    init_mmdet_scope()
    with contextlib.redirect_stdout(io.StringIO()):
        return REGISTRY.build(dict(type=METRICS[backend], ann_file=str(ann_file)))


def run_metric(backend: str, metric: Any, samples: list[dict], iou_type: str) -> dict[str, Any]:
    """One validation with the backend's metric: seconds in all and in COCOeval, the results and the 12 statistics."""
    from mmdet_lightning.evaluation import record_coco_evals

    in_coco_eval: list[tuple[float, float]] = []
    metric.metrics = [iou_type]
    metric.dataset_meta = {"classes": ("circle", "square", "triangle")}
    start = time.perf_counter()
    with timed(coco_eval_class(backend), in_coco_eval), record_coco_evals() as coco_evals, \
            contextlib.redirect_stdout(io.StringIO()):
        for first in range(0, len(samples), 8):
            metric.process({}, samples[first:first + 8])
        results = metric.evaluate(len(samples))
    seconds = time.perf_counter() - start
    (coco_eval,) = coco_evals
    return {"seconds": seconds, "coco_eval_seconds": sum(wall for wall, _ in in_coco_eval),
            "coco_eval_cpu_seconds": sum(cpu for _, cpu in in_coco_eval), "results": results,
            "stats": np.asarray(coco_eval.stats[:12], dtype=float)}


def run_torchmetrics(backend: str, ann_file: Path, samples: list[dict]) -> dict[str, Any]:
    import json

    import torch
    from torchmetrics.detection import MeanAveragePrecision

    start = time.perf_counter()
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
    names = dict(zip(KEYS, ("map", "map_50", "map_75", "map_small", "map_medium", "map_large"), strict=True))
    return {"seconds": time.perf_counter() - start, "coco_eval_seconds": float("nan"),
            "coco_eval_cpu_seconds": float("nan"),
            "results": {f"coco/bbox_{key}": round(float(out[name]), 3) for key, name in names.items()},
            "stats": np.full(12, np.nan)}


def validation_set(data_root: str, num_images: int) -> Path:
    """The benchmarks' synthetic validation set of ``num_images`` (10% crowd objects, 8% empty images)."""
    from mmdet_lightning.synthetic import ShapesConfig, make_shapes_dataset

    return make_shapes_dataset(f"{data_root}_{num_images}", ShapesConfig(
        num_train=0, num_val=num_images, crowd_prob=0.1, empty_prob=0.08, seed=5))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, nargs="+", default=[500, 5000])
    parser.add_argument("--iou-types", nargs="+", default=["bbox", "segm"], choices=["bbox", "segm"])
    parser.add_argument("--backends", nargs="+", default=list(METRICS), choices=list(METRICS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-root", default="data/bench_eval_shapes")
    args = parser.parse_args()

    from tests.test_evaluation import synthetic_predictions

    rows = []
    for num_images in args.images:
        root = validation_set(args.data_root, num_images)
        ann_file = root / "annotations" / "instances_val.json"
        samples = synthetic_predictions(ann_file)
        detections = sum(len(s["pred_instances"]["bboxes"]) for s in samples)
        for iou_type in args.iou_types:
            if iou_type == "bbox":  # a box detector's predictions: no masks to encode
                batch = [{**s, "pred_instances": {k: v for k, v in s["pred_instances"].items() if k != "masks"}}
                         for s in samples]
            else:
                batch = samples
            metrics = {name: build_metric(name, ann_file) for name in args.backends}  # one each, as in training
            runners: dict[str, Callable[[], dict[str, Any]]] = {
                name: functools.partial(run_metric, name, metrics[name], batch, iou_type) for name in args.backends}
            if iou_type == "bbox":
                try:
                    from torchmetrics.detection import MeanAveragePrecision  # noqa: F401  needs torchvision
                except ImportError as err:
                    print(f"torchmetrics MeanAveragePrecision skipped: {err} (it needs torchvision)", file=sys.stderr)
                else:
                    for name in ("pycocotools", "faster_coco_eval"):
                        runners[f"torchmetrics ({name})"] = functools.partial(run_torchmetrics, name, ann_file, batch)
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in runners}
            for _ in range(args.repeats):
                for name, run in runners.items():
                    runs[name].append(run())
                    print(f"{num_images} {iou_type} {name}: {runs[name][-1]['seconds']:.2f} s", file=sys.stderr)
            base = runs["pycocotools"][0]
            base_s = statistics.median(r["seconds"] for r in runs["pycocotools"])
            base_eval_s = statistics.median(r["coco_eval_seconds"] for r in runs["pycocotools"])
            base_cpu_s = statistics.median(r["coco_eval_cpu_seconds"] for r in runs["pycocotools"])
            for name, results in runs.items():
                seconds = statistics.median(r["seconds"] for r in results)
                eval_seconds = statistics.median(r["coco_eval_seconds"] for r in results)
                cpu_seconds = statistics.median(r["coco_eval_cpu_seconds"] for r in results)
                stats_diff = max(float(np.max(np.abs(r["stats"] - base["stats"]))) for r in results)
                reported = [abs(r["results"][key] - base["results"][key]) for r in results for key in base["results"]
                            if key in r["results"]]
                rows.append((num_images, detections, iou_type, name, seconds, base_s / seconds, eval_seconds,
                             base_eval_s / eval_seconds, cpu_seconds, base_cpu_s / cpu_seconds,
                             results[0]["coco_eval_seconds"], stats_diff, max(reported)))
    print("| images | detections | type | backend | metric s | speed-up | COCOeval s | speed-up | COCOeval CPU s | "
          "speed-up | first COCOeval s | max stats diff | max reported diff |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for n, d, iou_type, name, s, up, es, eup, cs, cup, first, diff, rdiff in rows:
        print(f"| {n} | {d} | {iou_type} | {name} | {s:.2f} | {up:.1f}x | {es:.3f} | {eup:.0f}x | {cs:.3f} | "
              f"{cup:.0f}x | {first:.3f} | {diff:.1e} | {rdiff:.3f} |")


if __name__ == "__main__":
    main()
