"""The config's evaluators run as mmengine's ``ValLoop`` / ``TestLoop`` run them.

    start(stage, dataloader)     the evaluator of ``{stage}_evaluator`` (or ``val_evaluator``), built once, told
                                 the dataset's metainfo, its results cleared; the task checks the classes
    process(stage, ...)          each batch's predictions (``evaluator.process``)
    finish(stage, dataloader)    ``evaluator.evaluate(len(dataset))``, scalar results (0.0 for every key when no
                                 image has a prediction), the COCO evaluations kept for the analytics

Where the config's loop evaluates several models (mmdet's ``TeacherStudentValLoop``: the teacher, then the
student), the task names them (``Task.evaluated_models``): each has an evaluator of its own and its metrics are
prefixed with its name (``teacher/coco/bbox_mAP``), as the loop logs them.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from .._compat import mmdet as mmdet_compat
from ..console import library_output
from ..evaluation import record_coco_evals
from ..lightning_package import pl
from ..utilities import first_dataset

if TYPE_CHECKING:
    from mmengine.evaluator import Evaluator

    from ..tasks import Task

__all__ = ["StageEvaluation"]


class StageEvaluation:
    """One evaluator per stage (``"val"``, ``"test"``) from the config, and the results of the latest run.

    Example::
        >>> from mmdet_lightning.tasks import DetectionTask
        >>> StageEvaluation({}, DetectionTask()).evaluator("val")
        Traceback (most recent call last):
        ...
        ValueError: The config has no `val_evaluator`; add one, e.g. dict(type='CocoMetric', ...).
    """

    def __init__(self, cfg: Mapping[str, Any], task: Task) -> None:
        self.cfg = cfg
        self.task = task
        self._evaluators: dict[tuple[str, str], Evaluator] = {}
        self._checked_datasets: set[int] = set()
        #: scalar results of the latest evaluation, e.g. ``{"coco/bbox_mAP": 0.57, ...}``
        self.last_metrics: dict[str, float] = {}
        #: the accumulated ``COCOeval`` of the latest evaluation by IoU type (``"bbox"``, ``"segm"``), on the process
        #: that evaluated (rank 0); empty elsewhere and for evaluators without a ``CocoMetric``
        self.last_coco_eval: dict[str, Any] = {}
        #: what the task kept of the latest evaluation beyond its scalars (``Task.recording_evaluation``: panoptic
        #: segmentation's per-class PQ / SQ / RQ), on the process that evaluated
        self.last_details: dict[str, Any] = {}

    def models(self, stage: str) -> tuple[str, ...]:
        """The models one evaluation of ``stage`` runs, by metric prefix (``("",)``: the model itself)."""
        return self.task.evaluated_models(self.cfg, stage)

    def evaluator(self, stage: str, name: str = "") -> Evaluator:
        if (stage, name) not in self._evaluators:
            from mmengine.evaluator import Evaluator
            from mmengine.registry import EVALUATOR

            cfg: Any = self.cfg.get(f"{stage}_evaluator") or self.cfg.get("val_evaluator")
            if cfg is None:
                raise ValueError(f"The config has no `{stage}_evaluator`; add one, e.g. dict(type='CocoMetric', ...).")
            cfg = copy.deepcopy(cfg)
            with library_output():  # CocoMetric loads its annotation file with pycocotools' prints
                if isinstance(cfg, Mapping) and "metrics" in cfg:  # as mmengine's Runner.build_evaluator
                    self._evaluators[stage, name] = EVALUATOR.build({"type": "Evaluator", **cfg})
                else:
                    self._evaluators[stage, name] = Evaluator(cfg)
        return self._evaluators[stage, name]

    def check_classes(self, model: torch.nn.Module, dataset: Any, stage: str) -> None:
        """The task's class check, once per dataset."""
        if dataset is None or id(dataset) in self._checked_datasets:
            return
        self._checked_datasets.add(id(dataset))
        classes = (getattr(dataset, "metainfo", None) or {}).get("classes")
        if classes:
            self.task.check_classes(model, classes, stage)

    def start(self, stage: str, dataloader: Any, model: torch.nn.Module) -> None:
        dataset = first_dataset(dataloader)
        self.check_classes(model, dataset, stage)
        for _ in self.models(stage)[1:]:
            _draw_iterator_seed(dataloader)
        for name in self.models(stage):
            evaluator = self.evaluator(stage, name)
            evaluator.dataset_meta = getattr(dataset, "metainfo", None)
            for metric in evaluator.metrics:
                metric.results.clear()

    def step(self, stage: str, model: Any, batch: Any, process: bool = True) -> list[Any]:
        """One batch: each evaluated model's predictions (the task's ``eval_step``, in float32), processed by its
        evaluator unless ``process`` is False; what the step returns to the callbacks (the task's
        ``step_outputs``)."""
        outputs = {}
        for name in self.models(stage):
            outputs[name] = self.task.predictions_to_float32(self.task.eval_step(model, batch, stage, name))
            if process:
                self.process(stage, outputs[name], batch, name)
        return self.task.step_outputs(model, outputs)

    def process(self, stage: str, outputs: Any, batch: Any, name: str = "") -> None:
        self.evaluator(stage, name).process(data_samples=outputs, data_batch=batch)

    def finish(self, stage: str, dataloader: Any, is_global_zero: bool) -> dict[str, float]:
        """Evaluate (collective under DDP: every rank calls it); the scalar results, each evaluated model's
        prefixed with its name. The COCO evaluations and the task's details kept are the first model's."""
        results: dict[str, float] = {}
        for index, name in enumerate(self.models(stage)):
            scalars = self._finish_one(stage, name, dataloader, is_global_zero, keep_details=index == 0)
            results.update({f"{name}/{key}" if name else key: value for key, value in scalars.items()})
        self.last_metrics = results
        return results

    def _finish_one(self, stage: str, name: str, dataloader: Any, is_global_zero: bool,
                    keep_details: bool) -> dict[str, float]:
        evaluator = self.evaluator(stage, name)
        with library_output(), record_coco_evals() as coco_evals, \
                self.task.recording_evaluation(evaluator) as details:  # pycocotools' blocks: to mmdet.log
            metrics = evaluator.evaluate(len(first_dataset(dataloader)))
        if keep_details:
            self.last_details = details
            self.last_coco_eval = self._coco_evals_by_type(evaluator, coco_evals, is_global_zero)
        scalars = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) or (
            isinstance(v, torch.Tensor) and v.numel() == 1)}
        if not scalars:
            scalars = self.task.metrics_without_detections(evaluator)
            if scalars:
                pl.utilities.rank_zero_warn(
                    f"{stage}: no detections on the whole dataset{f' ({name})' if name else ''}; the metrics are "
                    "logged as 0.0.")
        return scalars

    def _coco_evals_by_type(self, evaluator: Evaluator, coco_evals: list[Any], is_global_zero: bool) -> dict[str, Any]:
        """The first ``CocoMetric``'s evaluations by IoU type; where it had no detection to evaluate, an
        evaluation of none (mmdet's metric stops before building it). Only on the rank that evaluated."""
        found = {ev.params.iouType: _slim(ev) for ev in coco_evals if getattr(ev.params, "useCats", 1)}
        metric = mmdet_compat.find_coco_metric(evaluator.metrics)
        coco_api = mmdet_compat.coco_metric_api(metric) if metric is not None else None
        if metric is None or not is_global_zero or coco_api is None or metric.format_only:
            return found
        from ..analysis import empty_coco_eval

        for kind in metric.metrics:
            if kind in ("bbox", "segm") and kind not in found:
                found[kind] = empty_coco_eval(coco_api, metric.cat_ids, metric.img_ids, kind,
                                              metric.iou_thrs, metric.proposal_nums)
        return found


def _draw_iterator_seed(dataloaders: Any) -> None:
    """What one more pass over the evaluation loader takes from torch's generator under mmengine's runner (a loop
    that evaluates several models, ``TeacherStudentValLoop``, iterates the loader once a model; Lightning iterates
    it once): a new iterator draws its base seed, unless its workers persist. Keeps the training that follows
    on the runner's random stream."""
    loader = dataloaders[0] if isinstance(dataloaders, (list, tuple)) and dataloaders else dataloaders
    if loader is None or (getattr(loader, "persistent_workers", False) and getattr(loader, "num_workers", 0) > 0):
        return
    torch.empty((), dtype=torch.int64).random_(generator=getattr(loader, "generator", None))


def _slim(coco_eval: Any) -> Any:
    """A ``COCOeval`` without its per-image matching (``evalImgs``, ``ious``: the bulk of its memory on large
    datasets), which the analytics do not read; ``eval``, ``params``, ground truth and detections stay."""
    for name, empty in (("evalImgs", []), ("ious", {}), ("_evalImgs_cpp", None)):
        if getattr(coco_eval, name, None) is not None:
            setattr(coco_eval, name, empty)
    return coco_eval
