"""Time per training iteration: pl.Trainer + MMDetModule against mmengine's Runner, side by side.

Each run is a fresh subprocess (clean peak-memory figure) training the same config, data, batch and seed
for ``--iters`` iterations; the two frameworks alternate (and swap order every repeat) so that a busy
machine slows both alike. Per run: median seconds per iteration after ``--warmup`` iterations, and the
process's peak RSS. Printed: min / median / max over the repeats, and the ratio of the medians.

    python benchmarks/train_overhead.py                                 # both default configs
    python benchmarks/train_overhead.py --configs shapes_retinanet.py --repeats 5 --iters 60
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _runs import run_json  # noqa: E402  (benchmarks/ is on sys.path when a script runs)

REPO = Path(__file__).resolve().parents[1]


def _config(name: str, data_root: str, iters: int, batch_size: int) -> Any:
    from mmdet_lightning.config import load_config, replace_data_root

    cfg = replace_data_root(load_config(REPO / "configs" / "mmdet" / name), data_root)
    cfg.train_dataloader.batch_size = batch_size
    cfg.train_cfg = dict(type="IterBasedTrainLoop", max_iters=iters, val_interval=10**9)
    cfg.param_scheduler = [dict(type="LinearLR", start_factor=0.01, by_epoch=False, begin=0, end=iters)]
    cfg.val_cfg = None
    cfg.val_dataloader = None
    cfg.val_evaluator = None
    cfg.default_hooks.checkpoint = dict(type="CheckpointHook", interval=-1)
    cfg.default_hooks.logger = dict(type="LoggerHook", interval=50)
    cfg.default_hooks.visualization = dict(type="DetVisualizationHook", draw=False)
    return cfg


def _run_mmengine(cfg: Any, work_dir: str) -> list[float]:
    from mmengine.hooks import Hook
    from mmengine.runner import Runner

    stamps: list[float] = []

    class Stamp(Hook):
        def before_train_iter(self, runner: Any, batch_idx: int, data_batch: Any = None) -> None:
            stamps.append(time.perf_counter())

        def after_train(self, runner: Any) -> None:
            stamps.append(time.perf_counter())

    cfg.work_dir = work_dir
    runner = Runner.from_cfg(cfg)
    runner.register_hook(Stamp(), priority="VERY_LOW")
    runner.train()
    return stamps


def _run_lightning(cfg: Any, work_dir: str) -> list[float]:
    from mmdet_lightning import MMDetDataModule, MMDetModule
    from mmdet_lightning.lightning_package import pl

    stamps: list[float] = []

    class Stamp(pl.Callback):
        def on_train_batch_start(self, *args: Any) -> None:
            stamps.append(time.perf_counter())

        def on_train_end(self, *args: Any) -> None:
            stamps.append(time.perf_counter())

    iters = cfg.train_cfg.max_iters
    pl.seed_everything(cfg.randomness.seed)
    trainer = pl.Trainer(max_steps=iters, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         callbacks=[Stamp()], default_root_dir=work_dir)
    trainer.fit(MMDetModule.from_config(cfg), datamodule=MMDetDataModule.from_config(cfg))
    return stamps


def _one_run(args: argparse.Namespace) -> None:
    cfg = _config(args.config, args.data_root, args.iters, args.batch_size)
    with tempfile.TemporaryDirectory() as work_dir:
        stamps = (_run_mmengine if args.one == "mmengine" else _run_lightning)(cfg, work_dir)
    deltas = [b - a for a, b in zip(stamps, stamps[1:])][args.warmup:]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"sec_per_iter": statistics.median(deltas), "iters": len(deltas), "peak_rss_mb": peak_mb}))


def _spawn(framework: str, config: str, args: argparse.Namespace) -> dict[str, float]:
    command = [sys.executable, __file__, "--one", framework, "--config", config, "--data-root", args.data_root,
               "--iters", str(args.iters), "--warmup", str(args.warmup), "--batch-size", str(args.batch_size)]
    return run_json(command)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["shapes_faster_rcnn.py", "shapes_retinanet.py"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--iters", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--data-root", default="data/bench_shapes")
    parser.add_argument("--plot", help="also save a bar chart of seconds per iteration to this PNG")
    parser.add_argument("--one", choices=["mmengine", "lightning"], help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        _one_run(args)
        return

    from mmdet_lightning import make_shapes_dataset

    make_shapes_dataset(args.data_root, num_train=200, num_val=10)
    print(f"{'config':24s} {'framework':10s} {'s/iter min':>10s} {'median':>8s} {'max':>8s} {'peak MB':>8s} {'ratio':>6s}")
    table: dict[str, dict[str, list[float]]] = {}
    for config in args.configs:
        runs: dict[str, list[dict[str, float]]] = {"mmengine": [], "lightning": []}
        for repeat in range(args.repeats):
            order = ["mmengine", "lightning"] if repeat % 2 == 0 else ["lightning", "mmengine"]
            for framework in order:
                runs[framework].append(_spawn(framework, config, args))
        table[config] = {f: [r["sec_per_iter"] for r in rs] for f, rs in runs.items()}
        medians = {f: statistics.median(r["sec_per_iter"] for r in rs) for f, rs in runs.items()}
        for framework, rs in runs.items():
            times = [r["sec_per_iter"] for r in rs]
            ratio = medians[framework] / medians["mmengine"]
            print(f"{config:24s} {framework:10s} {min(times):10.4f} {statistics.median(times):8.4f} {max(times):8.4f} "
                  f"{max(r['peak_rss_mb'] for r in rs):8.0f} {ratio:6.3f}")

    if args.plot:
        _plot(table, args.plot)


def _plot(table: dict[str, dict[str, list[float]]], path: str) -> None:
    """Bars: median seconds per iteration; whiskers: min and max over the repeats."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.38
    for offset, (framework, colour) in enumerate([("mmengine", "#888888"), ("lightning", "#792ee5")]):
        xs = [i + (offset - 0.5) * width for i in range(len(table))]
        values = [table[c][framework] for c in table]
        medians = [statistics.median(v) for v in values]
        errors = [[m - min(v) for m, v in zip(medians, values)], [max(v) - m for m, v in zip(medians, values)]]
        label = "mmengine Runner" if framework == "mmengine" else "pl.Trainer + MMDetModule"
        ax.bar(xs, medians, width, yerr=errors, capsize=3, color=colour, label=label)
    ax.set_xticks(range(len(table)), [c.replace("shapes_", "").replace(".py", "") for c in table])
    ax.set_ylabel("seconds per training iteration")
    ax.set_title("Time per iteration, batch 8, 2 CPU cores (lower is better)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()

