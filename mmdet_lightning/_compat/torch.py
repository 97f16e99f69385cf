"""Private attributes of torch's data loading."""

from __future__ import annotations

from typing import Any

from ._core import set_private_attr

__all__ = ["drop_dataloader_iterator"]


def drop_dataloader_iterator(loader: Any) -> None:
    """Make a ``DataLoader`` with persistent workers start new workers at its next ``iter()`` (drop its kept
    iterator, ``_iterator``): the workers hold a copy of the dataset made when they started."""
    set_private_attr(loader, "_iterator", None, "torch")
