"""A training set with broken files trains to the end, with one warning per broken file and a count."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from mmdet_lightning import MMDetDataModule, MMDetModule
from mmdet_lightning.config import load_config, replace_data_root
from mmdet_lightning.lightning_package import pl
from mmdet_lightning.synthetic import ShapesConfig, make_shapes_dataset

from .conftest import CONFIGS


def _broken_dataset(root: Path) -> dict[str, str]:
    """The synthetic dataset with four broken training entries; returns file name -> what is wrong."""
    make_shapes_dataset(root, ShapesConfig(num_train=10, num_val=2, seed=1))
    ann_file = root / "annotations" / "instances_train.json"
    coco = json.loads(ann_file.read_text())
    annotated = [image for image in coco["images"] if any(a["image_id"] == image["id"] for a in coco["annotations"])]
    unreadable, zero_area_image, polygon_image = annotated[:3]
    (root / "train" / unreadable["file_name"]).write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    first_ann = {image["id"]: next(a for a in coco["annotations"] if a["image_id"] == image["id"])
                 for image in (zero_area_image, polygon_image)}
    zero_area = first_ann[zero_area_image["id"]]
    zero_area["bbox"] = [zero_area["bbox"][0], zero_area["bbox"][1], 0.0, 0.0]
    zero_area["area"] = 0.0
    first_ann[polygon_image["id"]]["segmentation"] = [[]]
    missing = {"id": 999, "file_name": "missing.png", "width": 128, "height": 128}
    coco["images"].append(missing)
    coco["annotations"].append({"id": 9999, "image_id": 999, "category_id": 1, "bbox": [10, 10, 20, 20],
                                "segmentation": [[10, 10, 30, 10, 30, 30]], "area": 400.0, "iscrowd": 0})
    ann_file.write_text(json.dumps(coco))
    return {unreadable["file_name"]: "failed to load image", zero_area_image["file_name"]: "zero-area box",
            polygon_image["file_name"]: "polygon", "missing.png": "does not exist"}


@pytest.mark.slow
@pytest.mark.parametrize("num_workers", [0, 2])
def test_broken_training_files_are_skipped_with_one_warning_each(tmp_path: Path, num_workers: int) -> None:
    broken = _broken_dataset(tmp_path / "data")
    cfg = replace_data_root(load_config(CONFIGS / "shapes_retinanet.py"), tmp_path / "data")
    cfg.train_dataloader.update(batch_size=2, num_workers=num_workers, persistent_workers=False)
    datamodule = MMDetDataModule(cfg)
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, limit_val_batches=0, default_root_dir=str(tmp_path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(MMDetModule(cfg), datamodule=datamodule)
    assert trainer.state.finished and trainer.global_step == 2 * trainer.num_training_batches

    messages = [str(w.message) for w in caught if "Bad training data" in str(w.message)]
    for name, reason in broken.items():
        about = [m for m in messages if f"/{name}:" in m]
        assert len(about) == 1, (name, messages)
        assert reason in about[0]
    assert len(messages) == len(broken)
    assert {Path(path).name for path in datamodule.bad_data.files} == set(broken)
    # the unreadable and the missing image are met (and replaced) at least once per epoch
    assert datamodule.bad_data.skipped_samples >= 4
