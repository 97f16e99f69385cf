"""What the W&B callbacks share: finding the WandbLogger, argument checks, the run across resumes."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from lightning_utilities.core.imports import RequirementCache

from .._compat import lightning as lightning_compat
from ..lightning_package import check_one_package, pl

rank_zero_only, rank_zero_warn = pl.utilities.rank_zero_only, pl.utilities.rank_zero_warn
MisconfigurationException = pl.utilities.exceptions.MisconfigurationException

if TYPE_CHECKING:
    from pytorch_lightning.loggers import WandbLogger

_WANDB_AVAILABLE = RequirementCache("wandb>=0.17")


def find_wandb_logger(trainer: pl.Trainer, owner: str) -> WandbLogger:
    """The first ``WandbLogger`` of ``trainer.loggers``; a clear error listing the loggers otherwise."""
    if not _WANDB_AVAILABLE:
        raise ModuleNotFoundError(f"{owner} needs wandb. {_WANDB_AVAILABLE}")
    check_one_package(owner)
    for logger in trainer.loggers:
        if isinstance(logger, pl.loggers.WandbLogger):
            return logger
    found = [type(logger).__name__ for logger in trainer.loggers] or "none"
    raise MisconfigurationException(
        f"{owner} logs through Lightning's WandbLogger, but trainer.loggers has {found}.\n"
        "Hint: pl.Trainer(logger=WandbLogger(project=...), callbacks=[...]); offline runs need no account: "
        "WandbLogger(offline=True)."
    )


#: seconds between flushes of a run's ``.wandb`` transaction log (wandb's default, 15 s, loses what was logged in
#: the last 15 s when the process is killed: a whole short run, its checkpoint artifacts included)
TRANSACTION_LOG_FLUSH_INTERVAL = 1.0
_FLUSH_SETTING = "x_transaction_log_flush_interval"


def prepare_loggers(trainer: pl.Trainer) -> None:
    """Before Lightning starts the loggers' runs (``LightningModule.prepare_data``): a ``WandbLogger``'s run will
    write its transaction log every second (the user's own W&B settings win), its folder is made absolute, and a
    ``validate`` / ``test`` run gets that ``job_type`` unless one was given."""
    fn = trainer.state.fn
    for logger in trainer.loggers:
        flush_transaction_log_often(logger)
        absolute_run_dir(logger)
        if fn in ("validate", "test"):
            set_default_job_type(logger, str(getattr(fn, "value", fn)))


def flush_transaction_log_often(logger: Any) -> None:
    """Make the W&B run of ``logger`` (a ``WandbLogger`` whose run has not started) write its transaction log
    to disk every second, so that a killed training process loses at most a second of what it logged.

    Only that run's own ``wandb.init`` settings change, and only when the user has not set the value
    (``WandbLogger(settings=wandb.Settings(x_transaction_log_flush_interval=5))`` keeps 5): W&B's process-wide
    settings, and with them the mode (``offline=True``, ``WANDB_MODE``, an account or none), are left alone.
    Called by ``ResilientWandbLogger`` at construction and by ``MMDetModule.prepare_data`` for the trainer's
    loggers (the last hook before Lightning starts the loggers' runs); a no-op once the run exists.

    Example::
        >>> from pytorch_lightning.loggers import WandbLogger
        >>> from mmdet_lightning._compat.lightning import wandb_logger_init_kwargs
        >>> logger = WandbLogger(offline=True)
        >>> flush_transaction_log_often(logger)
        >>> wandb_logger_init_kwargs(logger)["settings"]
        {'x_transaction_log_flush_interval': 1.0}
    """
    init = _pending_init(logger)
    if init is None:
        return
    settings = init.get("settings")
    if settings is None:
        init["settings"] = {_FLUSH_SETTING: TRANSACTION_LOG_FLUSH_INTERVAL}
    elif isinstance(settings, Mapping):
        init["settings"] = {_FLUSH_SETTING: TRANSACTION_LOG_FLUSH_INTERVAL, **settings}
    elif _FLUSH_SETTING not in _fields_set(settings):  # a wandb.Settings: add ours to a copy
        update = {_FLUSH_SETTING: TRANSACTION_LOG_FLUSH_INTERVAL}
        init["settings"] = settings.model_copy(update=update) if hasattr(settings, "model_copy") else settings


def set_default_job_type(logger: Any, job_type: str) -> None:
    """Give the W&B run of ``logger`` (a ``WandbLogger`` whose run has not started) this ``job_type``
    unless the user gave one; a no-op once the run exists. Called by ``MMDetModule.prepare_data`` for
    ``validate`` and ``test``.

    Example::
        >>> from pytorch_lightning.loggers import WandbLogger
        >>> from mmdet_lightning._compat.lightning import wandb_logger_init_kwargs
        >>> logger = WandbLogger(offline=True)
        >>> set_default_job_type(logger, "validate")
        >>> wandb_logger_init_kwargs(logger)["job_type"]
        'validate'
    """
    init = _pending_init(logger)
    if init is not None and not init.get("job_type"):
        init["job_type"] = job_type


def absolute_run_dir(logger: Any) -> None:
    """Make the folder of the W&B run of ``logger`` (a ``WandbLogger`` whose run has not started) absolute, as
    seen from the current directory: wandb's service resolves a relative ``dir`` against the folder where the
    process started its first run, so a second run after a ``chdir`` would land elsewhere. A no-op once the
    run exists. Called by ``MMDetModule.prepare_data``.

    Example::
        >>> from pytorch_lightning.loggers import WandbLogger
        >>> from mmdet_lightning._compat.lightning import wandb_logger_init_kwargs
        >>> logger = WandbLogger(offline=True, save_dir="work_dirs/run")
        >>> absolute_run_dir(logger)
        >>> os.path.isabs(logger._wandb_init["dir"])
        True
    """
    init = _pending_init(logger)
    if init is not None and init.get("dir"):
        init["dir"] = os.path.abspath(init["dir"])


def _pending_init(logger: Any) -> dict[str, Any] | None:
    """The ``wandb.init`` arguments of a ``WandbLogger`` whose run has not started yet (None otherwise)."""
    if not isinstance(logger, pl.loggers.WandbLogger):  # the trainer's other loggers: nothing to set
        return None
    if lightning_compat.wandb_logger_run(logger) is not None:
        return None
    return lightning_compat.wandb_logger_init_kwargs(logger)


def _fields_set(settings: Any) -> set[str]:
    """The fields of a ``wandb.Settings`` that were given a value (pydantic's ``model_fields_set``)."""
    fields = getattr(settings, "model_fields_set", None)
    return set(fields) if fields is not None else {_FLUSH_SETTING}


def validation_metrics(trainer: pl.Trainer, pl_module: Any) -> dict[str, float]:
    """The metrics of the validation that just ended: ``MMDetModule.last_eval_metrics``, else the trainer's
    callback metrics less the training ones (another LightningModule)."""
    metrics = getattr(pl_module, "last_eval_metrics", None)
    if metrics is None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if not k.startswith("train/")}
    return dict(metrics)


def check_non_negative_int(name: str, value: Any, positive: bool = False) -> int:
    """``"Expected argument `interval` to be a positive int, but got -1."``"""
    low = 1 if positive else 0
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        kind = "a positive int" if positive else "an int >= 0"
        raise ValueError(f"Expected argument `{name}` to be {kind}, but got {value!r}.")
    return value


def check_unit_interval(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"Expected argument `{name}` to be a float in [0, 1], but got {value!r}.")
    return float(value)


@rank_zero_only
def finish_run(logger: WandbLogger, exit_code: int) -> None:
    """Finish the logger's W&B run now (what was logged is flushed; an offline run is ready for `wandb sync`)."""
    run = lightning_compat.wandb_logger_run(logger)
    if run is not None:
        run.finish(exit_code=exit_code)


@rank_zero_only
def warn_if_other_run(logger: WandbLogger, run_id: str) -> None:
    """Resumed from a checkpoint of W&B run ``run_id`` while logging to another run: say how to continue it."""
    current = getattr(logger.experiment, "id", None)
    if current is not None and current != run_id:
        rank_zero_warn(
            f"The checkpoint was logged to W&B run {run_id!r}, but this fit logs to a new run {current!r}: its "
            f"metrics and artifacts start afresh there.\nHint: to continue the same run, pass "
            f"WandbLogger(id={run_id!r}, resume='allow') (the CLI does this for `fit --ckpt_path`)."
        )


def wandb_run_id(ckpt_path: str | os.PathLike, trust: bool = False) -> str | None:
    """The W&B run id that the W&B callbacks stored in a Lightning checkpoint (None when there is none).

    The file is read without running code from it (``mmdet_lightning.checkpoint.load_checkpoint_file``; pass
    ``trust=True`` for a trusted file that needs full unpickling).

    Example::
        >>> logger = WandbLogger(id=wandb_run_id("last.ckpt"), resume="allow")  # doctest: +SKIP
    """
    from ..checkpoint import load_checkpoint_file

    return run_id_in_checkpoint(load_checkpoint_file(ckpt_path, trust=trust))


def run_id_in_checkpoint(checkpoint: Mapping[str, Any]) -> str | None:
    """The W&B run id stored in a loaded Lightning checkpoint's callback states, or None.

    Example::
        >>> run_id_in_checkpoint({"callbacks": {"MMDetWandbCallback": {"run_id": "abc"}}})
        'abc'
    """
    for state in (checkpoint.get("callbacks") or {}).values():
        for part in [state, *(v for v in state.values() if isinstance(v, dict))] if isinstance(state, dict) else []:
            if isinstance(part, dict) and part.get("run_id"):
                return str(part["run_id"])
    return None
