"""The LightningModule that trains, evaluates and runs any mmdet 3.x detector.

The module is the Lightning wiring; what it does at each hook lives in :mod:`mmdet_lightning.engine` and in
the task (:mod:`mmdet_lightning.tasks`), in the order mmengine's runner does it, so that a run under
``pl.Trainer`` matches a run under ``mmengine.runner.Runner`` iteration by iteration:

    setup                     env_cfg; strategy checked and adapted (engine.strategy.prepare_strategy)
    configure_optimizers      optim_wrapper, auto_scale_lr, param_scheduler      (engine.optimization)
    on_train_start            MessageHub run info, resumed state, class check     (RuntimeInfoHook.before_run)
    on_train_batch_start      MessageHub 'iter'                                   (RuntimeInfoHook.before_train_iter)
    training_step             compute_losses (the task: data_preprocessor -> mode="loss" -> parse_losses)
                              -> backward -> invalid-loss check -> clip_grad -> optimizer.step -> zero_grad
                              (OptimWrapper.update_params; engine.invalid_loss)
    on_train_batch_end        iteration-based param schedulers step; on the epoch's last batch the
                              epoch-based ones too          (ParamSchedulerHook; engine.optimization.ScheduleStepper)
    validation_step           model.val_step -> evaluator.process                 (ValLoop.run_iter)
    on_validation_epoch_end   evaluator.evaluate(len(dataset)) -> self.log('coco/bbox_mAP', ...)
                                                                                  (engine.evaluation_loop)
    on_save_checkpoint        MessageHub, optimizer wrapper count, pending schedule steps; dataset_meta
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from ._compat import lightning as lightning_compat
from ._compat import mmengine as mmengine_compat
from .checkpoint import LoadReport, load_detector_weights
from .config import ConfigLike, apply_env_cfg, load_config, replace_data_root
from .console import attach_log_file, metrics_table
from .engine.evaluation_loop import StageEvaluation
from .engine.invalid_loss import InvalidLoss, InvalidLossCheck
from .engine.model import build_detector, follow_preprocessor_device
from .engine.optimization import (
    ScheduleStepper,
    build_optim_wrapper,
    build_param_schedulers,
    loader_batch_size,
    max_epochs_and_iters,
    scale_lr,
)
from .engine.preemption import PreemptionHandler
from .engine.run_state import RUN_STATE_KEY, restore_run_state, save_run_state
from .engine.strategy import broadcast_buffers, check_unused_parameters, prepare_strategy
from .evaluation import EvaluatorBackend, use_evaluator_backend
from .lightning_package import check_one_package, pl
from .precision import keep_mmcv_ops_in_fp32
from .tasks import Task, task_for_model
from .utilities import first_dataset

rank_zero_only = pl.utilities.rank_zero_only

if TYPE_CHECKING:
    from mmengine.optim import OptimWrapper
    from mmengine.optim.scheduler.param_scheduler import _ParamScheduler

__all__ = ["MMDetModule"]


class MMDetModule(pl.LightningModule):
    """An mmdet detector built from its config, trained and evaluated as mmengine's runner would.

    Optimizer, gradient clipping and parameter schedules come from the config's ``optim_wrapper`` and
    ``param_scheduler``; evaluation from ``val_evaluator`` / ``test_evaluator`` (mmdet's ``CocoMetric``),
    logged under mmdet's names (``coco/bbox_mAP``, ...). Validation, test and predict steps return
    mmdet ``DetDataSample`` lists with predictions in original-image coordinates. What depends on the task
    (detection and instance segmentation, panoptic, semi-supervised, grounding) is the ``task``'s
    (:mod:`mmdet_lightning.tasks`); a subclass can replace :meth:`compute_losses` and keep the rest of the
    training step (invalid-loss check, optimizer step).

    Args:
        config: mmdet config: a file path, a dict or an mmengine ``Config``.
        load_from: mmdet or mmdet-lightning checkpoint (path or URL) to start from; defaults to the
            config's ``load_from``. Tensors that do not fit (another class count, say) are reported and skipped.
        data_root: dataset folder to use instead of the config's ``data_root`` (evaluator paths included).
        evaluator_backend: ``"auto"`` (``"hotcoco"`` where hotcoco is installed, as it is with this package, else
            ``"pycocotools"``), ``"pycocotools"`` (mmdet's ``CocoMetric`` as configured), ``"faster_coco_eval"``
            (``FastCocoMetric``) or ``"hotcoco"`` (``HotCocoMetric``): the same numbers as pycocotools
            (:mod:`mmdet_lightning.evaluation`).
        invalid_loss: what a NaN or infinite loss does (mmdet's ``CheckInvalidLossHook``): ``"raise"`` stops
            training with a ``FloatingPointError`` naming the iteration and every loss term; ``"skip"`` warns
            and skips the optimizer step, its gradients discarded, leaving weights and optimizer untouched
            (``skipped_steps``). Checked once backward is queued, with no host synchronisation before it.
        cfg_options: config values to override, as mmdet's ``--cfg-options``: ``["optim_wrapper.optimizer.lr=0.01"]``
            or ``{"optim_wrapper.optimizer.lr": 0.01}`` (:func:`~mmdet_lightning.config.apply_cfg_options`; a key
            that is not in the config is an error).
        trust_checkpoint: load ``load_from`` and ``ckpt_path`` files that need full unpickling (they can run code:
            only for files you trust; also ``MMDET_LIGHTNING_TRUST_CHECKPOINTS=1``). By default checkpoints load with
            ``torch.load(weights_only=True)`` and mmengine's types allowed
            (:func:`~mmdet_lightning.checkpoint.load_checkpoint_file`); Lightning checkpoints are written atomically
            (:class:`~mmdet_lightning.checkpoint_io.SafeCheckpointIO`).

    Raises:
        FileNotFoundError: the config or the checkpoint does not exist.
        ValueError: the config cannot be parsed, has no ``model``, or is of an unsupported task;
            ``invalid_loss`` is not ``"raise"`` or ``"skip"``; a ``cfg_options`` key that is not in the config.

    Example::
        >>> module = MMDetModule.from_config("configs/mmdet/shapes_retinanet.py")  # doctest: +SKIP
        >>> trainer = pl.Trainer(max_epochs=12)  # doctest: +SKIP
        >>> trainer.fit(module, datamodule=MMDetDataModule.from_config(...))  # doctest: +SKIP
    """

    #: seconds between two ``train/loss`` values sent to the progress bar and ``callback_metrics`` at the least
    #: (the loggers get every ``log_every_n_steps``-th step, an epoch's last batch always)
    TRAIN_LOSS_INTERVAL = 0.1
    #: add :class:`~mmdet_lightning.engine.preemption.PreemptionHandler` to every fit (False: Lightning's own SIGTERM
    #: handling, with its per-step broadcast under DDP)
    HANDLE_PREEMPTION = True
    #: the checkpoint key of what mmengine's runner keeps besides weights, optimizer and schedulers
    RESUME_KEY = RUN_STATE_KEY

    def __init__(self, config: ConfigLike, load_from: str | None = None, data_root: str | None = None,
                 evaluator_backend: EvaluatorBackend = "auto", invalid_loss: InvalidLoss = "raise",
                 cfg_options: dict[str, Any] | list[str] | None = None, trust_checkpoint: bool = False) -> None:
        check_one_package(type(self).__name__)
        super().__init__()
        self.trust_checkpoint = trust_checkpoint
        self.invalid_loss_check = InvalidLossCheck(invalid_loss)
        self.cfg = load_config(config, cfg_options)
        #: what depends on the task (chosen from the config's ``model``)
        self.task: Task = task_for_model(self.cfg.model)
        keep_mmcv_ops_in_fp32()  # so that precision="bf16-mixed" / "16-mixed" work with every model
        if data_root is not None:
            replace_data_root(self.cfg, data_root)
        for key in ("val_evaluator", "test_evaluator"):
            if self.cfg.get(key) is not None:
                self.cfg[key] = use_evaluator_backend(self.cfg[key], evaluator_backend)
        self.task.check_config(self.cfg)
        #: the mmdet detector (an mmengine ``BaseModel``)
        self.model: Any = build_detector(self.cfg)
        self.task.setup_model(self.model)
        load_from = load_from if load_from is not None else self.cfg.get("load_from")
        self.load_report: LoadReport | None = None
        if load_from:
            self.load_report = load_detector_weights(self.model, load_from, trust=trust_checkpoint,
                                                     adapt=self.task.checkpoint_state)
        self.automatic_optimization = False
        self.save_hyperparameters({"config": self.cfg.to_dict()})
        self.optim_wrapper: OptimWrapper | None = None
        self.schedules = ScheduleStepper([])
        self.evaluation = StageEvaluation(self.cfg, self.task)
        self._sync_blocker = contextlib.ExitStack()
        self._resumed_state: dict[str, Any] | None = None
        #: whether training scalars go to the loggers every step (a metrics callback that logs interval
        #: averages turns this off, so nothing is logged twice); the progress bar shows the loss either way
        self.log_train_scalars = True
        self._train_loss_logged_at = float("-inf")
        self._train_loss_every_step = False

    @classmethod
    def from_config(cls, config: ConfigLike, **kwargs: Any) -> MMDetModule:
        """Same as ``MMDetModule(config, **kwargs)``; reads well beside ``MMDetDataModule.from_config``."""
        return cls(config, **kwargs)

    # ------------------------------------------------------------------ what the engine holds
    @property
    def param_schedulers(self) -> list[_ParamScheduler]:
        return self.schedules.schedulers

    @property
    def skipped_steps(self) -> int:
        """Training steps skipped because of a NaN or infinite loss (``invalid_loss="skip"``)."""
        return self.invalid_loss_check.skipped_steps

    @property
    def last_eval_metrics(self) -> dict[str, float]:
        """Scalar results of the latest validation (or test), e.g. ``{"coco/bbox_mAP": 0.57, ...}``."""
        return self.evaluation.last_metrics

    @property
    def last_coco_eval(self) -> dict[str, Any]:
        """The accumulated ``COCOeval`` of the latest validation (or test) by IoU type (``"bbox"``, ``"segm"``), on
        the process that evaluated (rank 0); empty elsewhere and for evaluators without a ``CocoMetric``."""
        return self.evaluation.last_coco_eval

    @property
    def last_eval_details(self) -> dict[str, Any]:
        """What the task kept of the latest validation (or test) beyond its scalars, on the process that evaluated
        (rank 0): panoptic segmentation's per-class PQ / SQ / RQ (``Task.recording_evaluation``)."""
        return self.evaluation.last_details

    def num_classes(self) -> dict[str, int]:
        """``num_classes`` of every class-predicting head (RPN heads excluded), by module name."""
        return self.task.class_counts(self.model)

    # ------------------------------------------------------------------ devices, loggers, callbacks, strategy
    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> MMDetModule:
        super()._apply(fn, *args, **kwargs)
        follow_preprocessor_device(self)  # Lightning's .to(device) skips the data preprocessor's own `_device`
        return self

    def forward(self, batch: Mapping[str, Any]) -> list[Any]:
        """Predictions (``DetDataSample`` list) for a collated batch from an mmdet dataloader."""
        return self.task.predictions_to_float32(self.model.test_step(batch))

    def prepare_data(self) -> None:
        """The last hook before Lightning starts the loggers' runs: W&B runs set up for this package
        (:func:`~mmdet_lightning.wandb._common.prepare_loggers`)."""
        from .wandb._common import prepare_loggers

        prepare_loggers(self.trainer)

    def configure_callbacks(self) -> list[pl.Callback]:
        """Lightning's default progress bar becomes its throttled twin (:mod:`mmdet_lightning.callbacks.progress_bar`:
        the same bar, updated at most ten times a second instead of after every step; a progress bar passed
        to the Trainer is kept), and SIGTERM / SLURM's requeue signal stop every rank at the same batch with a
        checkpoint, without Lightning's per-step broadcast
        (:class:`~mmdet_lightning.engine.preemption.PreemptionHandler`; one passed to the Trainer is kept)."""
        from .callbacks.progress_bar import replace_default_progress_bar

        bar = replace_default_progress_bar(self.trainer.progress_bar_callback)
        given: list[pl.Callback] = self.trainer.callbacks  # type: ignore[attr-defined]  # set by its connector
        handler = self.HANDLE_PREEMPTION and not any(isinstance(c, PreemptionHandler) for c in given)
        return ([bar] if bar is not None else []) + ([PreemptionHandler()] if handler else [])

    def setup(self, stage: str) -> None:
        """The config's ``env_cfg``, and the strategy checked and adapted to the model
        (:func:`~mmdet_lightning.engine.strategy.prepare_strategy`). Runs in every process before DDP wraps the
        model."""
        attach_log_file(self.trainer.default_root_dir, self.trainer.global_rank)
        apply_env_cfg(self.cfg)
        self.model = prepare_strategy(self.trainer, self.model, self.cfg, self.trust_checkpoint)

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        trainer = self.trainer
        self.optim_wrapper = build_optim_wrapper(self.model, self.cfg)
        # build the train dataloader now so that the epoch length is known (also for max_steps runs,
        # where `estimated_stepping_batches` returns max_steps without building it)
        trainer.fit_loop.setup_data()
        scale_lr(self.cfg, self.optim_wrapper, loader_batch_size(trainer.train_dataloader) * trainer.world_size)
        max_epochs, max_iters = max_epochs_and_iters(trainer)
        self.schedules = ScheduleStepper(build_param_schedulers(
            self.cfg, self.optim_wrapper, trainer.num_training_batches, max_epochs, max_iters))
        return [self.optim_wrapper.optimizer], list(self.param_schedulers)

    def lr_scheduler_step(self, scheduler: Any, metric: Any | None = None) -> None:
        scheduler.step()

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Called after gradients are unscaled under mixed precision, as mmengine's OptimWrapper.step clips.
        if self.optim_wrapper is not None and self.optim_wrapper.clip_grad_kwargs:
            mmengine_compat.optim_wrapper_clip_grad(self.optim_wrapper)

    # ------------------------------------------------------------------ training
    def on_train_start(self) -> None:
        from mmengine.logging import MessageHub

        max_epochs, max_iters = max_epochs_and_iters(self.trainer)
        assert self.optim_wrapper is not None
        self.optim_wrapper.initialize_count_status(self.model, self._iteration(), max_iters)
        hub = MessageHub.get_current_instance()
        restore_run_state(self, self._resumed_state)
        self._resumed_state = None
        for key, value in (("loop_stage", "train"), ("epoch", self.current_epoch), ("iter", self._iteration()),
                           ("max_epochs", max_epochs), ("max_iters", max_iters)):
            hub.update_info(key, value)
        # a checkpoint or early stopping that monitors the training loss reads it after every step
        callbacks: list[Any] = getattr(self.trainer, "callbacks", [])
        self._train_loss_every_step = any(getattr(cb, "monitor", None) == "train/loss" for cb in callbacks)
        dataset = first_dataset(self.trainer.train_dataloader)
        self.evaluation.check_classes(self.model, dataset, "train")
        if hasattr(dataset, "metainfo"):
            hub.update_info("dataset_meta", dataset.metainfo)

    def on_train_epoch_start(self) -> None:
        from mmengine.logging import MessageHub

        MessageHub.get_current_instance().update_info("epoch", self.current_epoch)
        self.schedules.begin_epoch()
        # mmengine's train loop calls model.train() each epoch; Lightning keeps the modules' modes instead, so
        # without this, backbones' `norm_eval` (BatchNorm frozen, e.g. ResNet.train) would never apply
        self.model.train()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        from mmengine.logging import MessageHub

        MessageHub.get_current_instance().update_info("iter", self._iteration())
        wrapper = self.optim_wrapper
        block_sync = getattr(self.trainer.strategy, "block_backward_sync", None)
        if wrapper is not None and block_sync is not None and not wrapper.should_sync():
            # accumulating gradients: no all-reduce until the update step (mmengine's `optim_context`);
            # entered before the strategy's DDP forward, left in on_train_batch_end
            self._sync_blocker.enter_context(block_sync())

    def _iteration(self) -> int:
        """Batches trained before the current one (mmengine's ``runner.iter``), across epochs and resumes."""
        return lightning_compat.fit_batches_completed(self.trainer)

    def compute_losses(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The total loss and every logged term of one batch (the task's; override to train differently)."""
        return self.task.losses(self.model, batch)

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> dict[str, Any] | None:
        """mmengine's ``BaseModel.train_step`` + ``OptimWrapper.update_params``, with Lightning doing the backward
        and the optimizer step so that precision plugins and strategies apply. Returns what mmengine's
        ``train_step`` returns (``{"loss", "log_vars"}``, for callbacks' ``on_train_batch_end(outputs=...)``),
        or None for a step skipped for a NaN or infinite loss (``invalid_loss="skip"``)."""
        wrapper = self.optim_wrapper
        assert wrapper is not None, "configure_optimizers has not run"
        self.schedules.begin_batch(batch_idx + 1 == self.trainer.num_training_batches)
        loss, log_vars = self.compute_losses(batch)
        finite = self.invalid_loss_check.start(loss, distributed=self.trainer.world_size > 1)
        self.manual_backward(wrapper.scale_loss(loss))
        where = f"iteration {self._iteration()} (epoch {self.current_epoch})"
        optimizer: Any = self.optimizers()
        if not self.invalid_loss_check.passed(finite, log_vars, where):
            optimizer.zero_grad()
            return None
        if self._iteration() == 0:
            check_unused_parameters(self.trainer, self.model)
        mmengine_compat.set_optim_wrapper_inner_count(wrapper, mmengine_compat.optim_wrapper_inner_count(wrapper) + 1)
        if wrapper.should_update():
            optimizer.step()
            optimizer.zero_grad()
        log_vars = {k: v.detach() for k, v in log_vars.items()}
        self._log_train_scalars(batch, log_vars)
        return {"loss": log_vars["loss"], "log_vars": log_vars}

    def _log_train_scalars(self, batch: Any, log_vars: Mapping[str, torch.Tensor]) -> None:
        """Every loss term at the steps where Lightning writes to its loggers (every ``log_every_n_steps``),
        where the loggers get the same values as if they were logged every step; ``train/loss`` (progress bar,
        ``callback_metrics``) also at an epoch's last batch and at most every ``TRAIN_LOSS_INTERVAL`` seconds
        in between, as the progress bar shows it, or every step when a callback monitors it. Each ``self.log``
        costs about half a millisecond, a lot beside a 20 ms GPU step. No host synchronisation here (the
        tensors stay on the device). Callbacks see every step's losses in ``outputs["log_vars"]``."""
        trainer: Any = self.trainer
        # Lightning's condition for writing to its loggers at this step
        to_loggers_now = lightning_compat.logger_connector_should_update(trainer) or bool(trainer.fast_dev_run)
        now = time.monotonic()
        if not (to_loggers_now or self._train_loss_every_step or self.schedules.batch_end_pending
                or now - self._train_loss_logged_at >= self.TRAIN_LOSS_INTERVAL):
            return
        self._train_loss_logged_at = now
        batch_size = len(batch["inputs"]) if isinstance(batch, Mapping) and "inputs" in batch else None
        to_logger = self.log_train_scalars and bool(trainer.loggers)
        self.log("train/loss", log_vars["loss"], batch_size=batch_size, prog_bar=True, logger=to_logger)
        if to_loggers_now:
            others = {f"train/{k}": v for k, v in log_vars.items() if k != "loss"}
            self.log_dict(others, batch_size=batch_size, logger=to_logger)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._sync_blocker.close()
        self.schedules.end_batch(batch_idx + 1 == self.trainer.num_training_batches)

    def on_train_epoch_end(self) -> None:
        self.schedules.end_epoch()  # epochs of unknown length end here

    # ------------------------------------------------------------------ evaluation and prediction
    def on_validation_epoch_start(self) -> None:
        broadcast_buffers(self.trainer, self.model)
        self.evaluation.start("val", self.trainer.val_dataloaders, self.model)

    def validation_step(  # type: ignore[override]
            self, batch: Mapping[str, Any], batch_idx: int, dataloader_idx: int = 0) -> list[Any]:
        # a few sanity batches would give a meaningless mAP
        return self.evaluation.step("val", self.model, batch, process=not self.trainer.sanity_checking)

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self._finish_evaluation("val", self.trainer.val_dataloaders)

    def on_test_epoch_start(self) -> None:
        self.evaluation.start("test", self.trainer.test_dataloaders, self.model)

    def test_step(  # type: ignore[override]
            self, batch: Mapping[str, Any], batch_idx: int, dataloader_idx: int = 0) -> list[Any]:
        return self.evaluation.step("test", self.model, batch)

    def on_test_epoch_end(self) -> None:
        self._finish_evaluation("test", self.trainer.test_dataloaders)

    def predict_step(self, batch: Mapping[str, Any], batch_idx: int, dataloader_idx: int = 0) -> list[Any]:
        return self.task.predictions_to_float32(self.model.test_step(batch))

    def _finish_evaluation(self, stage: str, dataloader: Any) -> None:
        from mmengine.logging import MessageHub

        scalars = self.evaluation.finish(stage, dataloader, self.trainer.is_global_zero)
        hub = MessageHub.get_current_instance()
        for key, value in scalars.items():
            hub.update_scalar(f"{stage}/{key}", value)
        self.log_dict(scalars, on_step=False, on_epoch=True)
        if self.trainer.state.fn == "fit":  # validate / test print Lightning's own table at their end
            self._print_metrics(scalars)

    @rank_zero_only
    def _print_metrics(self, scalars: Mapping[str, float]) -> None:
        """The validation's metrics as one table, above the progress bar."""
        table = metrics_table(scalars, f"epoch {self.current_epoch + 1} validation")
        bar = self.trainer.progress_bar_callback
        if bar is not None:
            bar.print(table)
        else:
            print(table, flush=True)

    def to_onnx(self, file_path: str | os.PathLike, input_sample: Any = None, **kwargs: Any) -> Any:  # type: ignore[override]
        """The whole detector (normalisation, backbone, neck, head, box decoding, NMS; masks) as one ONNX file that
        onnxruntime runs without torch, mmcv or mmdet (:func:`mmdet_lightning.export.export_onnx`: ``input_size=(h, w)``
        for a fixed size, ``opset_version``, ``check``, ``classes``). Returns the file's path.

        Raises:
            ValueError: an ``input_sample`` (the exporter traces at a size of its own).
            mmdet_lightning.export.ExportError: the model has an op or construct that cannot be exported, named.
        """
        if input_sample is not None:
            raise ValueError("MMDetModule.to_onnx traces at a size of its own: pass input_size=(h, w) for a fixed "
                             "input size instead of input_sample.")
        from .export import export_onnx

        return export_onnx(self, file_path, **kwargs)

    # ------------------------------------------------------------------ checkpoints and resume
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        save_run_state(self, checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._resumed_state = checkpoint.get(RUN_STATE_KEY)
