"""What the training step sends to Lightning's logging: train/loss at most every TRAIN_LOSS_INTERVAL seconds
(each self.log costs about half a millisecond), at each epoch's last batch, at the loggers' steps, and every
step for a callback that monitors it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mmdet_lightning import MMDetDataModule, MMDetModule
from mmdet_lightning.lightning_package import pl


class LossSeen(pl.Callback):
    """Per step: the loss the step computed and the train/loss in callback_metrics after it."""

    def __init__(self) -> None:
        self.steps: list[tuple[float, float | None]] = []

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        seen = trainer.callback_metrics.get("train/loss")
        self.steps.append((float(outputs["loss"]), None if seen is None else float(seen)))


def _fit(cfg: Any, tmp_path: Path, callbacks: list[pl.Callback]) -> None:
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=6, limit_val_batches=0, accelerator="cpu",
                         logger=pl.loggers.CSVLogger(str(tmp_path)), log_every_n_steps=4, enable_progress_bar=False,
                         enable_checkpointing=False, enable_model_summary=False, callbacks=callbacks,
                         default_root_dir=str(tmp_path))
    trainer.fit(MMDetModule(cfg), datamodule=MMDetDataModule(cfg))


def test_train_loss_is_sent_at_intervals_logger_steps_and_epoch_end(shapes_config: Any, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(MMDetModule, "TRAIN_LOSS_INTERVAL", 3600.0)
    seen = LossSeen()
    _fit(shapes_config("shapes_retinanet.py", batch_size=2), tmp_path, [seen])
    sent = [k for k, (loss, shown) in enumerate(seen.steps) if shown == pytest.approx(loss)]
    # first step (interval), the loggers' step (global step 4: batch 3) and the epoch's last batch (5)
    assert sent == [0, 3, 5]
    logged = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text().splitlines()
    assert "train/loss" in logged[0] and "train/loss_cls" in logged[0]


def test_a_callback_monitoring_train_loss_gets_it_every_step(shapes_config: Any, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(MMDetModule, "TRAIN_LOSS_INTERVAL", 3600.0)
    seen = LossSeen()
    early_stop = pl.callbacks.EarlyStopping(monitor="train/loss", patience=100, check_on_train_epoch_end=True)
    _fit(shapes_config("shapes_retinanet.py", batch_size=2), tmp_path, [seen, early_stop])
    assert len(seen.steps) == 6 and all(shown == pytest.approx(loss) for loss, shown in seen.steps)
