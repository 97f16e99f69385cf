"""Private attributes of mmengine's optimizer wrappers, data preprocessors, schedulers and message buffers."""

from __future__ import annotations

from typing import Any

import torch

from ._core import private_attr, private_method, set_private_attr

__all__ = ["data_preprocessor_device", "data_preprocessor_set_device", "history_buffer_statistics_methods",
           "optim_wrapper_clip_grad", "optim_wrapper_inner_count", "param_scheduler_base",
           "set_optim_wrapper_inner_count"]

_PACKAGE = "mmengine"


def optim_wrapper_inner_count(wrapper: Any) -> int:
    """Iterations an ``OptimWrapper`` has counted (``_inner_count``; it decides gradient accumulation)."""
    return private_attr(wrapper, "_inner_count", _PACKAGE, int)


def set_optim_wrapper_inner_count(wrapper: Any, count: int) -> None:
    """Set an ``OptimWrapper``'s iteration count (``_inner_count``), as mmengine's ``update_params`` advances it
    and its ``load_state_dict`` does not restore it."""
    set_private_attr(wrapper, "_inner_count", int(count), _PACKAGE, int)


def optim_wrapper_clip_grad(wrapper: Any) -> None:
    """Clip the gradients as the wrapper's ``clip_grad`` config says (``OptimWrapper._clip_grad()``; call it
    only when the config has ``clip_grad``)."""
    private_method(wrapper, "_clip_grad", _PACKAGE)()


def data_preprocessor_device(preprocessor: Any) -> torch.device:
    """The device a ``BaseDataPreprocessor`` moves batches to (``_device``)."""
    return private_attr(preprocessor, "_device", _PACKAGE, torch.device)


def data_preprocessor_set_device(preprocessor: Any, device: torch.device) -> None:
    """Make a ``BaseDataPreprocessor`` move batches to ``device`` (``_device``, which only its own ``.to()`` /
    ``.cuda()`` update: not ``nn.Module._apply``, which Lightning's ``.to()`` runs)."""
    set_private_attr(preprocessor, "_device", torch.device(device), _PACKAGE, torch.device)


def param_scheduler_base() -> type:
    """The base class of mmengine's parameter schedulers (``mmengine.optim.scheduler.param_scheduler.
    _ParamScheduler``, private), for ``isinstance`` checks and annotations."""
    from mmengine.optim.scheduler import param_scheduler

    return private_attr(param_scheduler, "_ParamScheduler", _PACKAGE, type)


def history_buffer_statistics_methods() -> set[str]:
    """The statistics a ``HistoryBuffer`` registers (``HistoryBuffer._statistics_methods``), which its pickled
    state names."""
    from mmengine.logging import HistoryBuffer

    return set(private_attr(HistoryBuffer, "_statistics_methods", _PACKAGE, dict))
