"""What differs from one image task to another, behind one small interface.

``MMDetModule``, the W&B callbacks and the prediction writer ask the module's :class:`Task` instead of
assuming mmdet's ``pred_instances``: how a batch becomes losses, what a prediction holds once it leaves the
model (float32 under mixed precision), which heads count classes, what an evaluation without detections
logs, and the instances a W&B table or the prediction writer shows. A new task (panoptic segmentation,
semi-supervised or grounding detection) is one module of :mod:`mmdet_lightning.tasks` with a subclass.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import torch

if TYPE_CHECKING:
    from mmengine.evaluator import Evaluator

    from ..wandb.media import Instances

__all__ = ["Task", "is_proposal_head"]


def is_proposal_head(name: str, type_name: str = "") -> bool:
    """Whether a head named ``name`` (config key or module path) of type ``type_name`` proposes class-agnostic
    regions (an RPN), so that its ``num_classes`` is not the dataset's class count. The one rule the class
    checks and the config rewriters share.

    Example::
        >>> is_proposal_head("rpn_head"), is_proposal_head("roi_head.bbox_head", "Shared2FCBBoxHead")
        (True, False)
        >>> is_proposal_head("model", "CascadeRPNHead")
        True
    """
    return "rpn" in name.lower() or "rpn" in type_name.lower()


class Task:
    """The behaviour of one image task; subclasses override what differs.

    Subclasses are registered with :func:`mmdet_lightning.tasks.register_task` and chosen from the config's
    ``model`` by :meth:`handles`.

    Example::
        >>> from mmdet_lightning.tasks import task_for_model
        >>> task_for_model({"type": "RetinaNet"}).name
        'detection'
    """

    #: short name, as error messages and the model zoo sweep show it
    name: ClassVar[str] = "task"
    #: what the task trains, as the refusal of an unsupported model lists it
    description: ClassVar[str] = "task"

    @classmethod
    def handles(cls, model_cfg: Mapping[str, Any]) -> bool:
        """Whether this task trains the model of ``model_cfg`` (the config's ``model``)."""
        return False

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def setup_model(self, model: torch.nn.Module) -> None:
        """Read what the task needs of the built model (``MMDetModule`` calls it once the detector is built)."""

    def check_config(self, cfg: Any) -> None:
        """Raise a clear error for what would fail inside mmdet once the model is built from ``cfg`` (called by
        ``MMDetModule`` before it builds the model; nothing to check by default)."""

    # ------------------------------------------------------------------ training
    def losses(self, model: Any, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The total loss and every logged term of one batch, as mmengine's ``BaseModel.train_step`` computes
        them before the optimizer: data preprocessor, ``mode="loss"``, ``parse_losses``."""
        data = model.data_preprocessor(batch, True)
        losses = model(**data, mode="loss")
        return model.parse_losses(losses)

    def check_train_data(self, loader_cfg: Mapping[str, Any]) -> None:
        """Raise ``ValueError`` with a hint when the config's ``train_dataloader`` cannot train this task (called by
        ``MMDetDataModule.setup("fit")``, before any data is loaded)."""

    def checkpoint_state(self, state: dict[str, Any]) -> dict[str, Any]:
        """A checkpoint's tensors, renamed for this task's models where they need it (``load_from``)."""
        return state

    # ------------------------------------------------------------------ evaluation steps
    def evaluated_models(self, cfg: Mapping[str, Any], stage: str) -> tuple[str, ...]:
        """The models one evaluation of ``stage`` (``"val"``, ``"test"``) runs, as the config's loop runs them: the
        prefix of each one's metrics (``""``: the model itself, metrics unprefixed)."""
        return ("",)

    def eval_step(self, model: Any, batch: Mapping[str, Any], stage: str, name: str = "") -> list[Any]:
        """Predictions of the evaluated model ``name`` for one batch (mmengine's ``val_step`` / ``test_step``)."""
        return list(model.val_step(batch) if stage == "val" else model.test_step(batch))

    def step_outputs(self, model: Any, outputs: Mapping[str, list[Any]]) -> list[Any]:
        """What a validation / test step returns to the callbacks, from each evaluated model's predictions."""
        return next(iter(outputs.values()))

    def prediction_columns(self, sample: Any, score_thr: float) -> dict[str, Instances | None]:
        """The prediction columns of a W&B table for one predicted sample, by column name."""
        return {"prediction": self.predicted_instances(sample, score_thr)}

    # ------------------------------------------------------------------ predictions
    def predictions_to_float32(self, samples: Any) -> Any:
        """Predictions made under bf16/fp16 autocast, with their floating fields in float32 (in place; returned)."""
        return samples

    def predicted_instances(self, sample: Any, score_thr: float) -> Instances | None:
        """What a W&B table or the prediction writer shows of one predicted sample (None: nothing to show)."""
        return None

    def ground_truth_instances(self, data_info: Mapping[str, Any], height: int, width: int,
                               with_masks: bool) -> Instances:
        """What a W&B table shows of one image's ground truth (the dataset's ``get_data_info``): its
        ``instances``, with masks when ``with_masks``."""
        from ..wandb.media import instances_from_data_info

        return instances_from_data_info(data_info, height, width, with_masks=with_masks)

    def artifact_metadata(self) -> dict[str, Any]:
        """What the W&B model artifacts' metadata adds for this task (a grounding model's training prompt)."""
        return {}

    def has_masks(self, sample: Any) -> bool:
        """Whether the predictions of ``sample`` carry masks (W&B tables then draw them)."""
        return False

    # ------------------------------------------------------------------ classes and evaluation
    def class_counts(self, model: torch.nn.Module) -> dict[str, int]:
        """The class count of every head that predicts dataset classes, by module name."""
        return {}

    def check_classes(self, model: torch.nn.Module, classes: Any, stage: str) -> None:
        """Raise ``ValueError`` naming the heads whose class count does not fit the dataset's ``classes``."""
        wrong = {name: n for name, n in self.class_counts(model).items() if n != len(classes)}
        if wrong:
            heads = ", ".join(f"{name}.num_classes={n}" for name, n in wrong.items())
            raise ValueError(
                f"The {stage} dataset has {len(classes)} classes {tuple(classes)}, but the model's heads predict "
                f"another count: {heads}.\nHint: set num_classes={len(classes)} in those heads of the config's "
                "`model`, or set `metainfo=dict(classes=...)` on the dataset to the model's classes."
            )

    def metrics_without_detections(self, evaluator: Evaluator) -> dict[str, float]:
        """What an evaluation logs when no image has a prediction (the metrics return nothing then)."""
        return {}

    @contextlib.contextmanager
    def recording_evaluation(self, evaluator: Evaluator) -> Iterator[dict[str, Any]]:
        """Around ``evaluator.evaluate``: what the task keeps of the evaluation beyond its scalars (for the W&B
        analytics), filled in by the end of the block (``MMDetModule.last_eval_details``). Nothing by default
        (detection's ``COCOeval`` objects are kept by :func:`~mmdet_lightning.evaluation.record_coco_evals`)."""
        yield {}

    def analytics_tables(self, details: Mapping[str, Any], prefix: str) -> dict[str, Any]:
        """W&B tables made from :meth:`recording_evaluation`'s ``details``, by key (``<prefix>/...``)."""
        return {}
