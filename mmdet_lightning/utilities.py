"""Small helpers shared by the module and the callbacks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def first_dataset(dataloaders: Any) -> Any:
    """The dataset behind a dataloader, or behind the first of a sequence of them (None when there is none).

    Example::
        >>> from torch.utils.data import DataLoader
        >>> first_dataset([DataLoader([1, 2, 3])])
        [1, 2, 3]
    """
    if isinstance(dataloaders, Sequence) and not hasattr(dataloaders, "dataset"):
        dataloaders = dataloaders[0] if dataloaders else None
    return getattr(dataloaders, "dataset", None)


def gather_objects(obj: Any) -> list[Any]:
    """``obj`` from every process, in rank order (``[obj]`` when not distributed). Collective: call it on all ranks.

    Example::
        >>> gather_objects({"a": 1})
        [{'a': 1}]
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [obj]
    parts: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(parts, obj)
    return parts
