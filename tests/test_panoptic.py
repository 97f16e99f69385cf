"""Panoptic segmentation: the task, the synthetic panoptic data, PQ without panopticapi, training and W&B."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from mmdet_lightning.config import load_config
from mmdet_lightning.model_zoo import mmdet_configs_dir
from mmdet_lightning.panoptic_quality import PQStat, id2rgb, install_panopticapi, rgb2id
from mmdet_lightning.synthetic import CLASSES, STUFF_CLASSES, ShapesConfig, make_shapes_dataset
from mmdet_lightning.tasks import DetectionTask, PanopticTask, task_for_model

ALL_CLASSES = (*CLASSES, *STUFF_CLASSES)
META = {"classes": ALL_CLASSES, "thing_classes": CLASSES, "stuff_classes": STUFF_CLASSES}


# ---------------------------------------------------------------------------------------------------- the task
@pytest.mark.parametrize("config", [
    "panoptic_fpn/panoptic-fpn_r50_fpn_1x_coco.py",
    "maskformer/maskformer_r50_ms-16xb1-75e_coco.py",
    "mask2former/mask2former_r50_8xb2-lsj-50e_coco-panoptic.py",
])
def test_mmdet_panoptic_configs_go_to_the_panoptic_task(config: str) -> None:
    cfg = load_config(mmdet_configs_dir() / config)  # refused before this task existed
    assert isinstance(task_for_model(cfg.model), PanopticTask)


def test_instance_mask2former_stays_detection() -> None:
    cfg = load_config(mmdet_configs_dir() / "mask2former/mask2former_r50_8xb2-lsj-50e_coco.py")
    assert type(task_for_model(cfg.model)) is DetectionTask


def test_class_check_counts_things_and_stuff(panoptic_config: Any) -> None:
    from mmdet_lightning import MMDetModule

    module = MMDetModule(panoptic_config())
    assert module.num_classes() == {"model": 5, "semantic_head": 5, "panoptic_fusion_head": 5}
    task = module.task
    assert isinstance(task, PanopticTask) and task.things_and_stuff == (3, 2)  # read from the built model
    task.check_classes(module.model, ALL_CLASSES, "train")
    with pytest.raises(ValueError, match=r"has 4 classes .*num_things_classes=3, num_stuff_classes=2.*\nHint: set "
                                         r"num_things_classes and num_stuff_classes"):
        task.check_classes(module.model, ALL_CLASSES[:4], "val")
    module.model.roi_head.bbox_head.num_classes = 4  # the instance heads predict the things
    with pytest.raises(ValueError, match=r"roi_head.bbox_head.num_classes=4 \(the instance heads predict the 3 thing"):
        task.check_classes(module.model, ALL_CLASSES, "val")


def test_predictions_are_float32_and_segments_are_shown_with_their_classes() -> None:
    from mmdet.structures import DetDataSample
    from mmengine.structures import PixelData

    task = PanopticTask()
    task.things_and_stuff = (3, 2)
    ids = np.full((6, 8), 3, dtype=np.int64)  # stuff "background" (label 3)
    ids[4:] = 4  # floor
    ids[1:3, 1:4] = 0 + 1 * 1000  # a circle, instance 1
    ids[0, 7] = 5  # void (label == class count)
    sample = DetDataSample(metainfo={"img_path": "a.png"})
    sample.pred_panoptic_seg = PixelData(sem_seg=torch.from_numpy(ids)[None])
    sample.pred_sem_seg = PixelData(sem_seg=torch.zeros(5, 6, 8, dtype=torch.bfloat16))
    (out,) = task.predictions_to_float32([sample])
    assert out.pred_sem_seg.sem_seg.dtype == torch.float32 and out.pred_panoptic_seg.sem_seg.dtype == torch.int64
    shown = task.predicted_instances(out, score_thr=0.3)
    assert shown is not None and task.has_masks(out)
    assert sorted(shown.labels.tolist()) == [0, 3, 4]
    circle = shown.labels.tolist().index(0)
    assert shown.boxes[circle].tolist() == [1.0, 1.0, 4.0, 3.0] and int(shown.masks[circle].sum()) == 6
    assert shown.boxed is not None and shown.boxed.tolist() == [label < 3 for label in shown.labels.tolist()]
    assert not shown.masks.any(axis=0)[0, 7]  # void is not a segment


# ---------------------------------------------------------------------------------------------------- the data
def test_panoptic_data_is_deterministic_and_consistent(panoptic_root: Path, tmp_path: Path) -> None:
    again = make_shapes_dataset(tmp_path / "again", ShapesConfig(num_train=16, num_val=6, width=64, height=64,
                                                                   seed=0, panoptic=True))
    for rel in ("annotations/panoptic_val.json", "annotations/panoptic_val/000003.png", "val/000003.png"):
        assert (again / rel).read_bytes() == (panoptic_root / rel).read_bytes(), rel
    coco = json.loads((panoptic_root / "annotations/panoptic_val.json").read_text())
    assert [(c["name"], c["isthing"]) for c in coco["categories"]] == [(n, 1) for n in CLASSES] + [
        (n, 0) for n in STUFF_CLASSES]
    things_seen = set()
    for ann in coco["annotations"]:
        ids = rgb2id(np.asarray(Image.open(panoptic_root / "annotations/panoptic_val" / ann["file_name"])))
        assert ids.shape == (64, 64) and not (ids == 0).any()  # every pixel belongs to a segment
        assert sorted(np.unique(ids).tolist()) == sorted(s["id"] for s in ann["segments_info"])
        for seg in ann["segments_info"]:
            assert int((ids == seg["id"]).sum()) == seg["area"]
            things_seen.update([seg["category_id"]] if seg["category_id"] <= len(CLASSES) else [])
        assert {s["category_id"] for s in ann["segments_info"]} >= {len(CLASSES) + 1, len(CLASSES) + 2}
    assert things_seen == {1, 2, 3}


def test_the_cli_writes_the_panoptic_mode(tmp_path: Path) -> None:
    from mmdet_lightning.synthetic import main

    main(["--out", str(tmp_path), "--num-train", "1", "--num-val", "1", "--size", "32", "--panoptic"])
    assert (tmp_path / "annotations/panoptic_train/000000.png").is_file()
    assert json.loads((tmp_path / "meta.json").read_text())["panoptic"] is True


# ---------------------------------------------------------------------------------------------------- PQ
def _perturbed_prediction(gt_ids: np.ndarray, segments: list[dict], cat2label: dict[int, int],
                          rng: np.random.Generator) -> np.ndarray:
    """A prediction as mmdet's panoptic heads write it (``label + instance * 1000``, void = the class count) made
    from the ground truth: segments shifted, some dropped to void, some given another class of their kind."""
    num_things, num_classes = len(CLASSES), len(ALL_CLASSES)
    pan = np.full(gt_ids.shape, num_classes, dtype=np.int64)
    for instance, seg in enumerate(segments, start=1):
        label = cat2label[seg["category_id"]]
        draw = rng.random()
        if draw < 0.15:
            continue
        if draw < 0.3:
            label = int(rng.integers(num_things)) if label < num_things else int(rng.integers(num_things, num_classes))
        mask = np.roll(gt_ids == seg["id"], tuple(rng.integers(-3, 4, size=2)), axis=(0, 1))
        pan[mask] = label + (instance * 1000 if label < num_things else 0)
    return pan


def test_coco_panoptic_metric_without_panopticapi_equals_hotcoco(panoptic_root: Path, tmp_path: Path) -> None:
    """mmdet's CocoPanopticMetric, run on panoptic_quality's stand-in for panopticapi, gives hotcoco's numbers
    (an independent PQ implementation) on the same predictions: all / things / stuff and per class."""
    from hotcoco.panoptic import pq_compute
    from mmdet.evaluation.metrics import CocoPanopticMetric
    from mmdet.evaluation.metrics import coco_panoptic_metric as module

    install_panopticapi()
    ann_file = panoptic_root / "annotations/panoptic_val.json"
    seg_prefix = panoptic_root / "annotations/panoptic_val"
    coco = json.loads(ann_file.read_text())
    cat2label = {c["id"]: i for i, c in enumerate(coco["categories"])}
    metric = CocoPanopticMetric(ann_file=str(ann_file), seg_prefix=str(seg_prefix), classwise=True)
    metric.dataset_meta = META
    pred_folder = tmp_path / "pred"
    pred_folder.mkdir()
    pred_anns = []
    rng = np.random.default_rng(0)
    samples = []
    for ann in coco["annotations"]:
        gt_ids = rgb2id(np.asarray(Image.open(seg_prefix / ann["file_name"])))
        pan = _perturbed_prediction(gt_ids, ann["segments_info"], cat2label, rng)
        samples.append({"img_id": ann["image_id"], "img_path": str(panoptic_root / "val" / ann["file_name"]),
                        "ori_shape": gt_ids.shape, "pred_panoptic_seg": {"sem_seg": torch.from_numpy(pan)[None]}})
        # the same prediction in panopticapi's format, for hotcoco
        segments = [{"id": int(v), "category_id": coco["categories"][int(v) % 1000]["id"]}
                    for v in np.unique(pan) if v % 1000 != len(ALL_CLASSES)]
        png = np.where(pan % 1000 == len(ALL_CLASSES), 0, pan)
        Image.fromarray(id2rgb(png)).save(pred_folder / ann["file_name"])
        pred_anns.append({"image_id": ann["image_id"], "file_name": ann["file_name"], "segments_info": segments})
    (tmp_path / "pred.json").write_text(json.dumps({**coco, "annotations": pred_anns}))

    captured: dict[str, Any] = {}
    original = module.print_panoptic_table
    module.print_panoptic_table = lambda pq, classwise=None, logger=None: captured.update(pq=pq, classwise=classwise)
    try:
        metric.process({}, samples)
        ours = metric.evaluate(len(samples))
    finally:
        module.print_panoptic_table = original
    theirs = pq_compute(str(ann_file), str(tmp_path / "pred.json"), str(seg_prefix), str(pred_folder))

    assert 0 < ours["coco_panoptic/PQ"] < 100 and 0 < ours["coco_panoptic/PQ_th"] < 100
    for name, suffix in (("All", ""), ("Things", "_th"), ("Stuff", "_st")):
        for key in ("pq", "sq", "rq"):
            assert ours[f"coco_panoptic/{key.upper()}{suffix}"] == pytest.approx(100 * theirs[name][key], abs=1e-9)
        assert captured["pq"][name]["n"] == theirs[name]["n"]
    for cat, name in zip(coco["categories"], ALL_CLASSES, strict=True):
        for key in ("pq", "sq", "rq"):
            assert captured["classwise"][name][key] == pytest.approx(theirs["per_class"][cat["id"]][key], abs=1e-12)


def test_pq_stat_sums_and_averages_as_panopticapi() -> None:
    a, b = PQStat(), PQStat()
    a[1].tp, a[1].iou, b[1].fp, b[2].fn = 2, 1.5, 1, 3
    a += b
    categories = {1: {"isthing": 1}, 2: {"isthing": 0}, 3: {"isthing": 0}}  # class 3: no segment, not counted
    everything, per_class = a.pq_average(categories, isthing=None)
    assert everything["n"] == 2 and everything["pq"] == pytest.approx((1.5 / 2.5 + 0.0) / 2)
    assert per_class[1] == pytest.approx({"pq": 1.5 / 2.5, "sq": 0.75, "rq": 2 / 2.5})
    assert per_class[3] == {"pq": 0.0, "sq": 0.0, "rq": 0.0}
    assert a.pq_average(categories, isthing=False)[0]["n"] == 1


# ---------------------------------------------------------------------------------------------------- bad input
def _copy_without(panoptic_root: Path, tmp_path: Path, remove: str, empty: bool = False) -> Path:
    import shutil

    root = tmp_path / "data"
    shutil.copytree(panoptic_root, root)
    shutil.rmtree(root / remove)
    if empty:
        (root / remove).mkdir()
    return root


@pytest.mark.parametrize("remove, empty, message", [
    ("annotations/panoptic_train", False, r"train_dataloader: the folder of the panoptic PNGs '.*panoptic_train' does "
                                          r"not exist .*data_prefix.seg='annotations/panoptic_train/'"),
    ("annotations/panoptic_val", True, r"val_dataloader: the folder of the panoptic PNGs '.*panoptic_val' holds no "
                                       r"PNG file"),
])
def test_a_dataset_without_its_panoptic_pngs_stops_before_training(panoptic_config: Any, panoptic_root: Path,
                                                                    tmp_path: Path, remove: str, empty: bool,
                                                                    message: str) -> None:
    from mmdet_lightning import MMDetDataModule, MMDetModule
    from mmdet_lightning.config import replace_data_root
    from mmdet_lightning.lightning_package import pl

    cfg = replace_data_root(panoptic_config(), _copy_without(panoptic_root, tmp_path, remove, empty))
    module = MMDetModule(cfg)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, default_root_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match=message) as raised:
        trainer.fit(module, datamodule=MMDetDataModule(cfg))
    assert "Hint: a panoptic dataset (CocoPanopticDataset) needs its COCO panoptic PNGs" in str(raised.value)
    assert "--panoptic" in str(raised.value)
    assert trainer.global_step == 0


def test_a_panoptic_dataset_without_a_png_folder_or_evaluator_folder_is_named(panoptic_config: Any,
                                                                               tmp_path: Path) -> None:
    from mmdet_lightning import MMDetDataModule

    cfg = panoptic_config()
    del cfg.train_dataloader.dataset.data_prefix["seg"]
    with pytest.raises(ValueError, match=r"train_dataloader: the panoptic dataset CocoPanopticDataset has no "
                                         r"`data_prefix.seg`.*\nHint: "):
        MMDetDataModule(cfg).setup("fit")
    cfg = panoptic_config()
    cfg.val_evaluator.seg_prefix = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"val_evaluator: the folder of the panoptic PNGs '.*nowhere' "
                                                r"\(seg_prefix of CocoPanopticMetric\) does not exist"):
        MMDetDataModule(cfg).setup("validate")


def test_the_detection_data_under_the_panoptic_config_names_the_panoptic_mode(panoptic_config: Any,
                                                                              shapes_root: Path) -> None:
    from mmdet_lightning import MMDetDataModule
    from mmdet_lightning.config import replace_data_root

    cfg = replace_data_root(panoptic_config(), shapes_root)  # the instance annotations only
    with pytest.raises(FileNotFoundError, match=r"panoptic_train.json' does not exist.*\n.*--panoptic"):
        MMDetDataModule(cfg).setup("fit")


# ---------------------------------------------------------------------------------------------------- training
@pytest.mark.slow
def test_trainer_matches_mmengine_runner_on_the_panoptic_config(panoptic_config: Any, tmp_path: Path) -> None:
    """The same panoptic config, data and seed under mmengine's Runner and pl.Trainer: the same learning rate at every
    iteration, the same losses, the same PQ / SQ / RQ (all, things, stuff)."""
    from mmengine.runner import Runner

    from mmdet_lightning import MMDetDataModule, MMDetModule
    from mmdet_lightning.lightning_package import pl

    from .test_runner_equivalence import RunnerRecorder, TrainerRecorder

    epochs, warmup = 2, 3  # 16 images in batches of 4: 4 iterations an epoch
    cfg = panoptic_config(max_epochs=epochs, batch_size=4)
    cfg.train_cfg.val_interval = epochs
    cfg.param_scheduler = [
        dict(type="LinearLR", start_factor=0.01, by_epoch=False, begin=0, end=warmup),
        dict(type="MultiStepLR", by_epoch=True, begin=0, end=epochs, milestones=[1], gamma=0.1),
    ]
    cfg.work_dir = str(tmp_path / "runner")
    cfg.default_hooks.checkpoint = dict(type="CheckpointHook", interval=-1)
    cfg.default_hooks.visualization = dict(type="DetVisualizationHook", draw=False)

    install_panopticapi()
    runner = Runner.from_cfg(cfg.copy())
    runner_rec = RunnerRecorder()
    runner.register_hook(runner_rec, priority="VERY_LOW")
    runner.train()
    keys = [f"coco_panoptic/{k}{s}" for s in ("", "_th", "_st") for k in ("PQ", "SQ", "RQ")]
    runner_pq = {k: runner.message_hub.get_scalar(f"val/{k}").current() for k in keys}

    pl.seed_everything(cfg.randomness.seed)
    module = MMDetModule.from_config(cfg)
    trainer_rec = TrainerRecorder()
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, num_sanity_val_steps=0, check_val_every_n_epoch=epochs,
                         callbacks=[trainer_rec], default_root_dir=str(tmp_path / "lightning"))
    trainer.fit(module, datamodule=MMDetDataModule.from_config(cfg))

    iters = len(runner_rec.lrs)
    assert iters == 8 and trainer_rec.lrs == runner_rec.lrs  # exactly equal, every iteration
    lrs = [lr[0] for lr in runner_rec.lrs]
    assert lrs[0] < lrs[warmup] and lrs[-1] < lrs[warmup]  # warm-up and the step happened
    assert [sorted(d) for d in trainer_rec.losses] == [sorted(d) for d in runner_rec.losses]
    assert {"loss_seg", "loss_mask", "loss_cls", "loss_rpn_cls"} <= set(runner_rec.losses[0])
    for step, (ours, theirs) in enumerate(zip(trainer_rec.losses, runner_rec.losses, strict=True)):
        for key in theirs:
            assert ours[key] == pytest.approx(theirs[key], rel=1e-4, abs=1e-6), f"iteration {step}: {key}"
    ours_pq = {k: module.last_eval_metrics[k] for k in keys}  # float64, as the Runner's message hub has them
    assert runner_pq["coco_panoptic/PQ_st"] > 0  # the stuff is found: the comparison means something
    assert ours_pq == pytest.approx(runner_pq, abs=1e-9)


@pytest.mark.slow
def test_wandb_run_shows_segments_and_per_class_pq(panoptic_config: Any, tmp_path: Path) -> None:
    """An offline W&B run of the panoptic config, read back from its transaction log: ``val_data`` and ``eval_data``
    with the segments as mask layers of their classes (things and stuff), ``eval/per_class_pq``, the model
    artifact."""
    from mmdet_lightning import MMDetDataModule, MMDetModule
    from mmdet_lightning.callbacks import MMDetWandbCallback
    from mmdet_lightning.lightning_package import pl
    from mmdet_lightning.wandb.records import artifacts, find_run_file, history, logged_table, read_records

    cfg = panoptic_config(max_epochs=2, batch_size=4)
    logger = pl.loggers.WandbLogger(offline=True, save_dir=str(tmp_path), project="mmdet-lightning-tests")
    checkpoint = pl.callbacks.ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), every_n_epochs=1, save_top_k=-1,
                                              monitor="coco_panoptic/PQ", mode="max")
    callback = MMDetWandbCallback(interval=2, log_checkpoint=True, num_eval_images=3)
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=logger, callbacks=[checkpoint, callback],
                         enable_progress_bar=False, num_sanity_val_steps=0, default_root_dir=str(tmp_path))
    pl.seed_everything(0)
    module = MMDetModule(cfg)
    trainer.fit(module, datamodule=MMDetDataModule(cfg))
    logger.experiment.finish()
    run_file = find_run_file(tmp_path)
    records = read_records(run_file)
    logged = artifacts(records)

    def table(name_suffix: str, table_name: str) -> dict[str, Any]:
        artifact = [a for a in logged if a.name.endswith(name_suffix)][-1]
        entry = next(e for e in artifact.manifest.contents if e.path == f"{table_name}.table.json")
        return json.loads(Path(entry.local_path).read_text())

    def layers(image: dict[str, Any], key: str) -> set[str]:
        return {name[len(key) + 1:] for name in image.get("masks") or {}}

    val = table("val", "val_data")
    assert val["columns"] == ["image_name", "image"] and len(val["data"]) == 3
    for _, image in val["data"]:
        assert {"background", "floor"} <= layers(image, "ground_truth")  # the stuff of every image
        boxes = image["boxes"]["ground_truth"]
        assert boxes and all(box["class_id"] <= len(CLASSES) for box in boxes)  # boxes around things only
    assert set().union(*(layers(image, "ground_truth") for _, image in val["data"])) & set(CLASSES)
    names = {name for _, image in val["data"] for name in image["masks"]}
    assert all(name.startswith("ground_truth_") for name in names)
    val_artifact = next(a for a in logged if a.name == "val")
    files = {e.path: e.local_path for e in val_artifact.manifest.contents}
    for _, image in val["data"]:  # each layer's pixels: its class id (W&B's 1-based label) on its segments
        for name, mask in image["masks"].items():
            label = ALL_CLASSES.index(name[len("ground_truth_"):]) + 1
            pixels = np.asarray(Image.open(files[mask["path"]]))
            assert set(np.unique(pixels).tolist()) == {0, label} or (pixels == label).all(), name

    pred = table("_pred", "eval_data")
    assert pred["columns"][:3] == ["image_name", "ground_truth", "prediction"] and len(pred["data"]) == 3
    assert any(layers(row[2], "predictions") & set(STUFF_CLASSES) for row in pred["data"]), "predicted stuff masks"

    rows = [row for row in history(records) if "eval/per_class_pq/path" in row]
    assert len(rows) == 2  # one a validation
    per_class = logged_table(run_file, rows[-1], "eval/per_class_pq")
    assert per_class["columns"] == ["class", "kind", "PQ", "SQ", "RQ"]
    assert [(r[0], r[1]) for r in per_class["data"]] == [(n, "thing") for n in CLASSES] + [
        (n, "stuff") for n in STUFF_CLASSES]
    stuff_pq = [r[2] for r in per_class["data"][len(CLASSES):]]  # both stuff classes are in every image
    assert sum(stuff_pq) / 2 == pytest.approx(float(trainer.callback_metrics["coco_panoptic/PQ_st"]), abs=1e-4)
    assert any("coco_panoptic/PQ" in row for row in history(records))
    models = [a for a in logged if a.type == "model"]
    assert models and any("epoch_2" in a.aliases for a in models)


def _shrunk(node: Any) -> None:
    """A transformer head at a width and depth that trains in seconds on a CPU (in place)."""
    small = {"embed_dims": 32, "feat_channels": 32, "out_channels": 32, "feedforward_channels": 64, "num_heads": 4,
             "num_feats": 16, "num_layers": 1, "num_queries": 8, "num_groups": 8, "num_points": 1024}
    if isinstance(node, dict):
        for key, value in list(node.items()):
            if key in small and isinstance(value, int) and not isinstance(value, bool):
                node[key] = small[key]
            else:
                _shrunk(value)
    elif isinstance(node, list):
        for child in node:
            _shrunk(child)


@pytest.mark.slow
@pytest.mark.parametrize("config", ["maskformer/maskformer_r50_ms-16xb1-75e_coco.py",
                                    "mask2former/mask2former_r50_8xb2-lsj-50e_coco-panoptic.py"],
                         ids=["maskformer", "mask2former"])
def test_maskformer_families_train_on_the_panoptic_data(config: str, panoptic_config: Any, tmp_path: Path) -> None:
    """mmdet's MaskFormer and Mask2Former panoptic configs (narrowed, on the synthetic panoptic data) train, are
    evaluated with PQ and predict panoptic maps at the images' size under MMDetModule."""
    from mmdet_lightning import MMDetDataModule, MMDetModule
    from mmdet_lightning.lightning_package import pl

    data = panoptic_config(batch_size=2)
    cfg = load_config(mmdet_configs_dir() / config)
    for key in ("data_root", "train_dataloader", "val_dataloader", "test_dataloader", "val_evaluator",
                "test_evaluator"):
        cfg[key] = data[key]
    cfg.train_cfg = dict(type="EpochBasedTrainLoop", max_epochs=1, val_interval=1)
    cfg.param_scheduler = []
    model = cfg.model
    model.backbone = data.model.backbone  # the tiny ResNet-18, out channels 16 .. 128
    for augment in model.data_preprocessor.get("batch_augments") or []:
        augment["size"] = (64, 64)
    model.train_cfg.pop("num_points", None)
    _shrunk(model.panoptic_head)
    _shrunk(model.train_cfg)
    head = model.panoptic_head
    head.in_channels = [16, 32, 64, 128]
    head.update(num_things_classes=len(CLASSES), num_stuff_classes=len(STUFF_CLASSES))
    head.loss_cls.class_weight = [1.0] * len(ALL_CLASSES) + [0.1]
    model.panoptic_fusion_head.update(num_things_classes=len(CLASSES), num_stuff_classes=len(STUFF_CLASSES))
    model.test_cfg.max_per_image = 10  # the instances of instance_on: at most queries x classes

    pl.seed_everything(0)
    module = MMDetModule(cfg)
    assert isinstance(module.task, PanopticTask)
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=2, accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, num_sanity_val_steps=0,
                         log_every_n_steps=1, default_root_dir=str(tmp_path))
    trainer.fit(module, datamodule=MMDetDataModule(cfg))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert np.isfinite(metrics["train/loss"]) and {"train/loss_cls", "train/loss_mask", "train/loss_dice"} <= set(
        metrics)
    assert 0.0 <= metrics["coco_panoptic/PQ"] <= 100.0 and "coco_panoptic/PQ_st" in metrics
    predictions: Any = trainer.predict(module, datamodule=MMDetDataModule(cfg))
    sample = predictions[0][0]
    assert sample.pred_panoptic_seg.sem_seg.shape == (1, 64, 64)
    assert module.task.predicted_instances(sample, 0.3) is not None


def test_prediction_writer_draws_the_segments(panoptic_config: Any, tmp_path: Path) -> None:
    from mmdet_lightning import MMDetDataModule, MMDetModule
    from mmdet_lightning.callbacks import DetectionWriter
    from mmdet_lightning.lightning_package import pl

    cfg = panoptic_config()
    pl.seed_everything(0)
    module = MMDetModule(cfg)
    writer = DetectionWriter(tmp_path / "out", score_thr=0.3)
    trainer = pl.Trainer(accelerator="cpu", logger=False, callbacks=[writer], enable_progress_bar=False,
                         default_root_dir=str(tmp_path))
    predictions: Any = trainer.predict(module, datamodule=MMDetDataModule(cfg))
    samples = [sample for batch in predictions for sample in batch]
    assert len(samples) == 6 and all(s.pred_panoptic_seg.sem_seg.shape == (1, 64, 64) for s in samples)
    drawn = sorted(p.name for p in (tmp_path / "out").glob("*.png"))
    assert drawn == sorted(Path(s.img_path).name for s in samples)
    source = np.asarray(Image.open(samples[0].img_path).convert("RGB"))
    assert not np.array_equal(np.asarray(Image.open(tmp_path / "out" / drawn[0]).convert("RGB")), source)
    results = json.loads((tmp_path / "out" / DetectionWriter.RESULTS_FILE).read_text())
    assert all(r["category_id"] <= len(CLASSES) and r["score"] == 1.0 for r in results)  # things' boxes only


@pytest.mark.slow
def test_shipped_panoptic_yaml(panoptic_root: Path, tmp_path: Path) -> None:
    """``mmdet-lightning fit --config configs/lightning/shapes_panoptic_fpn.yaml`` (``offline: true``), one short
    epoch, as a user runs it: the PQ metrics, the tables, the per-class PQ table and the checkpoints that monitor PQ."""
    import yaml

    from mmdet_lightning.wandb.records import artifacts, find_run_file, history, read_records

    from .helpers.user_env import REPO, explain, run_as_user

    (tmp_path / "configs").symlink_to(REPO / "configs")
    yaml_config = REPO / "configs" / "lightning" / "shapes_panoptic_fpn.yaml"
    done = run_as_user(["mmdet-lightning", "fit", "--config", str(yaml_config.relative_to(REPO)),
                        "--model.data_root", str(panoptic_root), "--trainer.max_epochs", "1",
                        "--trainer.limit_train_batches", "2"], cwd=tmp_path)
    assert done.returncode == 0, explain(done)
    run_folder = tmp_path / yaml.safe_load(yaml_config.read_text())["trainer"]["default_root_dir"]
    assert list((run_folder / "checkpoints").glob("epoch=0*.ckpt")), "ModelCheckpoint(monitor='coco_panoptic/PQ')"
    records = read_records(find_run_file(run_folder))
    rows = history(records)
    assert any("coco_panoptic/PQ" in row and "coco_panoptic/PQ_st" in row for row in rows)
    assert any("eval/per_class_pq/path" in row for row in rows)
    logged = artifacts(records)
    assert [a for a in logged if a.type == "model"] and [a for a in logged if a.name == "val"]
    assert [a for a in logged if a.type == "evaluation"]
    assert "coco_panoptic/PQ" in done.stdout + done.stderr  # the metrics table after the validation


@pytest.mark.slow
def test_two_processes_count_every_image_once(tmp_path: Path) -> None:
    """DDP (2 processes, gloo) on 5 validation images, so that the sampler pads one: the PQ / SQ / RQ of the two
    processes equal one process's validation of the same weights, and one W&B run has one table of each."""
    from mmdet_lightning import MMDetDataModule, MMDetModule
    from mmdet_lightning.config import replace_data_root
    from mmdet_lightning.lightning_package import pl
    from mmdet_lightning.wandb.records import artifacts, find_run_file, history, read_records

    from .conftest import CONFIGS
    from .helpers.user_env import run_as_user

    root = make_shapes_dataset(tmp_path / "data", ShapesConfig(num_train=8, num_val=5, width=64, height=64,
                                                                seed=1, panoptic=True))
    out = tmp_path / "ddp"
    out.mkdir()
    helper = Path(__file__).parent / "helpers" / "ddp_panoptic.py"
    done = run_as_user(["python", str(helper), str(out), str(root), "2"], cwd=out, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    ddp = json.loads((out / "metrics.json").read_text())

    cfg = replace_data_root(load_config(CONFIGS / "shapes_panoptic_fpn.py"), root)
    module = MMDetModule(cfg, load_from=str(out / "ckpt" / "last.ckpt"))
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    trainer.validate(module, datamodule=MMDetDataModule(cfg))
    single = module.last_eval_metrics
    assert single["coco_panoptic/PQ_st"] > 0
    assert {k: v for k, v in ddp.items() if k.startswith("coco_panoptic/")} == pytest.approx(single, abs=1e-6)

    records = read_records(find_run_file(out))  # exactly one W&B run
    logged = artifacts(records)
    assert len([a for a in logged if a.name == "val"]) == 1 and len([a for a in logged if a.type == "evaluation"]) == 1
    assert len([row for row in history(records) if "eval/per_class_pq/path" in row]) == 1
