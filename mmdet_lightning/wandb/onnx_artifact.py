"""At the end of fit: the trained detector exported to ONNX, scored with onnxruntime, logged as a W&B model artifact."""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._compat import wandb as wandb_compat
from ..lightning_package import pl
from ..tasks import task_of
from ..utilities import first_dataset
from ._common import find_wandb_logger, validation_metrics
from .worker import BackgroundWorker

Callback = pl.callbacks.Callback
ModelCheckpoint = pl.callbacks.ModelCheckpoint
rank_zero_warn = pl.utilities.rank_zero_warn

__all__ = ["WandbOnnxArtifact"]

_WEIGHTS = ("best", "last")


class WandbOnnxArtifact(Callback):
    """When ``fit`` ends, export the detector to ONNX (:func:`mmdet_lightning.export.export_onnx`), measure its
    validation metrics with onnxruntime, and log the file as W&B artifact ``run_<run id>_onnx`` (type ``model``,
    aliases ``onnx`` and ``best`` or ``last``).

    The weights are the monitored best checkpoint of ``ModelCheckpoint`` (``weights="best"``, when there is one)
    or the weights at the end of fit. The file is written to ``path`` (default ``<default_root_dir>/model.onnx``)
    and its artifact's metadata holds ``input_size`` (``[h, w]`` or ``"dynamic"``), ``opset``, ``weights``,
    ``checkpoint``, ``epoch``, ``global_step``, ``onnxruntime`` (the validation set's metrics from the exported
    file, scored by the config's ``val_evaluator``: ``{"coco/bbox_mAP": ...}``), ``pytorch`` (the metrics
    validation logged for the same weights), ``family``, ``export_seconds`` and ``size_mib``.

    A model that cannot be exported (``ExportError``: a head, op or pipeline step without an export form) or any
    other failure gives one warning naming the cause; the run ends normally, its checkpoints untouched. Rank 0
    only; not on an exception or interrupt (nothing is exported from a failed fit).

    Args:
        weights: ``"best"`` (the monitored best checkpoint, else the last weights) or ``"last"``.
        input_size: ``(height, width)`` for a fixed input size; None (default) for any size.
        opset_version: the ONNX opset (>= 16).
        path: where to write the ``.onnx`` file.
        evaluate: measure the validation metrics with onnxruntime (True) or leave them out.
        worker: the worker that logs the artifact (``MMDetWandbCallback`` shares one among its parts).

    Raises:
        ValueError: ``weights`` not ``"best"`` / ``"last"``, an ``input_size`` that is not two positive ints.

    Example::
        >>> callbacks = [ModelCheckpoint(monitor="coco/bbox_mAP", mode="max"), WandbOnnxArtifact(weights="best")]
    """

    ARTIFACT_TYPE = "model"

    def __init__(self, weights: str = "best", input_size: Sequence[int] | None = None, opset_version: int = 18,
                 path: str | os.PathLike | None = None, evaluate: bool = True,
                 worker: BackgroundWorker | None = None) -> None:
        if weights not in _WEIGHTS:
            raise ValueError(f"Expected argument `weights` to be one of {_WEIGHTS}, but got {weights!r}.")
        if input_size is not None and (len(input_size) != 2 or any(
                isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in input_size)):
            raise ValueError(f"Expected argument `input_size` to be (height, width) positive ints or None, but got "
                             f"{input_size!r}.")
        if isinstance(opset_version, bool) or not isinstance(opset_version, int) or opset_version < 16:
            raise ValueError(f"Expected argument `opset_version` to be an int >= 16, but got {opset_version!r}.")
        self.weights = weights
        self.input_size = list(input_size) if input_size is not None else None
        self.opset_version = opset_version
        self.path = path
        self.evaluate = evaluate
        self.worker = worker if worker is not None else BackgroundWorker()
        #: global step -> the metrics of the validation at that step (the PyTorch side of the metadata)
        self._evals: dict[int, dict[str, float]] = {}
        self._val_dataset: Any = None
        #: the file written at the end of the last fit (None before, or when the export failed)
        self.exported: Path | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._logger = find_wandb_logger(trainer, type(self).__name__)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.worker.close()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self._evals[trainer.global_step] = validation_metrics(trainer, pl_module)
        self._val_dataset = first_dataset(trainer.val_dataloaders)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        try:
            self._export_and_log(trainer, pl_module)
        except Exception as error:  # the run has finished training: a failed export must not fail it
            from ..export import ExportError

            cause = str(error) if isinstance(error, ExportError) else f"{type(error).__name__}: {error}"
            rank_zero_warn(f"W&B: the trained model was not exported to ONNX ({cause}). Training finished "
                           "normally; its checkpoints are unaffected.")

    def _weights(self, trainer: pl.Trainer) -> tuple[str | None, str]:
        """The best checkpoint's path (or None for the weights in memory) and which weights they are."""
        if self.weights == "best":
            for callback in trainer.checkpoint_callbacks:
                if isinstance(callback, ModelCheckpoint) and callback.monitor and callback.best_model_path and \
                        os.path.isfile(callback.best_model_path):
                    return callback.best_model_path, "best"
        return None, "last"

    def _export_and_log(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from ..checkpoint import load_checkpoint_file, load_detector_weights
        from ..export import export_onnx
        from ..export.evaluate import evaluate_onnx
        from ..export.families import describe_family

        module: Any = pl_module  # an MMDetModule: its detector (`model`) and config (`cfg`)
        start = time.perf_counter()
        checkpoint, which = self._weights(trainer)
        detector = copy.deepcopy(module.model).cpu()
        epoch, step = trainer.current_epoch, trainer.global_step
        if checkpoint is not None:
            saved = load_checkpoint_file(checkpoint)
            epoch, step = int(saved.get("epoch", epoch)) + 1, int(saved.get("global_step", step))
            del saved
            report = load_detector_weights(detector, checkpoint)
            if report.missing or report.mismatched:
                raise ValueError(f"the best checkpoint {checkpoint} does not fit the model: {report.summary()}")
        target = Path(self.path) if self.path is not None else Path(trainer.default_root_dir) / "model.onnx"
        path = export_onnx(detector, target, input_size=self.input_size, config=module.cfg,
                           opset_version=self.opset_version)
        seconds = time.perf_counter() - start
        self.exported = path
        metadata: dict[str, Any] = {
            "format": "onnx", "input_size": self.input_size or "dynamic", "opset": self.opset_version,
            "weights": which, "checkpoint": Path(checkpoint).name if checkpoint else None, "epoch": epoch,
            "global_step": step, "pytorch": self._evals.get(step, {}),
            "family": describe_family(detector), "export_seconds": round(seconds, 1),
            "size_mib": round(path.stat().st_size / 2**20, 2)}
        if self.evaluate and self._val_dataset is not None:
            try:
                metadata["onnxruntime"] = evaluate_onnx(path, self._val_dataset, module.cfg, task=task_of(pl_module))
            except Exception as error:  # the file is good: log it without the metrics, and say why
                rank_zero_warn(f"W&B: {path} was exported but not evaluated with onnxruntime "
                               f"({type(error).__name__}: {error}); its artifact has no `onnxruntime` metrics.")
        run = self._logger.experiment
        name = f"run_{run.id}_onnx"
        self.worker.submit(self._log_artifact, run, path, name, ["onnx", which], metadata)

    def _log_artifact(self, run: Any, path: Path, name: str, aliases: list[str], metadata: dict[str, Any]) -> None:
        """On the worker: the file as a ``model`` artifact (a failure is the worker's warning)."""
        import wandb

        artifact = wandb.Artifact(name, type=self.ARTIFACT_TYPE, metadata=metadata)
        wandb_compat.artifact_add_file_with_digest(artifact, str(path), path.name, None)
        run.log_artifact(artifact, aliases=aliases)
