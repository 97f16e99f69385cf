"""Which Lightning package mmdet_lightning builds on: ``pytorch_lightning`` or ``lightning.pytorch``.

Lightning ships the same Trainer twice, as ``pytorch_lightning`` and as ``lightning.pytorch`` (``import
lightning as L``), and their classes are distinct: a module of one cannot be given to the other's Trainer.
mmdet_lightning's classes are built on exactly one of them, chosen once, the first time mmdet_lightning needs
Lightning (importing ``MMDetModule``, a callback, the CLI):

1. ``MMDET_LIGHTNING_PACKAGE=lightning`` (or ``lightning.pytorch``) / ``=pytorch_lightning``, when set;
2. otherwise the package your code has already imported: ``import lightning as L`` (or ``import
   lightning.pytorch``) *before* using mmdet_lightning gives ``lightning.pytorch``;
3. otherwise ``pytorch_lightning`` (the default dependency), or ``lightning.pytorch`` when only that is installed.

The ``mmdet-lightning`` CLI follows the same rules (so ``MMDET_LIGHTNING_PACKAGE=lightning mmdet-lightning fit
...`` for ``lightning.pytorch``), and YAML class paths of either package work with both (translated by
:func:`translate_class_path`). When both packages end up imported without the variable saying which,
mmdet_lightning's constructors raise :class:`LightningPackageError` naming the fix, instead of Lightning's
"must be a LightningModule" later (or callbacks of the other package silently not recognised).

Code that should run on either package can use this module's ``pl`` (the chosen package) and ``fabric``.

Example::
    >>> from mmdet_lightning.lightning_package import NAME, pl
    >>> NAME in ("pytorch_lightning", "lightning.pytorch") and pl.__name__ == NAME
    True
    >>> translate_class_path("pytorch_lightning.callbacks.ModelCheckpoint") == f"{NAME}.callbacks.ModelCheckpoint"
    True
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from types import ModuleType
from typing import TYPE_CHECKING, Any

__all__ = ["ENV", "NAME", "LightningPackageError", "check_one_package", "fabric", "import_submodule", "pl",
           "translate_class_path"]

#: the environment variable that chooses the package
ENV = "MMDET_LIGHTNING_PACKAGE"
#: each Lightning package and the Fabric package it builds on
_FABRIC = {"pytorch_lightning": "lightning_fabric", "lightning.pytorch": "lightning.fabric"}
_SPELLINGS = {"pytorch_lightning": "pytorch_lightning", "pytorch-lightning": "pytorch_lightning",
              "lightning": "lightning.pytorch", "lightning.pytorch": "lightning.pytorch"}


class LightningPackageError(ImportError):
    """mmdet_lightning and the code using it are on different Lightning packages, or the choice is unclear."""


def _installed(name: str) -> bool:
    return importlib.util.find_spec(name.split(".")[0]) is not None  # the top level only: imports nothing


def _choose() -> tuple[str, str, bool]:
    """The package to use, why (for messages), and whether the user chose it with the variable."""
    wanted = os.environ.get(ENV, "").strip()
    if wanted:
        if wanted not in _SPELLINGS:
            raise LightningPackageError(f"{ENV}={wanted!r} is not a Lightning package: set it to 'lightning' "
                                        "(lightning.pytorch) or 'pytorch_lightning'.")
        return _SPELLINGS[wanted], f"chosen by {ENV}={wanted}", True
    imported = [name for name in _FABRIC if name in sys.modules]
    if len(imported) == 2:
        raise LightningPackageError(
            "Both pytorch_lightning and lightning.pytorch are imported, so mmdet_lightning cannot tell which "
            f"Trainer you use. Set {ENV}=lightning (for `import lightning as L`) or {ENV}=pytorch_lightning.")
    if imported:
        return imported[0], f"chosen because your code imported {imported[0]} first", False
    for name in _FABRIC:
        if _installed(name):
            return name, "chosen by default", False
    raise LightningPackageError("Neither pytorch_lightning nor lightning is installed: "
                                "`pip install pytorch-lightning` (or `pip install lightning`).")


NAME, _REASON, _CHOSEN_BY_ENV = _choose()
_OTHER = next(name for name in _FABRIC if name != NAME)
if TYPE_CHECKING:  # type checkers see one package's classes; both have the same API
    import lightning_fabric as fabric
    import pytorch_lightning as pl
else:
    pl: ModuleType = importlib.import_module(NAME)
    fabric: ModuleType = importlib.import_module(_FABRIC[NAME])


def import_submodule(name: str) -> Any:
    """``import_submodule("cli")``: the chosen package's submodule (for those its ``__init__`` leaves out)."""
    return importlib.import_module(f"{NAME}.{name}")


def translate_class_path(path: str) -> str:
    """A class path of either package, as a path into the chosen one; other paths unchanged.

    Example::
        >>> translate_class_path("mmdet_lightning.callbacks.MMDetWandbCallback")
        'mmdet_lightning.callbacks.MMDetWandbCallback'
    """
    for package in (_OTHER, _FABRIC[_OTHER]):
        if path == package or path.startswith(package + "."):
            target = NAME if package == _OTHER else _FABRIC[NAME]
            return target + path[len(package):]
    return path


def check_one_package(what: str) -> None:
    """Raise :class:`LightningPackageError` when the other Lightning package is imported too and no
    ``MMDET_LIGHTNING_PACKAGE`` says which one is meant (called by mmdet_lightning's constructors).

    Example::
        >>> check_one_package("MMDetModule")  # one package imported: nothing to say
    """
    if _OTHER not in sys.modules or _CHOSEN_BY_ENV:
        return
    raise LightningPackageError(
        f"{what} is a {NAME} class ({_REASON} when mmdet_lightning was imported), but {_OTHER} is imported "
        f"too: a {NAME} object given to a {_OTHER}.Trainer is refused or ignored. Use one package: import "
        f"{_OTHER.split('.')[0]} before mmdet_lightning, or set {ENV}={_OTHER.split('.')[0]} "
        f"(or {ENV}={NAME.split('.')[0]} to keep {NAME}).")
