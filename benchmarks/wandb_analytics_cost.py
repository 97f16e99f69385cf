"""Seconds that WandbEvalAnalytics adds to each validation (building and logging its tables and charts),
beside the validation's own wall time, on a synthetic dataset, W&B offline.

    python benchmarks/wandb_analytics_cost.py --num-val 8 --epochs 3 [--load-from faster_rcnn_shapes.pth]

The model complexity (FLOPs, counted once a run on the first validation batch) is timed separately.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-val", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--config", default="shapes_faster_rcnn.py")
    parser.add_argument("--load-from", default=None)
    args = parser.parse_args()

    from mmdet_lightning import MMDetDataModule, MMDetModule
    from mmdet_lightning.config import load_config, replace_data_root
    from mmdet_lightning.lightning_package import pl
    from mmdet_lightning.synthetic import ShapesConfig, make_shapes_dataset
    from mmdet_lightning.wandb import WandbEvalAnalytics
    from mmdet_lightning.wandb import analytics as analytics_module

    class ValidationClock(pl.Callback):
        def __init__(self) -> None:
            self.seconds: list[float] = []

        def on_validation_start(self, *_: Any) -> None:
            self._start = time.perf_counter()

        def on_validation_end(self, trainer: pl.Trainer, *_: Any) -> None:
            if not trainer.sanity_checking:
                self.seconds.append(time.perf_counter() - self._start)

    complexity_seconds: list[float] = []
    original = analytics_module.model_complexity

    def timed_complexity(*a: Any, **k: Any) -> Any:
        start = time.perf_counter()
        try:
            return original(*a, **k)
        finally:
            complexity_seconds.append(time.perf_counter() - start)

    analytics_module.model_complexity = timed_complexity
    with tempfile.TemporaryDirectory() as work:
        root = make_shapes_dataset(Path(work) / "shapes", ShapesConfig(num_train=8, num_val=args.num_val, seed=0))
        cfg = replace_data_root(load_config(REPO / "configs" / "mmdet" / args.config), root)
        cfg.train_cfg.max_epochs = args.epochs
        if args.load_from:
            cfg.load_from = args.load_from
        analytics, clock = WandbEvalAnalytics(), ValidationClock()
        durations: list[float] = []
        log = analytics._log

        def timed_log(*a: Any, **k: Any) -> None:
            log(*a, **k)
            durations.append(analytics.last_duration)

        analytics._log = timed_log  # type: ignore[method-assign]
        logger = pl.loggers.WandbLogger(offline=True, save_dir=work)
        trainer = pl.Trainer(max_epochs=args.epochs, limit_train_batches=1, accelerator="cpu", logger=logger,
                             callbacks=[clock, analytics], enable_progress_bar=False, num_sanity_val_steps=0,
                             enable_checkpointing=False)
        trainer.fit(MMDetModule(cfg), datamodule=MMDetDataModule(cfg))
        logger.experiment.finish()
    print(f"validations: {len(durations)}, {args.num_val} images each")
    print(f"analytics per validation: median {statistics.median(durations):.3f} s "
          f"(min {min(durations):.3f}, max {max(durations):.3f})")
    print(f"validation wall time:     median {statistics.median(clock.seconds):.3f} s")
    print(f"ratio: {statistics.median(durations) / statistics.median(clock.seconds):.3f}")
    print(f"model complexity (once a run): {sum(complexity_seconds):.3f} s")


if __name__ == "__main__":
    main()
