"""Loading mmdet checkpoints into a detector, with a report of what did not fit.

mmdet checkpoints keep the detector's weights under ``state_dict`` with keys such as
``backbone.conv1.weight``; Lightning checkpoints of :class:`~mmdet_lightning.MMDetModule` keep the same
weights under ``model.``. Both load here, from a local path or a URL (mmengine's ``CheckpointLoader``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

__all__ = ["LoadReport", "load_detector_weights", "read_state_dict", "to_mmdet_checkpoint"]

log = logging.getLogger(__name__)
_PREFIXES = ("model.", "module.")


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


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read the weights of an mmdet or mmdet-lightning checkpoint (local path or URL).

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
    checkpoint: Any = CheckpointLoader.load_checkpoint(path, map_location="cpu", logger="silent")
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, Mapping) else checkpoint
    if not isinstance(state, Mapping):
        raise ValueError(f"Checkpoint {path!r} holds no state dict (found {type(state).__name__}).")
    return {_strip_prefix(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _strip_prefix(key: str) -> str:
    for prefix in _PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def load_detector_weights(model: nn.Module, path: str | os.PathLike) -> LoadReport:
    """Load every checkpoint tensor whose name and shape fit ``model``; report the rest.

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
    state = read_state_dict(path)
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


def to_mmdet_checkpoint(lightning_checkpoint: str | os.PathLike, output: str | os.PathLike) -> Path:
    """Write an mmdet checkpoint (``state_dict`` + ``meta.dataset_meta``) from a Lightning checkpoint of
    :class:`~mmdet_lightning.MMDetModule`, for mmdet's own tools (``init_detector``, ``tools/test.py``).
    The way back needs nothing: ``MMDetModule(config, load_from="model.pth")``.

    Command line: ``python -m mmdet_lightning.checkpoint last.ckpt model.pth``.

    Raises:
        FileNotFoundError: the Lightning checkpoint does not exist.
    """
    source = Path(lightning_checkpoint)
    if not source.is_file():
        raise FileNotFoundError(f"Checkpoint {str(source)!r} does not exist.")
    checkpoint = torch.load(source, map_location="cpu", weights_only=False)
    state = {_strip_prefix(k): v for k, v in checkpoint["state_dict"].items()}
    meta = dict(checkpoint.get("meta") or {})
    meta.update(epoch=checkpoint.get("epoch"), iter=checkpoint.get("global_step"))
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state, "meta": meta}, output)
    return output


if __name__ == "__main__":
    import sys

    print(to_mmdet_checkpoint(sys.argv[1], sys.argv[2]))
