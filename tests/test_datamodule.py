"""mmdet_lightning.datamodule: MMDetDataModule built from a config (cheap: no training)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mmdet_lightning import MMDetDataModule
from mmdet_lightning._compat import lightning as lightning_compat
from mmdet_lightning.config import load_config, replace_data_root
from mmdet_lightning.lightning_package import pl

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "mmdet" / "shapes_retinanet.py"


def _trainer(tmp_path: Path, **kwargs: Any) -> pl.Trainer:
    return pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, accelerator="cpu",
                      default_root_dir=tmp_path, **{"devices": 1, **kwargs})


@pytest.fixture
def cfg(shapes_root: Path) -> Any:
    cfg = replace_data_root(load_config(CONFIG), shapes_root)
    cfg.train_dataloader.num_workers = cfg.val_dataloader.num_workers = cfg.test_dataloader.num_workers = 0
    cfg.train_dataloader.persistent_workers = cfg.val_dataloader.persistent_workers = False
    cfg.test_dataloader.persistent_workers = False
    return cfg


def test_from_config_is_the_constructor(cfg: Any) -> None:
    dm = MMDetDataModule.from_config(cfg, seed=3, cfg_options=["train_dataloader.batch_size=3"])
    assert isinstance(dm, MMDetDataModule) and dm.seed == 3 and dm.cfg.train_dataloader.batch_size == 3
    assert cfg.train_dataloader.batch_size != 3  # the given config is copied, not changed


def test_constructor_checks_global_batch_size(cfg: Any) -> None:
    with pytest.raises(ValueError, match="global_batch_size must be a positive integer, got 0"):
        MMDetDataModule(cfg, global_batch_size=0)


def test_dataloaders_from_the_config(cfg: Any) -> None:
    dm = MMDetDataModule(cfg)
    dm.setup("fit")
    train = dm.train_dataloader()
    assert train.batch_size is None and type(train.batch_sampler).__name__ == "ResumableBatchSampler"
    assert 0 < len(train.dataset) <= 24 and len(train) > 0  # 24 images, less those the config filters (no boxes)
    batch = next(iter(train))
    assert sorted(batch) == ["data_samples", "inputs"] and len(batch["inputs"]) == cfg.train_dataloader.batch_size
    val = dm.val_dataloader()
    assert len(val.dataset) == 8 and type(val.sampler).__name__ == "DefaultSampler" and not val.sampler.shuffle
    assert len(dm.test_dataloader().dataset) == 8
    assert dm.transfer_batch_to_device(batch, "meta", 0) is batch  # the data preprocessor moves batches


def test_no_val_dataloader_means_no_validation(cfg: Any) -> None:
    cfg.val_dataloader = None
    assert MMDetDataModule(cfg).val_dataloader() == []


def test_setup_names_missing_files(cfg: Any, tmp_path: Path) -> None:
    dm = MMDetDataModule(cfg, data_root=str(tmp_path / "elsewhere"))
    with pytest.raises(FileNotFoundError, match="train_dataloader: annotation file .* does not exist"):
        dm.setup("fit")


def test_setup_without_the_stage_loader(cfg: Any) -> None:
    cfg.test_dataloader = None
    with pytest.raises(ValueError, match="The config has no `test_dataloader`, which `test` needs"):
        MMDetDataModule(cfg).setup("test")


def test_ddp_keeps_the_config_samplers(cfg: Any, tmp_path: Path) -> None:
    """Under DDP Lightning would replace the samplers by DistributedSamplers; the config's shard by rank."""
    trainer = _trainer(tmp_path, strategy="ddp", devices=2)  # not launched: no process starts before fit
    assert lightning_compat.sampler_replaced_by_lightning(trainer)
    dm = MMDetDataModule(cfg, global_batch_size=8)
    dm.trainer = trainer
    dm.setup("fit")
    assert not lightning_compat.sampler_replaced_by_lightning(trainer)
    assert dm.cfg.train_dataloader.batch_size == 4  # 8 images a step over 2 processes


def test_single_process_leaves_lightning_alone(cfg: Any, tmp_path: Path) -> None:
    trainer = _trainer(tmp_path)
    dm = MMDetDataModule(cfg)
    dm.trainer = trainer
    dm.setup("fit")
    assert trainer._accelerator_connector.use_distributed_sampler  # Lightning's flag, untouched


def test_global_batch_size_must_divide(cfg: Any, tmp_path: Path) -> None:
    dm = MMDetDataModule(cfg, global_batch_size=5)
    dm.trainer = _trainer(tmp_path, strategy="ddp", devices=2)
    with pytest.raises(ValueError, match=r"global_batch_size=5 does not divide over 2 processes.*\n.*Hint"):
        dm.setup("fit")


def test_predict_folder(cfg: Any, shapes_root: Path) -> None:
    folder = shapes_root / "val"
    if not folder.is_dir():
        folder = next(p for p in shapes_root.iterdir() if p.is_dir() and any(p.glob("*.png")) or any(p.glob("*.jpg")))
    dm = MMDetDataModule(cfg, predict_folder=str(folder))
    dm.setup("predict")
    loader = dm.predict_dataloader()
    assert type(loader.dataset).__name__ == "DetImageFolder" and len(loader.dataset) > 0
    assert all(step["type"] != "LoadAnnotations" for step in loader.dataset.pipeline.transforms
               if isinstance(step, dict))
