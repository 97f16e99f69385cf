"""Lightning callbacks: what mmdet 2.x's MMDetWandbHook gave W&B users, and mmdet's ``custom_hooks``."""

from ._wandb import wandb_run_id
from .checkpoint_artifacts import WandbCheckpointArtifacts
from .custom_hooks import callbacks_from_config
from .ema import ModelEMA
from .metrics import WandbIntervalMetrics
from .pipeline_switch import PipelineSwitch, YOLOXModeSwitch
from .prediction_writer import DetectionWriter
from .sync_norm import SyncNorm
from .tables import WandbDetectionTables
from .wandb_callback import MMDetWandbCallback

__all__ = ["MMDetWandbCallback", "WandbIntervalMetrics", "WandbCheckpointArtifacts", "WandbDetectionTables",
           "DetectionWriter", "ModelEMA", "PipelineSwitch", "YOLOXModeSwitch", "SyncNorm",
           "callbacks_from_config", "wandb_run_id"]
