"""A WandbLogger that never stops training because W&B cannot be reached.

    no W&B credentials (WANDB_API_KEY, a netrc entry, WANDB_MODE) -> offline, one line on how to sync
    wandb.init fails to reach the server (CommError: network, proxy, outage, bad key)
                                                     -> one warning, the run is logged offline instead
    later outages                                    -> wandb's own service retries in the background;
                                                        the run's transaction log stays on disk for `wandb sync`
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, cast

from .._compat import lightning as lightning_compat
from ..lightning_package import check_one_package, pl
from ._common import flush_transaction_log_often

WandbLogger = pl.loggers.WandbLogger
rank_zero_experiment = pl.loggers.logger.rank_zero_experiment
rank_zero_info, rank_zero_warn = pl.utilities.rank_zero_info, pl.utilities.rank_zero_warn

__all__ = ["ResilientWandbLogger", "wandb_credentials"]


def wandb_credentials() -> bool:
    """Whether this process can log online: an API key, ``WANDB_MODE=online`` or a netrc entry for W&B."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE", "").lower() in ("online", "run"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    host = os.environ.get("WANDB_BASE_URL", "api.wandb.ai").split("://")[-1].split("/")[0].split(":")[0]
    return netrc.is_file() and host in netrc.read_text(errors="ignore")


class ResilientWandbLogger(WandbLogger):
    """Lightning's ``WandbLogger`` (same arguments) that logs offline instead of failing.

    Without credentials it logs offline from the start; when ``wandb.init`` cannot reach the server it
    warns once and logs the run offline (with the same arguments: a given ``id`` is kept). Either way one line says how
    to upload the run later (``wandb sync <run folder>``). Pass ``settings=wandb.Settings(init_timeout=...)`` to wait
    less than W&B's default (90 s) before falling back.

    Example::
        >>> logger = ResilientWandbLogger(project="mmdetection")  # doctest: +SKIP
        >>> trainer = pl.Trainer(logger=logger, callbacks=[MMDetWandbCallback()])  # doctest: +SKIP
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        check_one_package(type(self).__name__)
        self._no_credentials = not kwargs.get("offline", False) and not kwargs.get("log_model", False) \
            and "WANDB_MODE" not in os.environ and kwargs.get("mode") is None and not wandb_credentials()
        if self._no_credentials:
            kwargs["offline"] = True
        super().__init__(*args, **kwargs)
        flush_transaction_log_often(self)
        self._fell_back = False

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        run = lightning_compat.wandb_logger_run(self)
        if run is not None:
            return run
        import wandb

        try:
            run = cast(Any, WandbLogger.experiment).fget(self)
        except wandb.errors.CommError as err:
            server = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
            rank_zero_warn(f"W&B: cannot reach {server} ({type(err).__name__}: {str(err).splitlines()[0]}); "
                           "logging offline instead, training goes on.")
            lightning_compat.wandb_logger_go_offline(self)
            self._fell_back = True
            run = cast(Any, WandbLogger.experiment).fget(self)
        if self._no_credentials or self._fell_back:
            folder = Path(run.dir).parent
            why = "no W&B credentials found" if self._no_credentials else "W&B unreachable"
            rank_zero_info(f"W&B: {why}; run {run.id} is logged offline in {folder}. "
                           f"Upload it later with: wandb sync {folder}")
        return run
