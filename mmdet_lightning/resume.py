"""Exact resume of the training data: the batches of an interrupted epoch continue where they stopped.

mmengine's samplers are not stateful and Lightning, resuming a checkpoint written mid-epoch, would
iterate the epoch's data from its start again. :class:`ResumableBatchSampler` wraps the config's
batch sampler (``AspectRatioBatchSampler``, or the ``BatchSampler`` made from ``batch_size``): it
counts the batches handed out in the current epoch, and ``MMDetDataModule`` keeps that count, the
sampler's epoch and the global random generators' states in the Lightning checkpoint. On resume:

    checkpoint written mid-epoch (k batches done)   same epoch: the first k batches are drawn from the
                                                    batch sampler and dropped (indices only, no image
                                                    is read), then the random states are restored
    checkpoint written at the end of an epoch       next epoch: the random states are restored as they
                                                    were when the checkpoint was written

so that the rest of the run sees the same batches, the same random augmentations and the same random
draws of the model (RPN/RCNN samplers) as an uninterrupted run. Limits: with ``num_workers > 0``
the augmentations of the rest of an interrupted epoch are drawn afresh (the workers' generators
restart from their seeds; the batches are the same). Under DDP every process's random states are saved
(gathered when the checkpoint is written) and each process restores its own.

Example::
    >>> from torch.utils.data import BatchSampler, SequentialSampler
    >>> batches = ResumableBatchSampler(BatchSampler(SequentialSampler(range(6)), batch_size=2, drop_last=False))
    >>> iterator = iter(batches); next(iterator)
    [0, 1]
    >>> state = batches.state_dict(); state["batches_done"]
    1
    >>> resumed = ResumableBatchSampler(BatchSampler(SequentialSampler(range(6)), batch_size=2, drop_last=False))
    >>> resumed.load_state_dict(state); list(resumed)
    [[2, 3], [4, 5]]
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from ._compat.lightning import collect_rng_states, set_rng_states

__all__ = ["ResumableBatchSampler", "EndlessBatchSampler", "ResumableDataLoader", "with_resumable_batches",
           "message_hub_state", "load_message_hub_state"]


class ResumableBatchSampler:
    """A batch sampler that can continue an interrupted epoch; see the module docstring.

    Args:
        batch_sampler: the batch sampler to wrap; its ``sampler`` (the config's ``DefaultSampler``)
            stays reachable as ``self.sampler``, so Lightning's ``set_epoch`` calls reach it.
    """

    def __init__(self, batch_sampler: Any) -> None:
        self.batch_sampler = batch_sampler
        self.sampler = getattr(batch_sampler, "sampler", None)
        self.batch_size = getattr(batch_sampler, "batch_size", None)
        self.drop_last = getattr(batch_sampler, "drop_last", False)
        self.batches_done = 0
        self._resume: dict[str, Any] | None = None
        self._pass: Iterator[list[int]] | None = None

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[list[int]]:
        # a generator: this runs at the first batch, after Lightning has set the sampler's epoch
        resume, self._resume = self._resume, None
        skip = 0
        if resume is not None and not resume.get("epoch_done", False):
            if self.sampler is not None and hasattr(self.sampler, "set_epoch") and "epoch" in resume:
                self.sampler.set_epoch(resume["epoch"])
            skip = int(resume["batches_done"])
        self.batches_done = 0
        if self._pass is not None:
            # Lightning stops asking after len() batches, leaving the previous pass suspended at its last
            # `yield`: finish it as mmengine's loop does, or AspectRatioBatchSampler would start this epoch
            # with the last batch of the previous one still in its buckets (repeating and dropping images)
            for _ in self._pass:
                pass
        self._pass = iter(self.batch_sampler)
        for index, batch in enumerate(self._pass):
            if index < skip:
                continue
            if index == skip and resume is not None:
                _restore_rng(resume, new_epoch=skip == 0)
            self.batches_done = index + 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        """Epoch, batches handed out in it, and the global random states (taken now)."""
        state: dict[str, Any] = {"batches_done": self.batches_done, "rng": _plain(collect_rng_states())}
        if self.sampler is not None and hasattr(self.sampler, "epoch"):
            state["epoch"] = int(self.sampler.epoch)
        rank = _rank()
        state["rank"] = rank
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # every process's generators (Lightning dumps a checkpoint on every rank: collective, once a save)
            from .utilities import gather_objects

            state["rng_by_rank"] = gather_objects(state["rng"])
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` at the next iteration (``epoch_done``: start the next epoch)."""
        self._resume = dict(state)


def _rank() -> int:
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    return torch.distributed.get_rank() if distributed else 0


def _restore_rng(state: dict[str, Any], new_epoch: bool) -> None:
    rank = _rank()
    by_rank = state.get("rng_by_rank") or []
    if rank < len(by_rank):
        rng = dict(by_rank[rank])  # this process's own generators (checkpoints written under DDP)
    elif "rng" in state and state.get("rank", 0) == rank:
        rng = dict(state["rng"])
    else:
        return
    name, keys, pos, has_gauss, gauss = rng["numpy"]
    rng["numpy"] = (name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss)
    set_rng_states(rng)
    if new_epoch:
        # in the uninterrupted run, creating the new epoch's DataLoader iterator drew its base seed from
        # torch's generator after the checkpoint was written (torch.utils.data.dataloader._BaseDataLoaderIter)
        torch.empty((), dtype=torch.int64).random_()


class ResumableDataLoader(DataLoader):
    """A DataLoader over a :class:`ResumableBatchSampler`. Its ``state_dict`` makes Lightning see it as
    resumable (no warning on a mid-epoch resume); the position itself is saved and restored by
    ``MMDetDataModule``, whose state Lightning loads before the loader's iterator exists."""

    def state_dict(self) -> dict[str, Any]:
        return {"batches_done": getattr(self.batch_sampler, "batches_done", 0)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass  # see the class docstring


class EndlessBatchSampler(ResumableBatchSampler):
    """A :class:`ResumableBatchSampler` over an endless sampler (mmengine's ``InfiniteSampler``, mmdet's
    ``MultiSourceSampler`` / ``GroupMultiSourceSampler`` of semi-supervised configs), which report the dataset's
    length but never end: it has no length, so that Lightning runs one endless epoch, stopped by ``max_steps``,
    drawing from one pass of the sampler as mmengine's ``IterBasedTrainLoop`` does (Lightning epochs of the
    reported length would restart the sampler, repeating its first indices, and draw a new iterator's seed
    from torch's generator each time)."""

    def __len__(self) -> int:
        raise TypeError(f"{type(self.sampler).__name__} never ends: its batches have no length")


def is_endless_sampler(sampler: Any) -> bool:
    """Whether ``sampler`` yields indices without end (``InfiniteSampler``, ``MultiSourceSampler`` and subclasses).

    Example::
        >>> from mmengine.dataset import DefaultSampler, InfiniteSampler
        >>> is_endless_sampler(InfiniteSampler(range(4))), is_endless_sampler(DefaultSampler(range(4)))
        (True, False)
    """
    from mmdet.datasets.samplers import MultiSourceSampler
    from mmengine.dataset import InfiniteSampler

    return isinstance(sampler, (InfiniteSampler, MultiSourceSampler))


def with_resumable_batches(loader: DataLoader) -> DataLoader:
    """The same DataLoader, its batch sampler wrapped in a :class:`ResumableBatchSampler` (an
    :class:`EndlessBatchSampler` over an endless sampler)."""
    if isinstance(loader.batch_sampler, ResumableBatchSampler) or loader.batch_sampler is None:
        return loader
    endless = is_endless_sampler(getattr(loader.batch_sampler, "sampler", None))
    kwargs: dict[str, Any] = dict(
        num_workers=loader.num_workers, collate_fn=loader.collate_fn, pin_memory=loader.pin_memory,
        timeout=loader.timeout, worker_init_fn=loader.worker_init_fn, generator=loader.generator,
        multiprocessing_context=loader.multiprocessing_context, persistent_workers=loader.persistent_workers,
    )
    if loader.num_workers > 0:
        kwargs["prefetch_factor"] = loader.prefetch_factor
    batches = (EndlessBatchSampler if endless else ResumableBatchSampler)(loader.batch_sampler)
    return ResumableDataLoader(loader.dataset, batch_sampler=batches, **kwargs)


def _plain(value: Any) -> Any:
    """``value`` with NumPy arrays and scalars as lists and numbers: Lightning loads checkpoints with
    ``torch.load(weights_only=True)``, which accepts tensors and Python containers only."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value) if isinstance(value, list) else tuple(_plain(v) for v in value)
    return value


def message_hub_state(hub: Any) -> dict[str, Any]:
    """mmengine ``MessageHub.state_dict()`` in plain types (its ``HistoryBuffer`` objects as lists)."""
    state = hub.state_dict()
    scalars = {}
    for key, buffer in state["log_scalars"].items():
        values, counts = buffer.data
        scalars[key] = {"values": _plain(values), "counts": _plain(counts), "max_length": buffer.max_length}
    info = {k: v for k, v in _plain(dict(state["runtime_info"])).items() if _is_plain(v)}
    return {"log_scalars": scalars, "runtime_info": info, "resumed_keys": dict(state["resumed_keys"])}


def load_message_hub_state(hub: Any, state: dict[str, Any]) -> None:
    """The inverse of :func:`message_hub_state`."""
    from mmengine.logging import HistoryBuffer

    scalars = {k: HistoryBuffer(v["values"], v["counts"], v["max_length"]) for k, v in state["log_scalars"].items()}
    hub.load_state_dict({"log_scalars": scalars, "runtime_info": dict(state["runtime_info"]),
                         "resumed_keys": dict(state["resumed_keys"])})


def _is_plain(value: Any) -> bool:
    if isinstance(value, (str, int, float, bool, type(None), torch.Tensor)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, (str, int)) and _is_plain(v) for k, v in value.items())
    return False
