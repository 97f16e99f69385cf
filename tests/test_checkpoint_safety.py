"""Files users hand us: no code runs from a checkpoint, every legitimate checkpoint loads with weights_only=True,
damaged checkpoints and annotation files are named as such."""

from __future__ import annotations

import argparse
import builtins
from pathlib import Path
from typing import Any

import pytest
import torch

from mmdet_lightning import MMDetDataModule, MMDetModule
from mmdet_lightning.checkpoint import (
    TRUST_ENV,
    CheckpointDamagedError,
    UnsafeCheckpointError,
    load_checkpoint_file,
    to_mmdet_checkpoint,
)
from mmdet_lightning.cli import run
from mmdet_lightning.lightning_package import pl
from mmdet_lightning.wandb import wandb_run_id

from .conftest import CONFIGS, REPO

ModelCheckpoint = pl.callbacks.ModelCheckpoint

YAML = REPO / "configs" / "lightning" / "shapes_retinanet.yaml"


class _WritesAFile:
    """Unpickling this runs code: it writes ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return builtins.exec, (f"open({str(self.marker)!r}, 'w').write('code ran')",)


def _evil_checkpoint(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "marker.txt"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"model.backbone.conv1.weight": torch.zeros(1)}, "epoch": 0, "global_step": 0,
                "callbacks": {"MMDetWandbCallback": {"run_id": "abc"}}, "payload": _WritesAFile(marker)}, path)
    return path, marker


def _lightning_fit(cfg: Any, root: Path, max_epochs: int = 1) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", max_epochs=max_epochs, limit_train_batches=2, limit_val_batches=1,
                      logger=False, enable_progress_bar=False, num_sanity_val_steps=0, default_root_dir=str(root),
                      callbacks=[ModelCheckpoint(dirpath=str(root / "ckpt"), save_last=True)])


@pytest.fixture(scope="module")
def lightning_checkpoint(shapes_config: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``last.ckpt`` of a 2-iteration fit (optimizer, schedulers, MessageHub and data position included)."""
    root = tmp_path_factory.mktemp("own")
    cfg = shapes_config("shapes_retinanet.py")
    pl.seed_everything(0)
    _lightning_fit(cfg, root).fit(MMDetModule(cfg), datamodule=MMDetDataModule(cfg))
    return root / "ckpt" / "last.ckpt"


def test_malicious_checkpoint_is_refused_by_every_entry_point(shapes_config: Any, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    evil, marker = _evil_checkpoint(tmp_path)
    refused = rf"(?s)Checkpoint '{evil}' was refused: .*full unpickling.*trust_checkpoint=True.*{TRUST_ENV}=1"
    with pytest.raises(UnsafeCheckpointError, match=refused):
        wandb_run_id(evil)
    with pytest.raises(UnsafeCheckpointError, match=refused):
        to_mmdet_checkpoint(evil, tmp_path / "out.pth")
    with pytest.raises(UnsafeCheckpointError, match=refused):
        MMDetModule(shapes_config("shapes_retinanet.py"), load_from=str(evil))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UnsafeCheckpointError, match=refused):  # before anything is built or logged
        run(["fit", "--config", str(YAML), "--model.config", str(CONFIGS / "shapes_retinanet.py"),
             "--ckpt_path", str(evil)])
    assert not marker.exists()
    assert not (tmp_path / "work_dirs").exists() and not (tmp_path / "out.pth").exists()


def test_the_opt_in_loads_a_trusted_file(shapes_config: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # an old-style checkpoint with a pickled argparse.Namespace: legitimate, but not loadable without trust
    cfg = shapes_config("shapes_retinanet.py")
    state = MMDetModule(cfg).model.state_dict()
    path = tmp_path / "with_namespace.pth"
    torch.save({"state_dict": state, "meta": {"args": argparse.Namespace(lr=0.02)}}, path)
    with pytest.raises(UnsafeCheckpointError, match="argparse.Namespace"):
        MMDetModule(cfg, load_from=str(path))
    module = MMDetModule(cfg, load_from=str(path), trust_checkpoint=True)
    assert not module.load_report.missing and len(module.load_report.loaded) == len(state)
    monkeypatch.setenv(TRUST_ENV, "1")
    assert load_checkpoint_file(path)["meta"]["args"].lr == 0.02
    evil, marker = _evil_checkpoint(tmp_path)
    load_checkpoint_file(evil)  # trusted: it does run the file's code, which is what trusting means
    assert marker.read_text() == "code ran"


def test_mmengine_runner_checkpoint_loads_with_weights_only(shapes_config: Any, tmp_path: Path) -> None:
    """A checkpoint as mmdet's tools/train.py writes it: optimizer, schedulers and message_hub included."""
    from mmengine.runner import Runner

    cfg = shapes_config("shapes_retinanet.py")
    cfg.train_cfg = dict(type="IterBasedTrainLoop", max_iters=1, val_interval=100)
    cfg.param_scheduler = [dict(type="LinearLR", start_factor=0.01, by_epoch=False, begin=0, end=10)]
    cfg.work_dir = str(tmp_path / "runner")
    cfg.default_hooks.checkpoint = dict(type="CheckpointHook", interval=1, by_epoch=False)
    cfg.default_hooks.visualization = dict(type="DetVisualizationHook", draw=False)
    runner = Runner.from_cfg(cfg.copy())
    runner.train()
    path = tmp_path / "runner" / "iter_1.pth"
    with pytest.raises(Exception, match="Weights only load failed"):  # plain torch needs the allow-list ...
        torch.load(path, weights_only=True)
    loaded = load_checkpoint_file(path)  # ... which ours has, for this call only
    assert {"meta", "state_dict", "message_hub", "optimizer", "param_schedulers"} <= set(loaded)
    assert loaded["message_hub"]["log_scalars"]["train/loss"].current() > 0
    with pytest.raises(Exception, match="Weights only load failed"):  # nothing was allowed process-wide
        torch.load(path, weights_only=True)

    module = MMDetModule(shapes_config("shapes_retinanet.py"), load_from=str(path))
    assert not module.load_report.missing and not module.load_report.unexpected
    for key, value in runner.model.state_dict().items():
        torch.testing.assert_close(module.model.state_dict()[key], value)


def test_own_checkpoints_load_and_resume_with_weights_only(lightning_checkpoint: Path, shapes_config: Any,
                                                           tmp_path: Path) -> None:
    assert torch.load(lightning_checkpoint, weights_only=True)["global_step"] == 2  # plain torch, no allow-list
    mmdet_file = to_mmdet_checkpoint(lightning_checkpoint, tmp_path / "model.pth")
    assert set(torch.load(mmdet_file, weights_only=True)) == {"state_dict", "meta"}
    cfg = shapes_config("shapes_retinanet.py")
    for source in (lightning_checkpoint, mmdet_file):
        report = MMDetModule(cfg, load_from=str(source)).load_report
        assert report.loaded and not report.missing and not report.unexpected and not report.mismatched

    # a resumed fit (Lightning reads the file through SafeCheckpointIO) and the checkpoint it writes
    module = MMDetModule(cfg)
    trainer = _lightning_fit(cfg, tmp_path, max_epochs=2)
    trainer.fit(module, datamodule=MMDetDataModule(cfg), ckpt_path=str(lightning_checkpoint))
    resumed = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == 4 and resumed["epoch"] == 1
    assert MMDetModule(cfg, load_from=str(tmp_path / "ckpt" / "last.ckpt")).load_report.loaded


@pytest.mark.slow
def test_cli_resumes_its_own_checkpoint(shapes_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    common = ["--config", str(YAML), "--model.config", str(CONFIGS / "shapes_retinanet.py"),
              "--model.data_root", str(shapes_root), "--trainer.limit_train_batches", "2",
              "--trainer.limit_val_batches", "1"]
    run(["fit", *common, "--trainer.max_epochs", "1"])
    last = tmp_path / "work_dirs" / "shapes_retinanet" / "checkpoints" / "last.ckpt"
    first_run = wandb_run_id(last)
    assert first_run
    cli = run(["fit", *common, "--trainer.max_epochs", "2", "--ckpt_path", str(last)])
    assert cli.trainer.global_step == 4
    assert wandb_run_id(last) == first_run and load_checkpoint_file(last)["epoch"] == 1


def test_damaged_checkpoint_is_named(lightning_checkpoint: Path, shapes_config: Any, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    data = lightning_checkpoint.read_bytes()
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(data[: len(data) // 2])
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    for path in (truncated, empty):
        damaged = rf"(?s)Checkpoint '{path}' is damaged \({path.stat().st_size} bytes\).*Hint: copy or download"
        with pytest.raises(CheckpointDamagedError, match=damaged):
            to_mmdet_checkpoint(path, tmp_path / "out.pth")
        with pytest.raises(CheckpointDamagedError, match=damaged):
            MMDetModule(shapes_config("shapes_retinanet.py"), load_from=str(path))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointDamagedError, match=f"Checkpoint '{truncated}' is damaged"):
        run(["validate", "--config", str(YAML), "--model.config", str(CONFIGS / "shapes_retinanet.py"),
             "--ckpt_path", str(truncated)])


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_damaged_annotation_file_is_named_before_training(shapes_root: Path, tmp_path: Path, damage: str) -> None:
    import shutil

    from mmdet_lightning.config import load_config, replace_data_root

    root = tmp_path / "shapes"
    shutil.copytree(shapes_root, root)
    ann = root / "annotations" / "instances_train.json"
    text = ann.read_text()
    ann.write_text("" if damage == "empty" else text[: len(text) // 2])
    cfg = replace_data_root(load_config(CONFIGS / "shapes_retinanet.py"), root)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False)
    expected = "is empty" if damage == "empty" else r"is not valid JSON .*Expecting"
    with pytest.raises(ValueError, match=rf"(?s)Annotation file '{ann}' {expected}.*Hint: "):
        trainer.fit(MMDetModule(cfg), datamodule=MMDetDataModule(cfg))
    assert trainer.global_step == 0


def test_model_zoo_style_checkpoint_loads_with_weights_only(shapes_config: Any, tmp_path: Path) -> None:
    """As mmdet's published files: the legacy (non-zip) format, an OrderedDict of weights, mmdet 2.x meta."""
    from collections import OrderedDict

    from mmdet_lightning.synthetic import CLASSES

    cfg = shapes_config("shapes_retinanet.py")
    state = OrderedDict(MMDetModule(cfg).model.state_dict())
    meta = {"mmdet_version": "2.25.0", "CLASSES": tuple(CLASSES), "config": "model = dict(type='RetinaNet')",
            "epoch": 12, "iter": 87960, "time": "Sat Jun 11 08:52:12 2022", "hook_msgs": {"last_ckpt": "x.pth"}}
    path = tmp_path / "retinanet_r50_fpn_1x_coco.pth"
    torch.save({"meta": meta, "state_dict": state}, path, _use_new_zipfile_serialization=False)
    module = MMDetModule(cfg, load_from=str(path))
    assert len(module.load_report.loaded) == len(state) and not module.load_report.missing
    assert load_checkpoint_file(path)["meta"]["CLASSES"] == tuple(CLASSES)


def test_safe_checkpoint_io_hashes_what_it_writes_when_asked(tmp_path: Path) -> None:
    """``record_md5``: the MD5 of each file written, from memory, as W&B's manifests hold it; only for that file."""
    from wandb.sdk.lib.hashutil import md5_file_b64

    from mmdet_lightning.checkpoint_io import SafeCheckpointIO

    io, path = SafeCheckpointIO(), tmp_path / "epoch=0.ckpt"
    io.save_checkpoint({"weights": torch.arange(10.0)}, path)
    assert io.md5_of(path) is None  # off by default: nothing hashed
    io.record_md5 = True
    io.save_checkpoint({"weights": torch.arange(10.0)}, path)
    assert io.md5_of(path) == md5_file_b64(str(path))
    link = tmp_path / "link.ckpt"
    link.hardlink_to(path)
    assert io.md5_of(link) == md5_file_b64(str(path))  # the same file under another name
    copy = tmp_path / "copy.ckpt"
    copy.write_bytes(path.read_bytes())
    assert io.md5_of(copy) is None  # another file: not vouched for
    path.unlink()
    path.write_bytes(b"replaced")  # a new file at the same path
    assert io.md5_of(path) is None and io.md5_of(tmp_path / "gone.ckpt") is None
