"""Lightning's progress bars, redrawn at most ten times a second: cheap at detector step times.

Lightning's bars update after every training batch: they read the progress-bar metrics (a host
synchronisation on a GPU) and redraw (TQDM: two terminal writes; Rich, Lightning's default where ``rich`` is
installed, as mmengine installs it: a redraw in a thread polling 100 times a second, which takes the GIL
from the training loop). At 10-30 ms steps that is about half a millisecond a step on a CPU. The bars here
skip the updates that come sooner than ``min_interval`` after the last one, as tqdm's own ``mininterval``
does, always draw an epoch's last batch and the count where training stops, and otherwise look and behave
the same. ``MMDetModule`` puts them in place of Lightning's default bar; a progress bar passed to the Trainer
is kept.
"""

from __future__ import annotations

import time
from typing import Any

from .._compat import lightning as compat
from ..lightning_package import pl

TQDMProgressBar = pl.callbacks.TQDMProgressBar
RichProgressBar = pl.callbacks.RichProgressBar
RichProgressBarTheme = pl.callbacks.progress.rich_progress.RichProgressBarTheme

__all__ = ["MMDetProgressBar", "MMDetRichProgressBar", "replace_default_progress_bar"]


class _Throttle:
    """Whether a progress bar is due for an update: never sooner than ``min_interval`` seconds after the
    last one, except for the last item of a bar."""

    def _init_throttle(self, min_interval: float) -> None:
        if min_interval < 0:
            raise ValueError(f"Expected `min_interval` >= 0 seconds, but got {min_interval!r}.")
        self.min_interval = float(min_interval)
        self._last_update = float("-inf")
        self._train_batches_done = 0

    def _due(self, current: int, total: int | float) -> bool:
        now = time.monotonic()
        if current != total and now - self._last_update < self.min_interval:
            return False
        self._last_update = now
        return True


class MMDetProgressBar(_Throttle, TQDMProgressBar):
    """Lightning's ``TQDMProgressBar``, updated at most every ``min_interval`` seconds.

    Args:
        refresh_rate: update at most every this many batches (Lightning's argument; 0 disables the bar).
        process_position: Lightning's argument.
        leave: Lightning's argument.
        min_interval: seconds between two updates at the least; 0 updates every ``refresh_rate`` batches.

    Raises:
        ValueError: ``min_interval`` is negative.

    Example::
        >>> bar = MMDetProgressBar(min_interval=0.5)
        >>> trainer = pl.Trainer(callbacks=[bar])  # doctest: +SKIP
    """

    def __init__(self, refresh_rate: int = 1, process_position: int = 0, leave: bool = False,
                 min_interval: float = 0.1) -> None:
        super().__init__(refresh_rate=refresh_rate, process_position=process_position, leave=leave)
        self._init_throttle(min_interval)

    def _should_update(self, current: int, total: int) -> bool:
        return compat.tqdm_should_update(self, current, total) and self._due(current, total)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._train_batches_done = batch_idx + 1
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        bar = compat.tqdm_train_progress_bar(self)
        if bar is not None and not bar.disable and bar.n != self._train_batches_done:  # stopped between updates
            bar.n = self._train_batches_done
            bar.set_postfix(self.get_metrics(trainer, pl_module))
        super().on_train_end(trainer, pl_module)


class MMDetRichProgressBar(_Throttle, RichProgressBar):
    """Lightning's ``RichProgressBar``, its training bar updated at most every ``min_interval`` seconds.

    Args:
        refresh_rate: Lightning's argument (the display thread's polls a second; 0 disables the bar).
        leave: Lightning's argument.
        theme: Lightning's argument.
        console_kwargs: Lightning's argument.
        min_interval: seconds between two updates of the training bar at the least; 0 updates every batch.

    Raises:
        ValueError: ``min_interval`` is negative.

    Example::
        >>> bar = MMDetRichProgressBar(min_interval=0.5)
        >>> trainer = pl.Trainer(callbacks=[bar])  # doctest: +SKIP
    """

    def __init__(self, refresh_rate: int = 100, leave: bool = False, theme: Any = None,
                 console_kwargs: dict[str, Any] | None = None, min_interval: float = 0.1) -> None:
        super().__init__(refresh_rate=refresh_rate, leave=leave, theme=theme or RichProgressBarTheme(),
                         console_kwargs=console_kwargs)
        self._init_throttle(min_interval)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._train_batches_done = batch_idx + 1
        if self._due(batch_idx + 1, trainer.num_training_batches):
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.train_progress_bar_id is not None:  # draw where training stopped, between two updates
            compat.rich_update(self, self.train_progress_bar_id, self._train_batches_done)
            compat.rich_update_metrics(self, trainer, pl_module)
        super().on_train_end(trainer, pl_module)


def replace_default_progress_bar(bar: Any) -> pl.callbacks.ProgressBar | None:
    """The throttled twin of ``bar`` when it is the progress bar Lightning puts in a Trainer by default (a
    ``RichProgressBar`` or ``TQDMProgressBar`` with default arguments); None for any other bar (kept as is).

    Example::
        >>> type(replace_default_progress_bar(TQDMProgressBar())).__name__
        'MMDetProgressBar'
        >>> replace_default_progress_bar(TQDMProgressBar(refresh_rate=10)) is None
        True
    """
    if type(bar) is TQDMProgressBar and bar.refresh_rate == 1 and bar.process_position == 0 \
            and not compat.progress_bar_leave(bar):
        return MMDetProgressBar()
    if (type(bar) is RichProgressBar and bar.refresh_rate == 100 and not compat.progress_bar_leave(bar)
            and not compat.rich_console_kwargs(bar)
            and bar.theme == RichProgressBarTheme()):
        return MMDetRichProgressBar()
    return None
