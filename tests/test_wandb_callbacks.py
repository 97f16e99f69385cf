"""MMDetWandbCallback on real offline W&B runs, read back from the run's transaction log."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mmdet_lightning import MMDetDataModule, MMDetModule
from mmdet_lightning.callbacks import MMDetWandbCallback
from mmdet_lightning.lightning_package import pl
from mmdet_lightning.wandb.records import artifacts, find_run_file, history, read_records

ModelCheckpoint = pl.callbacks.ModelCheckpoint
CSVLogger, WandbLogger = pl.loggers.CSVLogger, pl.loggers.WandbLogger
MisconfigurationException = pl.utilities.exceptions.MisconfigurationException

INTERVAL = 2
TRAIN_BATCHES = 4


class EvalRecorder(pl.Callback):
    """What each validation computed, to compare with what reached W&B."""

    def __init__(self) -> None:
        self.metrics: list[dict[str, float]] = []

    def on_validation_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if not trainer.sanity_checking:
            self.metrics.append(dict(pl_module.last_eval_metrics))


def _fit(cfg: Any, tmp_path: Path, callback: MMDetWandbCallback, epochs: int, extra: list | None = None) -> tuple:
    recorder = EvalRecorder()
    logger = WandbLogger(offline=True, save_dir=str(tmp_path), project="mmdet-lightning-tests")
    checkpoint = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), every_n_epochs=1, save_top_k=-1,
                                 monitor="coco/bbox_mAP", mode="max")
    trainer = pl.Trainer(max_epochs=epochs, limit_train_batches=TRAIN_BATCHES, accelerator="cpu", logger=logger,
                         callbacks=[*(extra or []), recorder, checkpoint, callback], enable_progress_bar=False,
                         num_sanity_val_steps=1, default_root_dir=str(tmp_path))
    pl.seed_everything(0)
    trainer.fit(MMDetModule(cfg), datamodule=MMDetDataModule(cfg))
    logger.experiment.finish()
    return read_records(find_run_file(tmp_path)), recorder.metrics, checkpoint


def _table(artifact: Any, name: str) -> dict[str, Any]:
    entry = next(e for e in artifact.manifest.contents if e.path == f"{name}.table.json")
    return json.loads(Path(entry.local_path).read_text())


def _versions(records: list, name_suffix: str) -> list[Any]:
    return [a for a in artifacts(records) if a.name.endswith(name_suffix)]


def _gt_counts(ann_file: Path) -> dict[str, int]:
    coco = json.loads(ann_file.read_text())
    names = {image["id"]: image["file_name"] for image in coco["images"]}
    counts = dict.fromkeys(names.values(), 0)
    for ann in coco["annotations"]:
        counts[names[ann["image_id"]]] += 0 if ann["iscrowd"] else 1
    return counts


@pytest.mark.slow
def test_detection_run_logs_what_the_hook_logged(shapes_config: Any, trained_checkpoint: Path, shapes_root: Path,
                                                  tmp_path: Path) -> None:
    cfg = shapes_config("shapes_faster_rcnn.py", max_epochs=2, batch_size=4)
    cfg.load_from = str(trained_checkpoint)
    threshold = 0.3
    callback = MMDetWandbCallback(interval=INTERVAL, log_checkpoint=True, num_eval_images=5, bbox_score_thr=threshold)
    records, evals, _ = _fit(cfg, tmp_path, callback, epochs=2)
    run_id = next(r.run.run_id for r in records if r.WhichOneof("record_type") == "run")

    # interval metrics: every INTERVAL iterations, averaged, on one step axis; eval metrics after each validation
    rows = history(records)
    train_rows = [r for r in rows if "train/loss" in r]
    assert [r["trainer/global_step"] for r in train_rows] == list(range(INTERVAL, 2 * TRAIN_BATCHES + 1, INTERVAL))
    for row in train_rows:
        assert {"train/loss_rpn_cls", "train/loss_rpn_bbox", "train/loss_cls", "train/loss_bbox", "train/acc",
                "train/lr", "train/momentum", "train/data_time", "train/time", "train/memory"} <= set(row)
    eval_rows = [r for r in rows if "coco/bbox_mAP" in r]
    assert [r["coco/bbox_mAP"] for r in eval_rows] == pytest.approx([m["coco/bbox_mAP"] for m in evals])
    assert len(eval_rows) == 2 and max(m["coco/bbox_mAP"] for m in evals) > 0
    assert [r["_step"] for r in rows] == sorted(r["_step"] for r in rows)

    # the resolved mmdet config in wandb.config
    config = next(r.config for r in records if r.WhichOneof("record_type") == "config")
    resolved = json.loads(next(u.value_json for u in config.update if u.key == "config"))
    assert resolved["model"]["type"] == "FasterRCNN"

    # checkpoint artifacts: one version a checkpoint, aliases, metadata from the validation before it
    models = _versions(records, "_model")
    assert [m.name for m in models] == [f"run_{run_id}_model"] * 2 and {m.type for m in models} == {"model"}
    for epoch, (model, metrics) in enumerate(zip(models, evals, strict=False), start=1):
        # `best` goes with a version that is the best so far; W&B then moves the alias to it
        best_so_far = all(metrics["coco/bbox_mAP"] > m["coco/bbox_mAP"] for m in evals[: epoch - 1])
        expected = {f"epoch_{epoch}", "latest"} | ({"best"} if best_so_far else set())
        assert set(model.aliases) == expected
        metadata = json.loads(model.metadata)
        assert metadata["epoch"] == epoch and metadata["global_step"] == epoch * TRAIN_BATCHES
        assert metadata["coco/bbox_mAP"] == pytest.approx(metrics["coco/bbox_mAP"])
        assert [e.path for e in model.manifest.contents] == [f"epoch={epoch - 1}-step={epoch * TRAIN_BATCHES}.ckpt"]

    # the validation table: once, chosen images, columns, ground-truth boxes of each image
    vals = _versions(records, "val")
    assert len(vals) == 1 and vals[0].type == "dataset"
    table = _table(vals[0], "val_data")
    assert table["columns"] == ["image_name", "image"] and len(table["data"]) == 5
    counts = _gt_counts(shapes_root / "annotations" / "instances_val.json")
    for name, image in table["data"]:
        assert len(image["boxes"]["ground_truth"]) == counts[name]
        assert all(box["domain"] == "pixel" and box["class_id"] >= 1 for box in image["boxes"]["ground_truth"])

    # prediction tables: one per validation, images referenced from `val`, scores above the threshold
    preds = _versions(records, "_pred")
    assert [set(p.aliases) for p in preds] == [{"epoch_1", "latest"}, {"epoch_2", "latest"}]
    boxes = 0
    for pred in preds:
        assert pred.name == f"run_{run_id}_pred" and pred.type == "evaluation"
        images = [e for e in pred.manifest.contents if e.path.startswith("media/images/")]
        assert images and all(e.ref.startswith("wandb-client-artifact://") and not e.local_path for e in images)
        table = _table(pred, "eval_data")
        classes = ["circle", "square", "triangle"]
        assert table["columns"] == ["image_name", "ground_truth", "prediction", *[f"conf_{c}" for c in classes]]
        assert len(table["data"]) == 5
        assert [row[0] for row in table["data"]] == [row[0] for row in _table(vals[0], "val_data")["data"]]
        for _name, truth, prediction, *_confidence in table["data"]:
            assert truth["path"] == prediction["path"]  # the same referenced val image
            for box in prediction["boxes"]["predictions"]:
                assert box["scores"]["score"] > threshold
                assert box["box_caption"].endswith(f"{box['scores']['score']:.2f}")
                boxes += 1
    assert boxes > 0, "the trained model should predict some boxes above the threshold"


class CorruptImageBeforeTables(pl.Callback):
    """Replaces one validation image with garbage once validation has read it: the table must skip it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if not trainer.sanity_checking:
            self.path.write_bytes(b"not a png")


@pytest.mark.slow
def test_instance_segmentation_tables_and_bad_annotations(shapes_config: Any, shapes_root: Path,
                                                          tmp_path: Path) -> None:
    # a copy of the validation set with an empty polygon, a malformed one and an image that turns unreadable
    import shutil

    root = tmp_path / "shapes"
    shutil.copytree(shapes_root / "val", root / "val")
    (root / "annotations").mkdir(parents=True)
    coco = json.loads((shapes_root / "annotations" / "instances_val.json").read_text())
    polygon_images = sorted({a["image_id"] for a in coco["annotations"]})[:2]
    first = {image: next(a for a in coco["annotations"] if a["image_id"] == image) for image in polygon_images}
    first[polygon_images[0]]["segmentation"] = [[]]
    first[polygon_images[1]]["segmentation"] = [[3.0, 4.0, 5.0]]
    (root / "annotations" / "instances_val.json").write_text(json.dumps(coco))
    cfg = shapes_config("shapes_mask_rcnn.py", max_epochs=1, batch_size=4)
    for key in ("val_dataloader", "test_dataloader"):
        cfg[key].dataset.data_root = str(root)
    cfg.val_evaluator = dict(type="CocoMetric", ann_file=str(root / "annotations" / "instances_val.json"),
                             metric="bbox")
    unreadable = root / "val" / "000003.png"

    callback = MMDetWandbCallback(interval=INTERVAL, num_eval_images=20, bbox_score_thr=0.0)
    with pytest.warns(UserWarning) as caught:
        records, _, _ = _fit(cfg, tmp_path, callback, epochs=1, extra=[CorruptImageBeforeTables(unreadable)])
    messages = [str(w.message) for w in caught]
    assert sum("num_eval_images=20 is more than the 8 validation images" in m for m in messages) == 1
    assert sum("000003.png, which cannot be read" in m for m in messages) == 1
    names = {i["id"]: i["file_name"] for i in coco["images"]}
    for image_id in polygon_images:
        assert sum(names[image_id] in m and "mask" in m for m in messages) == 1

    val = _table(_versions(records, "val")[0], "val_data")
    assert len(val["data"]) == 7  # all 8 images but the unreadable one
    assert any(image.get("masks") for _, image in val["data"]), "ground-truth mask layers in the val table"
    pred = _table(_versions(records, "_pred")[0], "eval_data")
    assert len(pred["data"]) == 7
    assert any(row[2].get("masks") for row in pred["data"]), "mask layers in the prediction table"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(interval=0), "`interval` to be a positive int, but got 0"),
        (dict(interval=-5), "`interval` to be a positive int, but got -5"),
        (dict(num_eval_images=-1), "`num_eval_images` to be an int >= 0, but got -1"),
        (dict(bbox_score_thr=1.5), r"`bbox_score_thr` to be a float in \[0, 1\], but got 1.5"),
        (dict(bbox_score_thr=-0.1), r"`bbox_score_thr` to be a float in \[0, 1\], but got -0.1"),
    ],
)
def test_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MMDetWandbCallback(**kwargs)


def test_no_wandb_logger_is_a_setup_error(shapes_config: Any, tmp_path: Path) -> None:
    cfg = shapes_config("shapes_retinanet.py")
    trainer = pl.Trainer(max_epochs=1, logger=CSVLogger(str(tmp_path)), callbacks=[MMDetWandbCallback()],
                         accelerator="cpu", enable_progress_bar=False)
    with pytest.raises(MisconfigurationException, match=r"trainer.loggers has \['CSVLogger'\]"):
        trainer.fit(MMDetModule(cfg), datamodule=MMDetDataModule(cfg))
    assert trainer.global_step == 0


def test_log_checkpoint_without_model_checkpoint_warns(shapes_config: Any, tmp_path: Path) -> None:
    cfg = shapes_config("shapes_retinanet.py")
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0, accelerator="cpu",
                         logger=WandbLogger(offline=True, save_dir=str(tmp_path)), enable_checkpointing=False,
                         callbacks=[MMDetWandbCallback(log_checkpoint=True, num_eval_images=0)],
                         enable_progress_bar=False)
    with pytest.warns(UserWarning, match="no ModelCheckpoint callback: no checkpoint will be uploaded"):
        trainer.fit(MMDetModule(cfg), datamodule=MMDetDataModule(cfg))
    trainer.logger.experiment.finish()
    assert not _versions(read_records(find_run_file(tmp_path)), "_model")


def test_checkpoint_artifact_is_hashed_once_and_not_cached(shapes_config: Any, tmp_path: Path) -> None:
    """The checkpoint's MD5 in the artifact is the one SafeCheckpointIO computed while writing it (W&B does not
    read the file to hash it again) and the entry skips W&B's cache copy."""
    from wandb.sdk.lib.hashutil import md5_file_b64

    cfg = shapes_config("shapes_retinanet.py")
    logger = WandbLogger(offline=True, save_dir=str(tmp_path))
    checkpoint = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), every_n_epochs=1, save_top_k=-1)
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=1, accelerator="cpu", logger=logger,
                         callbacks=[checkpoint, MMDetWandbCallback(log_checkpoint=True, num_eval_images=0)],
                         enable_progress_bar=False, num_sanity_val_steps=0)
    trainer.fit(MMDetModule(cfg), datamodule=MMDetDataModule(cfg))
    logger.experiment.finish()
    [model] = _versions(read_records(find_run_file(tmp_path)), "_model")
    [entry] = model.manifest.contents
    [path] = (tmp_path / "ckpt").glob("*.ckpt")
    assert entry.path == path.name and entry.skip_cache
    assert entry.digest == md5_file_b64(str(path)) == trainer.strategy.checkpoint_io.md5_of(path)


def test_weights_only_checkpoint_artifact_is_the_mmdet_checkpoint(shapes_config: Any, tmp_path: Path) -> None:
    """checkpoint_weights_only=True: the artifact holds what to_mmdet_checkpoint writes from the saved checkpoint
    (same tensors, dataset_meta), smaller than the checkpoint, hashed from memory; the checkpoint stays on disk."""
    import torch
    from wandb.sdk.lib.hashutil import md5_file_b64

    from mmdet_lightning.checkpoint import to_mmdet_checkpoint

    cfg = shapes_config("shapes_retinanet.py")
    logger = WandbLogger(offline=True, save_dir=str(tmp_path))
    checkpoint = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), every_n_epochs=1, save_top_k=-1)
    callback = MMDetWandbCallback(log_checkpoint=True, checkpoint_weights_only=True, num_eval_images=0)
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=1, accelerator="cpu", logger=logger,
                         callbacks=[checkpoint, callback], enable_progress_bar=False, num_sanity_val_steps=0)
    trainer.fit(MMDetModule(cfg), datamodule=MMDetDataModule(cfg))
    logger.experiment.finish()
    [model] = _versions(read_records(find_run_file(tmp_path)), "_model")
    [entry] = model.manifest.contents
    [path] = (tmp_path / "ckpt").glob("*.ckpt")
    assert entry.path == path.with_suffix(".pth").name and entry.skip_cache
    metadata = json.loads(model.metadata)
    assert metadata["weights_only"] is True and "coco/bbox_mAP" in metadata
    uploaded = Path(entry.local_path)
    assert entry.digest == md5_file_b64(str(uploaded))
    assert uploaded.stat().st_size < 0.6 * path.stat().st_size  # no optimizer state
    weights = torch.load(uploaded, weights_only=True)
    expected = torch.load(to_mmdet_checkpoint(path, tmp_path / "expected.pth"), weights_only=True)
    assert weights["state_dict"].keys() == expected["state_dict"].keys()
    assert all(torch.equal(weights["state_dict"][k], v) for k, v in expected["state_dict"].items())
    assert weights["meta"] == expected["meta"] and weights["meta"]["dataset_meta"]["classes"]


def test_checkpoint_interval_must_be_a_multiple_of_validation(shapes_config: Any, tmp_path: Path) -> None:
    cfg = shapes_config("shapes_retinanet.py")
    trainer = pl.Trainer(max_epochs=3, check_val_every_n_epoch=2, limit_train_batches=1, accelerator="cpu",
                         logger=WandbLogger(offline=True, save_dir=str(tmp_path)), enable_progress_bar=False,
                         callbacks=[ModelCheckpoint(every_n_epochs=3), MMDetWandbCallback(log_checkpoint=True)])
    with pytest.raises(MisconfigurationException, match=r"every_n_epochs=3.*check_val_every_n_epoch=2"):
        trainer.fit(MMDetModule(cfg), datamodule=MMDetDataModule(cfg))
    assert trainer.global_step == 0
    trainer.logger.experiment.finish()


@pytest.mark.parametrize("settings, expected", [(None, 1.0), ({"x_transaction_log_flush_interval": 5.0}, 5.0)],
                         ids=["ours", "the user's"])
def test_the_run_flushes_every_second_unless_the_user_says_otherwise(shapes_config: Any, tmp_path: Path,
                                                                    settings: Any, expected: float) -> None:
    """The 1 s transaction-log flush is added to the logger's own run, and a value the user set wins."""
    import wandb

    cfg = shapes_config("shapes_retinanet.py")
    kwargs = {} if settings is None else {"settings": wandb.Settings(**settings)}
    logger = WandbLogger(offline=True, save_dir=str(tmp_path), **kwargs)
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0, accelerator="cpu", logger=logger,
                         callbacks=[MMDetWandbCallback(interval=1, num_eval_images=0)], enable_progress_bar=False,
                         enable_checkpointing=False)
    trainer.fit(MMDetModule(cfg), datamodule=MMDetDataModule(cfg))
    assert logger.experiment.settings.x_transaction_log_flush_interval == expected
    assert logger.experiment.settings._offline  # what offline=True asked for
    logger.experiment.finish()
    losses = [row["train/loss"] for row in history(read_records(find_run_file(tmp_path))) if "train/loss" in row]
    assert losses and all(loss > 0 for loss in losses), losses


# ---------------------------------------------------------------------------------------------- ONNX artifact
def _onnx_fit(tmp_path: Path, shapes_root: Path, cfg_options: list[str]) -> tuple[Any, Path]:
    """``mmdet-lightning fit --config run.yaml`` in a fresh process, as a user runs it: RetinaNet for one short
    epoch, ``MMDetWandbCallback(log_onnx=True)``, W&B offline."""
    import yaml

    from .helpers.user_env import REPO, run_as_user

    root = "work_dirs/onnx"
    config = {
        "seed_everything": 0,
        "trainer": {
            "max_epochs": 1, "limit_train_batches": 2, "num_sanity_val_steps": 0, "default_root_dir": root,
            "enable_progress_bar": False,
            "logger": {"class_path": "pytorch_lightning.loggers.WandbLogger",
                       "init_args": {"project": "onnx-test", "save_dir": root, "offline": True}},
            "callbacks": [
                {"class_path": "pytorch_lightning.callbacks.ModelCheckpoint",
                 "init_args": {"dirpath": f"{root}/checkpoints", "monitor": "coco/bbox_mAP", "mode": "max"}},
                {"class_path": "mmdet_lightning.callbacks.MMDetWandbCallback",
                 "init_args": {"log_checkpoint": True, "num_eval_images": 0, "log_onnx": True}},
            ],
        },
        "model": {"config": str(REPO / "configs" / "mmdet" / "shapes_retinanet.py"), "data_root": str(shapes_root),
                  "cfg_options": cfg_options},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    done = run_as_user(["mmdet-lightning", "fit", "--config", "run.yaml"], cwd=tmp_path, timeout=900)
    return done, tmp_path / root


@pytest.mark.slow
def test_log_onnx_logs_the_exported_model_with_onnxruntime_map(shapes_root: Path, tmp_path: Path) -> None:
    """At the end of fit the best checkpoint's weights are exported and logged as ``run_<id>_onnx`` (type ``model``,
    alias ``onnx``) with the input size, the opset and the validation mAP measured with onnxruntime, which equals
    the mAP validation logged for the same weights. (A score threshold of 0 gives the untrained RetinaNet detections
    to score.)"""
    from .helpers.user_env import explain

    done, root = _onnx_fit(tmp_path, shapes_root, ["model.test_cfg.score_thr=0.0"])
    assert done.returncode == 0, explain(done)
    assert "not exported to ONNX" not in done.stdout + done.stderr, explain(done)
    records = read_records(find_run_file(root))
    run_id = next(r.run.run_id for r in records if r.WhichOneof("record_type") == "run")
    [onnx_model] = _versions(records, "_onnx")
    assert onnx_model.name == f"run_{run_id}_onnx" and onnx_model.type == "model"
    assert set(onnx_model.aliases) == {"onnx", "best", "latest"}  # W&B adds `latest`
    [entry] = onnx_model.manifest.contents
    written = root / "model.onnx"
    assert entry.path == "model.onnx" and written.is_file() and entry.size == written.stat().st_size
    metadata = json.loads(onnx_model.metadata)
    print("ONNX artifact metadata:", metadata)
    [checkpoint] = (root / "checkpoints").glob("*.ckpt")
    assert metadata["input_size"] == "dynamic" and metadata["opset"] == 18
    assert metadata["weights"] == "best" and metadata["checkpoint"] == checkpoint.name
    assert metadata["epoch"] == 1 and metadata["global_step"] == 2
    assert metadata["family"] == "RetinaNet (one-stage, RetinaHead)"
    logged = [row["coco/bbox_mAP"] for row in history(records) if "coco/bbox_mAP" in row]
    assert len(logged) == 1 and metadata["pytorch"]["coco/bbox_mAP"] == pytest.approx(logged[0])
    onnx_map = metadata["onnxruntime"]
    assert set(onnx_map) == set(metadata["pytorch"])  # the same evaluator's keys
    for key in ("coco/bbox_mAP", "coco/bbox_mAP_50"):
        assert abs(onnx_map[key] - metadata["pytorch"][key]) <= 1e-3, (key, onnx_map, metadata["pytorch"])
    assert _versions(records, "_model"), "the checkpoint artifacts are still logged"

    from mmdet_lightning.deploy import OnnxDetector  # the logged file is the one a user serves

    found = OnnxDetector(written)(sorted((shapes_root / "val").glob("*.png"))[0])
    assert len(found) > 0 and found.class_names[0] in ("circle", "square", "triangle")


@pytest.mark.slow
def test_log_onnx_of_a_model_that_cannot_be_exported_warns_and_the_run_ends_normally(
        shapes_root: Path, tmp_path: Path) -> None:
    from .helpers.user_env import explain

    done, root = _onnx_fit(tmp_path, shapes_root, ["model.test_cfg.nms.type=soft_nms"])
    assert done.returncode == 0, explain(done)
    output = done.stdout + done.stderr
    assert ("W&B: the trained model was not exported to ONNX (Cannot export RetinaNet (one-stage, RetinaHead): NMS "
            "of type 'soft_nms' in test_cfg has no export form (only 'nms') [op: soft_nms])") in output, explain(done)
    records = read_records(find_run_file(root))
    assert not _versions(records, "_onnx") and not (root / "model.onnx").exists()
    assert _versions(records, "_model"), "the checkpoint artifacts are logged as without log_onnx"


def test_log_onnx_bad_arguments() -> None:
    from mmdet_lightning.callbacks import WandbOnnxArtifact

    with pytest.raises(ValueError, match=r"`weights` to be one of \('best', 'last'\), but got 'first'"):
        WandbOnnxArtifact(weights="first")
    with pytest.raises(ValueError, match=r"`input_size` to be \(height, width\) positive ints or None, but got"):
        MMDetWandbCallback(log_onnx=True, onnx_input_size=(128,))
    with pytest.raises(ValueError, match=r"`opset_version` to be an int >= 16, but got 13"):
        WandbOnnxArtifact(opset_version=13)
    assert type(MMDetWandbCallback(log_onnx=True).parts[-1]).__name__ == "WandbOnnxArtifact"
