"""CPU seconds of the W&B callbacks' own work, without training: one prediction table, one checkpoint artifact.

Runs the jobs that ``MMDetWandbCallback``'s worker runs, on generated data, in a fresh process per variant and
repeat, and reports their thread CPU time (``time.thread_time``), which the load of other processes barely moves:

- ``val table``: ``WandbDetectionTables``' first job (`val` table of ``--rows`` images, then a prediction table);
- ``pred table``: a later validation's job (a prediction table of ``--rows`` rows, ``--boxes`` boxes each,
  images referenced from `val`), median of ``--tables`` tables;
- ``ckpt write``: ``SafeCheckpointIO.save_checkpoint`` of a ``--ckpt-mb`` MB checkpoint, hashing on when the
  package has ``record_md5``;
- ``ckpt artifact``: ``WandbCheckpointArtifacts``' upload job for that file (offline: the artifact's manifest).

``--before REF`` runs the same on the package of git revision ``REF`` (the first variant), side by side.

    python benchmarks/wandb_work_cost.py --repeats 3 --before HEAD~3
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

from _runs import package_of, run_json  # noqa: E402  (benchmarks/ is on sys.path when a script runs)

REPO = Path(__file__).resolve().parents[1]


def _cpu(fn: Any, *args: Any) -> float:
    start = time.thread_time()
    fn(*args)
    return time.thread_time() - start


def _one_run(args: argparse.Namespace) -> None:
    import numpy as np
    import torch
    import wandb
    from PIL import Image

    from mmdet_lightning.checkpoint_io import SafeCheckpointIO
    from mmdet_lightning.wandb.checkpoint_artifacts import WandbCheckpointArtifacts
    from mmdet_lightning.wandb.media import Instances
    from mmdet_lightning.wandb.tables import WandbDetectionTables

    folder = tempfile.mkdtemp()
    rng = np.random.default_rng(0)
    infos, predictions = {}, {}
    for index in range(args.rows):
        path = os.path.join(folder, f"{index}.png")
        Image.fromarray(rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)).save(path)
        infos[index] = {"img_path": path, "instances": [{"bbox": [4.0, 8.0, 60.0, 90.0], "bbox_label": index % 3,
                                                         "ignore_flag": 0}] * 3}
        predictions[index] = Instances(rng.uniform(0, 120, (args.boxes, 4)).astype(np.float32),
                                       rng.integers(0, 3, args.boxes), rng.uniform(0.3, 1.0, args.boxes))
    run = wandb.init(mode="offline", dir=folder, project="bench")
    tables = WandbDetectionTables(num_eval_images=args.rows, background=False)
    indices, classes = list(range(args.rows)), ["circle", "square", "triangle"]
    cpu: dict[str, Any] = {"val table": _cpu(tables._write_tables, run, indices, infos, classes, predictions, False,
                                             True, ["epoch_1", "latest"])}
    cpu["pred table"] = statistics.median(
        _cpu(tables._write_tables, run, indices, infos, classes, predictions, False, False, [f"epoch_{k}", "latest"])
        for k in range(2, 2 + args.tables))
    checkpoint_io = SafeCheckpointIO()
    checkpoint_io.record_md5 = True  # what WandbCheckpointArtifacts turns on (an unused attribute before)
    checkpoint = {"state_dict": {"w": torch.randn(args.ckpt_mb * 2**18)}}
    path = os.path.join(folder, "epoch=0-step=25.ckpt")
    cpu["ckpt write"] = _cpu(checkpoint_io.save_checkpoint, checkpoint, path)
    link = os.path.join(folder, "link.ckpt")
    os.link(path, link)
    md5 = checkpoint_io.md5_of(link) if hasattr(checkpoint_io, "md5_of") else None
    artifacts = WandbCheckpointArtifacts()
    job = (run, path, Path(link), f"run_{run.id}_model", ["epoch_1", "latest"], {"epoch": 1})
    cpu["ckpt artifact"] = _cpu(artifacts._log_artifact, *job, *([md5] if md5 else []))
    run.finish()
    print(json.dumps(cpu))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100)
    parser.add_argument("--boxes", type=int, default=10)
    parser.add_argument("--tables", type=int, default=3)
    parser.add_argument("--ckpt-mb", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--before", metavar="REF", help="also run on the package of git revision REF")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        _one_run(args)
        return
    rows: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as before_dir:
        paths = {**({f"before ({args.before})": package_of(REPO, args.before, before_dir)} if args.before else {}),
                 "this tree": str(REPO)}
        for _ in range(args.repeats):
            for variant, package in paths.items():
                command = [sys.executable, __file__, "--one", "--rows", str(args.rows), "--boxes", str(args.boxes),
                           "--tables", str(args.tables), "--ckpt-mb", str(args.ckpt_mb)]
                pythonpath = os.pathsep.join([package, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
                rows.setdefault(variant, []).append(run_json(command, WANDB_SILENT="true", PYTHONPATH=pythonpath))
    keys = list(next(iter(rows.values()))[0])
    print(f"CPU seconds, median of {args.repeats} ({args.rows} rows x {args.boxes} boxes, "
          f"{args.ckpt_mb} MB checkpoint)")
    print(f"{'package':24s} " + " ".join(f"{key:>13s}" for key in keys))
    for variant, runs in rows.items():
        print(f"{variant:24s} " + " ".join(f"{statistics.median(r[key] for r in runs):13.3f}" for key in keys))
    print(f"load average at the end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
