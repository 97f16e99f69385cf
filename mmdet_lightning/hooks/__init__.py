"""mmdet's ``custom_hooks`` as Lightning callbacks: EMA, pipeline switches, SyncNorm, and the translation.

Example::
    >>> from mmdet_lightning.hooks import callbacks_from_config
    >>> [type(cb).__name__ for cb in callbacks_from_config({"custom_hooks": [dict(type="SyncNormHook")]})]
    ['SyncNorm']
"""

from .ema import ModelEMA
from .from_config import callbacks_from_config
from .pipeline_switch import PipelineSwitch, YOLOXModeSwitch
from .sync_norm import SyncNorm

__all__ = ["ModelEMA", "PipelineSwitch", "YOLOXModeSwitch", "SyncNorm", "callbacks_from_config"]
