"""Private (and deep) attributes of Lightning (``pytorch_lightning`` or ``lightning.pytorch``, whichever
:mod:`mmdet_lightning.lightning_package` chose, and its Fabric)."""

from __future__ import annotations

from typing import Any

from ..lightning_package import NAME, fabric, pl
from ._core import CompatError, installed_version, private_attr, private_method, set_private_attr

__all__ = [
    "checkpoint_every_n_epochs", "checkpoint_every_n_train_steps", "collect_rng_states", "ddp_kwargs",
    "fit_batches_completed", "keep_config_samplers", "layer_sync", "logger_connector_should_update",
    "progress_bar_leave", "restart_train_data_fetcher", "rich_console_kwargs", "rich_update", "rich_update_metrics",
    "sampler_replaced_by_lightning", "set_rng_states", "torch_checkpoint_io_class", "tqdm_should_update",
    "tqdm_train_progress_bar", "wandb_logger_go_offline", "wandb_logger_init_kwargs", "wandb_logger_run",
    "replace_signal_handlers", "replace_step_sigterm_broadcast", "set_received_sigterm", "hpc_save_path",
]

_FABRIC = fabric.__name__


# ---------------------------------------------------------------- strategies
def ddp_kwargs(strategy: Any) -> dict[str, Any]:
    """The keyword arguments a ``DDPStrategy`` gives ``DistributedDataParallel`` (``_ddp_kwargs``; change them
    in place before the strategy wraps the model)."""
    return private_attr(strategy, "_ddp_kwargs", NAME, dict)


def layer_sync(strategy: Any) -> Any | None:
    """The ``LayerSync`` plugin of a parallel strategy (``_layer_sync``: ``TorchSyncBatchNorm`` with
    ``sync_batchnorm=True``), or None. None without error for strategies that are not parallel: they have no
    layer sync at all (``SingleDeviceStrategy``)."""
    if not isinstance(strategy, pl.strategies.ParallelStrategy):
        return None
    return private_attr(strategy, "_layer_sync", NAME, (pl.plugins.LayerSync, type(None)))


# ---------------------------------------------------------------- trainer
def logger_connector_should_update(trainer: Any) -> bool:
    """Whether Lightning writes to its loggers at this step (``trainer._logger_connector.should_update_logs``:
    every ``log_every_n_steps`` steps and at the last batch)."""
    connector = private_attr(trainer, "_logger_connector", NAME)
    return private_attr(connector, "should_update_logs", NAME, bool)


def fit_batches_completed(trainer: Any) -> int:
    """Training batches completed since the fit started (resumes included):
    ``trainer.fit_loop.epoch_loop.batch_progress.total.completed``, public but deep."""
    try:
        completed = trainer.fit_loop.epoch_loop.batch_progress.total.completed
    except AttributeError as error:
        raise CompatError(f"mmdet_lightning reads trainer.fit_loop.epoch_loop.batch_progress.total.completed of "
                          f"{NAME} {installed_version(NAME)}, but: {error}") from error
    if not isinstance(completed, int):
        raise CompatError(f"mmdet_lightning reads trainer.fit_loop.epoch_loop.batch_progress.total.completed of "
                          f"{NAME} {installed_version(NAME)} as an int, but it is a {type(completed).__name__}")
    return completed


def sampler_replaced_by_lightning(trainer: Any) -> bool:
    """Whether Lightning will put a ``DistributedSampler`` in place of the dataloaders' samplers (a distributed
    run with ``use_distributed_sampler=True``; read from the private ``trainer._accelerator_connector``)."""
    connector = private_attr(trainer, "_accelerator_connector", NAME)
    return (private_attr(connector, "is_distributed", NAME, bool)
            and private_attr(connector, "use_distributed_sampler", NAME, bool))


def keep_config_samplers(trainer: Any) -> None:
    """Make Lightning keep the dataloaders' own samplers (``use_distributed_sampler=False``, set after the
    Trainer was built: ``trainer._accelerator_connector.use_distributed_sampler``)."""
    connector = private_attr(trainer, "_accelerator_connector", NAME)
    set_private_attr(connector, "use_distributed_sampler", False, NAME, bool)


def restart_train_data_fetcher(trainer: Any) -> None:
    """Make the fit loop's data fetcher (``trainer.fit_loop._data_fetcher``) start a new iterator over the train
    dataloader (and prefetch again), as at the start of an epoch."""
    fetcher = private_attr(trainer.fit_loop, "_data_fetcher", NAME)
    if fetcher is None:
        raise CompatError(f"mmdet_lightning restarts trainer.fit_loop._data_fetcher of {NAME} "
                          f"{installed_version(NAME)} during an epoch, but there is none.")
    iter(fetcher)


# ---------------------------------------------------------------- callbacks
def checkpoint_every_n_train_steps(callback: Any) -> int:
    """``ModelCheckpoint(every_n_train_steps=...)`` as the callback keeps it (``_every_n_train_steps``; 0: off)."""
    return private_attr(callback, "_every_n_train_steps", NAME, int) or 0


def checkpoint_every_n_epochs(callback: Any) -> int:
    """``ModelCheckpoint(every_n_epochs=...)`` as the callback keeps it (``_every_n_epochs``; 0: off)."""
    return private_attr(callback, "_every_n_epochs", NAME, int) or 0


def progress_bar_leave(bar: Any) -> bool:
    """A ``TQDMProgressBar`` / ``RichProgressBar``'s ``leave`` argument (``_leave``)."""
    return private_attr(bar, "_leave", NAME, bool)


def rich_console_kwargs(bar: Any) -> dict[str, Any]:
    """A ``RichProgressBar``'s ``console_kwargs`` argument (``_console_kwargs``; empty when not given)."""
    return private_attr(bar, "_console_kwargs", NAME, dict)


def tqdm_train_progress_bar(bar: Any) -> Any | None:
    """A ``TQDMProgressBar``'s training bar (``_train_progress_bar``; None before training starts)."""
    return private_attr(bar, "_train_progress_bar", NAME)


def tqdm_should_update(bar: Any, current: int, total: int | float) -> bool:
    """Lightning's own answer, ``TQDMProgressBar._should_update(current, total)``, for a subclass that adds
    its condition (the method Lightning's ``on_*_batch_end`` hooks ask before they redraw)."""
    base = private_attr(pl.callbacks.TQDMProgressBar, "_should_update", NAME)
    return bool(base(bar, current, total))


def rich_update(bar: Any, progress_bar_id: Any, current: int) -> None:
    """Draw a ``RichProgressBar``'s bar ``progress_bar_id`` at ``current`` (``_update``)."""
    private_method(bar, "_update", NAME)(progress_bar_id, current)


def rich_update_metrics(bar: Any, trainer: Any, pl_module: Any) -> None:
    """Draw a ``RichProgressBar``'s metrics (``_update_metrics``)."""
    private_method(bar, "_update_metrics", NAME)(trainer, pl_module)


# ---------------------------------------------------------------- loggers
def wandb_logger_init_kwargs(logger: Any) -> dict[str, Any]:
    """The arguments a Lightning ``WandbLogger`` will give ``wandb.init`` (``_wandb_init``; change them in place
    before the run starts)."""
    return private_attr(logger, "_wandb_init", NAME, dict)


def wandb_logger_run(logger: Any) -> Any | None:
    """The W&B run of a Lightning ``WandbLogger`` without starting one (``_experiment``): None before the run
    starts, and on ranks other than 0, which never start one."""
    return private_attr(logger, "_experiment", NAME)


def wandb_logger_go_offline(logger: Any) -> None:
    """Make a ``WandbLogger`` whose run has not started log offline: ``_offline``, as ``WandbLogger(offline=True)``
    sets it (Lightning then sets ``WANDB_MODE=dryrun`` in ``os.environ`` when it starts the run, process-wide), and
    ``mode="offline"`` among its ``wandb.init`` arguments, for this run itself."""
    set_private_attr(logger, "_offline", True, NAME, bool)
    wandb_logger_init_kwargs(logger)["mode"] = "offline"


# ---------------------------------------------------------------- Fabric
def torch_checkpoint_io_class() -> type:
    """Lightning's default checkpoint IO class, ``<fabric>.plugins.io.torch_io.TorchCheckpointIO`` (public but
    deep: the top-level ``plugins`` re-export is Lightning's, whose class it is)."""
    try:
        cls: type = fabric.plugins.io.torch_io.TorchCheckpointIO  # type: ignore[attr-defined]  # a lazy submodule
    except AttributeError as error:
        raise CompatError(f"mmdet_lightning uses {_FABRIC}.plugins.io.torch_io.TorchCheckpointIO of {_FABRIC} "
                          f"{installed_version(_FABRIC)}, but: {error}") from error
    return cls


def collect_rng_states() -> dict[str, Any]:
    """The random states of torch, NumPy, Python (and CUDA), as Lightning saves them
    (``<fabric>.utilities.seed._collect_rng_states``)."""
    collect = private_attr(fabric.utilities.seed, "_collect_rng_states", _FABRIC)
    return collect()


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore random states from :func:`collect_rng_states` (``<fabric>.utilities.seed._set_rng_states``)."""
    private_attr(fabric.utilities.seed, "_set_rng_states", _FABRIC)(states)




# ---------------------------------------------------------------- SIGTERM protocol (engine/preemption.py)
def replace_signal_handlers(trainer: Any, on_sigterm: Any, on_requeue_signal: Any) -> None:
    """What Lightning's signal connector calls on SIGTERM (``_sigterm_notifier_fn``, which broadcasts from inside
    the handler) and on SLURM's requeue signal (``_slurm_sigusr_handler_fn``). Set before Lightning registers its
    handlers (after the ``setup`` hooks): it binds these attributes then."""
    connector = private_attr(trainer, "_signal_connector", NAME)
    set_private_attr(connector, "_sigterm_notifier_fn", on_sigterm, NAME)
    set_private_attr(connector, "_slurm_sigusr_handler_fn", on_requeue_signal, NAME)


def replace_step_sigterm_broadcast(trainer: Any, replacement: Any) -> None:
    """The per-step SIGTERM broadcast of Lightning 2.5+ under DDP (``fit_loop.epoch_loop._broadcast_sigterm_tensor``,
    called at the start of every training step)."""
    set_private_attr(trainer.fit_loop.epoch_loop, "_broadcast_sigterm_tensor", replacement, NAME)


def set_received_sigterm(trainer: Any) -> None:
    """Tell Lightning a SIGTERM was received (``_signal_connector.received_sigterm``, which ``trainer.received_sigterm``
    reads): it raises ``SIGTERMException`` after the batch under way."""
    connector = private_attr(trainer, "_signal_connector", NAME)
    set_private_attr(connector, "received_sigterm", True, NAME, bool)


def hpc_save_path(trainer: Any, folder: str) -> str:
    """The next ``hpc_ckpt_N.ckpt`` in ``folder`` (``_checkpoint_connector.hpc_save_path``), what
    ``ckpt_path="hpc"`` resumes."""
    connector = private_attr(trainer, "_checkpoint_connector", NAME)
    path = private_method(connector, "hpc_save_path", NAME)(folder)
    if not isinstance(path, str):
        raise CompatError(f"{NAME} {installed_version(NAME)}: hpc_save_path returned a {type(path).__name__}")
    return path
