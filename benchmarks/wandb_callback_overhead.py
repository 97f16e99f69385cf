"""Wall time of a short training run with and without MMDetWandbCallback, W&B offline, side by side.

Both runs log to an offline WandbLogger and save a checkpoint every epoch; the "with" run adds
``MMDetWandbCallback(interval=50, log_checkpoint=True, num_eval_images=100)``. Each run is a fresh
subprocess; the two alternate (and swap order every repeat). Printed: min / median / max wall time of
``trainer.fit`` and the ratio of the medians.

    python benchmarks/wandb_callback_overhead.py --repeats 3 --epochs 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _runs import run_json  # noqa: E402  (benchmarks/ is on sys.path when a script runs)

REPO = Path(__file__).resolve().parents[1]


def _one_run(args: argparse.Namespace) -> None:
    from mmdet_lightning import MMDetDataModule, MMDetModule
    from mmdet_lightning.callbacks import MMDetWandbCallback
    from mmdet_lightning.config import load_config, replace_data_root
    from mmdet_lightning.lightning_package import pl

    cfg = replace_data_root(load_config(REPO / "configs" / "mmdet" / args.config), args.data_root)
    cfg.train_cfg.max_epochs = args.epochs
    with tempfile.TemporaryDirectory() as work_dir:
        callbacks = [pl.callbacks.ModelCheckpoint(dirpath=work_dir, every_n_epochs=1, save_top_k=-1)]
        if args.one == "with":
            callbacks.append(MMDetWandbCallback(interval=50, log_checkpoint=True, num_eval_images=100))
        logger = pl.loggers.WandbLogger(offline=True, save_dir=work_dir, project="bench")
        trainer = pl.Trainer(max_epochs=args.epochs, accelerator="cpu", devices=1, logger=logger, callbacks=callbacks,
                             enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                             default_root_dir=work_dir)
        pl.seed_everything(0)
        module, data = MMDetModule(cfg), MMDetDataModule(cfg)
        start = time.perf_counter()
        trainer.fit(module, datamodule=data)
        logger.experiment.finish()
        seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="shapes_faster_rcnn.py")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--data-root", default="data/bench_wandb_shapes")
    parser.add_argument("--one", choices=["with", "without"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        _one_run(args)
        return

    from mmdet_lightning import make_shapes_dataset

    make_shapes_dataset(args.data_root, num_train=200, num_val=100)
    times: dict[str, list[float]] = {"without": [], "with": []}
    for repeat in range(args.repeats):
        for variant in (["without", "with"] if repeat % 2 == 0 else ["with", "without"]):
            command = [sys.executable, __file__, "--one", variant, "--config", args.config, "--epochs",
                       str(args.epochs), "--data-root", args.data_root]
            times[variant].append(run_json(command, WANDB_MODE="offline", WANDB_SILENT="true")["seconds"])
    base = statistics.median(times["without"])
    print(f"{'run':28s} {'fit s min':>9s} {'median':>8s} {'max':>8s} {'ratio':>6s}")
    for variant, values in times.items():
        label = f"{variant} MMDetWandbCallback"
        print(f"{label:28s} {min(values):9.1f} {statistics.median(values):8.1f} {max(values):8.1f} "
              f"{statistics.median(values) / base:6.3f}")


if __name__ == "__main__":
    main()
