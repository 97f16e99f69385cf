"""Private functions of NumPy's pickle format."""

from __future__ import annotations

import importlib
from typing import Any

from ._core import CompatError, installed_version

__all__ = ["pickle_globals"]

#: where NumPy 1.x and 2.x pickles say arrays and scalars are rebuilt from
_MULTIARRAY = ("numpy.core.multiarray", "numpy._core.multiarray")


def pickle_globals() -> list[tuple[Any, str]]:
    """``(function, "<module>.<name>")`` for the functions NumPy's pickles call to rebuild arrays and scalars
    (``multiarray.scalar`` and the private ``multiarray._reconstruct``), under every module path NumPy 1.x / 2.x
    write. A path that this NumPy lacks is skipped (1.x has no ``numpy._core``); none at all is an error."""
    import warnings

    found: list[tuple[Any, str]] = []
    for module in _MULTIARRAY:
        try:
            with warnings.catch_warnings():  # NumPy 2 warns that numpy.core is deprecated: we only look it up
                warnings.simplefilter("ignore", DeprecationWarning)
                multiarray = importlib.import_module(module)
        except ImportError:
            continue
        if hasattr(multiarray, "scalar") and hasattr(multiarray, "_reconstruct"):
            found += [(multiarray.scalar, f"{module}.scalar"), (multiarray._reconstruct, f"{module}._reconstruct")]
    if not found:
        raise CompatError(f"mmdet_lightning allows NumPy's pickled arrays through `multiarray._reconstruct` of "
                          f"numpy {installed_version('numpy')}, but none of {', '.join(_MULTIARRAY)} has it.")
    return found
