"""fp32 against mixed precision: time per training iteration for every config, and the mAP after a short training.

Speed: each config trains ``--iters`` iterations in a fresh process per precision, interleaved,
``--repeats`` times (median s/iter after 5 warm-up iterations). mAP: each of ``--map-configs`` trains
``--epochs`` epochs on 200 synthetic images in each precision and validates on 100.

    python benchmarks/precision.py --repeats 2 --iters 30 --epochs 4                      # CPU: fp32, bf16-mixed
    python benchmarks/precision.py --accelerator gpu --precisions 32-true,16-mixed,bf16-mixed --map-configs all
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _runs import run_json  # noqa: E402  (benchmarks/ is on sys.path when a script runs)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = ["shapes_faster_rcnn.py", "shapes_retinanet.py", "shapes_mask_rcnn.py", "shapes_rtmdet.py"]


def _one(args: argparse.Namespace) -> None:
    from mmdet_lightning import MMDetDataModule, MMDetModule
    from mmdet_lightning.config import load_config, replace_data_root
    from mmdet_lightning.lightning_package import pl

    cfg = replace_data_root(load_config(REPO / "configs" / "mmdet" / args.config), args.data_root)
    stamps: list[float] = []

    class Stamp(pl.Callback):
        def on_train_batch_start(self, *unused: Any) -> None:
            stamps.append(time.perf_counter())

    kwargs: dict[str, Any] = (dict(max_epochs=args.epochs) if args.epochs
                              else dict(max_steps=args.iters, limit_val_batches=0))
    trainer = pl.Trainer(accelerator=args.accelerator, devices=1, precision=args.precision, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, callbacks=[Stamp()], **kwargs)
    pl.seed_everything(0)
    cfg.train_cfg.max_epochs = args.epochs or 1
    trainer.fit(MMDetModule(cfg), datamodule=MMDetDataModule(cfg))
    deltas = [b - a for a, b in itertools.pairwise(stamps)]
    deltas = deltas[5:] or deltas  # warm-up left out where there is more
    losses = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
    result: dict[str, Any] = {"sec_per_iter": statistics.median(deltas),
                              "losses_finite": all(map(math.isfinite, losses.values()))}
    if args.epochs:
        result["mAP"] = float(trainer.callback_metrics["coco/bbox_mAP"])
    print(json.dumps(result))


def _spawn(args: argparse.Namespace, config: str, precision: str, epochs: int) -> dict[str, Any]:
    """One run in a fresh process; a failing run is reported (its error's last lines) and counts as NaN."""
    command = [sys.executable, __file__, "--one", "--config", config, "--precision", precision, "--iters",
               str(args.iters), "--epochs", str(epochs), "--data-root", args.data_root,
               "--accelerator", args.accelerator]
    try:
        return run_json(command)
    except subprocess.CalledProcessError as err:
        print(f"FAILED {config} {precision}:\n{err.stderr[-2000:]}", file=sys.stderr, flush=True)
        return {"sec_per_iter": math.nan, "losses_finite": False, "mAP": math.nan}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--map-configs", default="shapes_faster_rcnn.py", help="comma-separated, or 'all'")
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--precisions", default="32-true,bf16-mixed", help="comma-separated; the first is the baseline")
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
    precisions = args.precisions.split(",")
    base = precisions[0]
    print("| config | " + " | ".join(f"{p} s/iter" for p in precisions) + " | "
          + " | ".join(f"{p} / {base}" for p in precisions[1:]) + " | finite losses |")
    print("|---" * (2 * len(precisions) + 1) + "|")
    for config in CONFIGS:
        times: dict[str, list[float]] = {p: [] for p in precisions}
        finite = True
        for repeat in range(args.repeats):
            for precision in (precisions if repeat % 2 == 0 else precisions[::-1]):
                result = _spawn(args, config, precision, 0)
                times[precision].append(result["sec_per_iter"])
                finite = finite and result["losses_finite"]
        medians = {p: statistics.median(t) for p, t in times.items()}
        print(f"| {config} | " + " | ".join(f"{medians[p]:.4f}" for p in precisions) + " | "
              + " | ".join(f"{medians[p] / medians[base]:.2f}" for p in precisions[1:]) + f" | {finite} |", flush=True)
    map_configs = CONFIGS if args.map_configs == "all" else args.map_configs.split(",")
    print(f"\n| config ({args.epochs} epochs) | " + " | ".join(f"{p} bbox mAP" for p in precisions) + " |")
    print("|---" * (len(precisions) + 1) + "|")
    for config in map_configs:
        maps = {p: _spawn(args, config, p, args.epochs)["mAP"] for p in precisions}
        print(f"| {config} | " + " | ".join(f"{maps[p]:.3f}" for p in precisions) + " |", flush=True)


if __name__ == "__main__":
    main()
