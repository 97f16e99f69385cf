"""Every Lightning callback of mmdet-lightning in one place: the W&B ones (:mod:`mmdet_lightning.wandb`),
mmdet's ``custom_hooks`` (:mod:`mmdet_lightning.hooks`), the prediction writer and the progress bar."""

from ..hooks import ModelEMA, PipelineSwitch, SyncNorm, YOLOXModeSwitch, callbacks_from_config
from ..wandb import (MMDetWandbCallback, WandbCheckpointArtifacts, WandbDetectionTables, WandbEvalAnalytics,
                     WandbIntervalMetrics, wandb_run_id)
from .prediction_writer import DetectionWriter
from .progress_bar import MMDetProgressBar, MMDetRichProgressBar

__all__ = ["MMDetWandbCallback", "WandbIntervalMetrics", "WandbCheckpointArtifacts", "WandbDetectionTables",
           "WandbEvalAnalytics", "DetectionWriter", "MMDetProgressBar", "MMDetRichProgressBar", "ModelEMA",
           "PipelineSwitch", "YOLOXModeSwitch", "SyncNorm",
           "callbacks_from_config", "wandb_run_id"]
