"""Loading mmdet checkpoints into a detector, with a report of what did not fit.

mmdet checkpoints keep the detector's weights under ``state_dict`` with keys such as
``backbone.conv1.weight``; Lightning checkpoints of :class:`~mmdet_lightning.MMDetModule` keep the same
weights under ``model.``. Both load here, from a local path or a URL (mmengine's ``CheckpointLoader``).

Every checkpoint file is read by :func:`load_checkpoint_file`: ``torch.load(weights_only=True)`` with the few
types that mmengine's ``Runner`` checkpoints hold allow-listed (NumPy arrays, scalars and dtypes, ``HistoryBuffer``),
so that no file runs code while it loads. A file that needs full unpickling is refused unless the user trusts it
(``trust=True`` or ``MMDET_LIGHTNING_TRUST_CHECKPOINTS=1``); a damaged file is named as such.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._compat import mmengine as mmengine_compat
from ._compat import numpy as numpy_compat

__all__ = ["CheckpointDamagedError", "LoadReport", "TRUST_ENV", "UnsafeCheckpointError", "load_checkpoint_file",
           "load_detector_weights", "read_state_dict", "safe_checkpoint_types", "to_mmdet_checkpoint"]

log = logging.getLogger(__name__)
_PREFIXES = ("model.", "module.")
#: set to 1 to load checkpoint files that need full unpickling (only for files you trust: they can run code)
TRUST_ENV = "MMDET_LIGHTNING_TRUST_CHECKPOINTS"


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint file holds objects that only full unpickling (which can run code) would create."""


class CheckpointDamagedError(RuntimeError):
    """A checkpoint file is truncated, empty or not a checkpoint at all."""


def _numpy_globals() -> list[Any]:
    import numpy as np

    found: list[Any] = [np.ndarray, np.dtype, *numpy_compat.pickle_globals()]  # NumPy 1.x and 2.x pickle paths
    dtypes = getattr(np, "dtypes", None)  # NumPy >= 1.25 pickles dtypes as numpy.dtypes.<Name>DType
    if dtypes is not None:
        found += [getattr(dtypes, name) for name in dir(dtypes) if name.endswith("DType")]
    return found


def _history_buffer_method(owner: Any, name: str) -> Any:
    """``builtins.getattr`` as a checkpoint may call it: only for the statistics methods of mmengine's
    ``HistoryBuffer`` (``min``, ``max``, ``mean``, ``current``), which its pickled state references."""
    from mmengine.logging import HistoryBuffer

    methods = {"min", "max", "current", "mean", *mmengine_compat.history_buffer_statistics_methods()}
    if isinstance(owner, type) and issubclass(owner, HistoryBuffer) and name in methods:
        return getattr(owner, name)
    raise pickle.UnpicklingError(f"getattr({owner!r}, {name!r}) is not allowed in a checkpoint")


@contextlib.contextmanager
def safe_checkpoint_types() -> Iterator[None]:
    """Within this context, ``torch.load(weights_only=True)`` also accepts the types of mmengine checkpoints.

    Example::
        >>> import torch, numpy as np, tempfile
        >>> path = tempfile.mktemp(suffix=".pth"); torch.save({"seed": np.int64(3)}, path)
        >>> with safe_checkpoint_types():
        ...     int(torch.load(path, weights_only=True)["seed"])
        3
    """
    from mmengine.logging import HistoryBuffer

    allowed = [HistoryBuffer, *_numpy_globals(), (_history_buffer_method, "builtins.getattr")]
    with torch.serialization.safe_globals(allowed):
        yield


def load_checkpoint_file(path: str | os.PathLike, trust: bool = False, map_location: Any = "cpu") -> Any:
    """Load a local checkpoint file without running code from it (``torch.load(weights_only=True)``, the types
    of :func:`safe_checkpoint_types` allowed): Lightning checkpoints, mmdet and mmengine ``Runner`` checkpoints,
    model-zoo files. ``trust=True`` (or ``MMDET_LIGHTNING_TRUST_CHECKPOINTS=1``) loads any file, code included.

    Raises:
        FileNotFoundError: no such file.
        UnsafeCheckpointError: the file needs full unpickling and is not trusted (the message names the opt-in).
        CheckpointDamagedError: the file is empty, truncated or not a checkpoint.

    Example::
        >>> import tempfile
        >>> path = tempfile.mktemp(suffix=".pth"); torch.save({"state_dict": {"w": torch.ones(1)}}, path)
        >>> load_checkpoint_file(path)["state_dict"]["w"]
        tensor([1.])
    """
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"Checkpoint {str(path)!r} does not exist (working directory: {os.getcwd()}).")
    trusted = trust or os.environ.get(TRUST_ENV, "") not in ("", "0")
    try:
        if trusted:
            return torch.load(source, map_location=map_location, weights_only=False)
        with safe_checkpoint_types():
            return torch.load(source, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        if "Weights only load failed" in str(error):
            raise UnsafeCheckpointError(_unsafe_message(source, error)) from None
        raise CheckpointDamagedError(_damaged_message(source, error)) from None
    except (EOFError, RuntimeError, ValueError, zipfile.BadZipFile, OSError) as error:
        raise CheckpointDamagedError(_damaged_message(source, error)) from None


def _unsafe_message(path: Path, error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    named = [line.split("WeightsUnpickler error:")[-1].strip() for line in lines if "WeightsUnpickler error:" in line]
    details = named or [line for line in lines if "GLOBAL" in line] or lines or ["unknown type"]
    detail = details[0]
    return (
        f"Checkpoint {str(path)!r} was refused: loading it would need full unpickling, which can run code stored "
        f"in the file ({detail}). Only tensors, Python containers, NumPy values and mmengine's HistoryBuffer are "
        f"loaded without trust.\nHint: if you trust the file (you wrote it, or it comes from a source you trust), "
        f"pass trust_checkpoint=True / trust=True, or set {TRUST_ENV}=1 in the environment."
    )


def _damaged_message(path: Path, error: BaseException) -> str:
    size = path.stat().st_size if path.exists() else 0
    return (
        f"Checkpoint {str(path)!r} is damaged ({size} bytes): it is empty, truncated (a copy or download that did "
        f"not finish, a full disk) or not a PyTorch checkpoint ({type(error).__name__}: {str(error)[:200]}).\n"
        "Hint: copy or download the file again, or pick an earlier checkpoint from the same folder."
    )


@dataclass
class LoadReport:
    """What :func:`load_detector_weights` loaded and what it could not.

    Example::
        >>> LoadReport(loaded=["a"], missing=["b"]).summary()
        'loaded 1 tensors; 1 missing from the checkpoint: b'
    """

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)

    def summary(self, limit: int = 10) -> str:
        def names(keys: list[str]) -> str:
            more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
            return ", ".join(keys[:limit]) + more

        parts = [f"loaded {len(self.loaded)} tensors"]
        if self.missing:
            parts.append(f"{len(self.missing)} missing from the checkpoint: {names(self.missing)}")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} in the checkpoint but not in the model: {names(self.unexpected)}")
        if self.mismatched:
            shapes = [f"{k} (checkpoint {list(c)} vs model {list(m)})" for k, (c, m) in self.mismatched.items()]
            parts.append(f"{len(shapes)} with another shape, not loaded: {names(shapes)}")
        return "; ".join(parts)


def read_state_dict(path: str | os.PathLike, trust: bool = False) -> dict[str, torch.Tensor]:
    """Read the weights of an mmdet or mmdet-lightning checkpoint (local path or URL), without running code
    from the file (:func:`load_checkpoint_file`; ``trust=True`` for a trusted file that needs full unpickling).

    Raises:
        FileNotFoundError: a local path that does not exist.
    """
    from mmengine.runner.checkpoint import CheckpointLoader

    path = str(path)
    if "://" not in path and not Path(path).is_file():
        raise FileNotFoundError(
            f"Checkpoint {path!r} does not exist (working directory: {os.getcwd()}).\n"
            "Hint: pass the path or URL of an mmdet checkpoint (.pth) or of a Lightning checkpoint (.ckpt)."
        )
    if "://" not in path:
        checkpoint: Any = load_checkpoint_file(path, trust=trust)
    else:  # mmengine downloads (http, open-mmlab://, s3://...) and loads with torch.load's default, weights_only
        with safe_checkpoint_types():
            try:
                checkpoint = CheckpointLoader.load_checkpoint(path, map_location="cpu", logger="silent")
            except pickle.UnpicklingError as error:
                raise UnsafeCheckpointError(_unsafe_message(Path(path), error)) from None
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, Mapping) else checkpoint
    if not isinstance(state, Mapping):
        raise ValueError(f"Checkpoint {path!r} holds no state dict (found {type(state).__name__}).")
    return {_strip_prefix(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _strip_prefix(key: str) -> str:
    for prefix in _PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def load_detector_weights(model: nn.Module, path: str | os.PathLike, trust: bool = False,
                          adapt: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> LoadReport:
    """Load every checkpoint tensor whose name and shape fit ``model``; report the rest. ``adapt`` renames the
    checkpoint's tensors for the model first (the task's ``checkpoint_state``: a detector's weights into both
    halves of a semi-supervised one, as its ``_load_from_state_dict`` does under mmengine).

    A head trained for another class count loads everything but the class-dependent layers, which
    keep their initialisation and are listed in ``LoadReport.mismatched``.

    Example::
        >>> import tempfile, torch
        >>> path = tempfile.mktemp(suffix=".pth")
        >>> torch.save({"state_dict": {"weight": torch.ones(2, 3), "extra": torch.ones(1)}}, path)
        >>> report = load_detector_weights(torch.nn.Linear(3, 4), path)
        >>> report.missing, report.unexpected, report.mismatched
        (['bias'], ['extra'], {'weight': ((2, 3), (4, 3))})
    """
    state = read_state_dict(path, trust=trust)
    if adapt is not None:
        state = adapt(dict(state))
    own = model.state_dict()
    report = LoadReport()
    usable = {}
    for key, value in state.items():
        if key not in own:
            report.unexpected.append(key)
        elif tuple(value.shape) != tuple(own[key].shape):
            report.mismatched[key] = (tuple(value.shape), tuple(own[key].shape))
        else:
            usable[key] = value
            report.loaded.append(key)
    report.missing = [k for k in own if k not in state]
    model.load_state_dict(usable, strict=False)
    level = logging.WARNING if (report.missing or report.unexpected or report.mismatched) else logging.INFO
    log.log(level, "load_from %s: %s", path, report.summary())
    return report


def to_mmdet_checkpoint(lightning_checkpoint: str | os.PathLike, output: str | os.PathLike,
                        trust: bool = False) -> Path:
    """Write an mmdet checkpoint (``state_dict`` + ``meta.dataset_meta``) from a Lightning checkpoint of
    :class:`~mmdet_lightning.MMDetModule`, for mmdet's own tools (``init_detector``, ``tools/test.py``).
    The way back needs nothing: ``MMDetModule(config, load_from="model.pth")``.

    Command line: ``python -m mmdet_lightning.checkpoint last.ckpt model.pth``.

    The file is read without running code from it (:func:`load_checkpoint_file`; ``trust=True`` otherwise).

    Raises:
        FileNotFoundError: the Lightning checkpoint does not exist.
    """
    checkpoint = load_checkpoint_file(lightning_checkpoint, trust=trust)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    torch.save(mmdet_checkpoint(checkpoint["state_dict"], checkpoint.get("meta"), checkpoint.get("epoch"),
                                checkpoint.get("global_step")), output)
    return output


def mmdet_checkpoint(state_dict: Mapping[str, Any], meta: Mapping[str, Any] | None, epoch: int | None,
                     iteration: int | None) -> dict[str, Any]:
    """The checkpoint mmdet's tools read: ``state_dict`` with the detector's keys (a LightningModule's
    ``model.`` prefix stripped), ``meta`` (``dataset_meta``) with ``epoch`` and ``iter``.

    Example::
        >>> mmdet_checkpoint({"model.head.weight": torch.zeros(1)}, None, 1, 8)["state_dict"].keys()
        dict_keys(['head.weight'])
    """
    return {"state_dict": {_strip_prefix(k): v for k, v in state_dict.items()},
            "meta": {**(meta or {}), "epoch": epoch, "iter": iteration}}


if __name__ == "__main__":
    import sys

    print(to_mmdet_checkpoint(sys.argv[1], sys.argv[2]))
