"""Predictions written to disk: COCO-format results JSON and images with the predictions drawn."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..lightning_package import pl
from ..tasks import DetectionTask, Task, task_of
from ..utilities import first_dataset, gather_objects
from ..wandb._common import check_unit_interval
from ..wandb.media import instance_name

BasePredictionWriter = pl.callbacks.BasePredictionWriter

__all__ = ["DetectionWriter"]

_COLOURS = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
            (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212)]


class DetectionWriter(BasePredictionWriter):
    """Write ``trainer.predict`` outputs to ``output_dir``: ``results.bbox.json`` (COCO results, loadable by
    ``pycocotools.COCO.loadRes``) and one PNG per image with its predicted boxes (and masks) drawn.

    Category ids are the dataset's (``cat_ids`` of mmdet's ``CocoDataset``), else ``label + 1``; image ids
    are the samples' ``img_id``. Panoptic segmentation: the PNGs show every segment as a mask of its class colour
    and boxes around the things; the JSON holds the things' boxes with score 1.0 (segments have no score). A
    grounding detector's results also keep the ``phrase`` of the prompt each box matched (and are drawn with it);
    its category is the dataset's class of that name, else ``label + 1`` (the phrase's place in the prompt).
    Boxes with a score above ``score_thr`` are drawn; all go into the JSON.
    Under DDP every process draws its own images and rank 0 writes the JSON of all of them, each image
    once (the samplers' padding repeats a few).

    Args:
        output_dir: folder to write into (created).
        score_thr: score above which a prediction is drawn, in [0, 1].
        draw: write the PNG images.

    Example::
        >>> writer = DetectionWriter("work_dirs/predictions", score_thr=0.3)
        >>> trainer = pl.Trainer(callbacks=[writer])  # doctest: +SKIP
    """

    RESULTS_FILE = "results.bbox.json"

    def __init__(self, output_dir: str | Path, score_thr: float = 0.3, draw: bool = True) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)
        self.score_thr = check_unit_interval("score_thr", score_thr)
        self.draw = draw
        self._results: dict[Any, list[dict[str, Any]]] = {}  # image id -> COCO results, this process's
        self._task: Task = DetectionTask()

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._results = {}
        self._task = task_of(pl_module)
        dataset = first_dataset(trainer.predict_dataloaders)
        self._classes = list((getattr(dataset, "metainfo", None) or {}).get("classes") or [])
        self._cat_ids = list(getattr(dataset, "cat_ids", []) or [])

    def write_on_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, prediction: Any,
                           batch_indices: Sequence[int] | None, batch: Any, batch_idx: int,
                           dataloader_idx: int = 0) -> None:
        for sample in prediction:
            everything = self._task.predicted_instances(sample, -1.0)
            if everything is None:
                continue
            image_id = sample.metainfo.get("img_id")
            results = self._results.setdefault(image_id, [])
            for index, box, _, score in _boxed(everything):
                result = {"image_id": image_id, "category_id": self._category(everything, index),
                          "score": float(score), "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]}
                if everything.names is not None:
                    result["phrase"] = everything.names[index]
                results.append(result)
            if self.draw:
                self._draw(sample)

    def _category(self, instances: Any, index: int) -> int:
        """The COCO category id of instance ``index``: by its phrase when it has one (a grounding detector's, whose
        labels index the prompt), else by its label."""
        label = int(instances.labels[index])
        if instances.names is not None:
            name = instances.names[index]
            if name not in self._classes:
                return label + 1
            label = self._classes.index(name)
        return int(self._cat_ids[label]) if label < len(self._cat_ids) else label + 1

    def _draw(self, sample: Any) -> None:
        from PIL import Image, ImageDraw

        path = Path(sample.metainfo["img_path"])
        shown = self._task.predicted_instances(sample, self.score_thr)
        if shown is None:
            return
        with Image.open(path) as source:
            image = source.convert("RGB")
        if shown.masks is not None and len(shown.masks):
            pixels = np.asarray(image).copy()
            for mask, label in zip(shown.masks, shown.labels.tolist(), strict=True):
                colour = np.array(_COLOURS[label % len(_COLOURS)], dtype=np.float32)
                pixels[mask] = (0.5 * pixels[mask] + 0.5 * colour).astype(np.uint8)
            image = Image.fromarray(pixels)
        draw = ImageDraw.Draw(image)
        for index, box, label, score in _boxed(shown):
            outline = _COLOURS[label % len(_COLOURS)]
            name = instance_name(shown, index, self._classes)
            draw.rectangle(box, outline=outline, width=2)
            draw.text((box[0] + 2, box[1] + 1), name if shown.scores is None else f"{name} {score:.2f}", fill=outline)
        image.save(self.output_dir / f"{path.stem}.png")

    def on_predict_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        merged: dict[Any, list[dict[str, Any]]] = {}
        for part in gather_objects(self._results):  # every rank calls it
            for image_id, results in part.items():
                merged.setdefault(image_id, results)
        if trainer.is_global_zero:
            everything = [result for results in merged.values() for result in results]
            (self.output_dir / self.RESULTS_FILE).write_text(json.dumps(everything))


def _boxed(instances: Any) -> list[tuple[int, list[float], int, float]]:
    """(index, box, label, score) of the instances whose box is shown (``Instances.boxed``: panoptic things, not
    stuff); score 1.0 where the task's instances have none (panoptic segments)."""
    count = len(instances.labels)
    scores = instances.scores.tolist() if instances.scores is not None else [1.0] * count
    boxed = instances.boxed.tolist() if instances.boxed is not None else [True] * count
    return [(index, box, label, score) for index, (box, label, score, keep) in enumerate(zip(
        instances.boxes.tolist(), instances.labels.tolist(), scores, boxed, strict=True)) if keep]
