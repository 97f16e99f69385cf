"""The LightningModule that trains, evaluates and runs any mmdet 3.x detector.

The training step does what mmengine's runner does, in the same order, so that a run under
``pl.Trainer`` matches a run under ``mmengine.runner.Runner`` iteration by iteration:

    on_train_batch_start      MessageHub 'iter'                       (RuntimeInfoHook.before_train_iter)
    training_step             data_preprocessor -> mode="loss" -> parse_losses -> backward
                              -> clip_grad -> optimizer.step -> zero_grad (OptimWrapper.update_params)
    on_train_batch_end        iteration-based param schedulers step   (ParamSchedulerHook.after_train_iter)
                              on the epoch's last batch, epoch-based ones too (ParamSchedulerHook.after_train_epoch)
    validation_step           model.val_step -> evaluator.process      (ValLoop.run_iter)
    on_validation_epoch_end   evaluator.evaluate(len(dataset)) -> self.log('coco/bbox_mAP', ...)
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import time
from typing import TYPE_CHECKING, Any, Literal, Mapping

import torch

from .checkpoint import LoadReport, load_detector_weights
from .checkpoint_io import SafeCheckpointIO
from .config import ConfigLike, apply_env_cfg, init_mmdet_scope, load_config, replace_data_root
from .console import attach_log_file, library_output, metrics_table
from .evaluation import EvaluatorBackend, record_coco_evals, use_evaluator_backend
from .lightning_package import check_one_package, fabric, pl
from .precision import keep_mmcv_ops_in_fp32, predictions_to_float32
from .resume import load_message_hub_state, message_hub_state
from .utilities import first_dataset

TorchCheckpointIO = fabric.plugins.io.torch_io.TorchCheckpointIO
rank_zero_info, rank_zero_only, rank_zero_warn = (pl.utilities.rank_zero_info, pl.utilities.rank_zero_only,
                                                  pl.utilities.rank_zero_warn)

if TYPE_CHECKING:
    from mmengine.evaluator import Evaluator
    from mmengine.optim import OptimWrapper
    from mmengine.optim.scheduler.param_scheduler import _ParamScheduler

__all__ = ["MMDetModule"]


class MMDetModule(pl.LightningModule):
    """An mmdet detector built from its config, trained and evaluated as mmengine's runner would.

    Optimizer, gradient clipping and parameter schedules come from the config's ``optim_wrapper`` and
    ``param_scheduler``; evaluation from ``val_evaluator`` / ``test_evaluator`` (mmdet's ``CocoMetric``),
    logged under mmdet's names (``coco/bbox_mAP``, ...). Validation, test and predict steps return
    mmdet ``DetDataSample`` lists with predictions in original-image coordinates.

    Args:
        config: mmdet config: a file path, a dict or an mmengine ``Config``.
        load_from: mmdet or mmdet-lightning checkpoint (path or URL) to start from; defaults to the
            config's ``load_from``. Tensors that do not fit (another class count, say) are reported and skipped.
        data_root: dataset folder to use instead of the config's ``data_root`` (evaluator paths included).
        evaluator_backend: ``"pycocotools"`` (mmdet's ``CocoMetric`` as configured) or ``"faster_coco_eval"``
            (``FastCocoMetric``: the same numbers, faster).
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

    def __init__(self, config: ConfigLike, load_from: str | None = None, data_root: str | None = None,
                 evaluator_backend: EvaluatorBackend = "pycocotools",
                 invalid_loss: Literal["raise", "skip"] = "raise",
                 cfg_options: dict[str, Any] | list[str] | None = None, trust_checkpoint: bool = False) -> None:
        check_one_package(type(self).__name__)
        super().__init__()
        self.trust_checkpoint = trust_checkpoint
        if invalid_loss not in ("raise", "skip"):
            raise ValueError(f"Expected argument `invalid_loss` to be one of ('raise', 'skip'), but got {invalid_loss!r}.")
        self.invalid_loss = invalid_loss
        #: training steps skipped because of a NaN or infinite loss (``invalid_loss="skip"``)
        self.skipped_steps = 0
        self.cfg = load_config(config, cfg_options)
        keep_mmcv_ops_in_fp32()  # so that precision="bf16-mixed" / "16-mixed" work with every model
        if data_root is not None:
            replace_data_root(self.cfg, data_root)
        for key in ("val_evaluator", "test_evaluator"):
            if self.cfg.get(key) is not None:
                self.cfg[key] = use_evaluator_backend(self.cfg[key], evaluator_backend)
        init_mmdet_scope()
        from mmdet.registry import MODELS
        from mmengine.logging import MessageHub

        MessageHub.get_instance("mmdet_lightning")
        model_cfg = copy.deepcopy(self.cfg.model)
        if self.cfg.get("data_preprocessor") is not None:  # as mmengine's Runner.__init__ merges it
            model_cfg.setdefault("data_preprocessor", copy.deepcopy(self.cfg.data_preprocessor))
        with library_output():  # init_weights reports every parameter: to mmdet.log, not the console
            try:
                self.model = MODELS.build(model_cfg)
            except KeyError as err:
                raise ValueError(
                    f"Could not build the config's model `{model_cfg.get('type')}` from mmdet's `MODELS` registry "
                    f"(scope 'mmdet'): {err}\nHint: check the `type` names in `model`; custom modules must be "
                    "imported first (`custom_imports` in the config)."
                ) from err
            self.model.init_weights()
        load_from = load_from if load_from is not None else self.cfg.get("load_from")
        self.load_report: LoadReport | None = None
        if load_from:
            self.load_report = load_detector_weights(self.model, load_from, trust=trust_checkpoint)
        self.automatic_optimization = False
        self.save_hyperparameters({"config": self.cfg.to_dict()})
        self.optim_wrapper: OptimWrapper | None = None
        self.param_schedulers: list[_ParamScheduler] = []
        self._evaluators: dict[str, Evaluator] = {}
        self._checked_datasets: set[int] = set()
        self._epoch_schedulers_stepped = False
        self._sync_blocker = contextlib.ExitStack()
        # between training_step and on_train_batch_end: whether that batch ends the epoch; None otherwise
        self._batch_end_pending: bool | None = None
        self._resumed_state: dict[str, Any] | None = None
        #: whether training scalars go to the loggers every step (a metrics callback that logs interval
        #: averages turns this off, so nothing is logged twice); the progress bar shows the loss either way
        self.log_train_scalars = True
        self._train_loss_logged_at = float("-inf")
        self._train_loss_every_step = False
        #: scalar results of the latest validation (or test), e.g. ``{"coco/bbox_mAP": 0.57, ...}``
        self.last_eval_metrics: dict[str, float] = {}
        #: the accumulated ``COCOeval`` of the latest validation (or test) by IoU type (``"bbox"``, ``"segm"``), on
        #: the process that evaluated (rank 0); empty elsewhere and for evaluators without a ``CocoMetric``
        self.last_coco_eval: dict[str, Any] = {}

    @classmethod
    def from_config(cls, config: ConfigLike, **kwargs: Any) -> "MMDetModule":
        """Same as ``MMDetModule(config, **kwargs)``; reads well beside ``MMDetDataModule.from_config``."""
        return cls(config, **kwargs)

    # ------------------------------------------------------------------ devices and batches
    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> "MMDetModule":
        # mmengine's data preprocessor keeps its own `_device`, updated by its `.to()` but not by the
        # `nn.Module._apply` that Lightning's `.to(device)` runs on children: follow the buffers.
        super()._apply(fn, *args, **kwargs)
        from mmengine.model import BaseDataPreprocessor

        for module in self.modules():
            if isinstance(module, BaseDataPreprocessor):
                tensor = next(iter(module.buffers()), None)
                tensor = tensor if tensor is not None else next(iter(self.parameters()), None)
                if tensor is not None:
                    module._device = tensor.device
        return self

    def forward(self, batch: Mapping[str, Any]) -> list[Any]:
        """Predictions (``DetDataSample`` list) for a collated batch from an mmdet dataloader."""
        return predictions_to_float32(self.model.test_step(batch))

    def prepare_data(self) -> None:
        """The last hook before Lightning starts the loggers' runs: a ``WandbLogger``'s run will write its
        transaction log every second (:func:`~mmdet_lightning.wandb._common.flush_transaction_log_often`; the user's own
        W&B settings win), its folder is made absolute, and a ``validate`` / ``test`` run gets that ``job_type``
        unless one was given."""
        from .wandb._common import absolute_run_dir, flush_transaction_log_often, set_default_job_type

        fn = self.trainer.state.fn
        for logger in self.trainer.loggers:
            flush_transaction_log_often(logger)
            absolute_run_dir(logger)
            if fn in ("validate", "test"):
                set_default_job_type(logger, str(getattr(fn, "value", fn)))

    def configure_callbacks(self) -> list[pl.Callback]:
        """Lightning's default progress bar becomes its throttled twin (:mod:`mmdet_lightning.callbacks.progress_bar`:
        the same bar, updated at most ten times a second instead of after every step); a progress bar passed
        to the Trainer is kept."""
        from .callbacks.progress_bar import replace_default_progress_bar

        bar = replace_default_progress_bar(self.trainer.progress_bar_callback)
        return [bar] if bar is not None else []

    # ------------------------------------------------------------------ strategies
    def setup(self, stage: str) -> None:
        """Checks the strategy and adapts the model's norm layers to it, as mmengine's runner wraps a model.

        Runs in every process before the strategy wraps the model (DDP), so what it changes applies there.
        """
        DDPStrategy, SingleDeviceStrategy = pl.strategies.DDPStrategy, pl.strategies.SingleDeviceStrategy

        trainer = self.trainer
        attach_log_file(trainer.default_root_dir, trainer.global_rank)
        apply_env_cfg(self.cfg)
        strategy = trainer.strategy
        if not isinstance(strategy, (SingleDeviceStrategy, DDPStrategy)):
            raise ValueError(
                f"MMDetModule cannot run with strategy {type(strategy).__name__}: it trains with the config's "
                "mmengine optimizer, which needs the whole model in each process.\n"
                "Hint: use strategy='ddp' (or 'auto' on one device)."
            )
        if type(strategy.checkpoint_io) is TorchCheckpointIO:  # Lightning's default: safe loads, atomic writes
            strategy.checkpoint_io = SafeCheckpointIO(trust=self.trust_checkpoint)
        on_cpu = strategy.root_device.type == "cpu"
        cores = os.cpu_count() or 1
        if on_cpu and trainer.num_devices > cores:
            rank_zero_warn(
                f"devices={trainer.num_devices} CPU processes per node, but this machine has {cores} CPU cores: "
                "the processes share the cores, so each runs slower (fine for debugging DDP).\n"
                f"Hint: pass devices <= {cores} with accelerator='cpu' for speed, or accelerator='gpu' on a machine "
                "with GPUs."
            )
        layer_sync = getattr(strategy, "_layer_sync", None)
        if layer_sync is not None and on_cpu and trainer.world_size > 1:
            raise ValueError(
                "sync_batchnorm=True needs CUDA: torch's SyncBatchNorm does not run on CPU processes.\n"
                "Hint: drop sync_batchnorm on CPU (each process then keeps its own BatchNorm statistics)."
            )
        if trainer.world_size == 1 or on_cpu:
            # as mmengine's Runner when not distributed: SyncBN layers become BatchNorm (they cannot run here)
            from mmengine.model import revert_sync_batchnorm

            self.model = revert_sync_batchnorm(self.model)
        if isinstance(strategy, DDPStrategy):
            # as mmengine's runner wraps the model: each process keeps its own buffers (BatchNorm statistics;
            # validation takes rank 0's), instead of a broadcast from rank 0 before every forward
            strategy._ddp_kwargs.setdefault("broadcast_buffers", False)
            if self.cfg.get("find_unused_parameters"):
                # the config's top-level `find_unused_parameters`, which mmengine passes to its DDP wrapper
                strategy._ddp_kwargs.setdefault("find_unused_parameters", True)

    def _check_unused_parameters(self) -> None:
        """Under DDP without ``find_unused_parameters``, parameters that got no gradient make DDP fail at the
        next iteration with a long message; name them after the first backward instead."""
        strategy = self.trainer.strategy
        if not isinstance(strategy, pl.strategies.DDPStrategy) or \
                strategy._ddp_kwargs.get("find_unused_parameters"):
            return
        unused = [name for name, p in self.model.named_parameters() if p.requires_grad and p.grad is None]
        if unused:
            shown = ", ".join(unused[:5]) + (f" and {len(unused) - 5} more" if len(unused) > 5 else "")
            raise RuntimeError(
                f"DDP: {len(unused)} parameters received no gradient in the first iteration ({shown}); DDP "
                "would fail at the next one.\nHint: set `find_unused_parameters = True` at the top of the mmdet "
                "config, or pass strategy='ddp_find_unused_parameters_true' to the Trainer."
            )

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        from mmengine.optim import OptimWrapper, build_optim_wrapper
        from mmengine.registry import PARAM_SCHEDULERS

        wrapper_cfg = copy.deepcopy(self.cfg.get("optim_wrapper"))
        if not wrapper_cfg:
            raise ValueError("The config has no `optim_wrapper`; add one, e.g. dict(optimizer=dict(type='SGD', lr=0.02)).")
        if wrapper_cfg.get("type", "OptimWrapper") == "AmpOptimWrapper":
            rank_zero_warn(
                "The config's `AmpOptimWrapper` is used as a plain `OptimWrapper`: mixed precision is the "
                "Trainer's job here. Hint: pass `precision='16-mixed'` (or 'bf16-mixed') to `pl.Trainer`."
            )
            wrapper_cfg["type"] = "OptimWrapper"
            for key in ("loss_scale", "dtype", "use_fsdp"):
                wrapper_cfg.pop(key, None)
        wrapper = build_optim_wrapper(self.model, wrapper_cfg)
        if not isinstance(wrapper, OptimWrapper) or type(wrapper).__name__ == "OptimWrapperDict":
            raise ValueError("Configs with several optimizers (OptimWrapperDict) are not supported.")
        self.optim_wrapper = wrapper

        trainer = self.trainer
        # build the train dataloader now so that the epoch length is known (also for max_steps runs,
        # where `estimated_stepping_batches` returns max_steps without building it)
        trainer.fit_loop.setup_data()
        self._scale_lr(wrapper)
        epoch_length = trainer.num_training_batches
        max_epochs, max_iters = self._max_epochs_and_iters()
        self.param_schedulers = []
        schedulers_cfg = self.cfg.get("param_scheduler") or []
        for cfg in [schedulers_cfg] if isinstance(schedulers_cfg, Mapping) else schedulers_cfg:
            cfg = copy.deepcopy(cfg)
            cfg.setdefault("end", max_epochs if cfg.get("by_epoch", True) else max_iters)
            default_args = dict(optimizer=wrapper.optimizer, epoch_length=epoch_length)
            self.param_schedulers.append(PARAM_SCHEDULERS.build(cfg, default_args=default_args))
        return [wrapper.optimizer], list(self.param_schedulers)

    def _max_epochs_and_iters(self) -> tuple[int, int]:
        trainer = self.trainer
        epoch_length = trainer.num_training_batches
        max_iters = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        max_epochs = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs > 0 else None
        if max_epochs is None and max_iters is None:
            raise ValueError("Set `max_epochs` or `max_steps` on the Trainer: the config's schedules need an end.")
        if math.isinf(epoch_length):
            return max_epochs or 0, max_iters or 0
        if max_iters is None:
            max_iters = max_epochs * epoch_length
        elif max_epochs is None or max_epochs * epoch_length > max_iters:
            max_epochs = math.ceil(max_iters / epoch_length)
            max_iters = min(max_iters, max_epochs * epoch_length)
        return max_epochs, min(max_iters, max_epochs * epoch_length)

    def _scale_lr(self, wrapper: "OptimWrapper") -> None:
        """mmengine's ``Runner.scale_lr``: the linear scaling rule when ``auto_scale_lr.enable``."""
        auto_scale_lr = self.cfg.get("auto_scale_lr") or {}
        if not auto_scale_lr.get("enable", False):
            return
        batch_size = _batch_size(self.trainer.train_dataloader) * self.trainer.world_size
        ratio = batch_size / auto_scale_lr["base_batch_size"]
        rank_zero_info(f"auto_scale_lr: batch size {batch_size} vs base {auto_scale_lr['base_batch_size']}: LR x {ratio}")
        for group in wrapper.optimizer.param_groups:
            group["lr"] = group["lr"] * ratio

    def lr_scheduler_step(self, scheduler: Any, metric: Any | None = None) -> None:
        scheduler.step()

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Called after gradients are unscaled under mixed precision, as mmengine's OptimWrapper.step clips.
        if self.optim_wrapper is not None and self.optim_wrapper.clip_grad_kwargs:
            self.optim_wrapper._clip_grad()

    # ------------------------------------------------------------------ training
    def on_train_start(self) -> None:
        from mmengine.logging import MessageHub

        max_epochs, max_iters = self._max_epochs_and_iters()
        assert self.optim_wrapper is not None
        self.optim_wrapper.initialize_count_status(self.model, self._iteration(), max_iters)
        hub = MessageHub.get_current_instance()
        self._restore_resumed_state(hub)
        hub.update_info("loop_stage", "train")
        hub.update_info("epoch", self.current_epoch)
        hub.update_info("iter", self._iteration())
        hub.update_info("max_epochs", max_epochs)
        hub.update_info("max_iters", max_iters)
        # a checkpoint or early stopping that monitors the training loss reads it after every step
        self._train_loss_every_step = any(getattr(cb, "monitor", None) == "train/loss" for cb in self.trainer.callbacks)
        dataset = first_dataset(self.trainer.train_dataloader)
        self._check_classes(dataset, "train")
        if hasattr(dataset, "metainfo"):
            hub.update_info("dataset_meta", dataset.metainfo)

    def on_train_epoch_start(self) -> None:
        from mmengine.logging import MessageHub

        MessageHub.get_current_instance().update_info("epoch", self.current_epoch)
        self._epoch_schedulers_stepped = False
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
        return self.trainer.fit_loop.epoch_loop.batch_progress.total.completed

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> dict[str, Any]:
        # mmengine BaseModel.train_step + OptimWrapper.update_params, with Lightning doing the backward
        # and the optimizer step so that precision plugins and strategies apply.
        wrapper = self.optim_wrapper
        assert wrapper is not None, "configure_optimizers has not run"
        self._batch_end_pending = batch_idx + 1 == self.trainer.num_training_batches
        data = self.model.data_preprocessor(batch, True)
        losses = self.model(**data, mode="loss")
        loss, log_vars = self.model.parse_losses(losses)
        finite = self._start_finite_check(loss)
        self.manual_backward(wrapper.scale_loss(loss))
        if not self._loss_is_finite(finite, log_vars):
            self.optimizers().zero_grad()
            return None
        if self._iteration() == 0:
            self._check_unused_parameters()
        wrapper._inner_count += 1
        if wrapper.should_update():
            optimizer = self.optimizers()
            optimizer.step()
            optimizer.zero_grad()
        log_vars = {k: v.detach() for k, v in log_vars.items()}
        self._log_train_scalars(batch, log_vars)
        # what mmengine's train_step returns, for callbacks' `on_train_batch_end(outputs=...)`
        return {"loss": log_vars["loss"], "log_vars": log_vars}

    def _log_train_scalars(self, batch: Any, log_vars: Mapping[str, torch.Tensor]) -> None:
        """Every loss term at the steps where Lightning writes to its loggers (every ``log_every_n_steps``),
        where the loggers get the same values as if they were logged every step; ``train/loss`` (progress bar,
        ``callback_metrics``) also at an epoch's last batch and at most every ``TRAIN_LOSS_INTERVAL`` seconds
        in between, as the progress bar shows it, or every step when a callback monitors it. Each ``self.log``
        costs about half a millisecond, a lot beside a 20 ms GPU step. No host synchronisation here (the
        tensors stay on the device). Callbacks see every step's losses in ``outputs["log_vars"]``."""
        trainer = self.trainer
        to_loggers_now = trainer._logger_connector.should_update_logs or trainer.fast_dev_run  # Lightning's condition
        now = time.monotonic()
        if not (to_loggers_now or self._train_loss_every_step or self._batch_end_pending
                or now - self._train_loss_logged_at >= self.TRAIN_LOSS_INTERVAL):
            return
        self._train_loss_logged_at = now
        batch_size = len(batch["inputs"]) if isinstance(batch, Mapping) and "inputs" in batch else None
        to_logger = self.log_train_scalars and bool(trainer.loggers)
        self.log("train/loss", log_vars["loss"], batch_size=batch_size, prog_bar=True, logger=to_logger)
        if to_loggers_now:
            others = {f"train/{k}": v for k, v in log_vars.items() if k != "loss"}
            self.log_dict(others, batch_size=batch_size, logger=to_logger)

    def _start_finite_check(self, loss: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """Whether the loss is finite on every process, started without waiting: a flag on the loss's device
        and, under DDP, an asynchronous all-reduce (minimum) that runs while backward does."""
        finite = torch.isfinite(loss.detach()).all().to(torch.int32)
        work = None
        if self.trainer.world_size > 1 and torch.distributed.is_initialized():
            work = torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN, async_op=True)
        return finite, work

    def _loss_is_finite(self, check: tuple[torch.Tensor, Any], log_vars: Mapping[str, Any]) -> bool:
        """mmdet's ``CheckInvalidLossHook`` before the optimizer step: raise, or count and skip the step. The
        decision is shared by all processes (a step skipped on one rank only would hang the others); its one
        host synchronisation comes after backward is queued, as mmengine's per-step ``.item()`` of the losses."""
        finite, work = check
        if work is not None:
            work.wait()
        if bool(finite):
            return True
        terms = ", ".join(f"{k}={float(v):.6g}" for k, v in log_vars.items())
        where = f"iteration {self._iteration()} (epoch {self.current_epoch})"
        if self.invalid_loss == "raise":
            raise FloatingPointError(
                f"The loss is NaN or infinite at {where}: {terms}.\nHint: lower the learning rate, add gradient "
                "clipping (optim_wrapper.clip_grad), check the data, or pass invalid_loss='skip' to skip such steps."
            )
        self.skipped_steps += 1
        rank_zero_warn(f"Skipping the step at {where}: the loss is NaN or infinite ({terms}); "
                       f"{self.skipped_steps} step(s) skipped so far.")
        return False

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._sync_blocker.close()
        self._end_batch(batch_idx + 1 == self.trainer.num_training_batches)

    def _end_batch(self, last_of_epoch: bool) -> None:
        self._batch_end_pending = None
        for scheduler in self.param_schedulers:
            if not scheduler.by_epoch:
                scheduler.step()
        if last_of_epoch:
            self._step_epoch_schedulers()

    def on_train_epoch_end(self) -> None:
        self._step_epoch_schedulers()  # epochs of unknown length end here

    def _step_epoch_schedulers(self) -> None:
        if self._epoch_schedulers_stepped:
            return
        self._epoch_schedulers_stepped = True
        for scheduler in self.param_schedulers:
            if scheduler.by_epoch:
                scheduler.step()

    # ------------------------------------------------------------------ evaluation
    def _evaluator(self, stage: str) -> "Evaluator":
        if stage not in self._evaluators:
            from mmengine.evaluator import Evaluator
            from mmengine.registry import EVALUATOR

            cfg = self.cfg.get(f"{stage}_evaluator") or self.cfg.get("val_evaluator")
            if cfg is None:
                raise ValueError(f"The config has no `{stage}_evaluator`; add one, e.g. dict(type='CocoMetric', ...).")
            cfg = copy.deepcopy(cfg)
            with library_output():  # CocoMetric loads its annotation file with pycocotools' prints
                if isinstance(cfg, Mapping) and "metrics" in cfg:  # as mmengine's Runner.build_evaluator
                    cfg.setdefault("type", "Evaluator")
                    self._evaluators[stage] = EVALUATOR.build(cfg)
                else:
                    self._evaluators[stage] = Evaluator(cfg)
        return self._evaluators[stage]

    def _start_evaluation(self, stage: str, dataloader: Any) -> None:
        dataset = first_dataset(dataloader)
        self._check_classes(dataset, stage)
        evaluator = self._evaluator(stage)
        evaluator.dataset_meta = getattr(dataset, "metainfo", None)
        for metric in evaluator.metrics:
            metric.results.clear()

    def _finish_evaluation(self, stage: str, dataloader: Any) -> dict[str, float]:
        from mmengine.logging import MessageHub

        evaluator = self._evaluator(stage)
        with library_output(), record_coco_evals() as coco_evals:  # pycocotools' blocks: to mmdet.log
            metrics = evaluator.evaluate(len(first_dataset(dataloader)))
        self.last_coco_eval = self._coco_evals_by_type(stage, coco_evals)
        scalars = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) or (
            isinstance(v, torch.Tensor) and v.numel() == 1)}
        if not scalars:
            scalars = self._metrics_without_detections(stage)
        hub = MessageHub.get_current_instance()
        for key, value in scalars.items():
            hub.update_scalar(f"{stage}/{key}", value)
        self.log_dict(scalars, on_step=False, on_epoch=True)
        self.last_eval_metrics = scalars
        if self.trainer.state.fn == "fit":  # validate / test print Lightning's own table at their end
            self._print_metrics(scalars)
        return scalars

    @rank_zero_only
    def _print_metrics(self, scalars: Mapping[str, float]) -> None:
        """The validation's COCO metrics as one table, above the progress bar."""
        table = metrics_table(scalars, f"epoch {self.current_epoch + 1} validation")
        bar = self.trainer.progress_bar_callback
        if bar is not None:
            bar.print(table)
        else:
            print(table, flush=True)

    def _coco_evals_by_type(self, stage: str, coco_evals: list[Any]) -> dict[str, Any]:
        """The first ``CocoMetric``'s evaluations by IoU type; where it had no detection to evaluate, an
        evaluation of none (mmdet's metric stops before building it). Only on the rank that evaluated."""
        found = {ev.params.iouType: _slim(ev) for ev in coco_evals if getattr(ev.params, "useCats", 1)}
        metric = next((m for m in self._evaluator(stage).metrics if hasattr(m, "_coco_api")), None)
        if metric is None or not self.trainer.is_global_zero or metric._coco_api is None or metric.format_only:
            return found
        from .analysis import empty_coco_eval

        for kind in metric.metrics:
            if kind in ("bbox", "segm") and kind not in found:
                found[kind] = empty_coco_eval(metric._coco_api, metric.cat_ids, metric.img_ids, kind,
                                              metric.iou_thrs, metric.proposal_nums)
        return found

    def _metrics_without_detections(self, stage: str) -> dict[str, float]:
        """CocoMetric returns nothing when no image has a detection (a new model, say): log 0.0 instead,
        so that ``ModelCheckpoint(monitor="coco/bbox_mAP")`` and loggers see the keys from the first epoch."""
        scalars = {}
        for metric in self._evaluator(stage).metrics:
            if type(metric).__name__ != "CocoMetric":
                continue
            items = metric.metric_items or ["mAP", "mAP_50", "mAP_75", "mAP_s", "mAP_m", "mAP_l"]
            for kind in metric.metrics:
                if kind != "proposal_fast":
                    scalars.update({f"{metric.prefix}/{kind}_{item}": 0.0 for item in items})
        if scalars:
            rank_zero_warn(f"{stage}: no detections on the whole dataset; COCO metrics are logged as 0.0.")
        return scalars

    def on_validation_epoch_start(self) -> None:
        self._buffers_from_rank_zero()
        self._start_evaluation("val", self.trainer.val_dataloaders)

    def _buffers_from_rank_zero(self) -> None:
        """Under DDP each process updates its own BatchNorm running statistics; evaluate (on every rank)
        with rank 0's, the ones its checkpoints hold, so the metric is that of the saved model. Collective:
        runs on all ranks."""
        if torch.distributed.is_available() and torch.distributed.is_initialized() and self.trainer.world_size > 1:
            for buffer in self.model.buffers():
                torch.distributed.broadcast(buffer.data, src=0)

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int, dataloader_idx: int = 0) -> list[Any]:
        outputs = predictions_to_float32(self.model.val_step(batch))
        if not self.trainer.sanity_checking:  # a few sanity batches would give a meaningless mAP
            self._evaluator("val").process(data_samples=outputs, data_batch=batch)
        return outputs

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self._finish_evaluation("val", self.trainer.val_dataloaders)

    def on_test_epoch_start(self) -> None:
        self._start_evaluation("test", self.trainer.test_dataloaders)

    def test_step(self, batch: Mapping[str, Any], batch_idx: int, dataloader_idx: int = 0) -> list[Any]:
        outputs = predictions_to_float32(self.model.test_step(batch))
        self._evaluator("test").process(data_samples=outputs, data_batch=batch)
        return outputs

    def on_test_epoch_end(self) -> None:
        self._finish_evaluation("test", self.trainer.test_dataloaders)

    def predict_step(self, batch: Mapping[str, Any], batch_idx: int, dataloader_idx: int = 0) -> list[Any]:
        return predictions_to_float32(self.model.test_step(batch))

    # ------------------------------------------------------------------ checkpoints and resume
    RESUME_KEY = "mmdet_lightning"

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        from mmengine.logging import MessageHub

        # what mmengine's runner keeps besides weights, optimizer and schedulers (which Lightning saves):
        # MessageHub, the optimizer wrapper's counter, and the schedule steps of a batch whose end hooks have
        # not run yet (ModelCheckpoint saves in the callbacks' on_train_batch_end, before the module's)
        checkpoint[self.RESUME_KEY] = {
            "message_hub": message_hub_state(MessageHub.get_current_instance()),
            "inner_count": self.optim_wrapper._inner_count if self.optim_wrapper is not None else 0,
            "epoch_schedulers_stepped": self._epoch_schedulers_stepped,
            "batch_end_pending": self._batch_end_pending,
            "skipped_steps": self.skipped_steps,
        }
        # what mmdet's tools read from a checkpoint's meta (init_detector: the class names)
        for loaders in (self.trainer.train_dataloader, self.trainer.val_dataloaders):
            metainfo = getattr(first_dataset(loaders), "metainfo", None) or {}
            if metainfo.get("classes"):
                checkpoint["meta"] = {"dataset_meta": dict(metainfo)}
                return

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._resumed_state = checkpoint.get(self.RESUME_KEY)

    def _restore_resumed_state(self, hub: Any) -> None:
        """At ``on_train_start`` of a resumed fit (weights, optimizer and schedulers are loaded by then)."""
        state, self._resumed_state = self._resumed_state, None
        if not state:
            return
        load_message_hub_state(hub, state["message_hub"])
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self._epoch_schedulers_stepped = bool(state["epoch_schedulers_stepped"])
        if state.get("batch_end_pending") is not None:
            self._end_batch(bool(state["batch_end_pending"]))
        if self.optim_wrapper is not None:
            self.optim_wrapper._inner_count = int(state["inner_count"])

    # ------------------------------------------------------------------ checks
    def num_classes(self) -> dict[str, int]:
        """``num_classes`` of every class-predicting head (RPN heads excluded), by module name."""
        found = {}
        for name, module in self.model.named_modules():
            count = getattr(module, "num_classes", None)
            if isinstance(count, int) and "rpn" not in name and "RPN" not in type(module).__name__:
                found[name or "model"] = count
        return found

    def _check_classes(self, dataset: Any, stage: str) -> None:
        if dataset is None or id(dataset) in self._checked_datasets:
            return
        self._checked_datasets.add(id(dataset))
        classes = (getattr(dataset, "metainfo", None) or {}).get("classes")
        if not classes:
            return
        wrong = {name: n for name, n in self.num_classes().items() if n != len(classes)}
        if wrong:
            heads = ", ".join(f"{name}.num_classes={n}" for name, n in wrong.items())
            raise ValueError(
                f"The {stage} dataset has {len(classes)} classes {tuple(classes)}, but the model's heads predict "
                f"another count: {heads}.\nHint: set num_classes={len(classes)} in those heads of the config's "
                "`model`, or set `metainfo=dict(classes=...)` on the dataset to the model's classes."
            )


def _slim(coco_eval: Any) -> Any:
    """A ``COCOeval`` without its per-image matching (``evalImgs``, ``ious``: the bulk of its memory on large
    datasets), which the analytics do not read; ``eval``, ``params``, ground truth and detections stay."""
    for name, empty in (("evalImgs", []), ("ious", {}), ("_evalImgs_cpp", None)):
        if getattr(coco_eval, name, None) is not None:
            setattr(coco_eval, name, empty)
    return coco_eval


def _batch_size(loader: Any) -> int:
    """Images per batch of one process's train loader (mmdet's batch samplers hold it, not the loader)."""
    if getattr(loader, "batch_size", None):
        return int(loader.batch_size)
    return int(loader.batch_sampler.batch_size)
