"""Grounding detection (Grounding DINO, GLIP) on the synthetic shapes with a tiny local BERT: the same run as mmengine's
Runner, prompting with one's own text, and the errors for a language model or a prompt that cannot work."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mmdet_lightning import MMDetDataModule, MMDetModule
from mmdet_lightning.cli import run
from mmdet_lightning.evaluation import record_coco_evals
from mmdet_lightning.language_model import LanguageModelError
from mmdet_lightning.lightning_package import pl
from mmdet_lightning.odvg import coco_to_odvg
from mmdet_lightning.tasks import GroundingTask, task_for_model
from mmdet_lightning.wandb.records import artifacts, find_run_file, read_records

from .conftest import CONFIGS, REPO
from .test_runner_equivalence import RunnerRecorder, assert_same_predictions, fit_as_runner

CONFIG = "shapes_grounding_dino.py"
MAX_EPOCHS = 2  # 24 images (some empty, filtered out), batches of 4: 5-6 iterations an epoch
WARMUP_ITERS = 8


def test_grounding_models_are_the_grounding_task() -> None:
    assert isinstance(task_for_model({"type": "GroundingDINO", "language_model": {}}), GroundingTask)
    assert isinstance(task_for_model({"type": "GLIP"}), GroundingTask)


def test_class_check_skips_text_token_heads(shapes_config: Any) -> None:
    """GroundingDINOHead's num_classes is the text length (mmdet's configs say 256): no class count to check."""
    cfg = shapes_config(CONFIG)
    cfg.model.bbox_head.num_classes = 256
    module = MMDetModule(cfg)
    assert module.num_classes() == {}
    module.task.check_classes(module.model, ("circle", "square", "triangle"), "train")  # no error


def _equivalence_config(shapes_config: Any, tmp_path: Path, name: str) -> Any:
    cfg = shapes_config(name, max_epochs=MAX_EPOCHS, batch_size=4)
    cfg.train_cfg.val_interval = MAX_EPOCHS
    cfg.param_scheduler = [
        dict(type="LinearLR", start_factor=0.01, by_epoch=False, begin=0, end=WARMUP_ITERS),
        dict(type="MultiStepLR", by_epoch=True, begin=0, end=MAX_EPOCHS, milestones=[2], gamma=0.1),
    ]
    cfg.model.test_cfg.max_per_img = 50  # every box the model gives, to compare
    cfg.model.test_cfg.score_thr = 0.0  # GLIP's (Grounding DINO has none)
    cfg.work_dir = str(tmp_path / "runner")
    cfg.default_hooks.checkpoint = dict(type="CheckpointHook", interval=-1)
    cfg.default_hooks.visualization = dict(type="DetVisualizationHook", draw=False)
    return cfg


# (config, a loss only that model has, several learning rates (paramwise lr_mult), COCO IoU thresholds): Grounding
# DINO's boxes after 12 iterations overlap the objects by less than COCO's 0.5, so its mAP is taken from IoU 0.1
# (pycocotools then reports -1 for mAP_50 and mAP_75: it looks 0.5 up in a list)
EQUIVALENCE_CASES = [
    pytest.param("shapes_grounding_dino.py", "dn_loss_cls", True, [0.1, 0.2, 0.3, 0.4, 0.5], id="grounding_dino"),
    pytest.param("shapes_glip.py", "loss_centerness", False, None, id="glip"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "own_loss", "lr_mult", "iou_thrs"), EQUIVALENCE_CASES)
def test_trainer_matches_mmengine_runner(shapes_config: Any, tmp_path: Path, name: str, own_loss: str,
                                         lr_mult: bool, iou_thrs: list[float] | None) -> None:
    """Same config, data and seed under mmengine's Runner and pl.Trainer: the same learning rate in every
    parameter group at every iteration, the same losses, the same predictions on every validation image (labels,
    scores, boxes) and the same COCO statistics, unrounded (the ``COCOeval`` each side's metric accumulated)."""
    from mmengine.runner import Runner

    cfg = _equivalence_config(shapes_config, tmp_path, name)
    if iou_thrs is not None:
        cfg.val_evaluator.iou_thrs = iou_thrs
    runner = Runner.from_cfg(cfg.copy())
    runner_rec = RunnerRecorder()
    runner.register_hook(runner_rec, priority="VERY_LOW")
    with record_coco_evals() as coco_evals:
        runner.train()
    runner_stats = coco_evals[-1].stats

    module, trainer_rec, _ = fit_as_runner(cfg, tmp_path, MAX_EPOCHS)
    trainer_stats = module.last_coco_eval["bbox"].stats

    iters = len(runner_rec.lrs)
    assert iters > WARMUP_ITERS and iters // MAX_EPOCHS < WARMUP_ITERS, "the run must cross warm-up and epochs"
    assert trainer_rec.lrs == runner_rec.lrs  # exactly equal, every iteration, every parameter group
    lrs = [lr[0] for lr in runner_rec.lrs]
    assert lrs[0] < lrs[WARMUP_ITERS - 1]  # warm-up
    assert (len(set(runner_rec.lrs[0])) > 1) == lr_mult  # Grounding DINO's backbone lr_mult
    assert [sorted(d) for d in trainer_rec.losses] == [sorted(d) for d in runner_rec.losses]
    assert own_loss in runner_rec.losses[0]  # Grounding DINO's denoising losses, GLIP's centerness
    for step, (ours, theirs) in enumerate(zip(trainer_rec.losses, runner_rec.losses, strict=True)):
        for key in theirs:
            assert ours[key] == pytest.approx(theirs[key], rel=1e-4, abs=1e-5), f"iteration {step}: {key}"

    assert_same_predictions(trainer_rec.predictions, runner_rec.predictions, min_boxes=8 * 50)
    assert runner_stats[0] > 0.001  # a mAP above 0: boxes on the objects, ranked
    np.testing.assert_allclose(trainer_stats, runner_stats, rtol=0, atol=1e-9)


@pytest.mark.slow
def test_odvg_fine_tune_matches_mmengine_runner(shapes_config: Any, tmp_path: Path) -> None:
    """MM-Grounding-DINO's fine-tuning data path (``..._finetune_16xb4_1x_sft_coco.py``): the shapes' training
    set as ODVG (``coco_to_odvg``), read by mmdet's ``ODVGDataset`` with the label map, each image's prompt the
    classes of its boxes among sampled negatives (``RandomSamplingNegPos``); one epoch under the Runner and the
    Trainer: the same learning rates and losses every iteration, the same predictions. mmdet 3.3's
    ``RandomSamplingNegPos`` fails on numpy >= 1.24 (``np.long``) without ``fix_mmdet_text_transforms``."""
    from mmengine.runner import Runner

    cfg = _equivalence_config(shapes_config, tmp_path, CONFIG)
    cfg.train_cfg.max_epochs = cfg.train_cfg.val_interval = 1
    cfg.model.bbox_head.num_classes = 256  # as mmdet's: the sampled prompts' labels index the denoising embedding
    lines, label_map = coco_to_odvg(Path(cfg.data_root) / "annotations" / "instances_train.json",
                                    tmp_path / "train_od.json", tmp_path / "label_map.json")
    pipeline = [step for step in cfg.train_pipeline if step["type"] != "PackDetInputs"]
    pipeline += [
        dict(type="RandomSamplingNegPos", tokenizer_name=cfg.lang_model_name, num_sample_negative=20,
             label_map_file=str(label_map), max_tokens=64),
        dict(type="PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor", "flip",
                                              "flip_direction", "text", "custom_entities", "tokens_positive",
                                              "dataset_mode")),
    ]
    cfg.train_dataloader.dataset = dict(
        type="ODVGDataset", need_text=False, data_root=cfg.data_root, ann_file=str(lines),
        label_map_file=str(label_map), data_prefix=dict(img="train/"), return_classes=True,
        filter_cfg=dict(filter_empty_gt=False, min_size=4), pipeline=pipeline)

    # the Trainer first: MMDetModule makes mmdet's RandomSamplingNegPos work with numpy >= 1.24 (np.long), which
    # the Runner needs as well
    module, trainer_rec, _ = fit_as_runner(cfg, tmp_path, 1)
    runner = Runner.from_cfg(cfg.copy())
    runner_rec = RunnerRecorder()
    runner.register_hook(runner_rec, priority="VERY_LOW")
    runner.train()

    assert len(runner_rec.lrs) == 6  # 24 images, batches of 4 (ODVG keeps the images without objects)
    assert trainer_rec.lrs == runner_rec.lrs
    assert [sorted(d) for d in trainer_rec.losses] == [sorted(d) for d in runner_rec.losses]
    for step, (ours, theirs) in enumerate(zip(trainer_rec.losses, runner_rec.losses, strict=True)):
        for key in theirs:
            assert ours[key] == pytest.approx(theirs[key], rel=1e-4, abs=1e-5), f"iteration {step}: {key}"
    assert_same_predictions(trainer_rec.predictions, runner_rec.predictions, min_boxes=8 * 50)
    # the latest training prompt: a caption of classes from the label map ("triangle. square. ")
    assert module.task.prompt and set(re.findall(r"\w+", module.task.prompt)) <= {"circle", "square", "triangle"}


# ---------------------------------------------------------------------------------------------- bad input
def test_missing_language_model_is_named_at_construction(shapes_config: Any, tmp_path: Path) -> None:
    cfg = shapes_config(CONFIG)
    cfg.model.language_model.name = str(tmp_path / "no_such_bert")
    with pytest.raises(LanguageModelError, match=r"(?s)lang_model_name.*no_such_bert.*Hint: point `lang_model_name`"):
        MMDetModule(cfg)


def test_misspelt_hub_name_fails_at_once(shapes_config: Any) -> None:
    """A Hugging Face name that is neither cached nor reachable (a typo; no network here) fails in seconds, not
    after transformers' retries (about 25 s)."""
    cfg = shapes_config(CONFIG)
    cfg.model.language_model.name = "bert-base-uncsed"
    start = time.monotonic()
    with pytest.raises(LanguageModelError, match=r"(?s)'bert-base-uncsed'.*Hint: point `lang_model_name`"):
        MMDetModule(cfg)
    assert time.monotonic() - start < 10


def test_class_the_tokenizer_cannot_split_is_named_at_construction(shapes_config: Any) -> None:
    cfg = shapes_config(CONFIG)
    for key in ("train_dataloader", "val_dataloader"):
        cfg[key].dataset.metainfo = dict(classes=("circle", "hexagon", "triangle"))
    with pytest.raises(LanguageModelError, match=r"(?s)cannot split.*\['hexagon'\].*Hint"):
        MMDetModule(cfg)



def test_empty_prompt_is_named_when_the_data_module_is_made(shapes_config: Any) -> None:
    with pytest.raises(LanguageModelError, match=r"(?s)holds no phrase.*Hint"):
        MMDetDataModule(shapes_config(CONFIG), text=" . ")


def test_prompt_word_the_tokenizer_cannot_split_is_named(shapes_config: Any) -> None:
    with pytest.raises(LanguageModelError, match=r"(?s)cannot split.*\['hexagon'\].*Hint: use words of its vocab"):
        MMDetDataModule(shapes_config(CONFIG), text="ring . hexagon .")


def test_prompt_for_a_model_without_text_is_refused(shapes_config: Any) -> None:
    with pytest.raises(LanguageModelError, match=r"(?s)takes no text.*Hint"):
        MMDetDataModule(shapes_config("shapes_retinanet.py"), text="ring .")


# ---------------------------------------------------------------------------------------------- CLI, W&B, predict
def _eval_rows(artifact: Any) -> tuple[list[str], list[list[Any]]]:
    entry = next(e for e in artifact.manifest.contents if e.path == "eval_data.table.json")
    table = json.loads(Path(entry.local_path).read_text())
    return table["columns"], table["data"]


@pytest.mark.slow
def test_fine_tune_then_prompt_with_the_cli_and_wandb(shapes_root: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """``mmdet-lightning fit`` with the shipped YAML (W&B offline) logs the prompt and the phrases, then
    ``predict --text`` with a prompt that is not the training classes (another word, a subset, another order)
    gives back the phrases as typed."""
    monkeypatch.chdir(tmp_path)
    common = ["--config", str(REPO / "configs" / "lightning" / "shapes_grounding_dino.yaml"),
              "--model.config", str(CONFIGS / CONFIG), "--model.data_root", str(shapes_root)]
    run(["fit", *common, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2"])
    work = tmp_path / "work_dirs" / "shapes_grounding_dino"
    logged = artifacts(read_records(find_run_file(work / "wandb")))
    training_prompt = "circle . square . triangle ."

    models = [a for a in logged if a.type == "model"]
    assert models and all(json.loads(a.metadata)["prompt"] == training_prompt for a in models)
    evaluation = [a for a in logged if a.type == "evaluation"][-1]
    assert json.loads(evaluation.metadata)["prompt"] == training_prompt
    columns, rows = _eval_rows(evaluation)
    assert columns[:5] == ["image_name", "ground_truth", "prediction", "prompt", "phrases"]
    assert len(rows) == 8 and {row[3] for row in rows} == {training_prompt}
    phrases = {p for row in rows for p in row[4].split(" | ") if p}
    assert phrases <= {"circle", "square", "triangle"}

    out = tmp_path / "prompted"
    run(["predict", *common, "--ckpt_path", str(work / "checkpoints" / "last.ckpt"), "--data.predict_folder",
         str(shapes_root / "val"), "--trainer.default_root_dir", str(out), "--text", "ring . square . circle ."])
    results = json.loads((out / "predictions" / "results.bbox.json").read_text())
    assert len(results) == 8 * 50  # max_per_img boxes an image, every one named
    assert {r["phrase"] for r in results} == {"ring", "square", "circle"}
    # category ids: the dataset's class of the phrase (square 2, circle 1); "ring" is no class: its place + 1
    assert {(r["phrase"], r["category_id"]) for r in results} == {("ring", 1), ("square", 2), ("circle", 1)}


def test_python_predict_with_phrases_in_another_order(shapes_config: Any, tmp_path: Path) -> None:
    """``MMDetDataModule(text=[...])`` on the test set: a subset of the classes in another order is the prompt
    of every image, and each box's phrase is one of them, as typed."""
    cfg = shapes_config(CONFIG)
    module = MMDetModule(cfg)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=str(tmp_path))
    batches = trainer.predict(module, datamodule=MMDetDataModule(cfg, text=["Square", "circle "]))
    samples = [sample for batch in batches for sample in batch]
    assert len(samples) == 8 and {sample.text for sample in samples} == {("Square", "circle")}
    names = [name for sample in samples for name in sample.pred_instances.label_names]
    assert len(names) == 8 * 50 and set(names) == {"Square", "circle"}


@pytest.mark.parametrize("name", ["shapes_grounding_dino.py", "shapes_glip.py"])
def test_flops_are_counted_on_the_prediction_with_the_prompt(shapes_config: Any, name: str) -> None:
    """The W&B summary's ``model/flops``: mmdet's mode "tensor" takes no text for these models; their prediction
    (language model included) is counted instead of warning."""
    from mmdet_lightning.wandb.analytics import model_complexity

    cfg = shapes_config(name)
    module = MMDetModule(cfg).eval()
    datamodule = MMDetDataModule(cfg)
    datamodule.setup("validate")
    found = model_complexity(module, next(iter(datamodule.val_dataloader())))
    assert found["params"] > 1e6 and found["flops"] > 1e8, found
