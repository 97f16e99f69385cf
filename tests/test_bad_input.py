"""Bad input fails early, with a message that says what is wrong and how to fix it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mmdet_lightning import MMDetDataModule, MMDetModule
from mmdet_lightning.config import load_config
from mmdet_lightning.lightning_package import pl

from .conftest import CONFIGS


def test_missing_config(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        MMDetModule(tmp_path / "nope.py")


def test_unparsable_config(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("model = dict(type='FasterRCNN'\n")
    with pytest.raises(ValueError, match="Could not parse the config file"):
        MMDetModule(bad)


def test_config_without_model(tmp_path: Path) -> None:
    cfg = tmp_path / "nomodel.py"
    cfg.write_text("train_dataloader = dict(batch_size=2)\n")
    with pytest.raises(ValueError, match="no `model`"):
        load_config(cfg)


@pytest.mark.parametrize(
    "model, task",
    [
        (dict(type="MaskTrackRCNN", detector=dict(type="MaskRCNN")), "video instance segmentation"),
        (dict(type="ByteTrack", detector=dict(type="YOLOX"), tracker=dict(type="ByteTracker")), "tracking"),
    ],
)
def test_unsupported_task(model: dict, task: str) -> None:
    with pytest.raises(ValueError, match=f"is a {task}.*model"):
        MMDetModule(dict(model=model))


def test_unknown_model_type() -> None:
    with pytest.raises(ValueError, match="MODELS.*registry.*FasterRCNNN"):
        MMDetModule(dict(model=dict(type="FasterRCNNN")))


def test_missing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="Checkpoint .*missing.pth.* does not exist"):
        MMDetModule(CONFIGS / "shapes_retinanet.py", load_from=str(tmp_path / "missing.pth"))


def test_checkpoint_with_other_class_count_is_reported(tmp_path: Path) -> None:
    source = MMDetModule(CONFIGS / "shapes_retinanet.py")
    path = tmp_path / "retinanet.pth"
    import torch

    torch.save({"state_dict": source.model.state_dict(), "meta": {}}, path)
    cfg = load_config(CONFIGS / "shapes_retinanet.py")
    cfg.model.bbox_head.num_classes = 5
    target = MMDetModule(cfg, load_from=str(path))
    report = target.load_report
    assert report is not None and not report.missing and not report.unexpected
    assert set(report.mismatched) == {"bbox_head.retina_cls.weight", "bbox_head.retina_cls.bias"}
    key = "backbone.conv1.weight"
    assert target.model.state_dict()[key].equal(source.model.state_dict()[key])


def _fit(cfg: Any, tmp_path: Path) -> None:
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=1, accelerator="cpu",
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         default_root_dir=str(tmp_path))
    trainer.fit(MMDetModule(cfg), datamodule=MMDetDataModule(cfg))


def test_class_count_mismatch(shapes_config: Any, tmp_path: Path) -> None:
    cfg = shapes_config("shapes_retinanet.py")
    cfg.model.bbox_head.num_classes = 5
    with pytest.raises(ValueError, match=r"dataset has 3 classes .* bbox_head.num_classes=5"):
        _fit(cfg, tmp_path)


def test_missing_annotation_file(shapes_config: Any, tmp_path: Path) -> None:
    cfg = shapes_config("shapes_retinanet.py")
    cfg.train_dataloader.dataset.ann_file = "annotations/nope.json"
    with pytest.raises(FileNotFoundError, match="train_dataloader: annotation file .*nope.json.* does not exist"):
        _fit(cfg, tmp_path)


def test_missing_image_folder(shapes_config: Any, tmp_path: Path) -> None:
    cfg = shapes_config("shapes_retinanet.py")
    cfg.val_dataloader.dataset.data_prefix = dict(img="missing_images/")
    with pytest.raises(FileNotFoundError, match="val_dataloader: image folder .*missing_images.* does not exist"):
        _fit(cfg, tmp_path)
