"""Everything W&B: what mmdet 2.x's ``MMDetWandbHook`` logged, as Lightning callbacks on ``WandbLogger``.

    logger.py               ResilientWandbLogger (offline without credentials or when W&B is unreachable)
    callback.py             MMDetWandbCallback = the three callbacks below, with the hook's arguments
    metrics.py              WandbIntervalMetrics: training scalars every N iterations
    checkpoint_artifacts.py WandbCheckpointArtifacts: ModelCheckpoint's files as `run_<id>_model` artifacts
    tables.py               WandbDetectionTables: `val_data` and `eval_data` tables
    analytics.py            WandbEvalAnalytics: per-class AP, PR curves, confusion matrix, run summary
    onnx_artifact.py        WandbOnnxArtifact: the trained model as ONNX (`run_<id>_onnx`), with onnxruntime's mAP
    media.py                pure converters: mmdet annotations / predictions -> W&B box and mask dicts
    records.py              reads an offline run's transaction log (`run-*.wandb`) back

Example::
    >>> from mmdet_lightning.wandb import MMDetWandbCallback
    >>> MMDetWandbCallback(interval=10).parts[0].interval
    10
"""

from ._common import wandb_run_id
from .analytics import WandbEvalAnalytics
from .callback import MMDetWandbCallback
from .checkpoint_artifacts import WandbCheckpointArtifacts
from .logger import ResilientWandbLogger, wandb_credentials
from .metrics import WandbIntervalMetrics
from .onnx_artifact import WandbOnnxArtifact
from .tables import WandbDetectionTables

__all__ = ["MMDetWandbCallback", "WandbIntervalMetrics", "WandbCheckpointArtifacts", "WandbDetectionTables",
           "WandbEvalAnalytics", "WandbOnnxArtifact",
           "ResilientWandbLogger", "wandb_credentials", "wandb_run_id"]
