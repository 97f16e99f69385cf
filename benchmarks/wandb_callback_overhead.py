"""Cost of MMDetWandbCallback on a short training run, W&B offline: wall time and CPU seconds, side by side.

Both runs log to an offline WandbLogger and save a checkpoint every epoch; the "with" run adds
``MMDetWandbCallback(interval=50, log_checkpoint=True, num_eval_images=100)``. Each run is a fresh
subprocess; the variants alternate (their order rotates every repeat). ``--before REF`` adds a third variant,
"with" on the package of git revision ``REF`` (extracted with ``git archive`` and put first on PYTHONPATH), so
that a change is measured before and after in one invocation, on the same machine load.

Printed per variant: min / median / max wall time of ``trainer.fit`` + ``finish()`` and the ratio of the medians
(noisy where other jobs share the cores), then CPU seconds (medians), which other processes' load barely moves:

- ``process``: the training process, all threads (``getrusage(RUSAGE_SELF)``);
- ``wandb-core``: W&B's service process (``/proc/<pid>/stat``, read after ``finish()``), system metrics sampling
  included (``--stats-sampling S`` sets ``x_stats_sampling_interval``; 0 turns sampling off in both runs);
- ``worker``: CPU time of the callback's background jobs on their thread (``time.thread_time``), per kind:
  ``tables`` (``val`` and prediction tables), ``checkpoint`` (artifact), ``other`` (analytics, FLOPs);
- ``hooks``: main-thread CPU time inside the callback's hooks (analytics, table hand-over, checkpoint hand-over);
- ``ckpt_save``: main-thread CPU time of writing the checkpoints (``CheckpointIO.save_checkpoint``).

    python benchmarks/wandb_callback_overhead.py --repeats 3 --epochs 3 --before HEAD~3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _runs import package_of, run_json  # noqa: E402  (benchmarks/ is on sys.path when a script runs)

REPO = Path(__file__).resolve().parents[1]
_JOB_KINDS = {"_write_tables": "tables", "_log_artifact": "checkpoint"}


def _thread_cpu_meter(cpu: dict[str, float], key: Callable[..., str], fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` wrapped to add the calling thread's CPU seconds to ``cpu[key(*args)]``."""

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        start = time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            cpu[key(*args, **kwargs)] += time.thread_time() - start

    return wrapped


def _instrument(cpu: dict[str, float], callback: Any) -> None:
    """Meter the worker's jobs, the callback's hooks and checkpoint writing (the same names before and after)."""
    from mmdet_lightning.lightning_package import pl
    from mmdet_lightning.wandb import worker

    def job_kind(self: Any, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> str:
        return "worker_" + _JOB_KINDS.get(getattr(fn, "__name__", ""), "other")

    worker.BackgroundWorker._run = _thread_cpu_meter(cpu, job_kind, worker.BackgroundWorker._run)  # type: ignore
    io_class = pl.plugins.io.TorchCheckpointIO
    from mmdet_lightning import checkpoint_io

    for cls in {io_class, checkpoint_io.SafeCheckpointIO}:
        cls.save_checkpoint = _thread_cpu_meter(cpu, lambda *a, **k: "ckpt_save", cls.save_checkpoint)
    if callback is None:
        return
    from mmdet_lightning.wandb.checkpoint_artifacts import WandbCheckpointArtifacts

    main = threading.main_thread()

    def hook_key(*args: Any, **kwargs: Any) -> str:
        return "hooks" if threading.current_thread() is main else "hooks_other_thread"

    WandbCheckpointArtifacts._on_checkpoint_saved = _thread_cpu_meter(  # type: ignore[method-assign]
        cpu, hook_key, WandbCheckpointArtifacts._on_checkpoint_saved)
    for name in [n for n in dir(callback) if n.startswith("on_") or n in ("setup", "teardown")]:
        setattr(callback, name, _thread_cpu_meter(cpu, hook_key, getattr(callback, name)))


def _WallClock(pl: Any) -> Any:  # noqa: N802  (a class made once Lightning's package is imported)
    """A callback adding the wall seconds of training batches and of validations to ``seconds``."""

    class WallClock(pl.Callback):
        def __init__(self) -> None:
            self.seconds: dict[str, float] = defaultdict(float)
            self._start = 0.0

        def _begin(self, *args: Any) -> None:
            self._start = time.perf_counter()

        def on_train_batch_end(self, *args: Any) -> None:
            self.seconds["train_batches"] += time.perf_counter() - self._start

        def on_validation_end(self, *args: Any) -> None:
            self.seconds["validation"] += time.perf_counter() - self._start

        on_train_batch_start = on_validation_start = _begin

    return WallClock()


def _descendants(pid: int) -> list[int]:
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(c) for c in (task / "children").read_text().split()]
    return children + [d for c in children for d in _descendants(c)]


def _wandb_core_cpu() -> float:
    """CPU seconds (user + system) of this process's wandb-core service, still running after ``finish()``."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in _descendants(os.getpid()):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        name, fields = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
        if name.startswith("wandb"):
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def _one_run(args: argparse.Namespace) -> None:
    import wandb

    from mmdet_lightning import MMDetDataModule, MMDetModule
    from mmdet_lightning.callbacks import MMDetWandbCallback
    from mmdet_lightning.config import load_config, replace_data_root
    from mmdet_lightning.lightning_package import pl

    cfg = replace_data_root(load_config(REPO / "configs" / "mmdet" / args.config), args.data_root)
    cfg.train_cfg.max_epochs = args.epochs
    cpu: dict[str, float] = defaultdict(float)
    with tempfile.TemporaryDirectory() as work_dir:
        callbacks = [pl.callbacks.ModelCheckpoint(dirpath=work_dir, every_n_epochs=1, save_top_k=-1)]
        callback = None
        if args.one != "without":
            callback = MMDetWandbCallback(interval=50, log_checkpoint=True, num_eval_images=100)
            callbacks.append(callback)
        _instrument(cpu, callback)
        wall = _WallClock(pl)
        callbacks.append(wall)
        settings = wandb.Settings(x_stats_sampling_interval=args.stats_sampling or 15.0,
                                  x_disable_stats=args.stats_sampling == 0)
        logger = pl.loggers.WandbLogger(offline=True, save_dir=work_dir, project="bench", settings=settings)
        trainer = pl.Trainer(max_epochs=args.epochs, accelerator="cpu", devices=1, logger=logger, callbacks=callbacks,
                             enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                             default_root_dir=work_dir)
        pl.seed_everything(0)
        module, data = MMDetModule(cfg), MMDetDataModule(cfg)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        trainer.fit(module, datamodule=data)
        logger.experiment.finish()
        seconds = time.perf_counter() - start
        end = resource.getrusage(resource.RUSAGE_SELF)
        cpu["process"] = end.ru_utime + end.ru_stime - usage.ru_utime - usage.ru_stime
        cpu["wandb_core"] = _wandb_core_cpu()
    print(json.dumps({"seconds": seconds, "cpu": cpu, "wall": wall.seconds}))


def _table(rows: dict[str, list[dict[str, Any]]]) -> None:
    base = statistics.median(run["seconds"] for run in rows["without"])
    print(f"{'run':24s} {'fit s min':>9s} {'median':>8s} {'max':>8s} {'ratio':>6s}")
    for variant, runs in rows.items():
        values = [run["seconds"] for run in runs]
        print(f"{variant:24s} {min(values):9.1f} {statistics.median(values):8.1f} {max(values):8.1f} "
              f"{statistics.median(values) / base:6.3f}")
    walls = sorted({key for runs in rows.values() for run in runs for key in run.get("wall", {})})
    print("\nwall seconds, median of the repeats")
    print(f"{'run':24s} " + " ".join(f"{key:>14s}" for key in walls))
    for variant, runs in rows.items():
        print(f"{variant:24s} " + " ".join(f"{statistics.median(run['wall'].get(key, 0.0) for run in runs):14.2f}"
                                           for key in walls))
    keys = sorted({key for runs in rows.values() for run in runs for key in run["cpu"]})
    print("\nCPU seconds, median of the repeats")
    print(f"{'run':24s} " + " ".join(f"{key:>12s}" for key in keys))
    for variant, runs in rows.items():
        print(f"{variant:24s} " + " ".join(f"{statistics.median(run['cpu'].get(key, 0.0) for run in runs):12.2f}"
                                           for key in keys))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="shapes_faster_rcnn.py")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--data-root", default="data/bench_wandb_shapes")
    parser.add_argument("--before", metavar="REF", help="also run 'with' on the package of git revision REF")
    parser.add_argument("--stats-sampling", type=float, default=15.0,
                        help="seconds between W&B system-metrics samples (wandb's default 15); 0: off")
    parser.add_argument("--json", help="also write every run's figures to this file")
    parser.add_argument("--one", choices=["with", "without", "before"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        _one_run(args)
        return

    from mmdet_lightning import make_shapes_dataset

    make_shapes_dataset(args.data_root, num_train=200, num_val=100)
    variants = ["without", "with", *(["before"] if args.before else [])]
    rows: dict[str, list[dict[str, Any]]] = {variant: [] for variant in variants}
    with tempfile.TemporaryDirectory() as before_dir:
        paths = {"without": str(REPO), "with": str(REPO)}
        if args.before:
            paths["before"] = package_of(REPO, args.before, before_dir)
        for repeat in range(args.repeats):
            order = variants[repeat % len(variants):] + variants[:repeat % len(variants)]
            for variant in order:
                command = [sys.executable, __file__, "--one", variant, "--config", args.config, "--epochs",
                           str(args.epochs), "--data-root", args.data_root, "--stats-sampling",
                           str(args.stats_sampling)]
                pythonpath = os.pathsep.join([paths[variant], os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
                result = run_json(command, WANDB_MODE="offline", WANDB_SILENT="true", PYTHONPATH=pythonpath)
                rows[variant].append(result)
                print(variant, json.dumps(result), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    _table(rows)
    print(f"\nload average at the end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
