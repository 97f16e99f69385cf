"""An mmdet config's ``custom_hooks`` (and per-model runner settings) as Lightning callbacks."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

from ..lightning_package import pl
from .ema import ModelEMA
from .mean_teacher import MeanTeacher
from .pipeline_switch import PipelineSwitch, YOLOXModeSwitch
from .sync_norm import SyncNorm

rank_zero_info, rank_zero_warn = pl.utilities.rank_zero_info, pl.utilities.rank_zero_warn

__all__ = ["callbacks_from_config", "HOOK_CALLBACKS", "COVERED_HOOKS"]

#: mmdet / mmengine hook type -> the callback that does the same under Lightning
HOOK_CALLBACKS: dict[str, Callable[..., pl.Callback]] = {
    "EMAHook": ModelEMA,
    "PipelineSwitchHook": PipelineSwitch,
    "YOLOXModeSwitchHook": YOLOXModeSwitch,
    "SyncNormHook": SyncNorm,
    "MeanTeacherHook": MeanTeacher,
}
#: hook types whose job is already done without a callback, and by what
COVERED_HOOKS: dict[str, str] = {
    "CheckInvalidLossHook": "MMDetModule's finite-loss check before each optimizer step "
                            "(MMDetModule(invalid_loss='raise'|'skip'))",
    "NumClassCheckHook": "MMDetModule's class-count check (heads vs dataset classes) at the start of each stage",
    "SyncBuffersHook": "MMDetModule validating and saving rank 0's buffers (the hook averaged them over "
                       "processes after each epoch; add mmdet_lightning.callbacks.SyncNorm to average the norm "
                       "layers' statistics)",
}


def callbacks_from_config(cfg: Mapping[str, Any]) -> list[pl.Callback]:
    """Callbacks that do under ``pl.Trainer`` what the config's ``custom_hooks`` do under mmengine's runner,
    in the hooks' priority order (the config's ``find_unused_parameters`` is read by ``MMDetModule.setup``).
    Hooks covered by the module itself are named in an info line; a hook
    type with no Lightning counterpart is a warning naming it (its effect is missing).

    Example::
        >>> callbacks = callbacks_from_config(dict(custom_hooks=[
        ...     dict(type="EMAHook", ema_type="ExpMomentumEMA", momentum=0.0002, priority=49),
        ...     dict(type="NumClassCheckHook")]))
        >>> [type(c).__name__ for c in callbacks]
        ['ModelEMA']
    """
    from mmengine.runner.priority import get_priority

    found: list[tuple[int, pl.Callback]] = []
    unknown: list[str] = []
    for hook in cfg.get("custom_hooks") or []:
        hook = copy.deepcopy(dict(hook))
        hook_type = str(hook.pop("type", "")).split(".")[-1]
        priority = get_priority(hook.pop("priority", "NORMAL"))
        if hook_type in HOOK_CALLBACKS:
            found.append((priority, HOOK_CALLBACKS[hook_type](**hook)))
        elif hook_type in COVERED_HOOKS:
            rank_zero_info(f"custom_hooks: `{hook_type}` is covered by {COVERED_HOOKS[hook_type]}.")
        else:
            unknown.append(hook_type)
    if unknown:
        rank_zero_warn(
            f"custom_hooks: {', '.join(f'`{t}`' for t in unknown)} {'has' if len(unknown) == 1 else 'have'} no "
            f"Lightning counterpart and will not run. Known hooks: {sorted([*HOOK_CALLBACKS, *COVERED_HOOKS])}.\n"
            "Hint: write a pl.Callback that does the same and pass it to the Trainer."
        )
    return [callback for _, callback in sorted(found, key=lambda item: item[0])]
