"""Shared fixtures: one synthetic dataset per test session, configs pointed at it, offline W&B."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import pytest

from mmdet_lightning.config import load_config, replace_data_root
from mmdet_lightning.synthetic import ShapesConfig, make_shapes_dataset

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "mmdet"


@pytest.fixture(autouse=True, scope="session")
def _offline_environment(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_DIR", str(tmp_path_factory.mktemp("wandb")))
    os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 training and 8 validation images of 128x128 pixels, made once per session."""
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes"), ShapesConfig(num_train=24, num_val=8, seed=0))


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
