"""BackgroundWorker: one thread that runs the W&B callbacks' slow work (tables, artifact uploads) off the training
loop."""

from __future__ import annotations

import atexit
import queue
import threading
import weakref
from collections.abc import Callable
from typing import Any

from ..lightning_package import pl

rank_zero_warn = pl.utilities.rank_zero_warn

__all__ = ["BackgroundWorker", "drain_all_workers"]

_workers: weakref.WeakSet[BackgroundWorker] = weakref.WeakSet()


def drain_all_workers() -> None:
    """Wait until every job of every worker of this process has run: before a checkpoint that ends the job
    (preemption), so that what it records as logged is in the run."""
    for worker in list(_workers):
        worker.drain()


class BackgroundWorker:
    """Runs submitted jobs one after another, in submission order, on one daemon thread.

    ``submit`` hands a job over and returns at once, unless ``max_pending`` jobs are already waiting
    to start (the queue is bounded, so a slow W&B cannot pile up work and memory): then it waits until
    the worker takes the next one. ``drain`` waits until every submitted job has run. A job that
    raises does not stop the worker or training: its exception becomes a warning (``rank_zero_warn``)
    naming the job, and the later jobs still run. The thread starts with the first job and stops in
    ``close`` (a later ``submit`` starts it again); while it runs, interpreter exit drains it
    (``atexit``, registered at start, so it runs before the exit handlers of a W&B run started earlier).

    PyTorch runs on the worker thread with one intra-op thread (:func:`_torch_on_one_thread_here`): a second
    thread that enters PyTorch's OpenMP parallel regions gets a second OpenMP thread team, and training
    slowed by 8% for the rest of a run after one FLOP count on the worker (``benchmarks/
    wandb_callback_overhead.py``, 2 cores); the training threads keep their number.

    Lifecycle::

        submit(fn, *args)   first call: start the thread, register the atexit drain; queue the job
                            (blocks only while ``max_pending`` jobs wait)
        worker thread       fn(*args) for each job in order; an exception -> one warning, go on
        drain()             wait until all submitted jobs are done (teardown, on_exception, before finish)
        close()             drain, stop the thread, unregister the atexit drain

    A job reads only what it is given: pass it copies of anything that training goes on changing.

    Args:
        background: run jobs on the worker thread; False runs each job inline in ``submit``
            (deterministic, for debugging), with the same warning on failure.
        max_pending: how many jobs may wait to start before ``submit`` blocks; at least 1.
        name: the thread's name, also the prefix of the warnings.

    Raises:
        ValueError: ``max_pending`` below 1.

    Example::
        >>> worker = BackgroundWorker(max_pending=2)
        >>> done = []
        >>> worker.submit(done.append, "val table")
        >>> worker.submit(done.append, "pred table")
        >>> worker.drain()
        >>> done
        ['val table', 'pred table']
        >>> worker.close()
    """

    def __init__(self, background: bool = True, max_pending: int = 4, name: str = "mmdet-lightning W&B") -> None:
        if isinstance(max_pending, bool) or not isinstance(max_pending, int) or max_pending < 1:
            raise ValueError(f"Expected argument `max_pending` to be a positive int, but got {max_pending!r}.")
        self.background = background
        self.max_pending = max_pending
        self.name = name
        self._queue: queue.Queue[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]] | None] = queue.Queue(
            maxsize=max_pending)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        #: how many jobs have raised since the worker was made
        self.failures = 0
        _workers.add(self)

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Run ``fn(*args, **kwargs)`` on the worker thread (inline when ``background`` is False, or when
        called from a job)."""
        if not self.background or threading.current_thread() is self._thread:
            self._run(fn, args, kwargs)
            return
        self._start()
        self._queue.put((fn, args, kwargs))

    def drain(self) -> None:
        """Wait until every job submitted so far has run (at once when there is none)."""
        if self._thread is not None and threading.current_thread() is not self._thread:
            self._queue.join()

    def close(self) -> None:
        """Drain, then stop the thread; the worker can still be used (the next ``submit`` starts a thread)."""
        with self._lock:
            thread, self._thread = self._thread, None
            if thread is None or threading.current_thread() is thread:
                self._thread = thread
                return
            atexit.unregister(self._drain_at_exit)
        self._queue.put(None)
        self._queue.join()
        thread.join()

    def __getstate__(self) -> dict[str, Any]:
        # pickled (``ddp_spawn``) or deep-copied: the settings only; the copy gets its own queue and thread
        return {"background": self.background, "max_pending": self.max_pending, "name": self.name}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            import torch

            threads = torch.get_num_threads()
            ready = threading.Event()
            self._thread = threading.Thread(target=self._loop, args=(ready,), name=self.name, daemon=True)
            self._thread.start()
            ready.wait()
            torch.set_num_threads(threads)  # the default for threads started later, as it was
            atexit.register(self._drain_at_exit)

    def _drain_at_exit(self) -> None:
        # daemon threads still run while atexit handlers do; a W&B run finished by its own exit handler
        # (registered at wandb.init, before this one: atexit runs last-registered first) gets every job
        self.drain()

    def _loop(self, ready: threading.Event) -> None:
        _torch_on_one_thread_here()
        ready.set()
        while True:
            job = self._queue.get()
            try:
                if job is None:
                    return
                self._run(*job)
            finally:
                self._queue.task_done()

    def _run(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        try:
            fn(*args, **kwargs)
        except BaseException as err:  # noqa: B036 - a failed upload must never stop training
            self.failures += 1
            what = getattr(fn, "__qualname__", None) or repr(fn)
            rank_zero_warn(f"{self.name}: background job {what} failed ({type(err).__name__}: {err}); "
                           "training goes on without it.")


def _torch_on_one_thread_here() -> None:
    """PyTorch's intra-op parallelism off for the calling thread (OpenMP's thread count is per thread).
    ``torch.set_num_threads`` also sets the default of threads started later: the caller restores it."""
    import torch

    torch.get_num_threads()  # PyTorch initialises this thread's count now, not at its first parallel region
    torch.set_num_threads(1)
