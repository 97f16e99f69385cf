"""Semi-supervised detection (mmdet's SoftTeacher): the task, the labeled + unlabeled data, MeanTeacher, and the
teacher and student evaluated, all as mmengine's Runner does on the same config, data and seed."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from mmdet_lightning import MMDetDataModule, MMDetModule
from mmdet_lightning.callbacks import MeanTeacher, callbacks_from_config
from mmdet_lightning.lightning_package import pl
from mmdet_lightning.resume import EndlessBatchSampler
from mmdet_lightning.tasks import SemiSupervisedTask, task_for_model
from tests.test_runner_equivalence import RunnerRecorder, TrainerRecorder

MAX_ITERS = 8
WARMUP_ITERS = 4


def test_semi_supervised_models_go_to_their_task() -> None:
    assert isinstance(task_for_model({"type": "SoftTeacher"}), SemiSupervisedTask)
    assert isinstance(task_for_model({"type": "SemiBaseDetector"}), SemiSupervisedTask)
    assert isinstance(task_for_model({"type": "MySemiDetector", "semi_train_cfg": {}}), SemiSupervisedTask)
    with pytest.raises(ValueError, match=re.escape(
            "is a tracking model; mmdet-lightning trains object detection and instance segmentation, panoptic "
            "segmentation, semi-supervised detection and grounding (open-vocabulary) detection models only")):
        task_for_model({"type": "ByteTrack", "tracker": {}})


def test_mean_teacher_hook_becomes_the_callback_and_needs_a_teacher(shapes_config: Any) -> None:
    (callback,) = callbacks_from_config({"custom_hooks": [dict(type="MeanTeacherHook", momentum=0.01, interval=2)]})
    assert isinstance(callback, MeanTeacher) and (callback.momentum, callback.interval) == (0.01, 2)
    with pytest.raises(ValueError, match="interval must be an integer >= 1"):
        MeanTeacher(interval=0)
    module = MMDetModule(shapes_config("shapes_faster_rcnn.py"))
    with pytest.raises(ValueError, match="`FasterRCNN` has no `teacher` and `student`.\nHint:"):
        callback.on_train_start(None, module)  # type: ignore[arg-type]


def test_labeled_and_unlabeled_batches_are_the_runners(semi_shapes_config: Any) -> None:
    """ConcatDataset + GroupMultiSourceSampler built as mmengine's Runner builds them, in one endless pass."""
    from mmengine.runner import Runner

    cfg = semi_shapes_config()
    datamodule = MMDetDataModule(cfg, seed=0)
    datamodule.setup("fit")
    ours = datamodule.train_dataloader()
    assert isinstance(ours.batch_sampler, EndlessBatchSampler)
    with pytest.raises(TypeError, match="never ends"):
        len(ours)
    theirs = Runner.build_dataloader(cfg.train_dataloader, seed=0)
    n_labeled = len(theirs.dataset.datasets[0])
    assert len(theirs.dataset.datasets[1]) == 24 and n_labeled > 0
    ours_iter, theirs_iter = iter(ours), iter(theirs)
    batches = 2 * (n_labeled + 24) // 4  # more batches than the sampler's reported length: past one "epoch"
    for _ in range(batches):
        a, b = next(ours_iter), next(theirs_iter)
        assert sorted(a["data_samples"]) == ["sup", "unsup_student", "unsup_teacher"]
        for branch in a["data_samples"]:
            paths = [s.img_path if s is not None else None for s in a["data_samples"][branch]]
            assert paths == [s.img_path if s is not None else None for s in b["data_samples"][branch]]
        sup = [s for s in a["data_samples"]["sup"] if s is not None]
        unsup = [s for s in a["data_samples"]["unsup_teacher"] if s is not None]
        assert len(sup) == 2 and len(unsup) == 2  # source_ratio=[2, 2]
        assert all("/train/" in s.img_path for s in sup) and all("/unlabeled/" in s.img_path for s in unsup)


def test_semi_supervised_config_without_unlabeled_source_stops_at_setup(semi_shapes_config: Any) -> None:
    cfg = semi_shapes_config()
    labeled = cfg.train_dataloader.dataset.datasets[0]
    cfg.train_dataloader.dataset = labeled  # the labeled source alone
    with pytest.raises(ValueError, match=r"has no unlabeled source \(dataset 0: \['sup'\]\).*\nHint: make "
                                         r"train_dataloader.dataset a ConcatDataset of a labeled and an unlabeled"):
        MMDetDataModule(cfg).setup("fit")
    cfg = semi_shapes_config()
    cfg.train_dataloader.sampler = dict(type="DefaultSampler", shuffle=True)  # batches without labeled images
    with pytest.raises(ValueError, match="(?s)samples with `DefaultSampler`, which does not put both sources in "
                                         "every batch.*Hint: .*GroupMultiSourceSampler"):
        MMDetDataModule(cfg).setup("fit")
    MMDetDataModule(semi_shapes_config()).setup("fit")  # the shipped layout passes


def test_endless_batches_resume_where_they_stopped(semi_shapes_config: Any) -> None:
    """A checkpoint's data state (MMDetDataModule.state_dict) continues the endless pass at the next batch."""
    cfg = semi_shapes_config()
    first = MMDetDataModule(cfg, seed=0)
    first.setup("fit")
    batches = iter(first.train_dataloader().batch_sampler)
    for _ in range(3):
        next(batches)
    state = first.state_dict()
    assert state["train_batches"]["batches_done"] == 3
    expected = [next(batches) for _ in range(2)]
    resumed = MMDetDataModule(cfg, seed=0)
    resumed.load_state_dict(state)
    resumed.setup("fit")
    again = iter(resumed.train_dataloader().batch_sampler)
    assert [next(again) for _ in range(2)] == expected


def _detector_checkpoint(cfg: Any, path: Path) -> Path:
    """The config's detector, initialised from seed 0 and not trained, as a plain mmdet checkpoint: loaded by
    both runs (``load_from``), into the teacher and the student. mmengine's IterBasedTrainLoop draws its data
    iterator's seed from torch's generator before ``init_weights``, Lightning after: without a common
    checkpoint the two runs would start from different weights."""
    from mmdet.registry import MODELS

    from mmdet_lightning.config import init_mmdet_scope

    init_mmdet_scope()
    torch.manual_seed(0)
    detector = MODELS.build(cfg.model.detector)
    detector.init_weights()
    torch.save({"state_dict": detector.state_dict()}, path)
    return path


def _runner_config(semi_shapes_config: Any, tmp_path: Path, load_from: bool = False) -> Any:
    cfg = semi_shapes_config(max_iters=MAX_ITERS)
    if load_from:
        cfg.load_from = str(_detector_checkpoint(cfg, tmp_path / "detector.pth"))
    # an untrained teacher scores about 1/4 a class: pseudo instances from the first iteration all the same
    cfg.model.semi_train_cfg.update(pseudo_label_initial_score_thr=0.1, rpn_pseudo_thr=0.1, cls_pseudo_thr=0.1,
                                    jitter_times=3)  # box uncertainty from 3 jitters instead of 10: a faster test
    cfg.param_scheduler = [
        dict(type="LinearLR", start_factor=0.01, by_epoch=False, begin=0, end=WARMUP_ITERS),
        dict(type="MultiStepLR", by_epoch=False, begin=0, end=MAX_ITERS, milestones=[6], gamma=0.1),
    ]
    cfg.custom_hooks = [dict(type="MeanTeacherHook", momentum=0.2)]  # a teacher that moves visibly in 8 steps
    cfg.work_dir = str(tmp_path / "runner")
    cfg.default_hooks.checkpoint = dict(type="CheckpointHook", interval=-1)
    cfg.default_hooks.visualization = dict(type="DetVisualizationHook", draw=False)
    return cfg


@pytest.mark.slow
def test_soft_teacher_matches_mmengine_runner(semi_shapes_config: Any, tmp_path: Path) -> None:
    from mmengine.runner import Runner

    cfg = _runner_config(semi_shapes_config, tmp_path, load_from=True)
    cfg.train_cfg.val_interval = MAX_ITERS // 2  # training after a teacher-student validation, too
    runner = Runner.from_cfg(cfg.copy())
    runner_rec = RunnerRecorder()
    runner.register_hook(runner_rec, priority="VERY_LOW")
    runner.train()
    hub = runner.message_hub
    runner_maps = {f"{m}/coco/bbox_mAP{s}": hub.get_scalar(f"val/{m}/coco/bbox_mAP{s}").current()
                   for m in ("teacher", "student") for s in ("", "_50")}
    runner_state = {k: v.detach().clone() for k, v in runner.model.state_dict().items()}

    pl.seed_everything(cfg.randomness.seed)
    module = MMDetModule.from_config(cfg)
    assert module.load_report is not None and not module.load_report.missing  # teacher and student loaded
    trainer_rec = TrainerRecorder()
    trainer = pl.Trainer(
        max_steps=MAX_ITERS, max_epochs=-1, val_check_interval=MAX_ITERS // 2, check_val_every_n_epoch=None,
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        num_sanity_val_steps=0, callbacks=[*callbacks_from_config(cfg), trainer_rec],
        default_root_dir=str(tmp_path / "lightning"),
    )
    trainer.fit(module, datamodule=MMDetDataModule.from_config(cfg))
    trainer_maps = {k: float(trainer.callback_metrics[k]) for k in runner_maps}

    assert len(runner_rec.lrs) == len(trainer_rec.lrs) == MAX_ITERS
    assert trainer_rec.lrs == runner_rec.lrs  # exactly equal, every iteration
    lrs = [lr[0] for lr in runner_rec.lrs]
    assert lrs[0] < lrs[WARMUP_ITERS] and lrs[-1] < lrs[WARMUP_ITERS]  # warm-up and the step happened
    assert [sorted(d) for d in trainer_rec.losses] == [sorted(d) for d in runner_rec.losses]
    assert {"sup_loss_cls", "unsup_loss_cls", "unsup_loss_rpn_cls"} <= set(runner_rec.losses[0])
    assert any(d["unsup_loss_cls"] > 0 for d in runner_rec.losses), "no pseudo instance: the test means little"
    worst = 0.0
    for step, (ours, theirs) in enumerate(zip(trainer_rec.losses, runner_rec.losses, strict=True)):
        for key in theirs:
            assert ours[key] == pytest.approx(theirs[key], rel=1e-4, abs=1e-6), f"iteration {step}: {key}"
            worst = max(worst, abs(ours[key] - theirs[key]) / max(abs(theirs[key]), 1e-12))
    print(f"\nSoftTeacher vs Runner: {MAX_ITERS} iterations, largest relative loss difference {worst:.2e}; "
          f"losses {[round(d['loss'], 4) for d in runner_rec.losses]}; mAP ours {trainer_maps}, runner {runner_maps}")

    ours_state = module.model.state_dict()
    for key, value in runner_state.items():
        if value.is_floating_point():
            torch.testing.assert_close(ours_state[key], value, rtol=1e-3, atol=1e-5,
                                       msg=lambda m, key=key: f"{key}: {m}")
    # the teacher followed the student (MeanTeacher ran: it started as the student's copy) without being it
    key = "backbone.conv1.weight"
    assert not torch.allclose(ours_state[f"teacher.{key}"], ours_state[f"student.{key}"])
    for key, value in runner_maps.items():
        assert abs(trainer_maps[key] - value) <= 1e-3, (key, trainer_maps, runner_maps)


class TeacherStudentRecorder(pl.Callback):
    """The teacher's and the student's predictions (count above the threshold) of each validation image."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.counts: dict[str, dict[str, int]] = {}

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        for sample in outputs:
            self.counts[Path(sample.img_path).name] = {
                name: int((getattr(sample, f"{name}_pred_instances").scores > self.threshold).sum())
                for name in ("teacher", "student")}


@pytest.mark.slow
def test_soft_teacher_run_logs_teacher_and_student_to_wandb(semi_shapes_config: Any, tmp_path: Path) -> None:
    """An offline W&B run read back from its transaction log: teacher and student metrics, the `eval_data` table with
    teacher and student predictions side by side, the model artifact with the teacher's and student's metrics."""
    from mmdet_lightning.callbacks import MMDetWandbCallback
    from mmdet_lightning.wandb.records import artifacts, find_run_file, history, read_records, summary
    from tests.test_wandb_callbacks import _table

    steps, threshold = 4, 0.2
    cfg = _runner_config(semi_shapes_config, tmp_path)
    cfg.train_cfg.max_iters = cfg.train_cfg.val_interval = steps
    logger = pl.loggers.WandbLogger(offline=True, save_dir=str(tmp_path), project="mmdet-lightning-tests")
    monitor = "teacher/coco/bbox_mAP"
    checkpoint = pl.callbacks.ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), every_n_train_steps=steps,
                                              monitor=monitor, mode="max")
    recorder = TeacherStudentRecorder(threshold)
    # the analytics' monitor left at its default (coco/bbox_mAP): the summary takes the teacher's
    callback = MMDetWandbCallback(interval=2, log_checkpoint=True, num_eval_images=3, bbox_score_thr=threshold)
    trainer = pl.Trainer(max_steps=steps, max_epochs=-1, val_check_interval=steps, check_val_every_n_epoch=None,
                         accelerator="cpu", logger=logger, enable_progress_bar=False, num_sanity_val_steps=0,
                         callbacks=[*callbacks_from_config(cfg), recorder, checkpoint, callback],
                         default_root_dir=str(tmp_path))
    pl.seed_everything(0)
    module = MMDetModule(cfg)
    trainer.fit(module, datamodule=MMDetDataModule(cfg))
    logger.experiment.finish()
    records = read_records(find_run_file(tmp_path))
    run_id = next(r.run.run_id for r in records if r.WhichOneof("record_type") == "run")

    (row,) = [r for r in history(records) if monitor in r]
    for name in ("teacher", "student"):
        assert row[f"{name}/coco/bbox_mAP_50"] == pytest.approx(module.last_eval_metrics[f"{name}/coco/bbox_mAP_50"])
    assert "coco/bbox_mAP" not in row
    assert summary(records)[f"best/{monitor}"] == pytest.approx(row[monitor])

    (pred,) = [a for a in artifacts(records) if a.name == f"run_{run_id}_pred"]
    table = _table(pred, "eval_data")
    assert table["columns"][:4] == ["image_name", "ground_truth", "teacher", "student"]
    assert len(table["data"]) == 3
    boxes = 0
    for name, truth, teacher, student, *_confidence in table["data"]:
        assert truth["path"] == teacher["path"] == student["path"]  # one referenced val image
        for column, cell in (("teacher", teacher), ("student", student)):
            logged = cell["boxes"][f"{column}_predictions"]
            assert len(logged) == recorder.counts[name][column], (name, column)
            assert all(box["scores"]["score"] > threshold for box in logged)
            boxes += len(logged)
    assert boxes > 0, "an untrained detector scores a quarter a class: some boxes above 0.2"

    (model,) = [a for a in artifacts(records) if a.name == f"run_{run_id}_model"]
    assert model.type == "model" and set(model.aliases) >= {"latest", "best"}
    metadata = json.loads(model.metadata)
    assert metadata["global_step"] == steps
    assert metadata[monitor] == pytest.approx(module.last_eval_metrics[monitor])
    assert "student/coco/bbox_mAP" in metadata


@pytest.mark.slow
def test_shipped_soft_teacher_yaml(semi_shapes_config: Any, tmp_path: Path) -> None:
    """``mmdet-lightning fit --config configs/lightning/shapes_soft_teacher.yaml`` as a new user runs it: the config's
    MeanTeacherHook becomes the callback, teacher and student are evaluated and logged offline."""
    import yaml

    from mmdet_lightning.wandb.records import artifacts, find_run_file, history, read_records
    from tests.helpers.user_env import REPO, explain, run_as_user

    (tmp_path / "configs").symlink_to(REPO / "configs")
    data_root = semi_shapes_config().train_dataloader.dataset.datasets[0].data_root
    yaml_config = REPO / "configs" / "lightning" / "shapes_soft_teacher.yaml"
    done = run_as_user(["mmdet-lightning", "fit", "--config", str(yaml_config.relative_to(REPO)),
                        "--model.data_root", str(data_root), "--trainer.max_steps", "2",
                        "--trainer.val_check_interval", "2"], cwd=tmp_path)
    assert done.returncode == 0, explain(done)
    assert "teacher/coco/bbox" in done.stdout and "student/coco/bbox" in done.stdout  # the metrics table
    run_folder = tmp_path / yaml.safe_load(yaml_config.read_text())["trainer"]["default_root_dir"]
    records = read_records(find_run_file(run_folder))
    assert any("teacher/coco/bbox_mAP" in row and "student/coco/bbox_mAP" in row for row in history(records))
    (pred,) = [a for a in artifacts(records) if a.type == "evaluation"]  # checkpoints every 100 steps: none here
    assert pred.name.endswith("_pred")


def test_model_zoo_adapts_mmdets_soft_teacher_config(semi_shapes_config: Any) -> None:
    """mmdet's own soft_teacher config on the synthetic data (tools/model_zoo_sweep.py): the multi-source sampler
    batches as the loader does, so every batch holds both sources (it trains: status `pass` in the sweep)."""
    from mmengine.config import Config

    from mmdet_lightning.model_zoo import adapt_to_dataset, family_config
    from mmdet_lightning.synthetic import CLASSES

    root = semi_shapes_config().train_dataloader.dataset.datasets[0].data_root
    cfg = adapt_to_dataset(Config.fromfile(str(family_config("soft_teacher"))), root, CLASSES)
    loader = cfg.train_dataloader
    assert loader.sampler.type == "GroupMultiSourceSampler" and loader.sampler.batch_size == loader.batch_size == 2
    SemiSupervisedTask().check_train_data(loader)
