"""A checkpoint that cannot be written (disk full, read-only folder) stops training clearly, and nothing already
written is lost: the earlier checkpoints and last.ckpt stay complete, the W&B run is finished with what it logged."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from mmdet_lightning import MMDetDataModule, MMDetModule
from mmdet_lightning.callbacks import MMDetWandbCallback
from mmdet_lightning.checkpoint_io import CheckpointWriteError, SafeCheckpointIO
from mmdet_lightning.lightning_package import pl
from mmdet_lightning.wandb.records import artifacts, find_run_file, history, read_records

ModelCheckpoint = pl.callbacks.ModelCheckpoint
WandbLogger = pl.loggers.WandbLogger


@contextlib.contextmanager
def _small_filesystem(folder: Path, size: int) -> Iterator[Path]:
    """A tmpfs of ``size`` bytes mounted on ``folder`` (skips the test where mounting is not allowed)."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_read_only_folder_keeps_the_existing_checkpoint(tmp_path: Path) -> None:
    with _small_filesystem(tmp_path / "ro", 1 << 20) as folder:
        io = SafeCheckpointIO()
        io.save_checkpoint({"epoch": 0, "w": torch.ones(4)}, folder / "last.ckpt")
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        with pytest.raises(CheckpointWriteError, match=rf"(?s)in folder '{folder}' \(Read-only file system\).*"
                                                       r"unchanged: last.ckpt.*Hint: free space"):
            io.save_checkpoint({"epoch": 1, "w": torch.zeros(4)}, folder / "last.ckpt")
        assert io.load_checkpoint(folder / "last.ckpt")["epoch"] == 0


@pytest.mark.slow
def test_disk_full_stops_training_and_keeps_what_was_written(shapes_config: Any, tmp_path: Path) -> None:
    cfg = shapes_config("shapes_retinanet.py")

    def trainer(dirpath: Path, logger: Any = False, callbacks: tuple = ()) -> pl.Trainer:
        return pl.Trainer(accelerator="cpu", max_epochs=3, limit_train_batches=1, limit_val_batches=1,
                          logger=logger, enable_progress_bar=False, num_sanity_val_steps=0,
                          default_root_dir=str(tmp_path),
                          callbacks=[ModelCheckpoint(dirpath=str(dirpath), every_n_epochs=1, save_top_k=-1,
                                                     save_last=True), *callbacks])

    probe = trainer(tmp_path / "probe")  # how big one checkpoint is
    probe.fit_loop.max_epochs = 1
    probe.fit(MMDetModule(cfg), datamodule=MMDetDataModule(cfg))
    size = (tmp_path / "probe" / "last.ckpt").stat().st_size

    # room for epoch 1's checkpoint and last.ckpt (and the temporary file of last.ckpt), not for epoch 2's
    with _small_filesystem(tmp_path / "small", int(size * 2.5)) as folder:
        logger = WandbLogger(offline=True, save_dir=str(tmp_path / "wandb_dir"), project="disk-full")
        run = trainer(folder, logger, (MMDetWandbCallback(interval=1, log_checkpoint=True, num_eval_images=0),))
        with pytest.raises(CheckpointWriteError, match=rf"(?s)Could not write checkpoint '{folder}/epoch=1-step=2"
                                                       rf"\.ckpt' in folder '{folder}' \(No space left on device\)"
                                                       r".*unchanged: epoch=0-step=1.ckpt, last.ckpt.*Hint: "):
            run.fit(MMDetModule(cfg), datamodule=MMDetDataModule(cfg))
        assert sorted(p.name for p in folder.iterdir()) == ["epoch=0-step=1.ckpt", "last.ckpt"]  # no partial file
        for name in ("epoch=0-step=1.ckpt", "last.ckpt"):
            kept = torch.load(folder / name, weights_only=True)
            assert kept["epoch"] == 0 and kept["global_step"] == 1
        assert run.global_step == 2

    records = read_records(find_run_file(tmp_path / "wandb_dir"))  # waits for the run's exit record
    assert any(r.WhichOneof("record_type") == "exit" for r in records)
    steps = [row["trainer/global_step"] for row in history(records) if "trainer/global_step" in row]
    assert steps, "the run logged no step before the disk filled"
    models = [a for a in artifacts(records) if a.type == "model"]
    assert models and "epoch_1" in models[0].aliases
