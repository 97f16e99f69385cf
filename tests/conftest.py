"""Shared fixtures: one synthetic dataset per test session, configs pointed at it.

No W&B environment is set for the suite: tests choose offline mode as users do (``WandbLogger(offline=True)``,
a YAML's ``offline: true``, the CLI's fallback without credentials) and write W&B's files to their own folder.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from mmdet_lightning import MMDetDataModule, MMDetModule
from mmdet_lightning.config import load_config, replace_data_root
from mmdet_lightning.lightning_package import pl
from mmdet_lightning.synthetic import CLASSES, ShapesConfig, make_shapes_dataset

REPO = Path(__file__).resolve().parents[1]
# imports lightning.pytorch: only for the suite's second pass (`-p tests.helpers.lightning_first`), never collected
collect_ignore = ["helpers/lightning_first.py"]
CONFIGS = REPO / "configs" / "mmdet"


@pytest.fixture(autouse=True)
def _no_wandb_run_left() -> Any:
    """A W&B run left open would be reused by the next test's WandbLogger."""
    yield
    import wandb

    if wandb.run is not None:
        wandb.finish()


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 training and 8 validation images of 128x128 pixels, made once per session; with ``transformers``
    installed, also the tiny BERT of ``shapes_grounding_dino.py`` (``tiny_bert/``, random weights)."""
    root = make_shapes_dataset(tmp_path_factory.mktemp("shapes"), ShapesConfig(num_train=24, num_val=8, seed=0))
    if importlib.util.find_spec("transformers") is not None:
        from mmdet_lightning.language_model import make_tiny_bert

        make_tiny_bert(root / "tiny_bert")
    return root


@pytest.fixture(scope="session")
def shapes_config(shapes_root: Path) -> Callable[..., Any]:
    """``shapes_config("shapes_retinanet.py", max_epochs=2)``: a repo config on the session's dataset."""

    def make(name: str, max_epochs: int = 1, batch_size: int = 4) -> Any:
        cfg = replace_data_root(load_config(CONFIGS / name), shapes_root)
        cfg.train_dataloader.batch_size = batch_size
        cfg.val_dataloader.batch_size = batch_size
        cfg.train_cfg.max_epochs = max_epochs
        return cfg

    return make


@pytest.fixture(scope="session")
def semi_shapes_config(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Any]:
    """``semi_shapes_config(max_iters=8)``: ``shapes_soft_teacher.py`` on ``shapes_root``'s images (same seed) plus
    24 unlabeled ones (``num_unlabeled``), made once per session."""
    root = make_shapes_dataset(tmp_path_factory.mktemp("semi_shapes"),
                               ShapesConfig(num_train=24, num_val=8, num_unlabeled=24, seed=0))

    def make(max_iters: int = 8, batch_size: int = 4) -> Any:
        cfg = replace_data_root(load_config(CONFIGS / "shapes_soft_teacher.py"), root)
        cfg.train_dataloader.batch_size = cfg.train_dataloader.sampler.batch_size = batch_size
        cfg.val_dataloader.batch_size = 4
        cfg.train_cfg.max_iters = cfg.train_cfg.val_interval = max_iters
        return cfg

    return make


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory: pytest.TempPathFactory, shapes_root: Path) -> Path:
    """An mmdet-format checkpoint of the Faster R-CNN config trained (about a minute) to a mAP above 0.

    Trained on 200 images of the same seed, whose validation images are those of ``shapes_root``, so
    tests that start from it see real detections.
    """
    out = tmp_path_factory.mktemp("trained")
    root = make_shapes_dataset(out / "shapes", ShapesConfig(num_train=200, num_val=8, seed=0))
    cfg = replace_data_root(load_config(CONFIGS / "shapes_faster_rcnn.py"), root)
    epochs = 8
    cfg.train_cfg.max_epochs = epochs
    cfg.param_scheduler = [
        dict(type="LinearLR", start_factor=0.001, by_epoch=False, begin=0, end=50),
        dict(type="MultiStepLR", by_epoch=True, begin=0, end=epochs, milestones=[6], gamma=0.1),
    ]
    pl.seed_everything(0)
    module = MMDetModule(cfg)
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, num_sanity_val_steps=0, check_val_every_n_epoch=epochs,
                         default_root_dir=str(out))
    trainer.fit(module, datamodule=MMDetDataModule(cfg))
    assert float(trainer.callback_metrics["coco/bbox_mAP"]) > 0.05, trainer.callback_metrics
    path = out / "faster_rcnn_shapes.pth"
    torch.save({"state_dict": module.model.state_dict(), "meta": {"dataset_meta": {"classes": CLASSES}}}, path)
    return path


@pytest.fixture(scope="session")
def panoptic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic dataset's panoptic mode: 16 training and 6 validation images of 64x64 pixels, made once."""
    config = ShapesConfig(num_train=16, num_val=6, width=64, height=64, seed=0, panoptic=True)
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes_panoptic"), config)


@pytest.fixture(scope="session")
def panoptic_config(panoptic_root: Path) -> Callable[..., Any]:
    """``panoptic_config(max_epochs=2)``: ``configs/mmdet/shapes_panoptic_fpn.py`` on the session's panoptic data."""

    def make(name: str = "shapes_panoptic_fpn.py", max_epochs: int = 1, batch_size: int = 4) -> Any:
        cfg = replace_data_root(load_config(CONFIGS / name), panoptic_root)
        cfg.train_dataloader.batch_size = batch_size
        cfg.val_dataloader.batch_size = batch_size
        cfg.train_cfg.max_epochs = max_epochs
        return cfg

    return make
