"""A dataset of the images in a folder, without annotations, for ``predict``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmdet.registry import DATASETS
from mmengine.dataset import BaseDataset

from .deploy.preprocess import IMAGE_SUFFIXES, list_images

__all__ = ["DetImageFolder", "IMAGE_SUFFIXES", "list_images"]

@DATASETS.register_module()
class DetImageFolder(BaseDataset):
    """Every image of a folder as an mmdet test sample (``img_path``, ``img_id``), with no annotations.

    Registered in mmdet's ``DATASETS`` as ``DetImageFolder`` when this module is imported (as
    ``mmdet_lightning.datamodule`` does), so a config can say ``dataset=dict(type="DetImageFolder", folder=...)``;
    ``MMDetDataModule(predict_folder=...)`` builds it with the config's test pipeline minus ``LoadAnnotations``.

    Example::
        >>> import tempfile
        >>> DetImageFolder(tempfile.mkdtemp())
        Traceback (most recent call last):
        ...
        FileNotFoundError: Image folder ... holds no images ...
    """

    def __init__(self, folder: str | Path, metainfo: dict | None = None, pipeline: Any = (), **kwargs: Any) -> None:
        self.folder = Path(folder)
        super().__init__(ann_file="", metainfo=metainfo, pipeline=list(pipeline), test_mode=True, **kwargs)

    def load_data_list(self) -> list[dict[str, Any]]:
        return [{"img_path": str(path), "img_id": index, "instances": []}
                for index, path in enumerate(list_images(self.folder))]
