"""Time per training iteration: pl.Trainer + MMDetModule against mmengine's Runner, side by side.

Each run is a fresh subprocess (clean peak-memory figure) training the same config, data, batch and seed
for ``--iters`` iterations; the two frameworks alternate (and swap order every repeat) so that a busy
machine slows both alike. Per run: median seconds per iteration (start to start, data loading included)
after ``--warmup`` iterations, and the process's peak RSS. Printed: min / median / max over the repeats,
the ratio of the medians and the difference in milliseconds per iteration.

A case is a config at an input size and batch size (``--cases``): ``fast`` is a RetinaNet small enough for
GPU-like step times on a CPU (10-30 ms), ``retinanet_96`` the ~150 ms step of issue #15, ``faster_rcnn`` and
``retinanet`` the configs as shipped (batch 8, 128 px). ``--console`` chooses what each side prints:
``off`` (no progress bar, no logger; mmengine's LoggerHook every 10**9 iterations) or ``on`` (what users run:
Lightning's progress bar and default logger; mmengine's LoggerHook printing every 50 iterations).

Wall times of 10-50 ms steps on a shared 2-core machine vary by a few milliseconds between runs, more than
what either framework adds, so each run also times the work both frameworks share (the same mmdet code:
reading and transforming samples, data preprocessor, forward, ``parse_losses``, backward, the config's
gradient clipping, optimizer step and ``zero_grad``) and reports, per iteration, the rest: **framework ms**,
what the loop, hooks, callbacks, logging and progress bar cost on each side. Its difference between the two
sides is the overhead, free of the model's run-to-run noise. ``--gaps`` splits it by where it falls: between
the end of one shared call and the start of the next (``step -> __getitem__``: after the optimizer step, before
the next sample is read), the median over the repeats.

    python benchmarks/train_overhead.py                                 # the shipped configs
    python benchmarks/train_overhead.py --cases fast retinanet_96 --console off on --repeats 5 --iters 200
    python benchmarks/train_overhead.py --cases fast --processes 2 --repeats 3 --iters 150 --gaps   # DDP
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _runs import run_json  # noqa: E402  (benchmarks/ is on sys.path when a script runs)

REPO = Path(__file__).resolve().parents[1]


#: name -> (config, batch size, input size (w, h), config overrides)
CASES: dict[str, tuple[str, int, tuple[int, int], dict[str, Any]]] = {
    "fast": ("shapes_retinanet.py", 2, (64, 48), {
        "model.backbone.base_channels": 8, "model.neck.in_channels": [8, 16, 32, 64], "model.neck.out_channels": 32,
        "model.bbox_head.in_channels": 32, "model.bbox_head.feat_channels": 32, "model.bbox_head.stacked_convs": 1}),
    "retinanet_96": ("shapes_retinanet.py", 2, (96, 72), {}),
    "faster_rcnn": ("shapes_faster_rcnn.py", 8, (128, 128), {}),
    "retinanet": ("shapes_retinanet.py", 8, (128, 128), {}),
}


def _config(case: str, data_root: str, iters: int, console: str) -> Any:
    from mmdet_lightning.config import apply_cfg_options, load_config, replace_data_root

    name, batch_size, size, overrides = CASES[case]
    cfg = replace_data_root(load_config(REPO / "configs" / "mmdet" / name), data_root)
    apply_cfg_options(cfg, overrides)
    for step in cfg.train_dataloader.dataset.pipeline:
        if step["type"] == "Resize":
            step["scale"] = size
    cfg.train_dataloader.batch_size = batch_size
    cfg.train_cfg = dict(type="IterBasedTrainLoop", max_iters=iters, val_interval=10**9)
    cfg.param_scheduler = [dict(type="LinearLR", start_factor=0.01, by_epoch=False, begin=0, end=iters)]
    cfg.val_cfg = None
    cfg.val_dataloader = None
    cfg.val_evaluator = None
    cfg.default_hooks.checkpoint = dict(type="CheckpointHook", interval=-1)
    cfg.default_hooks.logger = dict(type="LoggerHook", interval=50 if console == "on" else 10**9)
    cfg.default_hooks.visualization = dict(type="DetVisualizationHook", draw=False)
    return cfg


class SharedWork:
    """Seconds spent in the work both frameworks share: the same mmdet, mmengine and torch calls, timed by
    wrapping them on either side (``seconds`` only grows; ``stamp`` records it beside the wall clock).

    Example::
        >>> shared = SharedWork()
        >>> shared.wrap_model(model); shared.wrap_optimizer(optim_wrapper)  # doctest: +SKIP
    """

    def __init__(self) -> None:
        self.seconds = 0.0
        self.wall: list[float] = []
        self.inside: list[float] = []
        self.calls: list[tuple[str, float, float]] = []  # (name, start, end) of each outermost shared call
        self._depth = 0

    def timed(self, fn: Any) -> Any:
        name = fn.__qualname__.split(".")[-1]

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if self._depth:  # nested shared calls (a sample read inside a step) are counted once
                return fn(*args, **kwargs)
            self._depth += 1
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                end = time.perf_counter()
                self.seconds += end - start
                self.calls.append((name, start, end))
                self._depth -= 1
        return wrapper

    def wrap_globals(self) -> None:
        """Sample reading and transforms (``BaseDataset.__getitem__``) and ``Tensor.backward``."""
        import torch
        from mmengine.dataset import BaseDataset

        BaseDataset.__getitem__ = self.timed(BaseDataset.__getitem__)
        torch.Tensor.backward = self.timed(torch.Tensor.backward)

    def wrap_model(self, model: Any) -> None:
        for obj, name in ((model.data_preprocessor, "forward"), (model, "forward"), (model, "parse_losses")):
            setattr(obj, name, self.timed(getattr(obj, name)))

    def wrap_optimizer(self, optim_wrapper: Any) -> None:
        """The optimizer's ``step`` and ``zero_grad`` and the wrapper's gradient clipping (mmengine's
        ``OptimWrapper.step`` clips; MMDetModule clips in ``on_before_optimizer_step``, inside the step)."""
        optim_wrapper._clip_grad = self.timed(optim_wrapper._clip_grad)
        for name in ("step", "zero_grad"):
            setattr(optim_wrapper.optimizer, name, self.timed(getattr(optim_wrapper.optimizer, name)))

    def stamp(self) -> None:
        now = time.perf_counter()
        self.wall.append(now)
        self.inside.append(self.seconds)
        self.calls.append(("iteration start", now, now))

    def per_iteration(self, warmup: int) -> tuple[list[float], list[float]]:
        """Wall seconds and framework seconds (wall less shared work) of each iteration after ``warmup``."""
        walls = [b - a for a, b in itertools.pairwise(self.wall)][warmup:]
        shared = [b - a for a, b in itertools.pairwise(self.inside)][warmup:]
        return walls, [w - s for w, s in zip(walls, shared, strict=True)]

    def gaps(self, warmup: int) -> dict[str, float]:
        """Framework seconds per iteration after ``warmup``, by where they fall: between the end of one shared
        call and the start of the next (``"step -> __getitem__"``: after the optimizer step, before the next
        sample is read)."""
        calls, iterations = self._timed_calls(warmup)
        total: dict[str, float] = {}
        for (before, _, end), (after, start, _) in itertools.pairwise(calls):
            key = f"{before} -> {after}"
            total[key] = total.get(key, 0.0) + start - end
        return _per_iteration(total, iterations)

    def shared_calls(self, warmup: int) -> dict[str, float]:
        """Seconds per iteration after ``warmup`` inside each shared call (``"backward"``: ``Tensor.backward``,
        DDP's gradient all-reduce included), where the two sides' shared work differs when it does."""
        calls, iterations = self._timed_calls(warmup)
        total: dict[str, float] = {}
        for name, start, end in calls:
            if name != "iteration start":
                total[name] = total.get(name, 0.0) + end - start
        return _per_iteration(total, iterations)

    def _timed_calls(self, warmup: int) -> tuple[list[tuple[str, float, float]], int]:
        """The calls from the first timed iteration's start to the last one's end, and how many iterations."""
        starts = [i for i, (name, *_) in enumerate(self.calls) if name == "iteration start"]
        return self.calls[starts[warmup]:starts[-1] + 1], len(starts) - 1 - warmup


def _per_iteration(total: dict[str, float], iterations: int) -> dict[str, float]:
    """Seconds per iteration of each key, largest first."""
    return {key: seconds / iterations for key, seconds in sorted(total.items(), key=lambda kv: -kv[1])}


def _run_mmengine(cfg: Any, work_dir: str, shared: SharedWork) -> None:
    from mmengine.hooks import Hook
    from mmengine.runner import Runner

    class Stamp(Hook):
        def before_train(self, runner: Any) -> None:
            shared.wrap_model(runner.model.module if hasattr(runner.model, "module") else runner.model)
            shared.wrap_optimizer(runner.optim_wrapper)

        def before_train_iter(self, runner: Any, batch_idx: int, data_batch: Any = None) -> None:
            shared.stamp()

        def after_train(self, runner: Any) -> None:
            shared.stamp()

    cfg.work_dir = work_dir
    if _world_size() > 1:  # started by torchrun, as `tools/dist_train.sh` starts mmdet's tools/train.py
        import torch

        cfg.launcher = "pytorch"
        # on CPU processes: mmengine's init_dist('pytorch') would call torch.cuda.set_device, and its DDP
        # wrapper would pass a CUDA device id; the runner joins a process group that already exists
        torch.distributed.init_process_group("gloo")
        cfg.model_wrapper_cfg = dict(type="MMDistributedDataParallel", device_ids=None, broadcast_buffers=False)
    runner = Runner.from_cfg(cfg)
    runner.register_hook(Stamp(), priority="VERY_LOW")
    runner.train()


def _run_lightning(cfg: Any, work_dir: str, console: bool, shared: SharedWork,
                   lightning_sigterm: bool = False) -> None:
    from mmdet_lightning import MMDetDataModule, MMDetModule
    from mmdet_lightning.lightning_package import pl

    class Stamp(pl.Callback):
        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            shared.wrap_model(pl_module.model)
            shared.wrap_optimizer(pl_module.optim_wrapper)

        def on_train_batch_start(self, *args: Any) -> None:
            shared.stamp()

        def on_train_end(self, *args: Any) -> None:
            shared.stamp()

    if lightning_sigterm:  # diagnostic: Lightning's own SIGTERM protocol (its per-step broadcast under DDP)
        MMDetModule.HANDLE_PREEMPTION = False
    iters = cfg.train_cfg.max_iters
    pl.seed_everything(cfg.randomness.seed)
    world_size = _world_size()  # under torchrun, Lightning joins its processes
    strategy = "ddp" if world_size > 1 else "auto"
    trainer = pl.Trainer(max_steps=iters, accelerator="cpu", devices=world_size, strategy=strategy, logger=console,
                         enable_checkpointing=False, enable_progress_bar=console, enable_model_summary=console,
                         limit_val_batches=0,
                         callbacks=[Stamp()], default_root_dir=work_dir)
    trainer.fit(MMDetModule.from_config(cfg), datamodule=MMDetDataModule.from_config(cfg))


def _one_run(args: argparse.Namespace) -> None:
    cfg = _config(args.case, args.data_root, args.iters, args.console[0])
    shared = SharedWork()
    shared.wrap_globals()
    with tempfile.TemporaryDirectory() as work_dir:
        if args.one == "mmengine":
            _run_mmengine(cfg, work_dir, shared)
        else:
            _run_lightning(cfg, work_dir, args.console[0] == "on", shared, args.lightning_sigterm)
    walls, framework = shared.per_iteration(args.warmup)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if int(os.environ.get("RANK", 0)) == 0:
        print(json.dumps({"sec_per_iter": statistics.median(walls), "mean_sec_per_iter": statistics.mean(walls),
                          "iters": len(walls), "peak_rss_mb": peak_mb,
                          "framework_sec_per_iter": statistics.mean(framework),
                          "gaps": shared.gaps(args.warmup), "shared": shared.shared_calls(args.warmup)}))


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", 1))


def _spawn(framework: str, case: str, console: str, args: argparse.Namespace) -> dict[str, float]:
    launch = [sys.executable]
    if args.processes > 1:  # both frameworks under torchrun, same global batch (batch size per process x N)
        launch += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.processes}"]
    command = [*launch, __file__, "--one", framework, "--case", case, "--console", console,
               "--data-root", args.data_root, "--iters", str(args.iters), "--warmup", str(args.warmup)]
    if args.lightning_sigterm:
        command.append("--lightning-sigterm")
    return run_json(command)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=["faster_rcnn", "retinanet"])
    parser.add_argument("--console", nargs="+", choices=["off", "on"], default=["off"])
    parser.add_argument("--processes", type=int, default=1, help="DDP processes (gloo, CPU) under torchrun")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--iters", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--data-root", default="data/bench_shapes_1000")
    parser.add_argument("--plot", help="also save a bar chart of seconds per iteration to this PNG")
    parser.add_argument("--gaps", action="store_true",
                        help="also print each side's framework ms by where it falls between two shared calls")
    parser.add_argument("--lightning-sigterm", action="store_true",
                        help="diagnostic: Lightning's own SIGTERM handling (a broadcast every step under DDP) "
                             "instead of "
                             "mmdet_lightning's PreemptionHandler")
    parser.add_argument("--one", choices=["mmengine", "lightning"], help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        _one_run(args)
        return

    from mmdet_lightning import make_shapes_dataset

    # 1000 images: the timed iterations of a case stay within one epoch (no dataloader restart, where
    # mmengine's IterBasedTrainLoop sleeps 2 s), so the framework time's mean is a per-step cost
    make_shapes_dataset(args.data_root, num_train=1000, num_val=10)
    print(f"{'case':13s} {'console':7s} {'framework':10s} {'ms/iter min':>11s} {'median':>7s} {'max':>7s} "
          f"{'peak MB':>7s} {'ratio':>6s} {'ms more':>7s} {'framework ms':>12s} {'more':>6s} {'mean ratio':>10s}")
    table: dict[str, dict[str, list[float]]] = {}
    for case in args.cases:
        for console in args.console:
            runs: dict[str, list[dict[str, float]]] = {"mmengine": [], "lightning": []}
            for repeat in range(args.repeats):
                order = ["mmengine", "lightning"] if repeat % 2 == 0 else ["lightning", "mmengine"]
                for framework in order:
                    runs[framework].append(_spawn(framework, case, console, args))
            table[f"{case} ({console})" if len(args.console) > 1 else case] = {
                f: [r["sec_per_iter"] for r in rs] for f, rs in runs.items()}
            medians = {f: statistics.median(r["sec_per_iter"] for r in rs) for f, rs in runs.items()}
            own = {f: 1000 * statistics.median(r["framework_sec_per_iter"] for r in rs) for f, rs in runs.items()}
            # the mean iteration (every step's time counts; the median of a skewed distribution can move alone)
            means = {f: statistics.median(r.get("mean_sec_per_iter", r["sec_per_iter"]) for r in rs)
                     for f, rs in runs.items()}
            for framework, rs in runs.items():
                ms = [1000 * r["sec_per_iter"] for r in rs]
                ratio = medians[framework] / medians["mmengine"]
                more = 1000 * (medians[framework] - medians["mmengine"])
                print(f"{case:13s} {console:7s} {framework:10s} {min(ms):11.1f} {statistics.median(ms):7.1f} "
                      f"{max(ms):7.1f} {max(r['peak_rss_mb'] for r in rs):7.0f} {ratio:6.3f} {more:7.2f} "
                      f"{own[framework]:12.2f} {own[framework] - own['mmengine']:6.2f} "
                      f"{means[framework] / means['mmengine']:10.3f}", flush=True)
            if args.gaps:
                _print_gaps(runs)

    if args.plot:
        _plot(table, args.plot)


def _print_gaps(runs: dict[str, list[dict[str, Any]]]) -> None:
    """Median over the repeats of each side's framework ms between two shared calls (0.02 ms and more)."""
    for framework, rs in runs.items():
        keys = {key for r in rs for key in r["gaps"]}
        gaps = {key: 1000 * statistics.median(r["gaps"].get(key, 0.0) for r in rs) for key in keys}
        print(f"  {framework}: framework ms between shared calls (median of the repeats)")
        for key, ms in sorted(gaps.items(), key=lambda kv: -kv[1]):
            if ms >= 0.02:
                print(f"    {key:40s} {ms:6.2f}")
        shared = {key: 1000 * statistics.median(r["shared"].get(key, 0.0) for r in rs) for key in rs[0]["shared"]}
        print(f"  {framework}: ms inside each shared call (median of the repeats)")
        for key, ms in sorted(shared.items(), key=lambda kv: -kv[1]):
            print(f"    {key:40s} {ms:6.2f}")


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
        errors = [[m - min(v) for m, v in zip(medians, values, strict=True)],
                  [max(v) - m for m, v in zip(medians, values, strict=True)]]
        label = "mmengine Runner" if framework == "mmengine" else "pl.Trainer + MMDetModule"
        ax.bar(xs, medians, width, yerr=errors, capsize=3, color=colour, label=label)
    ax.set_xticks(range(len(table)), list(table))
    ax.set_ylabel("seconds per training iteration")
    ax.set_title("Time per iteration, 2 CPU cores (lower is better)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()

