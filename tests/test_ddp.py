"""Two processes (DDP, gloo, CPU) with the W&B callback: one run, nothing logged twice, the same mAP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl

from mmdet_lightning import MMDetDataModule, MMDetModule
from mmdet_lightning.utilities.wandb_records import artifacts, find_run_file, read_records

SCRIPT = Path(__file__).with_name("ddp_fit.py")


@pytest.mark.slow
def test_two_processes_log_once_and_evaluate_like_one(shapes_root: Path, shapes_config: Any,
                                                        trained_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, str(SCRIPT), str(out), str(shapes_root), str(trained_checkpoint), "2"],
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())

    records = read_records(find_run_file(out))  # exactly one W&B run
    logged = artifacts(records)
    models = [a for a in logged if a.type == "model"]
    assert [sorted(a.aliases) for a in models] == [["epoch_1", "latest"], ["epoch_2", "latest"]]
    assert len([a for a in logged if a.name == "val"]) == 1
    preds = [a for a in logged if a.type == "evaluation"]
    assert len(preds) == 2
    for pred in preds:
        entry = next(e for e in pred.manifest.contents if e.path == "eval_data.table.json")
        assert len(json.loads(Path(entry.local_path).read_text())["data"]) == 5

    # one process, the same weights: the same mAP (DDP's evaluation drops the samplers' padding)
    cfg = shapes_config("shapes_faster_rcnn.py", batch_size=2)
    module = MMDetModule(cfg, load_from=str(out / "ckpt" / "last.ckpt"))
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    single = trainer.validate(module, datamodule=MMDetDataModule(cfg))[0]
    assert metrics["coco/bbox_mAP"] > 0
    assert single["coco/bbox_mAP"] == pytest.approx(metrics["coco/bbox_mAP"], abs=1e-3)
