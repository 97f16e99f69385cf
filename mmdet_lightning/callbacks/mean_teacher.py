"""mmdet's ``MeanTeacherHook`` as a Lightning callback: the teacher of a semi-supervised detector follows the
student by an exponential moving average, at the iterations mmengine's runner updates it."""

from __future__ import annotations

from typing import Any

import torch

from .._compat import lightning as lightning_compat
from ..lightning_package import pl

__all__ = ["MeanTeacher"]


class MeanTeacher(pl.Callback):
    """Updates ``teacher = (1 - momentum) * teacher + momentum * student`` as mmdet's ``MeanTeacherHook`` does
    (its own ``momentum_update``), for semi-supervised detectors (``SoftTeacher``, ``SemiBaseDetector``)::

        on_train_start        at iteration 0 (not on resume): the teacher becomes a copy of the student
                              (the hook's ``before_train``)
        on_train_batch_end    every ``interval`` iterations (``(iter + 1) % interval == 0``, mmengine's
                              ``runner.iter``): the moving average (the hook's ``after_train_iter``)

    The teacher is a submodule of the detector: checkpoints hold it, and ``TeacherStudentValLoop`` configs
    evaluate it beside the student (:class:`mmdet_lightning.tasks.SemiSupervisedTask`).

    Args:
        momentum: weight of the student in each update, in (0, 1).
        interval: update every ``interval`` iterations (>= 1).
        skip_buffer: average the parameters only (True, mmdet's default); False averages every floating
            tensor of the state dict (BatchNorm statistics included).

    Raises:
        ValueError: ``momentum`` outside (0, 1) or ``interval`` < 1 (at construction); the model has no
            ``teacher`` and ``student`` (at the start of training).

    Example::
        >>> MeanTeacher(momentum=0.001).interval
        1
        >>> MeanTeacher(momentum=1.5)
        Traceback (most recent call last):
        ...
        ValueError: MeanTeacher: momentum must be in (0, 1), got 1.5.
        Hint: mmdet's configs use 0.001 (the teacher moves a thousandth of the way to the student each update).
    """

    def __init__(self, momentum: float = 0.001, interval: int = 1, skip_buffer: bool = True) -> None:
        if not 0 < momentum < 1:
            raise ValueError(f"MeanTeacher: momentum must be in (0, 1), got {momentum}.\nHint: mmdet's configs use "
                             "0.001 (the teacher moves a thousandth of the way to the student each update).")
        if not isinstance(interval, int) or interval < 1:
            raise ValueError(f"MeanTeacher: interval must be an integer >= 1, got {interval!r}.\n"
                             "Hint: interval=1 updates the teacher after every iteration, as mmdet's configs do.")
        from mmdet.engine.hooks import MeanTeacherHook

        self.hook = MeanTeacherHook(momentum=momentum, interval=interval, skip_buffer=skip_buffer)

    @property
    def momentum(self) -> float:
        return float(self.hook.momentum)

    @property
    def interval(self) -> int:
        return int(self.hook.interval)

    @staticmethod
    def _detector(pl_module: pl.LightningModule) -> torch.nn.Module:
        model: Any = getattr(pl_module, "model", pl_module)
        if not (isinstance(getattr(model, "teacher", None), torch.nn.Module)
                and isinstance(getattr(model, "student", None), torch.nn.Module)):
            raise ValueError(
                f"MeanTeacher: the model `{type(model).__name__}` has no `teacher` and `student`.\n"
                "Hint: MeanTeacher (mmdet's MeanTeacherHook) is for semi-supervised detectors (SoftTeacher, "
                "SemiBaseDetector); remove it from the callbacks (or `custom_hooks`) of other models.")
        return model

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        model = self._detector(pl_module)
        if lightning_compat.fit_batches_completed(trainer) == 0:
            self.hook.momentum_update(model, 1)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        iteration = lightning_compat.fit_batches_completed(trainer)  # mmengine's runner.iter in after_train_iter
        if (iteration + 1) % self.interval == 0:
            self.hook.momentum_update(self._detector(pl_module), self.momentum)
