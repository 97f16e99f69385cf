"""bf16 mixed precision on the CPU: every config trains a few iterations with finite losses."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl

from mmdet_lightning import MMDetDataModule, MMDetModule

from .test_configs import CONFIG_NAMES


class LossRecorder(pl.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.losses.append(float(outputs["loss"]))


@pytest.mark.slow
@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_bf16_mixed_on_cpu(name: str, shapes_config: Any, tmp_path: Any) -> None:
    cfg = shapes_config(name, max_epochs=1, batch_size=4)
    recorder = LossRecorder()
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=3, limit_val_batches=1, precision="bf16-mixed",
                         accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         num_sanity_val_steps=0, callbacks=[recorder], default_root_dir=str(tmp_path))
    pl.seed_everything(0)
    trainer.fit(MMDetModule(cfg), datamodule=MMDetDataModule(cfg))
    assert len(recorder.losses) == 3 and np.all(np.isfinite(recorder.losses)), recorder.losses
    assert 0.0 <= float(trainer.callback_metrics["coco/bbox_mAP"]) <= 1.0
