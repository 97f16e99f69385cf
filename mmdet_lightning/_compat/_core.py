"""Checked access to a dependency's private attribute, with one phrasing for what went wrong."""

from __future__ import annotations

import importlib.metadata
from types import ModuleType
from typing import Any

__all__ = ["CompatError", "installed_version", "private_attr", "private_method", "set_private_attr"]

#: distributions whose version a message names, by the package name used in messages
_DISTRIBUTIONS = {"pytorch_lightning": ("pytorch-lightning",), "lightning.pytorch": ("lightning",),
                  "lightning_fabric": ("lightning-fabric", "lightning"), "lightning.fabric": ("lightning",)}
_MISSING = object()


class CompatError(RuntimeError):
    """A dependency no longer has a private attribute that mmdet_lightning relies on, or it has another type."""


def installed_version(package: str) -> str:
    """The installed version of ``package`` (as messages name it), or ``"not installed"``.

    Example::
        >>> installed_version("no-such-package-here")
        'not installed'
    """
    for distribution in _DISTRIBUTIONS.get(package, (package.split(".")[0].replace("_", "-"),)):
        try:
            return importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "not installed"


def _owner(obj: Any) -> str:
    return obj.__name__ if isinstance(obj, (type, ModuleType)) else type(obj).__name__


def _problem(obj: Any, name: str, package: str, what: str) -> CompatError:
    return CompatError(
        f"mmdet_lightning reads the private attribute `{_owner(obj)}.{name}` of {package} "
        f"{installed_version(package)}, but {what}.\nHint: install a {package} version that mmdet_lightning "
        "supports (see its pyproject.toml), or report this with the versions named here."
    )


def private_attr(obj: Any, name: str, package: str, expected: type | tuple[type, ...] | None = None) -> Any:
    """``obj.<name>``, a private attribute of ``package``; :class:`CompatError` when it is missing or not an
    instance of ``expected`` (None: any type)."""
    value = getattr(obj, name, _MISSING)
    if value is _MISSING:
        raise _problem(obj, name, package, "it is missing")
    if expected is not None and not isinstance(value, expected):
        names = " or ".join(t.__name__ for t in (expected if isinstance(expected, tuple) else (expected,)))
        raise _problem(obj, name, package, f"it is a {type(value).__name__}, not a {names}")
    return value


def private_method(obj: Any, name: str, package: str) -> Any:
    """The bound private method ``obj.<name>``; :class:`CompatError` when it is missing or not callable."""
    method = private_attr(obj, name, package)
    if not callable(method):
        raise _problem(obj, name, package, f"it is a {type(method).__name__}, not a method")
    return method


def set_private_attr(obj: Any, name: str, value: Any, package: str,
                     expected: type | tuple[type, ...] | None = None) -> None:
    """Set ``obj.<name>`` to ``value``, after checking (as :func:`private_attr`) that the attribute exists:
    setting a name the dependency no longer reads would silently do nothing."""
    private_attr(obj, name, package, expected)
    setattr(obj, name, value)
