"""Attributes of a package imported on first use (PEP 562), so that importing the package stays cheap."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_attributes"]


def lazy_attributes(package: str, homes: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package`` that imports ``name`` from its module ``homes[name]`` (relative to
    ``package``) on first use and keeps it in the package's namespace.

    Example::
        >>> __getattr__ = lazy_attributes("json", {"dumps": ".decoder"})
        >>> __getattr__("nope")
        Traceback (most recent call last):
        ...
        AttributeError: module 'json' has no attribute 'nope'
    """

    def __getattr__(name: str) -> Any:
        if name in homes:
            value = getattr(importlib.import_module(homes[name], package), name)
            setattr(sys.modules[package], name, value)
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
