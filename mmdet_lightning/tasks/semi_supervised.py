"""Semi-supervised detection: mmdet's ``SemiBaseDetector`` family (``SoftTeacher``), a teacher and a student
detector in one model, trained on ``MultiBranch`` batches of labeled and unlabeled images.

    losses                 the base task's: ``MultiBranchDataPreprocessor`` -> ``SemiBaseDetector.loss`` (supervised
                           losses ``sup_*`` on the labeled branch, pseudo-instance losses ``unsup_*`` on the
                           unlabeled ones) -> ``parse_losses``
    evaluation             with ``val_cfg=dict(type='TeacherStudentValLoop')`` every validation evaluates the teacher
                           and the student, logged as mmdet names them (``teacher/coco/bbox_mAP``,
                           ``student/coco/bbox_mAP``); a plain ``ValLoop`` and the test evaluate the model that
                           ``semi_test_cfg.predict_on`` names, under the plain names
    predictions            ``pred_instances`` (the ``predict_on`` model's), plus ``teacher_pred_instances`` and
                           ``student_pred_instances`` after a teacher-student validation (the W&B tables' columns)
    teacher update         :class:`mmdet_lightning.callbacks.MeanTeacher` (mmdet's ``MeanTeacherHook``)
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any, ClassVar

from .detection import DetectionTask, other_task

__all__ = ["SemiSupervisedTask", "TEACHER_STUDENT_LOOP", "is_semi_supervised"]

#: the val loop that evaluates the teacher and the student, by its registered name
TEACHER_STUDENT_LOOP = "TeacherStudentValLoop"
_NAME = "semi-supervised detection"


def is_semi_supervised(model_cfg: Mapping[str, Any]) -> bool:
    """Whether the config's ``model`` is one of mmdet's semi-supervised detectors: ``SemiBaseDetector``,
    ``SoftTeacher``, or any model with ``semi_train_cfg`` (which ``SemiBaseDetector`` and its subclasses need).

    Example::
        >>> is_semi_supervised({"type": "SoftTeacher"}), is_semi_supervised({"type": "FasterRCNN"})
        (True, False)
    """
    return other_task(model_cfg) == _NAME


def _branches(pipeline: Any) -> set[str]:
    """The branches the ``MultiBranch`` steps of a pipeline fill (their keyword arguments but ``branch_field``)."""
    return {key for step in pipeline if str(step.get("type", "")).split(".")[-1] == "MultiBranch"
            for key in step if key not in ("type", "branch_field")}


class SemiSupervisedTask(DetectionTask):
    """Semi-supervised detection (mmdet's ``SemiBaseDetector`` family): detection's predictions, class checks
    and metrics, with the teacher and the student evaluated as ``TeacherStudentValLoop`` evaluates them.

    Example::
        >>> from mmdet_lightning.tasks import task_for_model
        >>> task = task_for_model({"type": "SoftTeacher"})
        >>> task.name
        'semi-supervised detection'
        >>> task.evaluated_models({"val_cfg": {"type": "TeacherStudentValLoop"}}, "val")
        ('teacher', 'student')
        >>> task.evaluated_models({"val_cfg": {"type": "TeacherStudentValLoop"}}, "test")
        ('',)
    """

    name: ClassVar[str] = _NAME
    description: ClassVar[str] = _NAME

    @classmethod
    def handles(cls, model_cfg: Mapping[str, Any]) -> bool:
        return is_semi_supervised(model_cfg)

    def check_train_data(self, loader_cfg: Mapping[str, Any]) -> None:
        """The labeled and the unlabeled source that ``SemiBaseDetector.loss`` needs in every batch: datasets whose
        pipelines end in ``MultiBranch`` with a ``sup`` branch and with ``unsup_teacher`` / ``unsup_student``
        branches, sampled together by mmdet's ``GroupMultiSourceSampler`` (or ``MultiSourceSampler``).

        Example::
            >>> SemiSupervisedTask().check_train_data(dict(sampler=dict(type="DefaultSampler"), dataset=dict(
            ...     type="CocoDataset", pipeline=[dict(type="MultiBranch", sup=dict(type="PackDetInputs"))])))
            Traceback (most recent call last):
            ...
            ValueError: The semi-supervised config's train_dataloader has no unlabeled source ...
        """
        from ..config import leaf_dataset_cfgs

        datasets = leaf_dataset_cfgs(loader_cfg.get("dataset") or {})
        branches = [_branches(dataset.get("pipeline") or []) for dataset in datasets]
        missing = [name for name, needed in (("labeled", {"sup"}), ("unlabeled", {"unsup_teacher", "unsup_student"}))
                   if not any(needed <= found for found in branches)]
        sampler = str((loader_cfg.get("sampler") or {}).get("type", "")).split(".")[-1]
        if not missing and sampler in ("GroupMultiSourceSampler", "MultiSourceSampler"):
            return
        found = ", ".join(f"dataset {i}: {sorted(b) or 'no MultiBranch'}" for i, b in enumerate(branches))
        what = (f"has no {' and no '.join(missing)} source" if missing else
                f"samples with `{sampler or 'DefaultSampler'}`, which does not put both sources in every batch")
        raise ValueError(
            f"The semi-supervised config's train_dataloader {what} ({found}); SemiBaseDetector.loss needs "
            "labeled images (MultiBranch branch `sup`) and unlabeled ones (branches `unsup_teacher` and "
            "`unsup_student`) in every batch.\nHint: make train_dataloader.dataset a ConcatDataset of a labeled and "
            "an unlabeled dataset (images without annotations, e.g. `python -m mmdet_lightning.synthetic "
            "--num-unlabeled N`, pipeline LoadEmptyAnnotations + MultiBranch(unsup_teacher=..., unsup_student=...)), "
            "sampled by dict(type='GroupMultiSourceSampler', batch_size=..., source_ratio=[1, 4]), as "
            "configs/mmdet/shapes_soft_teacher.py and mmdet's configs/_base_/datasets/semi_coco_detection.py do."
        )

    def checkpoint_state(self, state: dict[str, Any]) -> dict[str, Any]:
        """A plain detector's checkpoint (no ``teacher`` / ``student`` key) loads into both, as
        ``SemiBaseDetector._load_from_state_dict`` does under mmengine's runner.

        Example::
            >>> sorted(SemiSupervisedTask().checkpoint_state({"backbone.w": 1}))
            ['student.backbone.w', 'teacher.backbone.w']
        """
        if any("student" in key or "teacher" in key for key in state):
            return state
        return {f"{half}.{key}": value for half in ("teacher", "student") for key, value in state.items()}

    # ------------------------------------------------------------------ evaluation
    def evaluated_models(self, cfg: Mapping[str, Any], stage: str) -> tuple[str, ...]:
        """``("teacher", "student")`` for a validation with mmdet's ``TeacherStudentValLoop``; ``("",)`` (the
        ``predict_on`` model, unprefixed) otherwise, as mmdet's ``ValLoop`` / ``TestLoop``."""
        loop = str((cfg.get(f"{stage}_cfg") or {}).get("type", ""))
        return ("teacher", "student") if loop.split(".")[-1] == TEACHER_STUDENT_LOOP else ("",)

    def eval_step(self, model: Any, batch: Mapping[str, Any], stage: str, name: str = "") -> list[Any]:
        """Predictions of the teacher or the student (``name``; ``""``: the ``predict_on`` model), as
        ``TeacherStudentValLoop`` makes them: ``semi_test_cfg.predict_on`` set for the step, then restored. Each
        model predicts into its own copy of the batch's data samples."""
        if not name:
            return super().eval_step(model, batch, stage, name)
        test_cfg = model.semi_test_cfg
        kept = test_cfg.get("predict_on", None)
        test_cfg["predict_on"] = name
        try:
            return super().eval_step(model, {**batch, "data_samples": copy.deepcopy(batch["data_samples"])}, stage)
        finally:
            test_cfg["predict_on"] = kept

    def step_outputs(self, model: Any, outputs: Mapping[str, list[Any]]) -> list[Any]:
        """The ``predict_on`` model's samples, each also holding every evaluated model's ``pred_instances`` as
        ``<name>_pred_instances``."""
        if tuple(outputs) == ("",):
            return outputs[""]
        primary = str(model.semi_test_cfg.get("predict_on", "teacher"))
        samples = outputs[primary if primary in outputs else next(iter(outputs))]
        for name, others in outputs.items():
            for sample, other in zip(samples, others, strict=True):
                sample.set_field(other.pred_instances, f"{name}_pred_instances")
        return samples

    def prediction_columns(self, sample: Any, score_thr: float) -> dict[str, Any]:
        """``teacher`` and ``student`` after a teacher-student validation, ``prediction`` otherwise."""
        from ..wandb.media import instances_from_prediction

        names = [name for name in ("teacher", "student") if hasattr(sample, f"{name}_pred_instances")]
        if not names:
            return super().prediction_columns(sample, score_thr)
        return {name: instances_from_prediction(
            SimpleNamespace(pred_instances=getattr(sample, f"{name}_pred_instances")), score_thr) for name in names}
