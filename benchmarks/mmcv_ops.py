"""Milliseconds per training step with mmcv's compiled ops against mmdet_lightning's PyTorch ops (issue #29).

Same process recipe for both sides, each run a fresh subprocess: build the shipped config's detector
(configs/mmdet/shapes_*.py, batch 8 of 128 px synthetic images), take one batch from its training dataloader and
train on it for ``--iters`` steps after ``--warmup`` (data preprocessor, ``mode="loss"``, ``parse_losses``,
backward, SGD step; no data loading in the timing). The side is chosen with ``MMDET_LIGHTNING_MMCV_OPS``: ``auto``
takes the compiled ``mmcv._ext`` (run this in an environment that has it), ``torch`` forces the PyTorch ops. Each
run also times every call into ``mmcv._ext`` (which functions, how many calls, milliseconds per step), which is
where the two sides differ, and the loss of every step (same weights, batch and steps on both sides: the relative
differences, at the first step and the largest, are how far the ops' float differences move training). Sides
alternate, order swapped every repeat; printed: the median over repeats of each run's median step, the ratio torch /
compiled and the ext-time per step. Steps are timed in CPU time of the process (``time.process_time``, one torch
thread by default): on a shared machine wall time varies threefold with the neighbours' load, CPU time much less;
wall-clock medians are printed beside.

    python benchmarks/mmcv_ops.py                                  # the four shipped configs, 3 repeats
    python benchmarks/mmcv_ops.py --configs shapes_faster_rcnn.py --repeats 5 --iters 40 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

CONFIGS = ["shapes_retinanet.py", "shapes_faster_rcnn.py", "shapes_mask_rcnn.py", "shapes_rtmdet.py"]


def _one_run(config: str, iters: int, warmup: int, threads: int, data_root: str) -> dict[str, Any]:
    import torch

    torch.set_num_threads(threads)
    import mmdet_lightning  # noqa: F401  (installs the mmcv._ext hook)
    from mmdet_lightning.config import init_mmdet_scope, load_config, replace_data_root
    from mmdet_lightning.mmcv_ext import ops_backend

    init_mmdet_scope()
    import mmcv.ops  # noqa: F401
    from mmdet.registry import MODELS
    from mmengine.runner import Runner, set_random_seed

    ext = sys.modules["mmcv._ext"]
    calls: dict[str, list[float]] = {}

    def timed(name: str, fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                calls.setdefault(name, []).append(time.process_time() - t0)

        return wrapper

    for name in dir(ext):
        fn = getattr(ext, name)
        if not name.startswith("_") and callable(fn):
            setattr(ext, name, timed(name, fn))

    cfg = replace_data_root(load_config(REPO / "configs" / "mmdet" / config), data_root)
    cfg.train_dataloader.num_workers = 0
    cfg.train_dataloader.persistent_workers = False
    set_random_seed(0)  # python, numpy and torch: the pipeline's random transforms draw the same batch on both sides
    batch = next(iter(Runner.build_dataloader(cfg.train_dataloader, seed=0)))
    model = MODELS.build(cfg.model)
    model.init_weights()
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    times, cpu_times, step_losses = [], [], []
    for i in range(warmup + iters):
        if i == warmup:
            calls.clear()
        t0, c0 = time.perf_counter(), time.process_time()
        data = model.data_preprocessor(batch, True)
        losses = model(**data, mode="loss")
        loss, _ = model.parse_losses(losses)
        opt.zero_grad()
        loss.backward()
        opt.step()
        step_losses.append(float(loss))
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    ext_ms = {k: [len(v) / iters, 1000 * sum(v) / iters] for k, v in sorted(calls.items())}
    return {"backend": ops_backend(), "ms": 1000 * statistics.median(cpu_times[warmup:]),
            "wall_ms": 1000 * statistics.median(times[warmup:]),
            "ext_ms": sum(v[1] for v in ext_ms.values()), "ext": ext_ms, "losses": step_losses}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=CONFIGS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1: a shared machine)")
    parser.add_argument("--run", nargs=2, metavar=("CONFIG", "DATA_ROOT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        print(json.dumps(_one_run(args.run[0], args.iters, args.warmup, args.threads, args.run[1])))
        return

    from _runs import run_json

    from mmdet_lightning.synthetic import ShapesConfig, make_shapes_dataset

    root = make_shapes_dataset(Path(tempfile.gettempdir()) / "mmcv_ops_bench_shapes",
                               ShapesConfig(num_train=16, num_val=4, seed=0))
    results: dict[str, Any] = {}
    for config in args.configs:
        runs: dict[str, list[dict[str, Any]]] = {"auto": [], "torch": []}
        for rep in range(args.repeats):
            for mode in (("auto", "torch") if rep % 2 == 0 else ("torch", "auto")):
                cmd = [sys.executable, __file__, "--run", config, str(root), "--iters", str(args.iters),
                       "--warmup", str(args.warmup), "--threads", str(args.threads)]
                runs[mode].append(run_json(cmd, MMDET_LIGHTNING_MMCV_OPS=mode))
        comp, pure = runs["auto"], runs["torch"]
        if comp[0]["backend"] != "compiled":
            print(f"{config}: no compiled mmcv._ext here; both sides ran the PyTorch ops", file=sys.stderr)
        c_ms = statistics.median(r["ms"] for r in comp)
        t_ms = statistics.median(r["ms"] for r in pure)
        c_wall = statistics.median(r["wall_ms"] for r in comp)
        t_wall = statistics.median(r["wall_ms"] for r in pure)
        row = {
            "compiled_ms": round(c_ms, 1),
            "torch_ms": round(t_ms, 1),
            "ratio": round(t_ms / c_ms, 3),
            "compiled_wall_ms": round(c_wall, 1),
            "torch_wall_ms": round(t_wall, 1),
            "wall_ratio": round(t_wall / c_wall, 3),
            # same weights, batch and steps on both sides: how far the ops' float differences move the loss
            "rel_loss_diffs": [abs(a - b) / max(abs(a), 1e-12)
                               for a, b in zip(comp[0]["losses"], pure[0]["losses"], strict=True)],
            "compiled_ext_ms": round(statistics.median(r["ext_ms"] for r in comp), 2),
            "torch_ext_ms": round(statistics.median(r["ext_ms"] for r in pure), 2),
            "compiled_runs_ms": [round(r["ms"], 1) for r in comp],
            "torch_runs_ms": [round(r["ms"], 1) for r in pure],
            "ext_calls": {k: {"calls_per_step": v[0], "compiled_ms": round(v[1], 2),
                              "torch_ms": round(pure[0]["ext"].get(k, [0, 0])[1], 2)}
                          for k, v in comp[0]["ext"].items()},
        }
        results[config] = row
        print(f"{config:24s} CPU ms/step: compiled {c_ms:7.1f}  torch {t_ms:7.1f}  ratio {t_ms / c_ms:.3f}  "
              f"(in mmcv._ext: {row['compiled_ext_ms']} / {row['torch_ext_ms']}); wall: {c_wall:.1f} / "
              f"{t_wall:.1f}, ratio {t_wall / c_wall:.3f}; rel loss diff: first step {row['rel_loss_diffs'][0]:.1e}, "
              f"largest over {len(pure[0]['losses'])} steps {max(row['rel_loss_diffs']):.1e}", flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()
