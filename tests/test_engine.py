"""The engine's parts on their own: optimizer and schedules, the invalid-loss check, strategy checks."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch

from mmdet_lightning.engine.invalid_loss import InvalidLossCheck
from mmdet_lightning.engine.optimization import (
    ScheduleStepper,
    build_optim_wrapper,
    build_param_schedulers,
    max_epochs_and_iters,
    plain_optim_wrapper_cfg,
)

AMP = dict(type="AmpOptimWrapper", loss_scale="dynamic", dtype="bfloat16",
           optimizer=dict(type="SGD", lr=0.1, momentum=0.9), clip_grad=dict(max_norm=10))


def _trainer(epoch_length: float, max_epochs: int | None, max_steps: int = -1) -> Any:
    return SimpleNamespace(num_training_batches=epoch_length, max_epochs=max_epochs, max_steps=max_steps)


@pytest.mark.parametrize("epoch_length, max_epochs, max_steps, expected", [
    (10, 3, -1, (3, 30)),
    (10, None, 25, (3, 25)),      # max_steps ends mid-epoch: the last epoch counts
    (10, 2, 25, (2, 20)),         # the earlier of the two ends
    (10, 5, 25, (3, 25)),
    (float("inf"), 4, -1, (4, 0)),
])
def test_run_length_as_mmengine_counts_it(epoch_length: float, max_epochs: int | None, max_steps: int,
                                          expected: tuple[int, int]) -> None:
    assert max_epochs_and_iters(_trainer(epoch_length, max_epochs, max_steps)) == expected


def test_run_without_an_end_is_an_error() -> None:
    with pytest.raises(ValueError, match="Set `max_epochs` or `max_steps`"):
        max_epochs_and_iters(_trainer(10, None))


def test_amp_optim_wrapper_becomes_plain_with_a_warning() -> None:
    with pytest.warns(UserWarning, match="`AmpOptimWrapper` is used as a plain `OptimWrapper`"):
        cfg = plain_optim_wrapper_cfg(AMP)
    assert cfg == dict(type="OptimWrapper", optimizer=AMP["optimizer"], clip_grad=AMP["clip_grad"])
    assert AMP["type"] == "AmpOptimWrapper"  # a copy


def test_model_zoo_drops_every_amp_only_key(shapes_root: Any) -> None:
    """Failed before the rewrite had one home: the model zoo's copy kept ``dtype``, which ``OptimWrapper`` refuses."""
    from mmengine.config import Config

    from mmdet_lightning.model_zoo import adapt_to_dataset, family_config
    from mmdet_lightning.synthetic import CLASSES

    cfg = Config.fromfile(str(family_config("retinanet")))
    cfg.optim_wrapper = AMP
    adapted = adapt_to_dataset(cfg, shapes_root, CLASSES)
    assert adapted.optim_wrapper.type == "OptimWrapper" and "dtype" not in adapted.optim_wrapper
    wrapper = build_optim_wrapper(torch.nn.Linear(2, 2), adapted)
    assert type(wrapper).__name__ == "OptimWrapper"


def test_missing_optim_wrapper_is_named() -> None:
    with pytest.raises(ValueError, match="has no `optim_wrapper`"):
        build_optim_wrapper(torch.nn.Linear(2, 2), {})


def test_schedules_step_as_param_scheduler_hook() -> None:
    """Iteration-based schedulers after every batch, epoch-based ones once per epoch, a pending batch end
    finished on restore."""
    model = torch.nn.Linear(2, 2)
    wrapper = build_optim_wrapper(model, dict(optim_wrapper=dict(optimizer=dict(type="SGD", lr=1.0))))
    cfg = dict(param_scheduler=[dict(type="LinearLR", start_factor=0.5, by_epoch=False, begin=0, end=4),
                                dict(type="MultiStepLR", by_epoch=True, milestones=[1], gamma=0.1)])
    stepper = ScheduleStepper(build_param_schedulers(cfg, wrapper, epoch_length=2, max_epochs=2, max_iters=4))
    lrs = []
    for batch in range(4):
        if batch % 2 == 0:
            stepper.begin_epoch()
        stepper.begin_batch(last_of_epoch=batch % 2 == 1)
        lrs.append(round(wrapper.optimizer.param_groups[0]["lr"], 6))
        stepper.end_batch(last_of_epoch=batch % 2 == 1)
        if batch % 2 == 1:
            stepper.end_epoch()  # the epoch end hook after the last batch: stepped already, nothing more
    # LinearLR: 0.5 -> 1.0 over its 4 iterations (mmengine interpolates over end - begin - 1 steps);
    # MultiStepLR: x0.1 once the first epoch (2 batches) ends
    assert lrs == [0.5, 0.666667, 0.083333, 0.1]
    stepper.begin_batch(last_of_epoch=True)
    state = stepper.state_dict()
    resumed = ScheduleStepper([])
    resumed.load_state_dict(state)
    assert resumed.epoch_stepped and resumed.batch_end_pending is None


def test_invalid_loss_check_raises_or_skips() -> None:
    check = InvalidLossCheck("raise")
    with pytest.raises(FloatingPointError, match=r"at iteration 3: loss=nan, loss_cls=1"):
        check.passed(check.start(torch.tensor(float("nan")), distributed=False),
                     {"loss": float("nan"), "loss_cls": 1.0}, "iteration 3")
    skip = InvalidLossCheck("skip")
    with pytest.warns(UserWarning, match="1 step\\(s\\) skipped so far"):
        assert not skip.passed(skip.start(torch.tensor(float("inf")), distributed=False), {"loss": 1.0}, "here")
    assert skip.skipped_steps == 1
    assert skip.passed(skip.start(torch.tensor(0.5), distributed=False), {"loss": 0.5}, "here")
