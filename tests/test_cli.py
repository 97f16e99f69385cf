"""The mmdet-lightning command, end to end on the session's synthetic data, W&B offline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pycocotools.coco import COCO
from yaml import safe_load as yaml_load

from mmdet_lightning.cli import lightning_config_from_mmdet, run
from mmdet_lightning.wandb.records import artifacts, find_run_file, history, read_records

from .conftest import CONFIGS, REPO

YAML = REPO / "configs" / "lightning" / "shapes_faster_rcnn.yaml"


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The YAML configs write to work_dirs/ relative to the working directory."""
    monkeypatch.chdir(tmp_path)


def _common(shapes_root: Path) -> list[str]:
    return ["--config", str(YAML), "--model.config", str(CONFIGS / "shapes_faster_rcnn.py"),
            "--model.data_root", str(shapes_root)]


def _config_of(records: list) -> dict[str, Any]:
    """wandb.config as the run's config records left it (each record updates some keys)."""
    merged: dict[str, Any] = {}
    for record in records:
        if record.WhichOneof("record_type") == "config":
            merged.update({u.key: json.loads(u.value_json) for u in record.config.update})
    return merged


@pytest.mark.slow
def test_fit_validate_test_predict(shapes_root: Path, trained_checkpoint: Path, tmp_path: Path) -> None:
    common = _common(shapes_root)
    cli = run(["fit", *common, "--model.load_from", str(trained_checkpoint), "--trainer.max_epochs", "1",
               "--trainer.limit_train_batches", "2"])
    checkpoint = tmp_path / "work_dirs" / "shapes_faster_rcnn" / "checkpoints" / "last.ckpt"
    assert checkpoint.is_file()
    fit_map = float(cli.trainer.callback_metrics["coco/bbox_mAP"])
    assert fit_map > 0
    saved = (tmp_path / "work_dirs" / "shapes_faster_rcnn" / "config.yaml").read_text()
    assert "shapes_faster_rcnn.py" in saved and "MMDetWandbCallback" in saved
    records = read_records(find_run_file(tmp_path / "work_dirs" / "shapes_faster_rcnn" / "wandb"))
    config = _config_of(records)
    assert config["lightning_config"]["trainer"]["max_epochs"] == 1
    assert config["config"]["model"]["type"] == "FasterRCNN"
    assert {a.name.split("_")[-1] for a in artifacts(records)} >= {"model", "pred", "val"}

    # a second fit in the same folder does not abort on the existing config.yaml
    run(["fit", *common, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1",
         "--trainer.limit_val_batches", "1"])

    validated = run(["validate", *common, "--ckpt_path", str(checkpoint)])
    assert float(validated.trainer.callback_metrics["coco/bbox_mAP"]) == pytest.approx(fit_map, abs=1e-3)
    tested = run(["test", *common, "--ckpt_path", str(checkpoint)])
    assert float(tested.trainer.callback_metrics["coco/bbox_mAP"]) == pytest.approx(fit_map, abs=1e-3)

    run(["predict", *common, "--ckpt_path", str(checkpoint)])
    out = tmp_path / "work_dirs" / "shapes_faster_rcnn" / "predictions"
    ann_file = str(shapes_root / "annotations" / "instances_val.json")
    results = json.loads((out / "results.bbox.json").read_text())
    assert results and {r["category_id"] for r in results} <= {1, 2, 3}
    detections = COCO(ann_file).loadRes(str(out / "results.bbox.json"))
    assert len(detections.getAnnIds()) == len(results)
    assert sorted(p.name for p in out.glob("*.png")) == sorted(p.name for p in (shapes_root / "val").glob("*.png"))

    folder_out = tmp_path / "folder_predictions"
    run(["predict", *common, "--ckpt_path", str(checkpoint), "--data.predict_folder", str(shapes_root / "val"),
         "--trainer.default_root_dir", str(folder_out)])
    assert len(list((folder_out / "predictions").glob("*.png"))) == 8


@pytest.mark.slow
def test_mmdet_config_with_the_hook_of_the_original_page(shapes_root: Path, tmp_path: Path) -> None:
    config = tmp_path / "retinanet_wandb.py"
    config.write_text(
        f"_base_ = [{str(CONFIGS / 'shapes_retinanet.py')!r}]\n"
        "train_cfg = dict(max_epochs=1, val_interval=1)\n"
        f"work_dir = {str(tmp_path / 'run')!r}\n"
        "log_config = dict(hooks=[\n"
        "    dict(type='TextLoggerHook'),\n"
        "    dict(type='MMDetWandbHook', init_kwargs={'project': 'mmdetection', 'mode': 'offline'},\n"
        "         interval=1, log_checkpoint=True, log_checkpoint_metadata=True, num_eval_images=5,\n"
        "         bbox_score_thr=0.3)])\n"
    )
    derived = lightning_config_from_mmdet(config)
    assert derived["trainer"]["logger"]["init_args"]["project"] == "mmdetection"
    assert derived["trainer"]["callbacks"][-1]["init_args"] == {
        "interval": 1, "log_checkpoint": True, "log_checkpoint_metadata": True, "num_eval_images": 5,
        "bbox_score_thr": 0.3}

    run(["fit", str(config), "--model.data_root", str(shapes_root), "--trainer.limit_train_batches", "2"])
    records = read_records(find_run_file(tmp_path / "run"))
    run_record = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert run_record.project == "mmdetection"
    assert [row["trainer/global_step"] for row in history(records) if "train/loss" in row] == [1, 2]
    models = [a for a in artifacts(records) if a.type == "model"]
    assert len(models) == 1 and set(models[0].aliases) == {"epoch_1", "latest"}
    assert json.loads(models[0].metadata)["epoch"] == 1
    val = next(a for a in artifacts(records) if a.name == "val")
    table = json.loads(Path(next(e.local_path for e in val.manifest.contents
                                 if e.path == "val_data.table.json")).read_text())
    assert len(table["data"]) == 5
    assert (tmp_path / "run" / "epoch_0.ckpt").is_file() and (tmp_path / "run" / "derived_fit.yaml").is_file()


def test_data_subcommand(tmp_path: Path) -> None:
    run(["data", "--out", str(tmp_path / "d"), "--num-train", "2", "--num-val", "1", "--size", "32"])
    coco = json.loads((tmp_path / "d" / "annotations" / "instances_val.json").read_text())
    assert len(coco["images"]) == 1 and (tmp_path / "d" / "val" / "000000.png").is_file()


def test_help_reads_well(capsys: pytest.CaptureFixture) -> None:
    run(["--help"])
    out = capsys.readouterr().out
    assert "fit, validate, test, predict" in out and "data" in out
    with pytest.raises(SystemExit) as exit_info:
        run(["fit", "--help"])
    assert exit_info.value.code == 0
    assert "--model.config" in capsys.readouterr().out


def test_print_config(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        run(["fit", "--config", str(YAML), "--trainer.precision", "bf16-mixed",
             "--trainer.callbacks+=LearningRateMonitor", "--model.evaluator_backend", "faster_coco_eval",
             "--print_config"])
    printed = capsys.readouterr().out
    assert "evaluator_backend: faster_coco_eval" in printed
    assert "precision: bf16-mixed" in printed and "MMDetWandbCallback" in printed and "LearningRateMonitor" in printed


def test_unknown_yaml_key(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(YAML.read_text().replace("  max_epochs: 12", "  max_epochz: 12"))
    with pytest.raises(SystemExit) as exit_info:
        run(["fit", "--config", str(bad)])
    assert exit_info.value.code != 0
    assert "max_epochz" in capsys.readouterr().err


def test_missing_config_and_checkpoint(shapes_root: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="Config file .*missing.py.* does not exist"):
        run(["fit", "--config", str(YAML), "--model.config", str(tmp_path / "missing.py")])
    with pytest.raises(FileNotFoundError, match="--ckpt_path .*missing.ckpt.* does not exist"):
        run(["validate", *_common(shapes_root), "--ckpt_path", str(tmp_path / "missing.ckpt")])


def test_model_that_cannot_be_built(tmp_path: Path) -> None:
    config = tmp_path / "typo.py"
    config.write_text(f"_base_ = [{str(CONFIGS / 'shapes_retinanet.py')!r}]\nmodel = dict(type='RetinaNett')\n")
    with pytest.raises(ValueError, match=r"`RetinaNett` from mmdet's `MODELS` registry"):
        run(["fit", "--config", str(YAML), "--model.config", str(config)])


def test_predict_on_a_folder_without_images(shapes_root: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no images"):
        run(["predict", *_common(shapes_root), "--data.predict_folder", str(tmp_path / "empty"),
             "--trainer.default_root_dir", str(tmp_path)])


def test_cfg_options_reach_the_optimizer_schedules_and_dataloader(shapes_root: Path) -> None:
    cli = run(["fit", str(CONFIGS / "shapes_retinanet.py"), "--model.data_root", str(shapes_root),
               "--cfg-options", "optim_wrapper.optimizer.lr=0.005", "train_dataloader.batch_size=2",
               "param_scheduler.1.milestones=[1,2]", "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0"])
    assert cli.model.optim_wrapper.optimizer.param_groups[0]["initial_lr"] == 0.005
    assert cli.trainer.train_dataloader.batch_sampler.batch_size == 2
    assert sorted(cli.model.param_schedulers[1].milestones) == [1, 2]  # a nested list value
    assert cli.datamodule.cfg.train_dataloader.batch_size == 2 and cli.model.cfg.train_dataloader.batch_size == 2


def test_cfg_options_with_a_yaml_config(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        run(["fit", "--config", str(YAML), "--cfg-options", "train_dataloader.batch_size=2", "--print_config"])
    printed = yaml_load(capsys.readouterr().out)
    assert printed["model"]["cfg_options"] == ["train_dataloader.batch_size=2"]  # linked to data.cfg_options


@pytest.mark.parametrize("form", ["mmdet config", "yaml"])
def test_cfg_options_key_not_in_the_config(form: str) -> None:
    head = ["fit", str(CONFIGS / "shapes_retinanet.py")] if form == "mmdet config" else [
        "fit", "--config", str(YAML), "--model.config", str(CONFIGS / "shapes_faster_rcnn.py")]
    with pytest.raises(ValueError, match=r"`optim_wrapper.optimizer.lrr` is not in the config.*nearest: lr"):
        run([*head, "--cfg-options", "optim_wrapper.optimizer.lrr=0.1"])
    with pytest.raises(ValueError, match=r"`train_dataloader` has no `batchsize` \(nearest: batch_size,"):
        run([*head, "--cfg-options", "train_dataloader.batchsize=2"])
