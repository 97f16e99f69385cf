"""Reading and writing Lightning checkpoints safely: no code runs from a file, no file is half-written.

:class:`SafeCheckpointIO` is the ``CheckpointIO`` that :class:`~mmdet_lightning.MMDetModule` puts on the trainer's
strategy (when it has Lightning's default one). It loads ``trainer.fit(ckpt_path=...)`` and ``--ckpt_path`` files
with :func:`~mmdet_lightning.checkpoint.load_checkpoint_file` (``weights_only=True``, mmengine's types allowed, a
damaged file named as such) and writes each checkpoint to a temporary file in the target folder, then renames it
over the target: a write that fails (disk full, read-only folder) leaves the earlier checkpoints and ``last.ckpt``
as they were and stops training with :class:`CheckpointWriteError`, naming the folder. With ``record_md5`` on (the W&B
checkpoint artifacts turn it on), it also hashes each checkpoint while it is in memory, so that the artifact needs
no second read of the file to hash it (:meth:`SafeCheckpointIO.md5_of`).
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ._compat import lightning as lightning_compat
from .checkpoint import load_checkpoint_file

if TYPE_CHECKING:  # type checkers see one package's classes; both have the same API
    from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
else:
    TorchCheckpointIO = lightning_compat.torch_checkpoint_io_class()

__all__ = ["CheckpointWriteError", "SafeCheckpointIO"]


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (no space left, read-only folder, ...); nothing written before is lost."""


class SafeCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` with safe loading and atomic local writes (see the module docstring).

    Args:
        trust: load files that need full unpickling (they can run code); also ``MMDET_LIGHTNING_TRUST_CHECKPOINTS=1``.

    Attributes:
        record_md5: hash each local checkpoint it writes (MD5, from memory: no read of the file), for
            :meth:`md5_of`; off by default (the W&B checkpoint artifacts turn it on).

    Example::
        >>> trainer = pl.Trainer(plugins=[SafeCheckpointIO()])  # doctest: +SKIP
        >>> path = Path(tempfile.mkdtemp()) / "last.ckpt"
        >>> io = SafeCheckpointIO()
        >>> io.record_md5 = True
        >>> io.save_checkpoint({"step": 1}, path)
        >>> io.md5_of(path) is not None
        True
    """

    #: how many written files' digests are kept (the newest)
    KEPT_DIGESTS = 8

    def __init__(self, trust: bool = False) -> None:
        self.trust = trust
        self.record_md5 = False
        # absolute path -> (base64 MD5, (device, inode, size, mtime_ns)) of the files written here
        self._digests: dict[str, tuple[str, tuple[int, int, int, int]]] = {}

    def md5_of(self, path: str | os.PathLike[str]) -> str | None:
        """The MD5 (base64, as W&B's artifact manifests hold it) of the checkpoint at ``path``, hashed when
        this object wrote it; None when ``record_md5`` was off, or the file is not the one written (replaced,
        changed, gone). ``path`` may also be a hard link to the file."""
        try:
            identity = _identity(path)
        except OSError:
            return None
        return next((digest for digest, known in self._digests.values() if known == identity), None)

    def load_checkpoint(self, path: Any, map_location: Callable | None = lambda storage, loc: storage,
                        weights_only: bool | None = None) -> dict[str, Any]:
        if "://" in str(path):  # remote: Lightning's own loading (fsspec)
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        return load_checkpoint_file(path, trust=self.trust or weights_only is False, map_location=map_location)

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if "://" in str(path) or storage_options is not None:
            return super().save_checkpoint(checkpoint, path, storage_options=storage_options)
        target = Path(path)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        temporary: str | None = None
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
            with os.fdopen(handle, "wb") as file:
                file.write(buffer.getbuffer())
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, target)
            temporary = None
            if self.record_md5:
                self._remember_md5(target, buffer)
        except OSError as error:
            kept = sorted(p.name for p in target.parent.glob("*.ckpt")) if target.parent.is_dir() else []
            raise CheckpointWriteError(
                error.errno, f"Could not write checkpoint {str(target)!r} in folder {str(target.parent)!r} "
                f"({os.strerror(error.errno) if error.errno else error}); training stopped. The checkpoints already "
                f"there are unchanged: {', '.join(kept) or 'none'}.\nHint: free space in {str(target.parent)!r} (or "
                "make it writable), or point ModelCheckpoint(dirpath=...) at another folder, then resume with "
                f"--ckpt_path {str(target.parent / 'last.ckpt')!r}."
            ) from error
        finally:
            if temporary is not None and os.path.exists(temporary):
                os.remove(temporary)

    def _remember_md5(self, target: Path, buffer: io.BytesIO) -> None:
        digest = md5_base64(buffer)
        key = os.path.abspath(target)
        self._digests.pop(key, None)
        self._digests[key] = (digest, _identity(target))
        while len(self._digests) > self.KEPT_DIGESTS:
            self._digests.pop(next(iter(self._digests)))


def md5_base64(buffer: io.BytesIO) -> str:
    """The MD5 of ``buffer``'s bytes, base64-encoded as W&B's artifact manifests hold digests."""
    return base64.b64encode(hashlib.md5(buffer.getbuffer(), usedforsecurity=False).digest()).decode("ascii")


def _identity(path: str | os.PathLike[str]) -> tuple[int, int, int, int]:
    """What tells one file from another, and a changed file from itself: device, inode, size, modification time."""
    stat = os.stat(path)
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns
