"""Small helpers shared by the module and the callbacks."""

from __future__ import annotations

from typing import Any, Sequence


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
