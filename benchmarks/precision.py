"""fp32 against bf16-mixed: time per training iteration for every config, and the mAP after a short training.

Speed: each config trains ``--iters`` iterations in a fresh process per precision, interleaved,
``--repeats`` times (median s/iter after 5 warm-up iterations). mAP: ``--map-config`` trains
``--epochs`` epochs on 200 synthetic images in each precision and validates on 100.

    python benchmarks/precision.py --repeats 2 --iters 30 --epochs 4
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from _runs import run_json  # noqa: E402  (benchmarks/ is on sys.path when a script runs)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = ["shapes_faster_rcnn.py", "shapes_retinanet.py", "shapes_mask_rcnn.py", "shapes_rtmdet.py"]


def _one(args: argparse.Namespace) -> None:
    import pytorch_lightning as pl

    from mmdet_lightning import MMDetDataModule, MMDetModule
    from mmdet_lightning.config import load_config, replace_data_root

    cfg = replace_data_root(load_config(REPO / "configs" / "mmdet" / args.config), args.data_root)
    stamps: list[float] = []

    class Stamp(pl.Callback):
        def on_train_batch_start(self, *unused: Any) -> None:
            stamps.append(time.perf_counter())

    kwargs: dict[str, Any] = dict(max_epochs=args.epochs) if args.epochs else dict(max_steps=args.iters, limit_val_batches=0)
    trainer = pl.Trainer(accelerator="cpu", devices=1, precision=args.precision, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, callbacks=[Stamp()], **kwargs)
    pl.seed_everything(0)
    cfg.train_cfg.max_epochs = args.epochs or 1
    trainer.fit(MMDetModule(cfg), datamodule=MMDetDataModule(cfg))
    deltas = [b - a for a, b in zip(stamps, stamps[1:])][5:]
    result = {"sec_per_iter": statistics.median(deltas)}
    if args.epochs:
        result["mAP"] = float(trainer.callback_metrics["coco/bbox_mAP"])
    print(json.dumps(result))


def _spawn(args: argparse.Namespace, config: str, precision: str, epochs: int) -> dict[str, float]:
    command = [sys.executable, __file__, "--one", "--config", config, "--precision", precision, "--iters",
               str(args.iters), "--epochs", str(epochs), "--data-root", args.data_root]
    return run_json(command)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--map-config", default="shapes_faster_rcnn.py")
    parser.add_argument("--data-root", default="data/bench_precision_shapes")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--precision", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        _one(args)
        return

    from mmdet_lightning import make_shapes_dataset

    make_shapes_dataset(args.data_root, num_train=200, num_val=100)
    print(f"{'config':24s} {'fp32 s/iter':>11s} {'bf16 s/iter':>11s} {'bf16/fp32':>9s}")
    for config in CONFIGS:
        times: dict[str, list[float]] = {"32-true": [], "bf16-mixed": []}
        for repeat in range(args.repeats):
            for precision in (list(times) if repeat % 2 == 0 else list(times)[::-1]):
                times[precision].append(_spawn(args, config, precision, 0)["sec_per_iter"])
        fp32, bf16 = (statistics.median(times[p]) for p in times)
        print(f"{config:24s} {fp32:11.4f} {bf16:11.4f} {bf16 / fp32:9.2f}")
    maps = {p: _spawn(args, args.map_config, p, args.epochs)["mAP"] for p in ("32-true", "bf16-mixed")}
    print(f"{args.map_config} after {args.epochs} epochs: bbox mAP fp32 {maps['32-true']:.3f}, "
          f"bf16-mixed {maps['bf16-mixed']:.3f}")


if __name__ == "__main__":
    main()
