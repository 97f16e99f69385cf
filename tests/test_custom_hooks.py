"""mmdet's custom hooks as callbacks: the same averaged weights and the same switched batches as mmengine's Runner."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from mmengine.hooks import Hook

from mmdet_lightning import MMDetDataModule, MMDetModule
from mmdet_lightning.callbacks import ModelEMA, PipelineSwitch, SyncNorm, YOLOXModeSwitch, callbacks_from_config
from mmdet_lightning.lightning_package import pl

ModelCheckpoint = pl.callbacks.ModelCheckpoint

EPOCHS = 2
EMA_HOOK = dict(type="EMAHook", ema_type="ExpMomentumEMA", momentum=0.01, gamma=20, update_buffers=True,
                begin_iter=3, priority=49)


def _runner_config(shapes_config: Any, tmp_path: Path, name: str = "shapes_faster_rcnn.py") -> Any:
    cfg = shapes_config(name, max_epochs=EPOCHS, batch_size=3)
    cfg.train_cfg.val_interval = EPOCHS
    cfg.work_dir = str(tmp_path / "runner")
    cfg.default_hooks.checkpoint = dict(type="CheckpointHook", interval=-1)
    cfg.default_hooks.visualization = dict(type="DetVisualizationHook", draw=False)
    return cfg


def _trainer(tmp_path: Path, callbacks: list, **kwargs: Any) -> pl.Trainer:
    args = dict(max_epochs=EPOCHS, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                enable_progress_bar=False, num_sanity_val_steps=0, check_val_every_n_epoch=EPOCHS,
                default_root_dir=str(tmp_path / "lightning"), callbacks=callbacks)
    args.update(kwargs)
    return pl.Trainer(**args)


def _fit(cfg: Any, tmp_path: Path, extra: list | None = None, **kwargs: Any) -> tuple[pl.Trainer, MMDetModule]:
    pl.seed_everything(cfg.randomness.seed)
    module = MMDetModule.from_config(cfg)
    trainer = _trainer(tmp_path, [*callbacks_from_config(cfg), *(extra or [])], **kwargs)
    trainer.fit(module, datamodule=MMDetDataModule.from_config(cfg))
    return trainer, module


def _ema(trainer: pl.Trainer) -> ModelEMA:
    return next(cb for cb in trainer.callbacks if isinstance(cb, ModelEMA))


def _assert_states_close(ours: dict, theirs: dict) -> None:
    assert sorted(ours) == sorted(theirs)
    for key, value in theirs.items():
        if value.is_floating_point():
            torch.testing.assert_close(ours[key], value, rtol=1e-3, atol=1e-5, msg=lambda m, key=key: f"{key}: {m}")
        else:
            assert torch.equal(ours[key], value), key


# ---------------------------------------------------------------------------------------------- mapping
def test_callbacks_from_config_maps_hooks_in_priority_order() -> None:
    cfg = dict(find_unused_parameters=True, custom_hooks=[
        dict(type="EMAHook", ema_type="ExpMomentumEMA", momentum=0.0001, update_buffers=True, priority=49),
        dict(type="YOLOXModeSwitchHook", num_last_epochs=15, priority=48),
        dict(type="SyncNormHook", priority=48),
        dict(type="PipelineSwitchHook", switch_epoch=280, switch_pipeline=[dict(type="LoadImageFromFile")]),
        dict(type="CheckInvalidLossHook", interval=50, priority="VERY_LOW"),
        dict(type="NumClassCheckHook"),
    ])
    callbacks = callbacks_from_config(cfg)
    assert [type(cb) for cb in callbacks] == [YOLOXModeSwitch, SyncNorm, ModelEMA, PipelineSwitch]
    ema = callbacks[2]
    assert ema.ema_cfg == dict(type="ExpMomentumEMA", momentum=0.0001, update_buffers=True)
    assert callbacks[0].num_last_epochs == 15 and callbacks[3].switch_epoch == 280


def test_unknown_hook_is_a_warning_naming_it() -> None:
    with pytest.warns(UserWarning, match="`MyOwnHook` has no Lightning counterpart"):
        assert callbacks_from_config(dict(custom_hooks=[dict(type="MyOwnHook", x=1)])) == []


def test_ema_rejects_both_begins() -> None:
    with pytest.raises(ValueError, match="`begin_iter` or `begin_epoch`, not both"):
        ModelEMA(begin_iter=3, begin_epoch=1)


# ---------------------------------------------------------------------------------------------- EMA
@pytest.mark.slow
def test_ema_matches_mmengine_runner(shapes_config: Any, tmp_path: Path, trained_checkpoint: Path) -> None:
    """Averaged weights, the mAP (of the averaged weights) and the checkpoint layout equal mmengine's."""
    from mmengine.runner import Runner

    cfg = _runner_config(shapes_config, tmp_path)
    cfg.load_from = str(trained_checkpoint)
    cfg.optim_wrapper.optimizer.lr = 0.01
    cfg.custom_hooks = [EMA_HOOK]
    runner = Runner.from_cfg(copy.deepcopy(cfg))
    runner.train()
    runner_ema = next(h for h in runner.hooks if type(h).__name__ == "EMAHook").ema_model
    runner_map = runner.message_hub.get_scalar("val/coco/bbox_mAP").current()
    runner.save_checkpoint(str(tmp_path), "runner.pth")
    runner_ckpt = torch.load(tmp_path / "runner.pth", map_location="cpu", weights_only=False)

    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="last")
    trainer, module = _fit(cfg, tmp_path, extra=[checkpoint], enable_checkpointing=True)
    ema = _ema(trainer)
    assert int(ema.ema_model.steps) == int(runner_ema.steps) > 0
    _assert_states_close(ema.ema_model.state_dict(), runner_ema.state_dict())
    _assert_states_close(module.model.state_dict(), runner.model.state_dict())  # trained weights back after val
    averaged = ema.ema_model.module.state_dict()
    trained = module.model.state_dict()
    moved = [k for k, v in averaged.items() if v.is_floating_point() and not torch.allclose(v, trained[k])]
    assert moved, "the average must differ from the trained weights, or the test shows nothing"
    # checkpoint: averaged weights as the model's state_dict, trained ones in ema_state_dict (mmengine's layout)
    ours = torch.load(tmp_path / "ckpt" / "last.ckpt", map_location="cpu", weights_only=False)
    for key, value in runner_ckpt["state_dict"].items():
        torch.testing.assert_close(ours["state_dict"][f"model.{key}"], value, rtol=1e-3, atol=1e-5)
    _assert_states_close(ours["ema_state_dict"], runner_ckpt["ema_state_dict"])

    # the saved (averaged) weights give the mAP logged during training
    pl.seed_everything(0)
    fresh = MMDetModule.from_config(cfg)
    fresh.model.load_state_dict({k[len("model."):]: v for k, v in ours["state_dict"].items()})
    metrics = _trainer(tmp_path, []).validate(fresh, datamodule=MMDetDataModule.from_config(cfg), verbose=False)
    assert float(trainer.callback_metrics["coco/bbox_mAP"]) == pytest.approx(runner_map, abs=1e-3)
    assert metrics[0]["coco/bbox_mAP"] == pytest.approx(runner_map, abs=1e-3)
    assert runner_map > 0.05  # a model that detects, so that the comparison means something


class StateAtStart(pl.Callback):
    """The trained and the averaged weights when training (re)starts."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self.model = copy.deepcopy(pl_module.model.state_dict())
        self.ema = copy.deepcopy(_ema(trainer).ema_model.state_dict())


@pytest.mark.slow
def test_ema_survives_resume(shapes_config: Any, tmp_path: Path) -> None:
    """Resuming from a checkpoint restores the trained weights and the average (its step count included),
    from the checkpoint's `state_dict` (averaged weights) and `ema_state_dict`."""
    cfg = _runner_config(shapes_config, tmp_path)
    cfg.custom_hooks = [EMA_HOOK]
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="epoch1", save_on_train_epoch_end=True)
    first, first_module = _fit(cfg, tmp_path / "first", extra=[checkpoint], enable_checkpointing=True, max_epochs=1)
    saved = torch.load(tmp_path / "ckpt" / "epoch1.ckpt", map_location="cpu", weights_only=False)
    averaged = _ema(first).ema_model.module.state_dict()
    for key, value in averaged.items():  # what is saved as the model's weights is the average
        torch.testing.assert_close(saved["state_dict"][f"model.{key}"], value)

    pl.seed_everything(cfg.randomness.seed)
    module = MMDetModule.from_config(cfg)
    at_start = StateAtStart()
    resumed = _trainer(tmp_path / "resumed", [*callbacks_from_config(cfg), at_start])
    resumed.fit(module, datamodule=MMDetDataModule.from_config(cfg), ckpt_path=str(tmp_path / "ckpt" / "epoch1.ckpt"))
    _assert_states_close(at_start.model, first_module.model.state_dict())
    _assert_states_close(at_start.ema, _ema(first).ema_model.state_dict())
    assert int(at_start.ema["steps"]) == first.num_training_batches - EMA_HOOK["begin_iter"] + 1
    assert int(_ema(resumed).ema_model.steps) == 2 * first.num_training_batches - EMA_HOOK["begin_iter"] + 1


# ---------------------------------------------------------------------------------------------- pipeline switch
class RunnerBatches(Hook):
    def __init__(self) -> None:
        self.batches: list[list[torch.Tensor]] = []

    def before_train_iter(self, runner: Any, batch_idx: int, data_batch: Any = None) -> None:
        self.batches.append([img.clone() for img in data_batch["inputs"]])


class TrainerBatches(pl.Callback):
    def __init__(self) -> None:
        self.batches: list[list[torch.Tensor]] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.batches.append([img.clone() for img in batch["inputs"]])


@pytest.mark.slow
def test_pipeline_switch_matches_mmengine_runner(shapes_config: Any, tmp_path: Path) -> None:
    """From the switch epoch on, the batches come from the new pipeline, equal to mmengine's runner's."""
    from mmengine.runner import Runner

    cfg = _runner_config(shapes_config, tmp_path)
    switched = copy.deepcopy(cfg.train_pipeline)
    switched[2] = dict(type="Resize", scale=(96, 96), keep_ratio=False)  # unmistakable: every image 96x96
    cfg.custom_hooks = [dict(type="PipelineSwitchHook", switch_epoch=1, switch_pipeline=switched)]
    runner = Runner.from_cfg(copy.deepcopy(cfg))
    runner_batches = RunnerBatches()
    runner.register_hook(runner_batches, priority="VERY_LOW")
    runner.train()

    ours = TrainerBatches()
    trainer, _ = _fit(cfg, tmp_path, extra=[ours])
    per_epoch = trainer.num_training_batches
    assert len(ours.batches) == len(runner_batches.batches) == EPOCHS * per_epoch
    for step, (mine, theirs) in enumerate(zip(ours.batches, runner_batches.batches, strict=True)):
        assert len(mine) == len(theirs)
        for a, b in zip(mine, theirs, strict=True):
            assert torch.equal(a, b), f"iteration {step}"
    assert all(img.shape[-2:] == (96, 96) for batch in ours.batches[per_epoch:] for img in batch)
    assert not any(img.shape[-2:] == (96, 96) for batch in ours.batches[:per_epoch] for img in batch)


@pytest.mark.slow
def test_yolox_mode_switch_matches_mmengine_runner(tmp_path: Path) -> None:
    """mmdet's YOLOX-s config (YOLOXModeSwitchHook, SyncNormHook, EMAHook with ExpMomentumEMA) on the synthetic
    data: the same Mosaic/MixUp batches, then the same plain ones after the switch, the L1 loss turned on,
    and the same averaged weights as mmengine's runner."""
    from mmengine.config import Config
    from mmengine.runner import Runner

    from mmdet_lightning.model_zoo import adapt_to_dataset, family_config
    from mmdet_lightning.synthetic import CLASSES, ShapesConfig, make_shapes_dataset

    root = make_shapes_dataset(tmp_path / "shapes", ShapesConfig(num_train=8, num_val=2, seed=0))
    cfg = adapt_to_dataset(Config.fromfile(str(family_config("yolox"))), root, CLASSES)
    cfg.train_cfg = dict(type="EpochBasedTrainLoop", max_epochs=EPOCHS, val_interval=EPOCHS + 1)
    cfg.custom_hooks[0].num_last_epochs = 0  # the switch comes at the second (last) epoch
    cfg.randomness = dict(seed=0)
    cfg.work_dir = str(tmp_path / "runner")
    cfg.default_hooks.checkpoint = dict(type="CheckpointHook", interval=-1)
    cfg.default_hooks.visualization = dict(type="DetVisualizationHook", draw=False)
    runner = Runner.from_cfg(copy.deepcopy(cfg))
    runner_batches = RunnerBatches()
    runner.register_hook(runner_batches, priority="VERY_LOW")
    runner.train()
    runner_ema = next(h for h in runner.hooks if type(h).__name__ == "EMAHook").ema_model

    ours = TrainerBatches()
    trainer, module = _fit(cfg, tmp_path, extra=[ours], check_val_every_n_epoch=EPOCHS + 1)
    assert [type(cb).__name__ for cb in trainer.callbacks[:3]] == ["YOLOXModeSwitch", "SyncNorm", "ModelEMA"]
    assert len(ours.batches) == len(runner_batches.batches) == EPOCHS * trainer.num_training_batches
    for step, (mine, theirs) in enumerate(zip(ours.batches, runner_batches.batches, strict=True)):
        for a, b in zip(mine, theirs, strict=True):
            assert torch.equal(a, b), f"iteration {step}"
    assert module.model.bbox_head.use_l1 and runner.model.bbox_head.use_l1
    assert trainer.train_dataloader.dataset._skip_type_keys == ("Mosaic", "RandomAffine", "MixUp")
    _assert_states_close(_ema(trainer).ema_model.state_dict(), runner_ema.state_dict())


def test_cli_adds_the_configs_custom_hooks_as_callbacks(tmp_path: Path) -> None:
    from mmdet_lightning.cli import MMDetLightningCLI

    config = tmp_path / "rtmdet_ema.py"
    config.write_text(f"_base_ = [{str(Path(__file__).parents[1] / 'configs/mmdet/shapes_rtmdet.py')!r}]\n"
                      f"custom_hooks = [{EMA_HOOK!r}]\n")
    cli = MMDetLightningCLI(args=["--model.config", str(config), "--trainer.logger", "false",
                                  "--trainer.default_root_dir", str(tmp_path)], run=False)
    emas = [cb for cb in cli.trainer.callbacks if isinstance(cb, ModelEMA)]
    assert len(emas) == 1 and emas[0].ema_cfg["type"] == "ExpMomentumEMA" and emas[0].begin_iter == 3
    names = [type(cb).__name__ for cb in cli.trainer.callbacks]
    assert names.index("ModelEMA") < names.index("ModelCheckpoint")
