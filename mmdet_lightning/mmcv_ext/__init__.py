"""mmcv's compiled ops (``mmcv._ext``) in plain PyTorch, for installs without a compiler.

mmdet reaches compiled code only through ``mmcv.ops``, whose modules load ``mmcv._ext`` with
``mmcv.utils.ext_loader.load_ext``. With ``mmcv-lite`` (mmcv's pure-python distribution) that extension is
missing and ``import mmcv.ops`` fails. :func:`install` puts an import hook at the end of ``sys.meta_path``:
Python's own finders look first, so a compiled ``mmcv._ext`` is always preferred and nothing changes where it
exists; only when it is absent does ``import mmcv._ext`` resolve to :mod:`mmdet_lightning.mmcv_ext.torch_ext`,
which implements the functions mmdet's detectors call (NMS, RoIAlign, RoIPool, deformable convolutions,
focal losses, multi-scale deformable attention, ...) with PyTorch, and turns the rest into stubs that raise
:class:`MissingCompiledOpError` naming the op when called.

``import mmdet_lightning`` installs the hook (importing nothing heavy). Code that uses mmengine's ``Runner`` or
mmdet directly must ``import mmdet_lightning`` before the first ``import mmcv.ops`` (mmdet's models import it).

The environment variable ``MMDET_LIGHTNING_MMCV_OPS`` chooses:

* ``auto`` (default): the compiled ops where installed, these PyTorch ops otherwise;
* ``torch``: these PyTorch ops even where the compiled ones are installed (tests, benchmarks); it must be set
  before ``mmcv.ops`` is first imported;
* ``compiled``: no hook; ``import mmcv.ops`` fails as it does without this package when mmcv has no ops.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import types
from typing import Any

__all__ = ["MissingCompiledOpError", "install", "uninstall", "ops_backend", "ENV_VAR", "COMPILED_OPS_HINT"]

ENV_VAR = "MMDET_LIGHTNING_MMCV_OPS"
COMPILED_OPS_HINT = (
    'install mmcv with its compiled ops: `pip install "mmdet-lightning[mmcv-ops]"` (builds mmcv 2.1 from source, '
    "about 10 minutes on 2 cores; needs a C++ compiler, and nvcc for CUDA ops), or `MMCV_OPS=compiled bash "
    "scripts/setup.sh`"
)
_TARGET = "mmcv._ext"
_IMPL = __name__ + ".torch_ext"


class MissingCompiledOpError(NotImplementedError):
    """A function of mmcv's compiled ops that has no PyTorch implementation here was called."""


class _Loader(importlib.abc.Loader):
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return None  # the default module object, named mmcv._ext

    def exec_module(self, module: types.ModuleType) -> None:
        impl = importlib.import_module(_IMPL)
        for name in impl.__all__:
            setattr(module, name, getattr(impl, name))
        module.__dict__["__getattr__"] = impl.__getattr__  # stubs for names a later mmcv may ask for
        module.__doc__ = impl.__doc__
        module.__dict__["MMDET_LIGHTNING_TORCH_OPS"] = True


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != _TARGET:
            return None
        return importlib.util.spec_from_loader(fullname, _Loader(), origin=_IMPL)


_FINDER = _Finder()


def _mode() -> str:
    mode = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if mode not in ("auto", "torch", "compiled"):
        raise ValueError(f"{ENV_VAR}={mode!r}: expected 'auto', 'torch' or 'compiled'")
    return mode


def install(mode: str | None = None) -> None:
    """Install the import hook for ``mmcv._ext`` (idempotent; cheap: imports neither torch nor mmcv).

    ``mode`` overrides ``$MMDET_LIGHTNING_MMCV_OPS``. In ``auto`` mode the hook is consulted only after Python's
    finders found no compiled ``mmcv._ext``; in ``torch`` mode it answers first.
    """
    mode = _mode() if mode is None else mode
    uninstall()
    if mode == "compiled":
        return
    if mode == "torch":
        sys.meta_path.insert(0, _FINDER)
    else:
        sys.meta_path.append(_FINDER)


def uninstall() -> None:
    """Remove the import hook (an ``mmcv._ext`` already imported stays what it is)."""
    while _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)


def ops_backend() -> str:
    """``"compiled"``, ``"torch"`` (this package's ops) or ``"none"``, for the ``mmcv._ext`` imported now or next."""
    loaded = sys.modules.get(_TARGET)
    if loaded is None:
        try:
            loaded = importlib.import_module(_TARGET)
        except ImportError:
            return "none"
    return "torch" if getattr(loaded, "MMDET_LIGHTNING_TORCH_OPS", False) else "compiled"
