"""Packages that some mmdet configs need beyond mmdet's own requirements, checked when the config is loaded.

mmdet imports them lazily and fails where they are first used: an augmentation in the first batch, a head's
loss, the data preprocessor of the first step. :func:`check_optional_packages` looks at the config instead
(the ``type`` of every dict in it, and ``custom_imports``) and names the package and the extra that installs
it before anything is built:

    ==========================  =====================  ===============================================
    config                      needs                  families
    ==========================  =====================  ===============================================
    ``BoxInstDataPreprocessor``  scikit-image           boxinst
    ``PAAHead``, ``LADHead``     scikit-learn           paa, lad
    ``Albu``                     albumentations         albu_example
    ``InstaBoost``               instaboostfast         instaboost
    ``custom_imports`` of        mmpretrain             convnext, timm_example
    ``mmpretrain.*``
    ==========================  =====================  ===============================================

``pip install "mmdet-lightning[zoo]"`` installs scikit-image, scikit-learn and albumentations;
``[instaboost]`` installs instaboostfast (a source distribution, built with a C compiler). mmpretrain is in
no extra: ``mmpretrain.models`` imports torchvision, which must be the build made for the installed torch (a
mismatched one fails to import: ``operator torchvision::nms does not exist``), so it is the user's to install.

Example::
    >>> check_optional_packages({"model": {"type": "RetinaNet"}})  # nothing beyond mmdet's requirements
    >>> [p.pip for _, p in missing_packages({"model": {"type": "X", "head": {"type": "NoSuchHead"}}})]
    []
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["OptionalPackage", "check_optional_packages", "missing_packages"]


@dataclass(frozen=True)
class OptionalPackage:
    """A package some configs need: its import name, its pip name and the extra of this package that installs it.

    Example::
        >>> OptionalPackage("sklearn", "scikit-learn").install_hint
        'pip install "mmdet-lightning[zoo]" (or pip install scikit-learn)'
    """

    module: str
    pip: str
    extra: str | None = "zoo"
    #: what else the package needs that no extra of ours can install
    note: str = ""

    @property
    def install_hint(self) -> str:
        if self.extra is None:
            return f"pip install {self.pip}" + (f" ({self.note})" if self.note else "")
        return f'pip install "mmdet-lightning[{self.extra}]" (or pip install {self.pip})'

    def installed(self) -> bool:
        return importlib.util.find_spec(self.module) is not None


_SKIMAGE = OptionalPackage("skimage", "scikit-image")
_SKLEARN = OptionalPackage("sklearn", "scikit-learn")

#: config ``type`` -> the package it needs
BY_TYPE: dict[str, OptionalPackage] = {
    "BoxInstDataPreprocessor": _SKIMAGE,
    "PAAHead": _SKLEARN,
    "LADHead": _SKLEARN,
    "Albu": OptionalPackage("albumentations", "albumentations"),
    "InstaBoost": OptionalPackage("instaboostfast", "instaboostfast", extra="instaboost"),
}
#: top-level module of a ``custom_imports`` entry -> the package that provides it
BY_IMPORT: dict[str, OptionalPackage] = {"mmpretrain": OptionalPackage(
    "mmpretrain", "mmpretrain", extra=None, note="mmpretrain.models imports torchvision: install the torchvision "
    "built for your torch, see pytorch.org's version table")}


def _dicts(node: Any, where: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    if isinstance(node, Mapping):
        yield where, node
        for key, value in node.items():
            yield from _dicts(value, f"{where}.{key}" if where else str(key))
    elif isinstance(node, (list, tuple)):
        for index, value in enumerate(node):
            yield from _dicts(value, f"{where}[{index}]")


def _needs(cfg: Mapping[str, Any]) -> Iterator[tuple[str, OptionalPackage]]:
    """(where in the config, package) for everything in ``cfg`` that needs a package beyond mmdet's."""
    cfg = cfg.to_dict() if hasattr(cfg, "to_dict") else cfg  # an mmengine Config is not a Mapping
    imports = (cfg.get("custom_imports") or {}).get("imports") or []
    for name in [imports] if isinstance(imports, str) else imports:
        package = BY_IMPORT.get(str(name).split(".")[0])
        if package is not None:
            yield f"custom_imports ({name})", package
    for where, node in _dicts(cfg, ""):
        type_name = node.get("type")
        type_name = type_name if isinstance(type_name, str) else getattr(type_name, "__name__", "")
        if type_name in BY_TYPE:
            yield f"`{type_name}` ({where})", BY_TYPE[type_name]


def missing_packages(cfg: Mapping[str, Any]) -> list[tuple[str, OptionalPackage]]:
    """(where in the config, package) for each package the config needs that is not installed."""
    return [(where, package) for where, package in _needs(cfg) if not package.installed()]


def check_optional_packages(cfg: Mapping[str, Any], source: str = "the config") -> None:
    """Raise ``ModuleNotFoundError`` naming every package ``cfg`` needs that is not installed, where the config
    asks for it, and how to install it."""
    missing = missing_packages(cfg)
    if not missing:
        return
    lines = [f"  {where} needs {package.pip} (import {package.module}): {package.install_hint}"
             for where, package in missing]
    raise ModuleNotFoundError(
        f"{source} needs packages that are not installed:\n" + "\n".join(dict.fromkeys(lines))
        + "\nHint: install them, then run again; nothing has been built or written yet."
    )
