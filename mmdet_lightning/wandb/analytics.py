"""Detection analytics in W&B from the evaluation mmdet already ran: per-class AP, PR curves, confusion matrix,
run summary (best metric and its epoch, parameters, FLOPs, milliseconds per image)."""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from .. import analysis
from .._compat import lightning as lightning_compat
from .._compat import wandb as wandb_compat
from ..lightning_package import pl
from ..tasks import task_of
from ._common import check_unit_interval, find_wandb_logger
from .worker import BackgroundWorker

Callback = pl.callbacks.Callback
rank_zero_only, rank_zero_warn = pl.utilities.rank_zero_only, pl.utilities.rank_zero_warn

if TYPE_CHECKING:
    import wandb

__all__ = ["WandbEvalAnalytics"]

BACKGROUND = "background"


class WandbEvalAnalytics(Callback):
    """Per-class AP, precision-recall curves, a confusion matrix and a run summary, after each evaluation.

    Everything comes from the ``COCOeval`` objects that mmdet's ``CocoMetric`` evaluated
    (``MMDetModule.last_coco_eval``): no second inference, no second evaluation. After each validation of
    ``fit``, and at the end of ``validate`` (keys ``eval/...``) and ``test`` (keys ``test/...``), through
    the ``WandbLogger`` on the trainer's step:

    ========================================  =======================================================
    ``<p>/per_class_ap``                      table: ``class``, ``<iou>_AP``, ``<iou>_AP50``, ``<iou>_AP75``
                                              per IoU type (``bbox``, ``segm``), ``num_gt``, ``num_det``
                                              (score > ``bbox_score_thr``), ``note`` ("no ground truth")
    ``<p>/<iou>_pr_curve``                    line chart (``wandb/lineseries/v0``; its table ``..._table``):
                                              precision at COCO's 101 recall points, per class at IoU 0.5,
                                              ``mean@0.5`` and ``mean@0.5:0.95``
    ``<p>/confusion_matrix``                  chart (``wandb/confusion_matrix/v1``): ``Actual``,
                                              ``Predicted``, ``nPredictions``, background row and column
    ``<p>/confusion_matrix_counts``           table: ``ground_truth``, one column a class, ``background``
    ========================================  =======================================================

    Run summary: ``best/<monitor>`` and ``best/epoch`` (1-based, as the ``epoch_N`` aliases), ``model/params``,
    ``model/flops`` (mmengine's complexity analysis on one image of the first validation batch: the config's
    test input size) and ``speed/ms_per_image`` (validation / test step time per image, latest evaluation).
    The FLOPs are counted once a run, on a copy of the model, by the background worker (a few seconds of
    tracing that the training loop does not wait for).

    Args:
        per_class_ap: log the per-class AP table (panoptic segmentation: the per-class PQ table,
            ``<p>/per_class_pq``: ``class``, ``kind`` (thing / stuff), ``PQ``, ``SQ``, ``RQ``).
        pr_curves: log the precision-recall charts.
        confusion_matrix: log the confusion matrix chart and table.
        run_summary: write the run summary.
        bbox_score_thr: detections counted in ``num_det`` have a higher score; the confusion matrix takes
            those with a score >= it (as mmdet's tool).
        tp_iou_thr: IoU from which a detection matches a ground truth in the confusion matrix.
        monitor: the metric whose best value goes into the summary; where the evaluation prefixes its metrics
            by model (semi-supervised: ``teacher/``, ``student/``), the first model's (``best/teacher/coco/bbox_mAP``).
        mode: ``"max"`` or ``"min"``: which value of ``monitor`` is best.
        background: count the FLOPs on a background thread; False counts them in the validation step.
        worker: the worker to use (``MMDetWandbCallback`` shares one among its parts); by default its own.

    Raises:
        ValueError: a threshold outside [0, 1], ``mode`` not ``"max"`` / ``"min"``, a part switch not a bool.
        MisconfigurationException: the trainer has no ``WandbLogger`` (at setup).

    Note:
        mmdet evaluates on rank 0 with the predictions of every rank, so all of it is logged from rank 0,
        with no collective; every image is counted once.

    Example::
        >>> WandbEvalAnalytics(confusion_matrix=False).confusion_matrix
        False
    """

    def __init__(self, per_class_ap: bool = True, pr_curves: bool = True, confusion_matrix: bool = True,
                 run_summary: bool = True, bbox_score_thr: float = 0.3, tp_iou_thr: float = 0.5,
                 monitor: str = "coco/bbox_mAP", mode: Literal["max", "min"] = "max", background: bool = True,
                 worker: BackgroundWorker | None = None) -> None:
        for name, value in (("per_class_ap", per_class_ap), ("pr_curves", pr_curves),
                            ("confusion_matrix", confusion_matrix), ("run_summary", run_summary)):
            if not isinstance(value, bool):
                raise ValueError(f"Expected argument `{name}` to be a bool, but got {value!r}.")
        if mode not in ("max", "min"):
            raise ValueError(f"Expected argument `mode` to be one of ('max', 'min'), but got {mode!r}.")
        if not isinstance(monitor, str) or not monitor:
            raise ValueError(f"Expected argument `monitor` to be a metric name, but got {monitor!r}.")
        self.per_class_ap = per_class_ap
        self.pr_curves = pr_curves
        self.confusion_matrix = confusion_matrix
        self.run_summary = run_summary
        self.bbox_score_thr = check_unit_interval("bbox_score_thr", bbox_score_thr)
        self.tp_iou_thr = check_unit_interval("tp_iou_thr", tp_iou_thr)
        self.monitor = monitor
        self.mode = mode
        self.best: float | None = None
        self.best_epoch: int | None = None
        self._best_key = monitor  # the metric the best value is of (a prefixed one: see monitored_key)
        #: the model's parameters and FLOPs once counted ({} while the worker counts them)
        self.complexity: dict[str, float] | None = None
        self.worker = worker if worker is not None else BackgroundWorker(background=background)
        self._step_time = 0.0
        self._images = 0
        self._batch_start: float | None = None
        #: seconds the latest analytics took to build and log (what this callback adds to an evaluation)
        self.last_duration = 0.0

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._logger = find_wandb_logger(trainer, type(self).__name__)
        self._stage = stage

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.worker.close()
        logger = getattr(self, "_logger", None)  # None: teardown after a failed setup
        run = lightning_compat.wandb_logger_run(logger) if logger is not None else None
        if self.complexity and run is not None and not wandb_compat.run_is_finished(run):
            self._summarise_complexity()  # counted after the last evaluation's summary (rank 0 only counts)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self.worker.drain()

    # ------------------------------------------------------------------ timing and model complexity
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._step_time, self._images = 0.0, 0

    on_test_start = on_validation_start

    def on_validation_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                                  batch_idx: int, dataloader_idx: int = 0) -> None:
        self._batch_start = time.perf_counter()

    def on_test_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                            batch_idx: int, dataloader_idx: int = 0) -> None:
        self._batch_start = time.perf_counter()

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                                batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self._batch_start is not None and not trainer.sanity_checking:
            self._step_time += time.perf_counter() - self._batch_start
            self._images += len(outputs) if isinstance(outputs, (list, tuple)) else 1
        self._batch_start = None
        if self.run_summary and self.complexity is None and trainer.is_global_zero:
            # the worker counts on copies: training goes on changing the model (and its train/eval mode)
            self.complexity = {}
            model = copy.deepcopy(getattr(pl_module, "model", pl_module))
            one_image = copy.deepcopy({key: value[:1] for key, value in batch.items()})
            self.worker.submit(self._count_complexity, model, one_image)

    def _count_complexity(self, model: torch.nn.Module, one_image: Any) -> None:
        """On the worker: the model's parameters and FLOPs (the main thread writes them to the summary: wandb's
        run objects are not thread-safe)."""
        self.complexity = model_complexity(model, one_image)

    def on_test_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                          batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.on_validation_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)

    # ------------------------------------------------------------------ logging
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._log(trainer, pl_module, "eval")

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log(trainer, pl_module, "test")

    @rank_zero_only
    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule, prefix: str) -> None:
        started = time.perf_counter()
        coco_evals: dict[str, Any] = dict(getattr(pl_module, "last_coco_eval", None) or {})
        charts = self.charts(coco_evals, prefix) if coco_evals else {}
        details = getattr(pl_module, "last_eval_details", None)
        if self.per_class_ap and details:  # the task's own tables (panoptic segmentation: per-class PQ / SQ / RQ)
            charts.update(task_of(pl_module).analytics_tables(details, prefix))
        if charts:
            self._logger.log_metrics(charts, step=trainer.global_step)
        if self.run_summary:
            self._summarise(trainer, pl_module)
        self.last_duration = time.perf_counter() - started

    def charts(self, coco_evals: dict[str, Any], prefix: str = "eval") -> dict[str, Any]:
        """The W&B tables and charts of the enabled parts for ``COCOeval`` objects by IoU type.

        Example::
            >>> sorted(WandbEvalAnalytics(pr_curves=False).charts({"bbox": analysis.toy_coco_eval()}))  # doctest: +SKIP
            ['eval/confusion_matrix', 'eval/confusion_matrix_counts', 'eval/per_class_ap']
        """
        import wandb

        main = coco_evals.get("bbox") or next(iter(coco_evals.values()))
        charts: dict[str, Any] = {}
        if self.per_class_ap:
            charts[f"{prefix}/per_class_ap"] = self._per_class_table(coco_evals)
        if self.pr_curves:
            for iou_type, coco_eval in coco_evals.items():
                curves = analysis.pr_curves(coco_eval, iou=0.5)
                lines = {**curves.per_class, "mean@0.5": curves.mean, "mean@0.5:0.95": curves.mean_all_ious}
                lines = {k: v for k, v in lines.items() if not np.isnan(v).all()}
                if lines:
                    charts[f"{prefix}/{iou_type}_pr_curve"] = wandb.plot.line_series(
                        curves.recall.tolist(), [v.tolist() for v in lines.values()], keys=list(lines),
                        title=f"{iou_type} precision-recall (IoU 0.5; mean also 0.5:0.95)", xname="recall")
        if self.confusion_matrix:
            counts = analysis.confusion_matrix(main, self.bbox_score_thr, self.tp_iou_thr)
            names = [*analysis.class_names(main), BACKGROUND]
            cells = [[names[i], names[j], int(counts[i, j])] for i in range(len(names)) for j in range(len(names))]
            charts[f"{prefix}/confusion_matrix"] = wandb.plot_table(
                "wandb/confusion_matrix/v1", wandb.Table(columns=["Actual", "Predicted", "nPredictions"], data=cells),
                {"Actual": "Actual", "Predicted": "Predicted", "nPredictions": "nPredictions"},
                {"title": f"Confusion matrix (score >= {self.bbox_score_thr:g}, IoU >= {self.tp_iou_thr:g})"})
            rows = [[names[i], *[int(v) for v in counts[i]]] for i in range(len(names))]
            charts[f"{prefix}/confusion_matrix_counts"] = wandb.Table(columns=["ground_truth", *names], data=rows)
        return charts

    def _per_class_table(self, coco_evals: dict[str, Any]) -> wandb.Table:
        import wandb

        per_type = {iou_type: analysis.class_ap(ev, self.bbox_score_thr) for iou_type, ev in coco_evals.items()}
        main = per_type.get("bbox") or next(iter(per_type.values()))
        columns = ["class"]
        for iou_type in per_type:
            columns += [f"{iou_type}_AP", f"{iou_type}_AP50", f"{iou_type}_AP75"]
        table = wandb.Table(columns=[*columns, "num_gt", "num_det", "note"])
        for k, row in enumerate(main):
            values: list[Any] = [row.name]
            for rows in per_type.values():
                values += [rows[k].ap, rows[k].ap50, rows[k].ap75]
            table.add_data(*values, row.num_gt, row.num_det, "" if row.has_ground_truth else "no ground truth")
        return table

    def _summarise(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        summary = self._logger.experiment.summary
        metrics = getattr(pl_module, "last_eval_metrics", {})
        key = monitored_key(metrics, self.monitor)
        value = metrics.get(key)
        if trainer.state.fn == "fit" and value is not None and not np.isnan(value):
            if self.best is None or (value > self.best if self.mode == "max" else value < self.best):
                self.best, self.best_epoch = float(value), trainer.current_epoch + 1
                self._best_key = key
        if self.best is not None:
            summary[f"best/{self._best_key}"] = self.best
            summary["best/epoch"] = self.best_epoch
        if self.complexity:
            self._summarise_complexity()
        if self._images:
            summary["speed/ms_per_image"] = 1000.0 * self._step_time / self._images

    def _summarise_complexity(self) -> None:
        self._logger.experiment.summary.update({f"model/{k}": v for k, v in (self.complexity or {}).items()})

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "best_key": self._best_key}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if getattr(self, "_stage", "fit") == "fit":  # `validate --ckpt_path` restores callbacks too: not its best
            self.best, self.best_epoch = state_dict.get("best"), state_dict.get("best_epoch")
            self._best_key = state_dict.get("best_key") or self.monitor


def monitored_key(metrics: Mapping[str, Any], monitor: str) -> str:
    """``monitor``, or where the evaluation prefixes its metrics by model (a semi-supervised run's
    ``teacher/coco/bbox_mAP`` and ``student/...``) and ``monitor`` is not among them, the first prefixed one.

    Example::
        >>> monitored_key({"teacher/coco/bbox_mAP": 0.5, "student/coco/bbox_mAP": 0.4}, "coco/bbox_mAP")
        'teacher/coco/bbox_mAP'
    """
    if monitor in metrics:
        return monitor
    return next((key for key in metrics if key.endswith(f"/{monitor}")), monitor)


def model_complexity(pl_module: torch.nn.Module, batch: Any) -> dict[str, float]:
    """``{"params": ..., "flops": ...}`` of ``pl_module.model`` (or of a detector itself) on the first image
    of a collated mmdet batch (the FLOPs of mmdet's ``tools/analysis_tools/get_flops.py``, without its
    second trace for activations); only ``params`` when FLOPs cannot be counted. Grounding models (GLIP,
    Grounding DINO), whose mode "tensor" takes no text, are counted on their prediction with the batch's
    prompt, the language model included.

    Example::
        >>> model_complexity(module, next(iter(datamodule.val_dataloader())))  # doctest: +SKIP
        {'params': 1776303, 'flops': 235666176}
    """
    model: Any = getattr(pl_module, "model", pl_module)
    found: dict[str, float] = {"params": int(sum(p.numel() for p in model.parameters()))}
    try:
        from mmengine.analysis import FlopAnalyzer

        one = {key: value[:1] for key, value in batch.items()}
        with torch.no_grad():
            data = model.data_preprocessor(one, False)
            forward = _PredictForward if hasattr(model, "language_model") else _TensorForward
            flops = FlopAnalyzer(forward(model, data["data_samples"]), data["inputs"])
            # mmengine would warn about every operator it does not count
            found["flops"] = int(flops.unsupported_ops_warnings(False).uncalled_modules_warnings(False).total())
    except Exception as err:  # tracing fails on some models: say so, keep the rest
        rank_zero_warn(f"W&B run summary: could not count the model's FLOPs ({type(err).__name__}: {err}).")
    return found


class _TensorForward(torch.nn.Module):
    """The detector's forward in mode "tensor" with its data samples bound, for the FLOP counter."""

    def __init__(self, model: torch.nn.Module, data_samples: Any) -> None:
        super().__init__()
        self.model = model
        self.data_samples = data_samples

    def forward(self, inputs: torch.Tensor) -> Any:
        return self.model(inputs, self.data_samples, mode="tensor")


class _PredictForward(_TensorForward):
    """The detector's prediction (mode "predict": a grounding model encodes the samples' text), its boxes and
    scores as the traced outputs."""

    def forward(self, inputs: torch.Tensor) -> Any:
        samples = self.model(inputs, self.data_samples, mode="predict")
        return tuple(t for sample in samples for t in (sample.pred_instances.bboxes, sample.pred_instances.scores))
