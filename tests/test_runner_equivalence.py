"""The same config, data and seed under mmengine's Runner and under pl.Trainer give the same run."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from mmengine.hooks import Hook

from mmdet_lightning import MMDetDataModule, MMDetModule
from mmdet_lightning.lightning_package import pl

MAX_EPOCHS = 5  # 24 images (some empty, filtered out), batches of 3: 7-8 iterations an epoch
WARMUP_ITERS = 10


Predictions = dict[int, dict[str, np.ndarray]]


def record_predictions(samples: Any, into: Predictions) -> None:
    """The ``pred_instances`` (``bboxes``, ``scores``, ``labels``) of validation ``samples`` by image id; other
    outputs (panoptic segments, a semi-supervised run's) are left out."""
    keys = ("bboxes", "scores", "labels")
    for sample in samples if isinstance(samples, (list, tuple)) else ():
        pred = sample.get("pred_instances") if hasattr(sample, "get") else None
        if pred is not None and all(key in pred for key in keys):
            into[int(sample.img_id)] = {key: pred[key].detach().cpu().numpy() for key in keys}


def assert_same_predictions(ours: Predictions, theirs: Predictions, min_boxes: int, score_rtol: float = 1e-3,
                            box_tol: float = 1e-2) -> None:
    """The same images, and on each the same number of boxes with the same labels, scores (relatively within
    ``score_rtol``: an untrained model's scores can be 1e-20) and boxes (within ``box_tol`` pixels), in the
    same (score) order; at least ``min_boxes`` boxes in all, so that there is something to compare."""
    assert sorted(ours) == sorted(theirs) and theirs
    assert sum(len(p["scores"]) for p in theirs.values()) >= min_boxes
    for img_id, expected in theirs.items():
        got = ours[img_id]
        assert len(got["scores"]) == len(expected["scores"]), f"image {img_id}: number of boxes"
        np.testing.assert_array_equal(got["labels"], expected["labels"], err_msg=f"image {img_id}: labels")
        np.testing.assert_allclose(got["scores"], expected["scores"], rtol=score_rtol, atol=0,
                                   err_msg=f"image {img_id}: scores")
        np.testing.assert_allclose(got["bboxes"], expected["bboxes"], rtol=0, atol=box_tol,
                                   err_msg=f"image {img_id}: boxes")


class RunnerRecorder(Hook):
    """Learning rate before, and losses after, every iteration of mmengine's runner, and the predictions of its
    latest validation. The learning rates are the optimizer's own groups: ``OptimWrapper.param_groups`` appends
    its ``base_param_settings`` (the defaults) when there are several groups (``paramwise_cfg``)."""

    def __init__(self) -> None:
        self.lrs: list[list[float]] = []
        self.losses: list[dict[str, float]] = []
        self.predictions: Predictions = {}

    def before_train_iter(self, runner: Any, batch_idx: int, data_batch: Any = None) -> None:
        self.lrs.append([g["lr"] for g in runner.optim_wrapper.optimizer.param_groups])

    def after_train_iter(self, runner: Any, batch_idx: int, data_batch: Any = None, outputs: Any = None) -> None:
        self.losses.append({k: float(v.detach()) for k, v in outputs.items()})

    def after_val_iter(self, runner: Any, batch_idx: int, data_batch: Any = None, outputs: Any = None) -> None:
        record_predictions(outputs, self.predictions)


class TrainerRecorder(pl.Callback):
    """The same records under Lightning."""

    def __init__(self) -> None:
        self.lrs: list[list[float]] = []
        self.losses: list[dict[str, float]] = []
        self.predictions: Predictions = {}

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.lrs.append([g["lr"] for g in trainer.optimizers[0].param_groups])

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.losses.append({k: float(v) for k, v in outputs["log_vars"].items()})

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        record_predictions(outputs, self.predictions)


def fit_as_runner(cfg: Any, tmp_path: Any, max_epochs: int) -> tuple[MMDetModule, TrainerRecorder, float]:
    """``cfg`` under pl.Trainer as the Runner trains it (same seed, validation at the end only): the module, its
    records and the final ``coco/bbox_mAP``."""
    pl.seed_everything(cfg.randomness.seed)
    module = MMDetModule.from_config(cfg)
    recorder = TrainerRecorder()
    trainer = pl.Trainer(
        max_epochs=max_epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, num_sanity_val_steps=0, check_val_every_n_epoch=max_epochs,
        callbacks=[recorder], default_root_dir=str(tmp_path / "lightning"),
    )
    trainer.fit(module, datamodule=MMDetDataModule.from_config(cfg))
    return module, recorder, float(trainer.callback_metrics["coco/bbox_mAP"])


def _config(shapes_config: Any, tmp_path: Any, load_from: Any) -> Any:
    cfg = shapes_config("shapes_faster_rcnn.py", max_epochs=MAX_EPOCHS, batch_size=3)
    cfg.load_from = str(load_from)  # a model that detects, so that the mAP comparison means something
    cfg.train_cfg.val_interval = MAX_EPOCHS
    cfg.param_scheduler = [
        dict(type="LinearLR", start_factor=0.01, by_epoch=False, begin=0, end=WARMUP_ITERS),
        dict(type="MultiStepLR", by_epoch=True, begin=0, end=MAX_EPOCHS, milestones=[2, 4], gamma=0.1),
    ]
    cfg.optim_wrapper.optimizer.lr = 0.01
    cfg.work_dir = str(tmp_path / "runner")
    cfg.default_hooks.checkpoint = dict(type="CheckpointHook", interval=-1)
    cfg.default_hooks.visualization = dict(type="DetVisualizationHook", draw=False)
    return cfg


@pytest.mark.slow
@pytest.mark.both_packages
def test_trainer_matches_mmengine_runner(shapes_config: Any, tmp_path: Any, trained_checkpoint: Any) -> None:
    from mmengine.runner import Runner

    cfg = _config(shapes_config, tmp_path, trained_checkpoint)
    runner = Runner.from_cfg(cfg.copy())
    runner_rec = RunnerRecorder()
    runner.register_hook(runner_rec, priority="VERY_LOW")
    runner.train()
    runner_map = runner.message_hub.get_scalar("val/coco/bbox_mAP").current()
    runner_state = {k: v.detach().clone() for k, v in runner.model.state_dict().items()}

    module, trainer_rec, trainer_map = fit_as_runner(cfg, tmp_path, MAX_EPOCHS)

    iters = len(runner_rec.lrs)
    assert iters >= 30 and iters // MAX_EPOCHS < WARMUP_ITERS, "the run must cross warm-up and epoch boundaries"
    assert len(trainer_rec.lrs) == iters
    assert trainer_rec.lrs == runner_rec.lrs  # exactly equal, every iteration
    lrs = [lr[0] for lr in runner_rec.lrs]
    assert lrs[0] < lrs[WARMUP_ITERS] and lrs[-1] < lrs[WARMUP_ITERS]  # warm-up and steps happened

    assert [sorted(d) for d in trainer_rec.losses] == [sorted(d) for d in runner_rec.losses]
    for step, (ours, theirs) in enumerate(zip(trainer_rec.losses, runner_rec.losses, strict=True)):
        for key in theirs:
            assert ours[key] == pytest.approx(theirs[key], rel=1e-4, abs=1e-6), f"iteration {step}: {key}"

    ours_state = module.model.state_dict()
    for key, value in runner_state.items():
        if value.is_floating_point():
            torch.testing.assert_close(ours_state[key], value, rtol=1e-3, atol=1e-5,
                                       msg=lambda m, key=key: f"{key}: {m}")
    assert runner_map > 0.05
    assert abs(trainer_map - runner_map) <= 1e-3
    assert np.isfinite(trainer_map)
