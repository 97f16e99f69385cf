"""mmdet_lightning.image_folder: the predict dataset of a folder's images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmdet_lightning.image_folder import DetImageFolder, list_images


def _images(folder: Path, names: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.fromarray(np.zeros((4, 6, 3), dtype=np.uint8)).save(folder / name)
    return folder


def test_list_images_sorted_and_only_images(tmp_path: Path) -> None:
    folder = _images(tmp_path / "images", ["b.png", "a.jpg"])
    (folder / "notes.txt").write_text("not an image")
    assert [p.name for p in list_images(folder)] == ["a.jpg", "b.png"]


def test_list_images_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_images(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="holds no images"):
        list_images(tmp_path)


def test_registered_in_mmdet_datasets(tmp_path: Path) -> None:
    """Configs can name it, as the class docstring says: ``dict(type="DetImageFolder", folder=...)``."""
    from mmdet.registry import DATASETS

    assert DATASETS.get("DetImageFolder") is DetImageFolder
    dataset = DATASETS.build(dict(type="DetImageFolder", folder=str(_images(tmp_path, ["x.png", "y.png"]))))
    assert isinstance(dataset, DetImageFolder) and len(dataset) == 2
    assert [Path(dataset.get_data_info(i)["img_path"]).name for i in range(2)] == ["x.png", "y.png"]
    assert dataset.get_data_info(0)["instances"] == []
