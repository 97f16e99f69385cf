"""Preemption under DDP without a blocking collective per step: every rank stops at the same step.

Lightning 2.5+ (``_TrainingEpochLoop._broadcast_sigterm_tensor``) broadcasts a SIGTERM flag from rank 0 at the
start of every training step under DDP: a blocking collective and an ``.item()``, a host synchronisation per
step on GPUs, and its signal handler makes a second broadcast that pairs with it, however the signal falls.
:class:`PreemptionHandler` replaces both halves of that protocol:

    signal (SIGTERM; SIGUSR1 with SLURMEnvironment(auto_requeue=True))
                        the handler only records the request on this process (no collective, no raise)
    each batch's end    every few batches (``seconds_between_agreements`` of training, agreed by all ranks),
                        start an all-reduce (MAX) of the flags on a CPU gloo group (no device
                        synchronisation), and read it two batches later (it ran during them, so reading it does
                        not wait for a rank a little behind); when it says stop, every rank stops at this batch
                        (at an epoch's last batch: after the epoch's validation, so that the resume is exact):
                        ``hpc_ckpt_N.ckpt`` written (atomically, by SafeCheckpointIO), the W&B runs marked
                        preempting, then Lightning's own SIGTERM exit (``SIGTERMException``, the W&B callbacks
                        upload and finish); after SIGUSR1 on SLURM, rank 0 requeues the job (``scontrol requeue``)

An agreement costs each rank about 0.35 ms (2 gloo processes on 2 cores: a fifth of the whole loop's own time at
20 ms steps, benchmarks/train_overhead.py), so the ranks agree at most every ``seconds_between_agreements``
(0.25 s: a cost of about 0.1% whatever the step time), every batch when steps take longer. The number of batches
between two agreements travels in the all-reduce itself (each rank proposes one from its own step time, all take
the smallest), so every rank starts and reads the same collectives at the same batches. A signal reaches every
rank's decision, on all ranks at the same batch, at most that interval plus two batches later: during validation
or a checkpoint write it waits for the next training batches. The requeued job (same command) resumes from the
``hpc`` checkpoint: Lightning picks it up by itself on SLURM, ``ckpt_path="hpc"`` elsewhere. When Lightning ships
its own switch (``Trainer(broadcast_sigterm_every_n_steps=...)``, PR #21640) this handler steps aside and
Lightning's protocol runs as it is.
"""

from __future__ import annotations

import collections
import inspect
import logging
import os
import subprocess
import time
from pathlib import Path
from types import FrameType
from typing import Any

import torch

from .._compat import lightning as lightning_compat
from ..lightning_package import pl
from ..wandb.worker import drain_all_workers

__all__ = ["PreemptionHandler", "lightning_has_sigterm_switch", "newest_hpc_checkpoint"]

log = logging.getLogger(__name__)
#: Lightning's own signal logger: "Received SIGTERM" reads as it always has
_lightning_log = logging.getLogger(f"{pl.__name__}.trainer.connectors.signal_connector")
_NONE, _STOP, _REQUEUE = 0, 1, 2


def lightning_has_sigterm_switch() -> bool:
    """Whether this Lightning controls its per-step SIGTERM broadcast itself (PR #21640, in no release yet)."""
    return "broadcast_sigterm_every_n_steps" in inspect.signature(pl.Trainer.__init__).parameters


class PreemptionHandler(pl.Callback):
    """Stops a (DDP) fit on SIGTERM, or SLURM's requeue signal, at the same batch on every rank, with a
    checkpoint to resume from, and no collective that blocks a training step. ``MMDetModule`` adds one to every
    fit (``configure_callbacks``) unless the Trainer already has one.

    Args:
        checkpoint: write ``hpc_ckpt_N.ckpt`` in the Trainer's ``default_root_dir`` when stopping.
        seconds_between_agreements: training seconds between two agreements of the ranks on a stop (at least
            one batch); 0 agrees after every batch. A signal stops the job at most this long plus two batches
            later.

    Example::
        >>> handler = PreemptionHandler(seconds_between_agreements=1.0)  # Trainer(callbacks=[handler])
        >>> handler.requested
        0
    """

    #: batches between starting an all-reduce of the flags and reading it: it runs during them, so reading it
    #: does not wait for a rank that is a little behind
    LAG = 2
    #: the most batches between two agreements, whatever the step time
    MAX_BATCHES_BETWEEN_AGREEMENTS = 1000

    def __init__(self, checkpoint: bool = True, seconds_between_agreements: float = 0.25) -> None:
        if seconds_between_agreements < 0:
            raise ValueError(f"seconds_between_agreements must be 0 or more, got {seconds_between_agreements}")
        self.checkpoint = checkpoint
        self.seconds_between_agreements = seconds_between_agreements
        #: what this process's signal handlers asked for: 0 nothing, 1 stop, 2 stop and requeue (SLURM)
        self.requested = _NONE
        #: the decision every rank took, and where the checkpoint went (None while running)
        self.stopped: int = _NONE
        self.checkpoint_path: str | None = None
        self._pending = _NONE  # a stop decided at an epoch's last batch, taken after its validation
        self._trainer: Any = None
        self._group: Any = None
        self._reset_schedule()

    def _reset_schedule(self) -> None:
        #: training batches ended since `setup` (the same count on every rank)
        self.batches = 0
        #: batches between two agreements, as the ranks last agreed (1 until the first agreement)
        self.batches_between_agreements = 1
        self._next_start = 1
        #: the all-reduces in flight, oldest first: (the batch count at which to read it, flags, work)
        self._in_flight: collections.deque[tuple[int, torch.Tensor, Any]] = collections.deque()
        self._last_start: tuple[int, float] | None = None  # (batch count, time) of the last start

    @property
    def state_key(self) -> str:
        return "PreemptionHandler"

    # ------------------------------------------------------------------ install
    def setup(self, trainer: pl.Trainer, pl_module: Any, stage: str) -> None:
        if stage != "fit" or lightning_has_sigterm_switch():
            return
        self._trainer = trainer
        self.requested = self.stopped = self._pending = _NONE
        self._reset_schedule()
        # Lightning binds its handlers when it registers them, after `setup`: ours take their place (its
        # SIGTERM notifier broadcasts from inside the handler), and its per-step broadcast goes
        lightning_compat.replace_signal_handlers(trainer, self._on_sigterm, self._on_requeue_signal)
        lightning_compat.replace_step_sigterm_broadcast(trainer, _no_broadcast)
        if self._distributed():
            import torch.distributed as dist

            self._group = dist.new_group(backend="gloo")  # collective: every rank runs `setup`

    def _distributed(self) -> bool:
        return (self._trainer is not None and self._trainer.world_size > 1 and torch.distributed.is_available()
                and torch.distributed.is_initialized())

    # ------------------------------------------------------------------ signals: record only
    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        _lightning_log.info(f"[rank: {self._trainer.global_rank}] Received SIGTERM: {signum}")
        if self.requested == _NONE:
            launcher = self._trainer.strategy.launcher
            if launcher is not None:
                launcher.kill(signum)  # as Lightning: pass it on to the processes it started
        self.requested = max(self.requested, _STOP)

    def _on_requeue_signal(self, signum: int, frame: FrameType | None) -> None:
        _lightning_log.info(f"[rank: {self._trainer.global_rank}] Received the requeue signal {signum}")
        self.requested = _REQUEUE

    # ------------------------------------------------------------------ each batch's end: agree
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._trainer is None:
            return
        self.batches += 1
        decision = self._agree() if self._distributed() else self.requested
        if decision == _NONE:
            return
        if batch_idx + 1 == trainer.num_training_batches:
            # the epoch's validation (or end) comes next: a checkpoint taken after it resumes exactly, one
            # taken before it would make Lightning skip it on resume
            self._pending = decision
        else:
            self._stop(trainer, decision)

    def _agree(self) -> int:
        """What every rank decided at this batch: read the all-reduce due now, start the next when due."""
        import torch.distributed as dist

        decision = _NONE
        if self._in_flight and self._in_flight[0][0] == self.batches:  # started LAG batches ago on every rank
            _, flags, work = self._in_flight.popleft()
            work.wait()
            decision, self.batches_between_agreements = int(flags[0]), int(-flags[1])
        if self.batches >= self._next_start:
            flags = torch.tensor([self.requested, -self._proposed_interval()], dtype=torch.int64)
            work = dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=self._group, async_op=True)
            self._in_flight.append((self.batches + self.LAG, flags, work))
            self._next_start = self.batches + self.batches_between_agreements
        return decision

    def _proposed_interval(self) -> int:
        """This rank's batches between agreements, from its time per batch since the last start (the ranks take
        the smallest proposal: MAX of the negated ones)."""
        now, last = time.perf_counter(), self._last_start
        self._last_start = (self.batches, now)
        if last is None or self.seconds_between_agreements == 0:
            return 1
        per_batch = (now - last[1]) / (self.batches - last[0])
        batches = int(self.seconds_between_agreements / per_batch) if per_batch > 0 else 1
        return max(1, min(batches, self.MAX_BATCHES_BETWEEN_AGREEMENTS))

    def on_validation_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if self._pending != _NONE and not trainer.sanity_checking:
            self._stop(trainer, self._pending)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if self._pending != _NONE:
            self._stop(trainer, self._pending)

    def _stop(self, trainer: pl.Trainer, decision: int) -> None:
        """On every rank at the same batch: checkpoint, W&B runs marked preempting, requeue; then Lightning's
        SIGTERM exit after this batch (``received_sigterm``)."""
        self.stopped, self._pending = decision, _NONE
        if self.checkpoint:
            drain_all_workers()  # the job ends here: the checkpoint records the W&B tables as in the run
            path = lightning_compat.hpc_save_path(trainer, str(trainer.default_root_dir))
            path = trainer.strategy.broadcast(path)
            trainer.save_checkpoint(path)  # collective; SafeCheckpointIO writes it atomically
            self.checkpoint_path = path
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                if isinstance(logger, pl.loggers.WandbLogger):
                    run = lightning_compat.wandb_logger_run(logger)  # a run never started is not preempted
                    if run is not None:
                        run.mark_preempting()
            if decision == _REQUEUE:
                _requeue_slurm_job()
        lightning_compat.set_received_sigterm(trainer)  # Lightning raises SIGTERMException after this batch

    def teardown(self, trainer: pl.Trainer, pl_module: Any, stage: str) -> None:
        while self._in_flight:  # every rank started them: finish them before the process group goes
            self._in_flight.popleft()[2].wait()


def newest_hpc_checkpoint(folder: str | os.PathLike) -> str | None:
    """The ``hpc_ckpt_N.ckpt`` with the highest N in ``folder`` (what ``ckpt_path="hpc"`` resumes), or None.

    Example::
        >>> newest_hpc_checkpoint("/nonexistent") is None
        True
    """
    numbered = []
    for path in Path(folder).glob("hpc_ckpt_*.ckpt"):
        suffix = path.stem.rsplit("_", 1)[-1]
        if suffix.isdigit():
            numbered.append((int(suffix), str(path)))
    return max(numbered)[1] if numbered else None


def _no_broadcast() -> None:
    """Lightning's per-step SIGTERM broadcast, replaced by the agreement at each batch's end."""


def _requeue_slurm_job() -> None:
    """``scontrol requeue`` this SLURM job (an array task by its array ids), as Lightning's SLURM handler does."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array_job else os.environ.get("SLURM_JOB_ID")
    if not job:
        log.warning("Requeue signal outside a SLURM job: nothing to requeue")
        return
    try:
        result = subprocess.call(["scontrol", "requeue", job])
    except FileNotFoundError:
        result = -1
    (log.info if result == 0 else log.warning)(f"scontrol requeue {job}: exit code {result}")

