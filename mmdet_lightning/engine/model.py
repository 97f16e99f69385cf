"""The detector built from the config as mmengine's ``Runner`` builds it, and kept on its device."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch

from .._compat import mmengine as mmengine_compat
from ..config import init_mmdet_scope
from ..console import library_output

__all__ = ["build_detector", "follow_preprocessor_device"]


def build_detector(cfg: Mapping[str, Any]) -> Any:
    """The config's ``model`` (with a top-level ``data_preprocessor`` merged in, as ``Runner.__init__`` does),
    built in mmdet's registry scope, its weights initialised (``init_weights``; the report goes to mmdet.log).

    Raises:
        ValueError: a ``type`` of the model is not in mmdet's ``MODELS`` registry.
    """
    init_mmdet_scope()
    from mmdet.registry import MODELS
    from mmengine.logging import MessageHub

    MessageHub.get_instance("mmdet_lightning")
    model_cfg = copy.deepcopy(cfg["model"])
    if cfg.get("data_preprocessor") is not None:
        model_cfg.setdefault("data_preprocessor", copy.deepcopy(cfg["data_preprocessor"]))
    with library_output():  # init_weights reports every parameter: to mmdet.log, not the console
        try:
            model = MODELS.build(model_cfg)
        except KeyError as err:
            raise ValueError(
                f"Could not build the config's model `{model_cfg.get('type')}` from mmdet's `MODELS` registry "
                f"(scope 'mmdet'): {err}\nHint: check the `type` names in `model`; custom modules must be "
                "imported first (`custom_imports` in the config)."
            ) from err
        model.init_weights()
    return model


def follow_preprocessor_device(root: torch.nn.Module) -> None:
    """mmengine's data preprocessors keep their own ``_device``, updated by their ``.to()`` but not by the
    ``nn.Module._apply`` that Lightning's ``.to(device)`` runs on children: set it from their buffers (or the
    first parameter of ``root``)."""
    from mmengine.model import BaseDataPreprocessor

    for module in root.modules():
        if isinstance(module, BaseDataPreprocessor):
            tensor = next(iter(module.buffers()), None)
            tensor = tensor if tensor is not None else next(iter(root.parameters()), None)
            if tensor is not None:
                mmengine_compat.data_preprocessor_set_device(module, tensor.device)
