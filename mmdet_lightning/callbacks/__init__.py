"""Every Lightning callback of mmdet-lightning: the W&B ones (defined in :mod:`mmdet_lightning.wandb`,
re-exported here), mmdet's ``custom_hooks`` as callbacks, the prediction writer and the progress bar.

    custom_hooks.py       callbacks_from_config: a config's ``custom_hooks`` -> the callbacks below
    ema.py                ModelEMA (EMAHook)
    mean_teacher.py       MeanTeacher (MeanTeacherHook): semi-supervised detectors' teacher update
    pipeline_switch.py    PipelineSwitch (PipelineSwitchHook), YOLOXModeSwitch (YOLOXModeSwitchHook)
    sync_norm.py          SyncNorm (SyncNormHook)
    prediction_writer.py  DetectionWriter: ``predict`` results as COCO JSON (and drawn images)
    progress_bar.py       MMDetProgressBar / MMDetRichProgressBar: Lightning's bars, throttled

and :class:`PreemptionHandler` (defined in :mod:`mmdet_lightning.engine.preemption`; ``MMDetModule`` adds one to
every fit, pass your own to set its options).

Example::
    >>> from mmdet_lightning.callbacks import callbacks_from_config
    >>> [type(cb).__name__ for cb in callbacks_from_config({"custom_hooks": [dict(type="SyncNormHook")]})]
    ['SyncNorm']
"""

from ..engine.preemption import PreemptionHandler
from ..wandb import (
    MMDetWandbCallback,
    WandbCheckpointArtifacts,
    WandbDetectionTables,
    WandbEvalAnalytics,
    WandbIntervalMetrics,
    WandbOnnxArtifact,
    wandb_run_id,
)
from .custom_hooks import callbacks_from_config
from .ema import ModelEMA
from .mean_teacher import MeanTeacher
from .pipeline_switch import PipelineSwitch, YOLOXModeSwitch
from .prediction_writer import DetectionWriter
from .progress_bar import MMDetProgressBar, MMDetRichProgressBar
from .sync_norm import SyncNorm

__all__ = ["MMDetWandbCallback", "WandbIntervalMetrics", "WandbCheckpointArtifacts", "WandbDetectionTables",
           "WandbEvalAnalytics", "WandbOnnxArtifact", "DetectionWriter", "MMDetProgressBar", "MMDetRichProgressBar",
           "ModelEMA",
           "PipelineSwitch", "YOLOXModeSwitch", "SyncNorm", "MeanTeacher", "PreemptionHandler",
           "callbacks_from_config", "wandb_run_id"]
