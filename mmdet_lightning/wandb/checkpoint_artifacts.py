"""Checkpoints written by Lightning's ModelCheckpoint, uploaded as W&B model artifacts with eval metadata."""

from __future__ import annotations

import io
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .._compat import lightning as lightning_compat
from .._compat import wandb as wandb_compat
from ..checkpoint import mmdet_checkpoint
from ..checkpoint_io import CheckpointWriteError, SafeCheckpointIO, md5_base64
from ..engine.run_state import dataset_meta
from ..lightning_package import pl
from ..tasks import task_of
from ._common import find_wandb_logger, finish_run, validation_metrics, warn_if_other_run
from .worker import BackgroundWorker

Callback = pl.callbacks.Callback
Checkpoint = pl.callbacks.Checkpoint
ModelCheckpoint = pl.callbacks.ModelCheckpoint
Logger = pl.loggers.logger.Logger
rank_zero_only, rank_zero_warn = pl.utilities.rank_zero_only, pl.utilities.rank_zero_warn
MisconfigurationException = pl.utilities.exceptions.MisconfigurationException

__all__ = ["WandbCheckpointArtifacts"]


class _CheckpointWatcher(Logger):
    """Lightning tells every logger when a ModelCheckpoint has written a file (``after_save_checkpoint``,
    rank 0, after the file is complete); this logger passes that on to the callback and logs nothing."""

    def __init__(self, on_saved: Callable[[ModelCheckpoint], None],
                 on_failed: Callable[[], None] | None = None) -> None:
        super().__init__()
        self._on_saved = on_saved
        self._on_failed = on_failed

    @property
    def name(self) -> str:
        return "wandb_checkpoint_watcher"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def after_save_checkpoint(self, checkpoint_callback: ModelCheckpoint) -> None:
        self._on_saved(checkpoint_callback)

    def finalize(self, status: str) -> None:
        # after every callback's on_exception (OnExceptionCheckpoint has written its file by now)
        if status == "failed" and self._on_failed is not None:
            self._on_failed()


class WandbCheckpointArtifacts(Callback):
    """Upload each checkpoint that ``ModelCheckpoint`` writes as W&B artifact ``run_<run id>_model``.

    Each version has type ``model``, aliases ``epoch_N`` (epoch-based checkpoints, N counted from 1 as
    in mmdet) or ``iter_N`` (step-based), ``latest``, and ``best`` when it is the monitored best; its
    metadata is ``{"epoch", "global_step", **the latest validation's metrics}``, taken from the last
    validation, never by evaluating again. The file is hard-linked (not copied) into the W&B run folder,
    so that neither a staging copy nor Lightning's removal of old top-k files touches what is uploaded
    or waits for ``wandb sync``. W&B reads it once, to upload it: its MD5 is the one
    :class:`~mmdet_lightning.checkpoint_io.SafeCheckpointIO` (``MMDetModule``'s) computed from memory while
    writing it (W&B hashes the file itself under another ``CheckpointIO``), and it is not copied into W&B's
    cache after the upload (``skip_cache``).

    Lifecycle::

        setup                  find the WandbLogger; no ModelCheckpoint: one warning, uploads off
        on_train_start         checkpoint interval must be a multiple of the validation interval; SafeCheckpointIO
                               hashes the checkpoints it writes (record_md5)
        on_validation_end      remember the validation's metrics (module.last_eval_metrics)
        ModelCheckpoint saves  -> after_save_checkpoint (rank 0 only; nothing collective): hard-link the file,
                               take the metadata, hand the upload to the background worker
        worker thread          run.log_artifact (with retries)
        on_exception           wait for the worker; remember the exception; then, once every callback's
                               on_exception has run (OnExceptionCheckpoint's file included): upload the newest
                               checkpoint not yet uploaded with aliases "interrupted", "latest" and metadata
                               {"interrupted": <exception>}, wait for the worker; on SIGTERM / KeyboardInterrupt
                               finish the W&B run (offline: ready for `wandb sync`)
        teardown               wait for the worker: every upload handed over is logged

    A failing upload is retried ``UPLOAD_ATTEMPTS`` times on the worker, then reported with a warning; it
    never stops training. A checkpoint counts as uploaded (``uploaded``, in the callback's state) from the
    moment its upload is handed over, so that the checkpoint saved next does not make a resumed run upload
    it again; a final failure takes it back out. Resumed from a checkpoint, the uploaded files and the run
    id come back from the callback's state: nothing is uploaded twice and aliases continue (``epoch_N`` /
    ``iter_N`` from the trainer).

    With ``weights_only=True`` each version holds the detector's weights alone, as the mmdet checkpoint
    ``<name>.pth`` that :func:`~mmdet_lightning.checkpoint.to_mmdet_checkpoint` writes (``state_dict`` and
    ``meta.dataset_meta``: what mmdet's ``init_detector`` and ``MMDetModule(load_from=...)`` read), without the
    optimizer state: a half to a third of the upload. It is serialised from the model in memory when the checkpoint
    is saved (hashed from memory too); the full checkpoint stays on disk for resuming.

    Args:
        log_checkpoint_metadata: add epoch, step and the latest eval metrics to each version's metadata.
        weights_only: upload the detector's weights (an mmdet ``.pth``) instead of the whole Lightning checkpoint.
        upload_on_exception: when training stops on an exception or interrupt, upload the newest checkpoint.
        background: upload on a background thread, so that training goes on meanwhile; False uploads in
            the checkpoint hook (for debugging).
        worker: the worker to use (``MMDetWandbCallback`` shares one among its parts); by default its own.

    Raises:
        MisconfigurationException: no ``WandbLogger``; a checkpoint interval that is not a multiple of the
            validation interval while ``log_checkpoint_metadata`` is on.

    Example::
        >>> callbacks = [ModelCheckpoint(every_n_epochs=1, save_top_k=-1), WandbCheckpointArtifacts()]
    """

    ARTIFACT_TYPE = "model"
    UPLOAD_ATTEMPTS = 3

    def __init__(self, log_checkpoint_metadata: bool = True, upload_on_exception: bool = True,
                 background: bool = True, worker: BackgroundWorker | None = None, weights_only: bool = False) -> None:
        self.log_checkpoint_metadata = log_checkpoint_metadata
        self.weights_only = weights_only
        self.upload_on_exception = upload_on_exception
        self.worker = worker if worker is not None else BackgroundWorker(background=background)
        # file path -> global step it was uploaded at (handed over); the worker takes failed uploads back out
        # (single dict operations, atomic under the GIL)
        self.uploaded: dict[str, int] = {}
        self._eval_metrics: dict[str, float] = {}
        self._enabled = True
        self._watcher: _CheckpointWatcher | None = None
        self._exception: BaseException | None = None
        #: the W&B run the uploads went to (restored on resume, to warn when the logger's run differs)
        self.run_id: str | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._logger = find_wandb_logger(trainer, type(self).__name__)
        self._trainer = trainer
        if stage != "fit":
            return
        if not [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)]:
            rank_zero_warn(
                "log_checkpoint=True but the trainer has no ModelCheckpoint callback: no checkpoint will be "
                "uploaded. Hint: add ModelCheckpoint(every_n_epochs=1) to the callbacks."
            )
            self._enabled = False
            return
        self._watcher = _CheckpointWatcher(self._on_checkpoint_saved, self._after_exception)
        trainer.loggers = [*trainer.loggers, self._watcher]

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.worker.close()
        if self._watcher is not None:
            trainer.loggers = [logger for logger in trainer.loggers if logger is not self._watcher]
            self._watcher = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        checkpoint_io = getattr(trainer.strategy, "checkpoint_io", None)
        if self._enabled and isinstance(checkpoint_io, SafeCheckpointIO):
            checkpoint_io.record_md5 = True
        if self._enabled and self.log_checkpoint_metadata:
            for callback in trainer.checkpoint_callbacks:
                if isinstance(callback, ModelCheckpoint):
                    _check_intervals(trainer, callback)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self._eval_metrics = validation_metrics(trainer, pl_module)

    def _on_checkpoint_saved(self, checkpoint_callback: ModelCheckpoint) -> None:
        trainer = self._trainer
        candidates = [checkpoint_callback.last_model_path, checkpoint_callback.best_model_path,
                      *checkpoint_callback.best_k_models]
        fresh = [p for p in dict.fromkeys(candidates) if p and os.path.isfile(p) and p not in self.uploaded]
        if trainer.global_step in self.uploaded.values():  # last.ckpt beside the top-k file of the same step
            self.uploaded.update({p: trainer.global_step for p in fresh})
            return
        if fresh:
            path = max(fresh, key=os.path.getmtime)
            step_based = bool(lightning_compat.checkpoint_every_n_train_steps(checkpoint_callback))
            tag = f"iter_{trainer.global_step}" if step_based else f"epoch_{trainer.current_epoch + 1}"
            aliases = [tag, "latest"]
            if checkpoint_callback.monitor and path == checkpoint_callback.best_model_path:
                aliases.append("best")
            self._upload(trainer, path, aliases)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.run_id is not None:  # restored from a checkpoint
            warn_if_other_run(self._logger, self.run_id)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if not hasattr(self, "_logger"):  # the exception came before setup
            return
        self.worker.drain()
        self._exception = exception
        if self._watcher is None or self._watcher not in trainer.loggers:  # no finalize call will come
            self._after_exception()

    def _after_exception(self) -> None:
        exception, self._exception = self._exception, None
        if exception is None:
            return
        trainer = self._trainer
        if self._enabled and self.upload_on_exception:
            files = [p for cb in trainer.callbacks  # type: ignore[attr-defined]  # set by Lightning's callback connector
                     if isinstance(cb, Checkpoint) for p in _checkpoint_files(cb)]
            fresh = [p for p in dict.fromkeys(files) if os.path.isfile(p) and p not in self.uploaded]
            if fresh:
                path = max(fresh, key=os.path.getmtime)
                self._upload(trainer, path, ["interrupted", "latest"], extra={"interrupted": type(exception).__name__})
        self.worker.drain()  # every upload handed over reaches the run before it is finished
        # SIGTERMException is a SystemExit; a checkpoint that could not be written (disk full) ends the run too
        if isinstance(exception, (SystemExit, KeyboardInterrupt, CheckpointWriteError)):
            finish_run(self._logger, exit_code=1)

    @rank_zero_only
    def _upload(self, trainer: pl.Trainer, path: str, aliases: list[str], extra: dict[str, Any] | None = None) -> None:
        """Take what the upload needs now (a hard link to the file, the metadata) and hand it to the worker."""
        run = self._logger.experiment
        self.run_id = run.id
        metadata: dict[str, Any] = {}
        if self.log_checkpoint_metadata:
            metadata = {"epoch": trainer.current_epoch + 1, "global_step": trainer.global_step, **self._eval_metrics}
        metadata.update(task_of(trainer.lightning_module).artifact_metadata())  # a grounding model's prompt
        metadata.update(extra or {})
        name = f"run_{run.id}_{self.ARTIFACT_TYPE}"
        folder = Path(run.dir).parent / "checkpoint_links"
        md5: str | None = None
        try:
            if self.weights_only:
                metadata["weights_only"] = True
                link, md5 = _weights_for_upload(trainer, Path(path), folder)
            else:
                link = _link_for_upload(Path(path), folder, trainer.global_step)
        except OSError as err:  # a file-system failure must not stop training
            rank_zero_warn(f"W&B: could not log checkpoint {path} as artifact {name} ({type(err).__name__}: {err}); "
                           "training goes on, the file stays on disk.")
            return
        self.uploaded[path] = trainer.global_step
        checkpoint_io = getattr(trainer.strategy, "checkpoint_io", None)
        if md5 is None and isinstance(checkpoint_io, SafeCheckpointIO):
            md5 = checkpoint_io.md5_of(link)
        self.worker.submit(self._log_artifact, run, path, link, name, aliases, metadata, md5)

    def _log_artifact(self, run: Any, path: str, link: Path, name: str, aliases: list[str],
                      metadata: dict[str, Any], md5: str | None = None) -> None:
        """On the worker: log the checkpoint's artifact, retried; a final failure warns and takes it back out."""
        import wandb

        for attempt in range(1, self.UPLOAD_ATTEMPTS + 1):
            try:
                artifact = wandb.Artifact(name, type=self.ARTIFACT_TYPE, metadata=metadata)
                entry = Path(path).with_suffix(".pth").name if self.weights_only else Path(path).name
                wandb_compat.artifact_add_file_with_digest(artifact, str(link), entry, md5)
                run.log_artifact(artifact, aliases=aliases)
                return
            except Exception as err:  # a W&B or file-system failure must not stop training
                if attempt == self.UPLOAD_ATTEMPTS:
                    self.uploaded.pop(path, None)
                    rank_zero_warn(f"W&B: could not log checkpoint {path} as artifact {name} after {attempt} attempts "
                                   f"({type(err).__name__}: {err}); training goes on, the file stays on disk.")
                    return
                time.sleep(self.RETRY_SECONDS * attempt)

    RETRY_SECONDS = 1.0

    def state_dict(self) -> dict[str, Any]:
        return {"uploaded": dict(self.uploaded), "run_id": self.run_id}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.uploaded = dict(state_dict.get("uploaded", {}))
        self.run_id = state_dict.get("run_id")


def _checkpoint_files(callback: Checkpoint) -> list[str]:
    """The files a checkpoint callback has written: ModelCheckpoint's, or OnExceptionCheckpoint's."""
    if isinstance(callback, ModelCheckpoint):
        return [p for p in (callback.last_model_path, callback.best_model_path, *callback.best_k_models) if p]
    path = getattr(callback, "ckpt_path", None)
    return [str(path)] if path else []


def _link_for_upload(path: Path, folder: Path, step: int) -> Path:
    """A hard link to ``path`` that outlives Lightning's removal of the file; a copy across file systems."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"step{step}-{path.name}"
    if target.exists():
        target.unlink()
    try:
        os.link(path, target)
    except OSError:
        shutil.copy2(path, target)
    return target


def _weights_for_upload(trainer: pl.Trainer, path: Path, folder: Path) -> tuple[Path, str]:
    """The module's detector weights, as the mmdet checkpoint that ``to_mmdet_checkpoint(path)`` would write, in
    ``folder``; and the file's MD5, hashed from memory. Called when ``path`` has just been saved: the model in
    memory holds its weights."""
    folder.mkdir(parents=True, exist_ok=True)
    meta = dataset_meta(trainer)
    checkpoint = mmdet_checkpoint(trainer.lightning_module.state_dict(), {"dataset_meta": meta} if meta else None,
                                  trainer.current_epoch, trainer.global_step)
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    target = folder / f"step{trainer.global_step}-{path.stem}.pth"
    target.write_bytes(buffer.getbuffer())
    return target, md5_base64(buffer)


def _check_intervals(trainer: pl.Trainer, callback: ModelCheckpoint) -> None:
    """The hook's assert, as a clear error: checkpoints must fall on validations for their metadata."""
    every_steps = lightning_compat.checkpoint_every_n_train_steps(callback)
    every_epochs = lightning_compat.checkpoint_every_n_epochs(callback)
    val_epochs = trainer.check_val_every_n_epoch
    per_epoch_validation = isinstance(trainer.val_check_interval, float) and trainer.val_check_interval == 1.0
    if trainer.limit_val_batches == 0:
        return
    hint = ("Hint: make the checkpoint interval a multiple of the validation interval, or turn checkpoint "
            "metadata off (log_checkpoint_metadata=False).")
    if every_steps:
        if per_epoch_validation and val_epochs:
            val_steps = trainer.num_training_batches * val_epochs
            what = f"every {val_epochs} epoch(s) = {val_steps} steps (check_val_every_n_epoch={val_epochs})"
        else:
            val_steps = int(trainer.val_check_batch)  # type: ignore[arg-type]  # Optional in Lightning's types
            what = f"every {val_steps} steps (val_check_interval={trainer.val_check_interval})"
        if every_steps % max(val_steps, 1):
            raise MisconfigurationException(
                f"ModelCheckpoint(every_n_train_steps={every_steps}) saves every {every_steps} steps, but validation "
                f"runs {what}: a checkpoint's metadata would carry the metrics of an older model.\n{hint}"
            )
    elif every_epochs and val_epochs and per_epoch_validation and every_epochs % val_epochs:
        raise MisconfigurationException(
            f"ModelCheckpoint(every_n_epochs={every_epochs}) saves every {every_epochs} epoch(s), but validation runs "
            f"every {val_epochs} epochs (check_val_every_n_epoch={val_epochs}): a checkpoint's metadata would "
            f"carry the metrics of an older model.\n{hint}"
        )
