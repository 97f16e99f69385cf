"""Images per second of the training dataloader (the config's pipeline), by worker count.

Builds the config's ``train_dataloader`` through ``MMDetDataModule`` (mmengine's builder, as training
does) and iterates it for ``--batches`` batches after one warm-up batch, ``--repeats`` times per worker
count, interleaved. Printed: min / median / max images per second and the ratio to 0 workers.

    python benchmarks/dataloader.py --workers 0 1 2 --batches 20
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _images_per_second(config: str, data_root: str, workers: int, batches: int) -> float:
    from mmdet_lightning import MMDetDataModule
    from mmdet_lightning.config import load_config, replace_data_root

    cfg = replace_data_root(load_config(REPO / "configs" / "mmdet" / config), data_root)
    cfg.train_dataloader.num_workers = workers
    cfg.train_dataloader.persistent_workers = False
    data = MMDetDataModule(cfg, seed=0)
    data.setup("fit")
    loader = iter(data.train_dataloader())
    next(loader)  # start-up (workers forked, first batch) is not counted
    start, images = time.perf_counter(), 0
    for _ in range(batches):
        images += len(next(loader)["inputs"])
    return images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="shapes_mask_rcnn.py")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-root", default="data/bench_shapes")
    args = parser.parse_args()

    from mmdet_lightning import make_shapes_dataset

    make_shapes_dataset(args.data_root, num_train=200, num_val=10)
    rates: dict[int, list[float]] = {w: [] for w in args.workers}
    for _ in range(args.repeats):
        for workers in args.workers:
            rates[workers].append(_images_per_second(args.config, args.data_root, workers, args.batches))
    base = statistics.median(rates[args.workers[0]])
    print(f"{args.config}: {args.batches} batches of the training dataloader")
    print(f"{'workers':>7s} {'img/s min':>9s} {'median':>7s} {'max':>7s} {'ratio':>6s}")
    for workers, values in rates.items():
        print(f"{workers:7d} {min(values):9.1f} {statistics.median(values):7.1f} {max(values):7.1f} "
              f"{statistics.median(values) / base:6.2f}")


if __name__ == "__main__":
    main()
