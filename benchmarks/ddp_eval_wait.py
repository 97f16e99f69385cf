"""How long the other ranks wait for rank 0's COCO evaluation under DDP, by evaluation backend (issue #26).

Under DDP every rank runs its share of the validation images; then mmengine's ``BaseMetric.evaluate`` gathers
the results on rank 0, which computes the metrics (pycocotools, faster_coco_eval or hotcoco) while the other ranks
wait in the broadcast of the metrics. This benchmark runs that step alone, without a model: ``--processes`` CPU
processes (gloo) each ``process`` their share (every ``world_size``-th image, as ``DefaultSampler`` shards) of the
synthetic detections of ``benchmarks/evaluation.py``, then ``evaluate``; printed per backend and size: the median
seconds rank 0 spends in ``evaluate`` (gather + COCO evaluation) and the median seconds the other ranks wait in it,
over ``--repeats`` validations with one metric per backend (its ground truth loaded once, as in training).

    python benchmarks/ddp_eval_wait.py --images 500 5000 --iou-types bbox --repeats 3
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _rank_main(rank: int, world_size: int, port: int, jobs: list[tuple[str, int, str, str]], repeats: int,
               results: Any) -> None:
    import torch.distributed as dist
    from evaluation import build_metric

    from tests.test_evaluation import synthetic_predictions

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    for backend, num_images, iou_type, root in jobs:
        ann_file = Path(root) / "annotations" / "instances_val.json"
        samples = synthetic_predictions(ann_file)
        if iou_type == "bbox":  # a box detector's predictions: no masks to encode
            samples = [{**s, "pred_instances": {k: v for k, v in s["pred_instances"].items() if k != "masks"}}
                       for s in samples]
        mine = samples[rank::world_size]
        metric = build_metric(backend, ann_file)
        metric.dataset_meta = {"classes": ("circle", "square", "triangle")}
        metric.metrics = [iou_type]
        for _ in range(repeats):
            for first in range(0, len(mine), 8):
                metric.process({}, mine[first:first + 8])
            dist.barrier()  # every rank done with its images: from here on, what rank 1 spends is waiting
            start = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):
                metric.evaluate(len(samples))
            results.put((backend, num_images, iou_type, rank, time.perf_counter() - start))
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, nargs="+", default=[500, 5000])
    parser.add_argument("--iou-types", nargs="+", default=["bbox"], choices=["bbox", "segm"])
    parser.add_argument("--backends", nargs="+", default=["pycocotools", "faster_coco_eval", "hotcoco"])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-root", default="data/bench_eval_shapes")
    args = parser.parse_args()

    import torch.multiprocessing as mp
    from evaluation import validation_set

    jobs = []
    for num_images in args.images:
        root = validation_set(args.data_root, num_images)
        jobs += [(backend, num_images, iou_type, str(root)) for iou_type in args.iou_types
                 for backend in args.backends]
    context = mp.get_context("spawn")
    results = context.SimpleQueue()
    port = 29500 + os.getpid() % 1000
    mp.start_processes(_rank_main, args=(args.processes, port, jobs, args.repeats, results),
                       nprocs=args.processes, start_method="spawn")
    seconds: dict[tuple[str, int, str, bool], list[float]] = {}
    while not results.empty():
        backend, num_images, iou_type, rank, spent = results.get()
        seconds.setdefault((backend, num_images, iou_type, rank == 0), []).append(spent)
    print(f"| images | type | backend | rank 0 in evaluate (s) | other ranks wait (s) |  ({args.processes} processes, "
          f"median of {args.repeats})")
    print("|---|---|---|---|---|")
    for backend, num_images, iou_type, _ in jobs:
        rank0 = statistics.median(seconds[(backend, num_images, iou_type, True)])
        others = statistics.median(seconds[(backend, num_images, iou_type, False)])
        print(f"| {num_images} | {iou_type} | {backend} | {rank0:.3f} | {others:.3f} |")


if __name__ == "__main__":
    main()
