"""Lightning callbacks that give W&B users what mmdet 2.x's MMDetWandbHook gave them."""

from ._wandb import wandb_run_id
from .checkpoint_artifacts import WandbCheckpointArtifacts
from .metrics import WandbIntervalMetrics
from .prediction_writer import DetectionWriter
from .tables import WandbDetectionTables
from .wandb_callback import MMDetWandbCallback

__all__ = ["MMDetWandbCallback", "WandbIntervalMetrics", "WandbCheckpointArtifacts", "WandbDetectionTables",
           "DetectionWriter", "wandb_run_id"]
