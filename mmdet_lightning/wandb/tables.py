"""W&B Tables of validation images with ground truth, and of predictions after each validation."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._compat import wandb as wandb_compat
from ..lightning_package import pl
from ..tasks import DetectionTask, Task, task_of
from ..utilities import first_dataset, gather_objects
from ._common import check_non_negative_int, check_unit_interval, find_wandb_logger
from .media import (
    Instances,
    box_data,
    class_mask_layers,
)
from .worker import BackgroundWorker

Callback = pl.callbacks.Callback
rank_zero_only, rank_zero_warn = pl.utilities.rank_zero_only, pl.utilities.rank_zero_warn

if TYPE_CHECKING:
    import wandb
    from wandb.data_types import Classes

__all__ = ["WandbDetectionTables", "add_table", "mean_confidence"]


class WandbDetectionTables(Callback):
    """Validation images with ground truth as table ``val_data``, predictions as table ``eval_data``.

    ``num_eval_images`` validation images are chosen once, with their own seeded generator (the global
    NumPy and torch generators are not touched), and read at their original resolution from the
    dataset's file paths, whatever the pipeline does. After the first validation they are logged once
    per run as table ``val_data`` (columns ``image_name``, ``image``: ground-truth boxes and, for
    instance segmentation models, masks) in artifact ``val`` of type ``dataset``. After every validation,
    table ``eval_data`` (columns ``image_name``, ``ground_truth``, and the task's prediction columns:
    ``prediction``, or ``teacher`` and ``student`` side by side for a semi-supervised model validated by
    ``TeacherStudentValLoop``) goes to artifact
    ``run_<run id>_pred`` of type ``evaluation`` with aliases ``epoch_N`` and ``latest``. Its images are
    references to the files of ``val`` (nothing uploaded twice); its boxes are the predictions with a
    score above ``bbox_score_thr``, each with ``scores`` for the W&B slider. With ``mean_confidence``,
    one more column a class, ``conf_<class>``: the mean score of that class's predictions in the table's
    image (None when it has none), as YOLOv5's evaluation table. A grounding detector's table has two more
    columns, ``prompt`` (the image's text prompt) and ``phrases`` (the phrase of each box shown, ``" | "``-joined;
    the boxes' captions are the phrases too), and the artifact's metadata has the ``prompt``. ``trainer.validate``
    and ``trainer.test`` log both tables too (on the test set for ``test``), with aliases ``validate`` / ``test``
    and ``latest``.

    Lifecycle::

        on_validation_start        choose the images (first time only; all ranks)
        on_validation_batch_end    keep the predictions of chosen images this process saw
        on_validation_epoch_end    gather predictions from every process (all ranks: collective)
                                   -> rank 0: hand the tables to the background worker (nothing collective)
        worker thread              read and encode the images: `val` once, then `run_<id>_pred`, logged
        teardown, on_exception     wait for the worker (drain): every table handed over is logged

    Args:
        num_eval_images: how many validation images to log; 0 turns the tables off; more than the
            dataset means all of them (with a warning).
        bbox_score_thr: logged predictions have a score above this, in [0, 1].
        seed: seed of the image choice.
        mean_confidence: add the ``conf_<class>`` columns to ``eval_data``.
        background: build and log the tables on a background thread, so that training goes on meanwhile;
            False builds them in ``on_validation_epoch_end`` (for debugging).
        worker: the worker to use (``MMDetWandbCallback`` shares one among its parts); by default its own.

    Raises:
        ValueError: ``num_eval_images`` negative, ``bbox_score_thr`` outside [0, 1].
        MisconfigurationException: the trainer has no ``WandbLogger`` (at setup).

    Note:
        Predictions are gathered with ``torch.distributed.all_gather_object`` on every rank; only the
        W&B calls run on rank 0, so no process waits on a collective that another never enters.

    Example::
        >>> WandbDetectionTables(num_eval_images=50, bbox_score_thr=0.5).num_eval_images
        50
    """

    VAL_ARTIFACT = "val"
    VAL_TABLE = "val_data"
    PRED_TABLE = "eval_data"

    def __init__(self, num_eval_images: int = 100, bbox_score_thr: float = 0.3, seed: int = 42,
                 mean_confidence: bool = True, background: bool = True, worker: BackgroundWorker | None = None,
                 ) -> None:
        if not isinstance(mean_confidence, bool):
            raise ValueError(f"Expected argument `mean_confidence` to be a bool, but got {mean_confidence!r}.")
        self.mean_confidence = mean_confidence
        self.num_eval_images = check_non_negative_int("num_eval_images", num_eval_images)
        self.bbox_score_thr = check_unit_interval("bbox_score_thr", bbox_score_thr)
        self.seed = seed
        self.indices: list[int] | None = None
        self.val_logged = False
        self._val_in_run = False  # set by the worker once `val` is logged to the run
        self._by_path: dict[str, int] = {}
        #: the chosen images' predictions, by table column (the task's ``prediction_columns``)
        self._predictions: dict[int, dict[str, Instances]] = {}
        self._with_masks = False
        self._val_artifact: Any = None
        self._val_images: dict[int, tuple[str, Any]] = {}
        self._task: Task = DetectionTask()
        self.worker = worker if worker is not None else BackgroundWorker(background=background)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._logger = find_wandb_logger(trainer, type(self).__name__)
        self._stage = stage

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.worker.close()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self.worker.drain()

    def _active(self, trainer: pl.Trainer) -> bool:
        return self.num_eval_images > 0 and not trainer.sanity_checking and trainer.state.fn in (
            "fit", "validate", "test")

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._active(trainer):
            return
        dataset = _dataset(trainer)
        if self.indices is None:
            self.indices = self._choose(len(dataset))
        self._by_path = {str(dataset.get_data_info(i)["img_path"]): i for i in self.indices}
        self._predictions = {}

    def _choose(self, size: int) -> list[int]:
        if self.num_eval_images > size:
            rank_zero_warn(
                f"num_eval_images={self.num_eval_images} is more than the {size} validation images: "
                "logging all of them."
            )
        count = min(self.num_eval_images, size)
        return sorted(np.random.default_rng(self.seed).choice(size, size=count, replace=False).tolist())

    def on_validation_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not self._active(trainer) or not isinstance(outputs, Sequence):
            return
        task = task_of(pl_module)
        for sample in outputs:
            self._with_masks = self._with_masks or task.has_masks(sample)
            index = self._by_path.get(str(sample.metainfo.get("img_path")))
            if index is None:
                continue
            columns = task.prediction_columns(sample, self.bbox_score_thr)
            if any(instances is not None for instances in columns.values()):
                self._predictions[index] = {name: instances for name, instances in columns.items()
                                            if instances is not None}

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._active(trainer):
            return
        parts = gather_objects((self._predictions, self._with_masks))
        merged: dict[int, dict[str, Instances]] = {}
        for predictions, _ in parts:
            merged.update(predictions)  # padding duplicates from the samplers collapse here
        self._with_masks = any(with_masks for _, with_masks in parts)
        self._log(trainer, _dataset(trainer), merged)
        self._predictions = {}

    on_test_start = on_validation_start
    on_test_batch_end = on_validation_batch_end
    on_test_epoch_end = on_validation_epoch_end

    @rank_zero_only
    def _log(self, trainer: pl.Trainer, dataset: Any, predictions: dict[int, dict[str, Instances]]) -> None:
        """Hand the tables of this validation to the worker, with everything they need read now."""
        run = self._logger.experiment
        indices = list(self.indices or [])
        infos = {index: dataset.get_data_info(index) for index in indices}  # mmengine's datasets return copies
        classes = list(dataset.metainfo.get("classes") or [])
        fn = str(getattr(trainer.state.fn, "value", trainer.state.fn))
        aliases = [f"epoch_{trainer.current_epoch + 1}" if fn == "fit" else fn, "latest"]
        log_val = not self.val_logged
        self._task = task_of(trainer.lightning_module)  # what the worker asks for the ground truth
        self.val_logged = True  # handed over: a checkpoint saved from now on must not make a resumed run log it again
        self.worker.submit(self._write_tables, run, indices, infos, classes, dict(predictions), self._with_masks,
                           log_val, aliases)

    def _write_tables(self, run: Any, indices: list[int], infos: dict[int, dict[str, Any]], classes: list[str],
                      predictions: dict[int, dict[str, Instances]], with_masks: bool, log_val: bool,
                      aliases: list[str]) -> None:
        """On the worker: `val` (the first time), then this validation's `run_<id>_pred`. Only the worker
        touches ``_val_images`` and ``_val_artifact``."""
        import wandb

        classes_type: Any = wandb.Classes  # type: ignore[attr-defined]  # public, but missing from wandb's __init__.pyi
        class_set = classes_type([{"id": i + 1, "name": name} for i, name in enumerate(classes)])
        if log_val:
            self._log_val_table(run, indices, infos, classes, class_set, with_masks)
        elif not self._val_images:  # resumed: `val` is in the run already; rebuild its images, log nothing
            self._val_table(indices, infos, classes, class_set, with_masks)
        confidence = [f"conf_{name}" for name in classes] if self.mean_confidence else []
        # the task's prediction columns: `prediction`, or `teacher` and `student` side by side (semi-supervised)
        columns = list(next(iter(predictions.values()), None) or ["prediction"])
        # a grounding model's predictions: the prompt of each image and the phrase of each box shown
        prompts = sorted({pred.prompt for by_column in predictions.values() for pred in by_column.values()
                          if pred.prompt is not None})
        prompted = ["prompt", "phrases"] if prompts else []
        table = wandb.Table(columns=["image_name", "ground_truth", *columns, *prompted, *confidence])
        metadata = {"prompt": prompts[0] if len(prompts) == 1 else prompts} if prompts else None
        artifact = wandb.Artifact(f"run_{run.id}_pred", type="evaluation", metadata=metadata)
        for index in indices:
            if index not in self._val_images:
                continue
            name, gt_image = self._val_images[index]
            self._reference_val_media(artifact, gt_image)
            preds = [predictions.get(index, {}).get(column, _NO_INSTANCES) for column in columns]
            means = mean_confidence(preds[0], len(classes)) if self.mean_confidence else []
            images = [_wandb_image(gt_image, pred, "predictions" if column == "prediction" else f"{column}_predictions",
                                   classes, class_set) for column, pred in zip(columns, preds, strict=True)]
            phrases = [preds[0].prompt, " | ".join(preds[0].names or [])] if prompted else []
            table.add_data(name, gt_image, *images, *phrases, *means)
        add_table(artifact, table, self.PRED_TABLE)
        run.log_artifact(artifact, aliases=aliases)

    def _log_val_table(self, run: Any, indices: list[int], infos: dict[int, dict[str, Any]], classes: list[str],
                       class_set: Classes, with_masks: bool) -> None:
        import wandb

        artifact = wandb.Artifact(self.VAL_ARTIFACT, type="dataset")
        add_table(artifact, self._val_table(indices, infos, classes, class_set, with_masks), self.VAL_TABLE)
        run.log_artifact(artifact)
        self._val_artifact = artifact
        self._val_in_run = True

    def _val_table(self, indices: list[int], infos: dict[int, dict[str, Any]], classes: list[str],
                   class_set: Classes, with_masks: bool) -> wandb.Table:
        """The ``val_data`` table; fills ``_val_images`` (index -> name, image with ground truth)."""
        import wandb

        table = wandb.Table(columns=["image_name", "image"])
        for index in indices:
            info = infos[index]
            path = str(info["img_path"])
            try:
                source, height, width = _image_source(path)
            except Exception as err:  # PIL raises many types for unreadable files
                rank_zero_warn(f"W&B val table: skipping image {path}, which cannot be read "
                               f"({type(err).__name__}: {err}).")
                continue
            gt = self._task.ground_truth_instances(info, height, width, with_masks)
            if gt.problems:
                rank_zero_warn(f"W&B val table: {path}: " + "; ".join(gt.problems))
            image = _wandb_image(source, gt, "ground_truth", classes, class_set)
            name = Path(path).name
            table.add_data(name, image)
            self._val_images[index] = (name, image)
        return table

    def _reference_val_media(self, artifact: wandb.Artifact, image: wandb.Image) -> None:
        """Make ``artifact`` hold the files of ``image`` (and its masks) as references to ``val``'s entries.

        W&B serialises a table's images by adding their files to the artifact, unless the artifact
        already holds that local file; a ``wandb-client-artifact://`` reference entry registered for the
        file makes it point at the ``val`` artifact's copy instead, online and offline (the reference is
        resolved when the run is synced).
        """
        source = self._val_artifact
        if source is None:  # resumed in a new process: `val` was logged by the earlier one; embed the images
            return
        media = [image, *wandb_compat.image_masks(image).values()]
        for item in media:
            local = wandb_compat.media_local_path(item)
            if not local:
                continue
            entry_name = source.get_added_local_path_name(local)
            if entry_name is None or artifact.get_added_local_path_name(local) is not None:
                continue
            url = f"wandb-client-artifact://{wandb_compat.artifact_client_id(source)}/{entry_name}"
            entry = artifact.add_reference(url, name=entry_name)[0]
            wandb_compat.artifact_register_local_path(artifact, local, entry)

    def state_dict(self) -> dict[str, Any]:
        # what is in the run, not what is handed over: a checkpoint saved while the worker still builds `val`,
        # then a crash (SIGKILL, OOM), has the resumed run log it (again, at worst: the same files make the
        # same artifact digest, so W&B keeps one version) rather than never
        return {"indices": self.indices, "val_logged": self._val_in_run}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # resumed: the same images; `val` is not logged again (the prediction tables embed their images,
        # since the `val` entries of the earlier process cannot be referenced before `wandb sync`)
        # `validate` / `test --ckpt_path` restore callbacks too, into a new run: the same images, `val` logged there
        self.indices = state_dict.get("indices")
        self.val_logged = bool(state_dict.get("val_logged", False)) and getattr(self, "_stage", "fit") == "fit"
        if self.val_logged:
            self._val_in_run = True


_NO_INSTANCES = Instances(np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.zeros(0))


def _dataset(trainer: pl.Trainer) -> Any:
    """The dataset being evaluated: the test set in ``trainer.test``, the validation set otherwise."""
    return first_dataset(trainer.test_dataloaders if trainer.testing else trainer.val_dataloaders)


def mean_confidence(instances: Instances, num_classes: int) -> list[float | None]:
    """The mean score of each class's instances (None for a class without any), YOLOv5's ``avg_confidence``.

    Example::
        >>> boxes = np.zeros((3, 4))
        >>> mean_confidence(Instances(boxes, np.array([0, 0, 2]), np.array([0.5, 0.7, 0.9])), 3)
        [0.6, None, 0.9]
    """
    scores = instances.scores if instances.scores is not None else np.ones(len(instances.labels))
    return [round(float(scores[instances.labels == k].mean()), 6) if (instances.labels == k).any() else None
            for k in range(num_classes)]


def _image_source(path: str) -> tuple[str | np.ndarray, int, int]:
    """What ``wandb.Image`` takes for the file at ``path``, and its height and width: the file itself when W&B
    shows it as it is (an RGB PNG or JPEG: same pixels as the hook's decoded array, without encoding them
    into a new PNG), else its pixels as RGB. Raises what PIL raises for a file it cannot read."""
    from PIL import Image

    with Image.open(path) as image:
        width, height = image.size
        if image.mode == "RGB" and image.format in ("PNG", "JPEG"):
            image.verify()  # a damaged PNG (checksums) is refused here, as a decode would
            return path, height, width
        return np.asarray(image.convert("RGB")), height, width


def _wandb_image(pixels: Any, instances: Instances, key: str, classes: list[str], class_set: Any) -> wandb.Image:
    """``wandb.Image(pixels, boxes=..., masks=..., classes=class_set)`` of ``instances``. The boxes, valid by
    construction, skip W&B's per-box checks and temporary file; an image of another ``wandb.Image`` (a prediction
    over a `val` image) is not decoded again."""
    import wandb

    labels = {i + 1: name for i, name in enumerate(classes)}
    boxes = {key: wandb_compat.boxes_without_checks(box_data(instances, classes), key, labels)}
    layers = class_mask_layers(instances, classes)
    masks = {f"{key}_{name}": {"mask_data": layer, "class_labels": labels} for name, layer in layers.items()}
    if isinstance(pixels, wandb.Image):
        return wandb_compat.image_from_image(pixels, boxes=boxes, masks=masks or None, classes=class_set)
    return wandb.Image(pixels, boxes=boxes, masks=masks or None, classes=class_set)


def add_table(artifact: wandb.Artifact, table: wandb.Table, name: str) -> None:
    """``artifact.add(table, name)``, the same file (``<name>.table.json``, the same bytes) written once by
    json's C encoder: ``Artifact.add`` writes with ``json.dump``, which takes json's pure-Python encoder, the
    larger part of a prediction table's cost. The table's media are added to ``artifact`` as ``add`` adds them.

    Example::
        >>> import wandb
        >>> artifact = wandb.Artifact("example", type="dataset")
        >>> add_table(artifact, wandb.Table(columns=["a"], data=[[1]]), "numbers")
        >>> [entry.path for entry in artifact.manifest.entries.values()]
        ['numbers.table.json']
    """
    import wandb

    data = table.to_json(artifact)
    with artifact.new_file(wandb.Table.with_suffix(name), mode="x", encoding="utf-8") as file:
        file.write(json.dumps(data, sort_keys=True))

