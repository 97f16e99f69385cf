"""What a run prints: Lightning's own output and one COCO metrics table per validation.

mmdet's and mmengine's chatter (the per-parameter ``init_weights`` dump, pycocotools' "loading annotations
into memory..." and "Average Precision (AP) @[...]" blocks, mmengine's INFO lines) goes to ``mmdet.log`` in
the run folder instead, whose path is printed once. Until the run folder is known (a module built before
the Trainer), it is kept in memory and written there when the run starts.

``MMDET_LIGHTNING_VERBOSE=1`` brings mmdet's full output back to the console. Exceptions are never hidden.

Example::
    >>> with library_output():
    ...     print("loading annotations into memory...")  # kept for mmdet.log, not shown
    >>> print(metrics_table({"coco/bbox_mAP": 0.5, "coco/bbox_mAP_50": 0.75}, "epoch 1"))
    epoch 1      mAP mAP_50
    coco/bbox  0.500  0.750
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import weakref
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TextIO

__all__ = ["VERBOSE_ENV", "LOG_FILE_NAME", "verbose", "library_output", "attach_log_file", "metrics_table"]

#: set to 1 to see mmdet's and mmengine's own output on the console
VERBOSE_ENV = "MMDET_LIGHTNING_VERBOSE"
LOG_FILE_NAME = "mmdet.log"
_COCO_ITEMS = ("mAP", "mAP_50", "mAP_75", "mAP_s", "mAP_m", "mAP_l")


def verbose() -> bool:
    """Whether mmdet's output goes to the console (``MMDET_LIGHTNING_VERBOSE=1``)."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


class _LibraryLog(io.TextIOBase):
    """A text stream that buffers in memory until a file is attached, then writes there."""

    def __init__(self) -> None:
        self._buffer: list[str] = []
        self._file: TextIO | None = None
        self.path: Path | None = None

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if self._file is not None:
            self._file.write(text)
        elif sum(map(len, self._buffer)) < 2**24:  # never more than 16 MB in memory before a run starts
            self._buffer.append(text)
        return len(text)

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def attach(self, path: Path) -> bool:
        """Write to ``path`` from now on (appending); False when it is the file already in use."""
        if self.path == path:
            return False
        path.parent.mkdir(parents=True, exist_ok=True)
        if self._file is not None:
            self._file.close()
        self._file = path.open("a", encoding="utf-8", buffering=1)
        self._file.write("".join(self._buffer))
        self._buffer = []
        self.path = path
        return True


_LOG = _LibraryLog()


#: the mmengine loggers already sent to the library log
_QUIETED: weakref.WeakSet[logging.Logger] = weakref.WeakSet()


def _quiet_mmengine_logger() -> None:
    """mmengine's current logger writes to the library log instead of the console (its warnings and errors
    repeat what our own messages say, every epoch: "The testing results of the whole dataset is empty").

    Process-wide, on purpose, and kept after the first ``library_output`` block: this logger is mmengine's one
    current instance, which all of mmengine and mmdet log through (``print_log``) from anywhere, not only
    within our blocks, and what they say there belongs in mmdet.log too. Only its console handlers change
    (raised to CRITICAL, their records copied to the library log); file handlers and other loggers are left
    alone, and ``MMDET_LIGHTNING_VERBOSE=1`` leaves everything as mmengine set it."""
    from mmengine.logging import MMLogger

    logger = MMLogger.get_current_instance()
    if logger in _QUIETED:
        return
    for handler in list(logger.handlers):
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler) \
                and handler.stream is not _LOG:
            to_file = logging.StreamHandler(_LOG)
            to_file.setFormatter(logging.Formatter("%(asctime)s - %(name)s - %(levelname)s - %(message)s"))
            to_file.setLevel(logging.DEBUG)
            logger.addHandler(to_file)
            handler.setLevel(logging.CRITICAL)
    _QUIETED.add(logger)


@contextlib.contextmanager
def library_output() -> Iterator[None]:
    """Within: ``print`` (pycocotools) and mmengine's INFO logging go to the library log, not the console.

    A no-op with ``MMDET_LIGHTNING_VERBOSE=1``.
    """
    if verbose():
        yield
        return
    _quiet_mmengine_logger()
    with contextlib.redirect_stdout(_LOG):
        yield


def attach_log_file(folder: str | os.PathLike, rank: int = 0) -> Path | None:
    """Write the library log to ``<folder>/mmdet.log`` (``mmdet.rank<N>.log`` on other ranks); rank 0 says where,
    once. Returns the path, or None with ``MMDET_LIGHTNING_VERBOSE=1`` (everything is on the console then)."""
    if verbose():
        return None
    name = LOG_FILE_NAME if rank == 0 else f"mmdet.rank{rank}.log"
    path = Path(folder).resolve() / name
    if _LOG.attach(path) and rank == 0:
        print(f"mmdet-lightning: mmdet's own output goes to {path} ({VERBOSE_ENV}=1 shows it here)", flush=True)
    return path


def metrics_table(metrics: Mapping[str, Any], title: str) -> str:
    """COCO metrics as one compact table: a row per ``<prefix>/<iou type>`` (what mmdet prints as
    ``bbox_mAP_copypaste``), other scalars on a last line.

    Example::
        >>> print(metrics_table({"coco/bbox_mAP": 0.25, "coco/segm_mAP": 0.125, "loss": 1.0}, "val"))
        val          mAP
        coco/bbox  0.250
        coco/segm  0.125
        loss 1.0000
    """
    rows: dict[str, dict[str, float]] = {}
    rest: dict[str, float] = {}
    for key, value in metrics.items():
        prefix, _, name = str(key).rpartition("/")
        kind, _, item = name.partition("_")
        if item in _COCO_ITEMS:
            rows.setdefault(f"{prefix}/{kind}" if prefix else kind, {})[item] = float(value)
        else:
            rest[str(key)] = float(value)
    columns = [item for item in _COCO_ITEMS if any(item in row for row in rows.values())]
    width = max([len(title), *map(len, rows)])
    lines = [f"{title:<{width}} " + " ".join(f"{c:>6}" for c in columns)] if rows else []
    for name, row in rows.items():
        lines.append(f"{name:<{width}} " + " ".join(
            f"{row[c]:>{max(6, len(c))}.3f}" if c in row else " " * max(6, len(c)) for c in columns))
    if rest:
        lines.append("  ".join(f"{k} {v:.4f}" for k, v in rest.items()))
    return "\n".join(lines)
