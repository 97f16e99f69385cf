"""MMDetWandbCallback: everything mmdet 2.x's MMDetWandbHook did, as one Lightning callback."""

from __future__ import annotations

from typing import Any

from .._compat import lightning as lightning_compat
from ..lightning_package import check_one_package, pl
from ._common import check_non_negative_int, check_unit_interval, finish_run
from .analytics import WandbEvalAnalytics
from .checkpoint_artifacts import WandbCheckpointArtifacts
from .metrics import WandbIntervalMetrics
from .onnx_artifact import WandbOnnxArtifact
from .tables import WandbDetectionTables
from .worker import BackgroundWorker

Callback = pl.callbacks.Callback

__all__ = ["MMDetWandbCallback"]

# every Callback hook the parts implement; the group forwards each one to its parts in order
_FORWARDED_HOOKS = (
    "setup", "on_fit_start", "on_train_start", "on_train_epoch_start", "on_train_batch_start",
    "on_train_batch_end", "on_validation_start", "on_validation_batch_start", "on_validation_batch_end",
    "on_validation_epoch_end", "on_validation_end", "on_test_start", "on_test_batch_start", "on_test_batch_end",
    "on_test_epoch_end", "on_test_end", "on_fit_end",
)


class MMDetWandbCallback(Callback):
    """The ``MMDetWandbHook`` of mmdet 2.x for Lightning's ``WandbLogger``, with the hook's arguments.

    Made of callbacks that also work alone: :class:`WandbIntervalMetrics` (``interval``),
    :class:`WandbCheckpointArtifacts` (``log_checkpoint``, ``log_checkpoint_metadata``),
    :class:`WandbDetectionTables` (``num_eval_images``, ``bbox_score_thr``, ``mean_confidence``) and, beyond
    the hook, :class:`WandbEvalAnalytics` (``per_class_ap``, ``pr_curves``, ``confusion_matrix``,
    ``run_summary``; left out when all four are off) and :class:`WandbOnnxArtifact` (``log_onnx``).

    Args:
        interval: log training scalars every N iterations, averaged over them.
        log_checkpoint: upload each checkpoint of ``ModelCheckpoint`` as artifact ``run_<id>_model``.
        log_checkpoint_metadata: add epoch, step and the latest eval metrics to the checkpoint artifacts.
        checkpoint_weights_only: upload the detector's weights alone (an mmdet ``.pth``, no optimizer state)
            instead of the whole checkpoint; the full checkpoint stays on disk.
        num_eval_images: validation images in the W&B tables; 0 turns the tables off.
        bbox_score_thr: predictions with a higher score go into the prediction table (and the analytics).
        mean_confidence: add a mean-confidence column a class to ``eval_data``.
        per_class_ap: log table ``eval/per_class_ap`` after each evaluation.
        pr_curves: log the precision-recall charts ``eval/<iou type>_pr_curve``.
        confusion_matrix: log ``eval/confusion_matrix`` (chart) and ``eval/confusion_matrix_counts``.
        run_summary: best monitored metric and its epoch, parameters, FLOPs and ms per image in the summary.
        monitor: the metric whose best value the summary holds.
        log_onnx: at the end of ``fit``, export the best checkpoint's weights (else the last) to ONNX, measure
            the validation metrics with onnxruntime, and log the file as artifact ``run_<id>_onnx`` (type
            ``model``, alias ``onnx``); a model that cannot be exported gives a warning, not an error.
        onnx_input_size: ``(height, width)`` for a fixed ONNX input size; None (default) for any size.
        background: build the tables, log the artifacts (tables, checkpoints) and count the FLOPs on one
            background thread shared by the parts, so that no training step waits on them; what is handed
            over is logged by the end of ``fit`` / ``validate`` / ``test``, on an exception and at interpreter
            exit. False does that work in the hooks themselves (for debugging).

    Raises:
        ValueError: a negative ``interval`` or ``num_eval_images``, ``bbox_score_thr`` outside [0, 1].

    Example::
        >>> callback = MMDetWandbCallback(interval=10, log_checkpoint=True, num_eval_images=100, bbox_score_thr=0.3)
        >>> [type(part).__name__ for part in callback.parts]
        ['WandbIntervalMetrics', 'WandbCheckpointArtifacts', 'WandbDetectionTables', 'WandbEvalAnalytics']
    """

    def __init__(
        self,
        interval: int = 50,
        log_checkpoint: bool = False,
        log_checkpoint_metadata: bool = True,
        checkpoint_weights_only: bool = False,
        num_eval_images: int = 100,
        bbox_score_thr: float = 0.3,
        mean_confidence: bool = True,
        per_class_ap: bool = True,
        pr_curves: bool = True,
        confusion_matrix: bool = True,
        run_summary: bool = True,
        monitor: str = "coco/bbox_mAP",
        background: bool = True,
        log_onnx: bool = False,
        onnx_input_size: tuple[int, int] | None = None,
    ) -> None:
        check_one_package(type(self).__name__)
        check_non_negative_int("interval", interval, positive=True)
        check_non_negative_int("num_eval_images", num_eval_images)
        check_unit_interval("bbox_score_thr", bbox_score_thr)
        self.worker = BackgroundWorker(background=background)
        self.parts: list[Callback] = [WandbIntervalMetrics(interval=interval)]
        if log_checkpoint:
            self.parts.append(WandbCheckpointArtifacts(log_checkpoint_metadata=log_checkpoint_metadata,
                                                       weights_only=checkpoint_weights_only, worker=self.worker))
        if num_eval_images > 0:
            self.parts.append(WandbDetectionTables(num_eval_images=num_eval_images, bbox_score_thr=bbox_score_thr,
                                                   mean_confidence=mean_confidence, worker=self.worker))
        analytics: dict[str, Any] = dict(per_class_ap=per_class_ap, pr_curves=pr_curves,
                                         confusion_matrix=confusion_matrix, run_summary=run_summary)
        analytics_part = WandbEvalAnalytics(**analytics, bbox_score_thr=bbox_score_thr, monitor=monitor,
                                            worker=self.worker)
        if any(analytics.values()):
            self.parts.append(analytics_part)
        if log_onnx:
            self.parts.append(WandbOnnxArtifact(input_size=onnx_input_size, worker=self.worker))

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """Calls ``teardown`` of each part, then waits for the background worker and stops its thread."""
        for part in self.parts:
            part.teardown(trainer, pl_module, stage)
        self.worker.close()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        """Calls ``on_exception`` of each part and waits for the background worker; without checkpoint uploads
        (which finish the run after their last upload), finishes the W&B run on SIGTERM / KeyboardInterrupt so
        that everything logged is kept."""
        for part in self.parts:
            part.on_exception(trainer, pl_module, exception)
        self.worker.drain()
        if isinstance(exception, (SystemExit, KeyboardInterrupt)) and hasattr(self.parts[0], "_logger") and not any(
                isinstance(part, WandbCheckpointArtifacts) for part in self.parts):
            finish_run(self.parts[0]._logger, exit_code=1)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {type(part).__name__: part.state_dict() for part in self.parts}
        logger = getattr(self.parts[0], "_logger", None)  # None before setup
        run = lightning_compat.wandb_logger_run(logger) if logger is not None else None
        run_id = getattr(run, "id", None)
        if isinstance(run_id, str):  # what `fit --ckpt_path` continues (wandb_run_id)
            state["run_id"] = run_id
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for part in self.parts:
            if type(part).__name__ in state_dict:
                part.load_state_dict(state_dict[type(part).__name__])


def _forward(name: str) -> Any:
    def hook(self: MMDetWandbCallback, *args: Any, **kwargs: Any) -> None:
        for part in self.parts:
            getattr(part, name)(*args, **kwargs)

    hook.__name__ = name
    hook.__doc__ = f"Calls ``{name}`` of each part."
    return hook


for _name in _FORWARDED_HOOKS:
    setattr(MMDetWandbCallback, _name, _forward(_name))
