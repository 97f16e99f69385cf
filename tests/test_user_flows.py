"""User flows run as a new user runs them: a fresh process, no W&B account, no ``WANDB_MODE``, stdin closed.

Each flow ends with an offline W&B run on disk, read back from its transaction log: model and prediction
artifacts, the ``val`` table, training scalars. And the console is what a Lightning user expects: no mmdet
chatter (it is in ``mmdet.log``), one COCO metrics table per validation.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mmdet_lightning.wandb.records import artifacts, find_run_file, history, read_records

from .conftest import CONFIGS
from .helpers.user_env import REPO, explain, run_as_user

# the panoptic YAMLs train on the panoptic data (tests/test_panoptic.py); the semi-supervised YAML needs an unlabeled
# split and logs teacher/, student/ metrics (tests/test_semi_supervised.py)
YAMLS = sorted(p for p in (REPO / "configs" / "lightning").glob("*.yaml")
               if "panoptic" not in p.stem and p.stem != "shapes_soft_teacher")
# what must never reach the console by default (it goes to mmdet.log)
CHATTER = ("loading annotations into memory", "KaimingInit", "Average Precision  (AP) @", "pkg_resources is deprecated",
           "Enter your choice", "No API key configured")


@pytest.fixture
def user_dir(tmp_path: Path) -> Path:
    """A working directory like a checkout's: ``configs/`` (the shipped YAMLs name ``configs/mmdet/...``)."""
    (tmp_path / "configs").symlink_to(REPO / "configs")
    return tmp_path


def _table_rows(artifact: object, table: str) -> list:
    entry = next(e for e in artifact.manifest.contents if e.path == f"{table}.table.json")
    return json.loads(Path(entry.local_path).read_text())["data"]


def assert_complete_offline_run(folder: Path, val_images: int, train_scalars: bool = False) -> list:
    """One offline run under ``folder``: model and prediction artifacts, the tables, eval metrics (and training
    scalars where the run had as many iterations as the callback's interval)."""
    records = read_records(find_run_file(folder))
    logged = artifacts(records)
    assert [a for a in logged if a.type == "model"], [a.name for a in logged]
    predictions = [a for a in logged if a.type == "evaluation"]
    assert predictions and len(_table_rows(predictions[-1], "eval_data")) == val_images
    val = [a for a in logged if a.name == "val"]
    assert len(val) == 1 and len(_table_rows(val[0], "val_data")) == val_images
    assert any("train/loss" in row for row in history(records)) or not train_scalars
    assert any("coco/bbox_mAP" in row for row in history(records))
    return records


def assert_clean_console(output: str, log_file: Path) -> None:
    for chatter in CHATTER:
        assert chatter not in output, f"{chatter!r} on the console:\n{output[-3000:]}"
    assert "epoch 1 validation" in output and "coco/bbox" in output  # the metrics table
    assert f"mmdet's own output goes to {log_file}" in output
    assert "loading annotations into memory" in log_file.read_text()


@pytest.mark.slow
@pytest.mark.both_packages
def test_readme_python_example(user_dir: Path, shapes_root: Path) -> None:
    """WandbLogger(offline=True) + MMDetWandbCallback(log_checkpoint=True, num_eval_images>0): the README's demo."""
    done = run_as_user(["python", str(REPO / "examples" / "train_shapes.py"), "--config",
                        str(CONFIGS / "shapes_retinanet.py"), "--data-root", "data", "--num-train", "8",
                        "--num-val", "4", "--epochs", "1", "--num-eval-images", "3", "--work-dir", "run"], cwd=user_dir)
    assert done.returncode == 0, explain(done)
    assert_complete_offline_run(user_dir / "run", val_images=3)
    assert_clean_console(done.stdout + done.stderr, user_dir / "run" / "mmdet.log")
    assert not (user_dir / "home" / ".netrc").exists()


@pytest.mark.slow
@pytest.mark.parametrize("yaml_config", [
    pytest.param(p, marks=[pytest.mark.both_packages] if p.stem == "shapes_retinanet" else []) for p in YAMLS
], ids=[p.stem for p in YAMLS])
def test_shipped_yaml(user_dir: Path, shapes_root: Path, yaml_config: Path) -> None:
    """``mmdet-lightning fit --config configs/lightning/<model>.yaml`` (``offline: true``), one short epoch."""
    done = run_as_user(["mmdet-lightning", "fit", "--config", str(yaml_config.relative_to(REPO)),
                        "--model.data_root", str(shapes_root), "--trainer.max_epochs", "1",
                        "--trainer.limit_train_batches", "2"], cwd=user_dir)
    assert done.returncode == 0, explain(done)
    run_folder = user_dir / yaml.safe_load(yaml_config.read_text())["trainer"]["default_root_dir"]
    assert_complete_offline_run(run_folder, val_images=8)  # the YAMLs ask for 20 of the 8 images: all of them
    assert_clean_console(done.stdout + done.stderr, run_folder / "mmdet.log")


def _seed_style_config(folder: Path) -> Path:
    """An mmdet config with the hook of the original W&B page in ``log_config.hooks``, no ``mode`` in it."""
    config = folder / "retinanet_wandb.py"
    config.write_text(
        f"_base_ = [{str(CONFIGS / 'shapes_retinanet.py')!r}]\n"
        "train_cfg = dict(max_epochs=1, val_interval=1)\n"
        f"work_dir = {str(folder / 'run')!r}\n"
        "log_config = dict(hooks=[\n"
        "    dict(type='TextLoggerHook'),\n"
        "    dict(type='MMDetWandbHook', init_kwargs={'project': 'mmdetection'}, interval=1, log_checkpoint=True,\n"
        "         log_checkpoint_metadata=True, num_eval_images=5, bbox_score_thr=0.3)])\n"
    )
    return config


@pytest.mark.slow
def test_mmdet_config_with_the_hook_falls_back_to_offline(user_dir: Path, shapes_root: Path) -> None:
    config = _seed_style_config(user_dir)
    done = run_as_user(["mmdet-lightning", "fit", str(config), "--model.data_root", str(shapes_root),
                        "--trainer.limit_train_batches", "2"], cwd=user_dir)
    assert done.returncode == 0, explain(done)
    assert "no W&B credentials found" in done.stdout + done.stderr and "wandb sync" in done.stdout + done.stderr
    records = assert_complete_offline_run(user_dir / "run", val_images=5, train_scalars=True)
    assert next(r.run for r in records if r.WhichOneof("record_type") == "run").project == "mmdetection"


@pytest.mark.slow
def test_wandb_disabled_by_the_user_logs_nothing(user_dir: Path, shapes_root: Path) -> None:
    """``WANDB_MODE=disabled`` decides, with our callbacks present: the run trains and nothing is written."""
    config = _seed_style_config(user_dir)
    done = run_as_user(["mmdet-lightning", "fit", str(config), "--model.data_root", str(shapes_root),
                        "--trainer.limit_train_batches", "2"], cwd=user_dir, WANDB_MODE="disabled")
    assert done.returncode == 0, explain(done)
    assert (user_dir / "run" / "last.ckpt").is_file()
    assert not list(user_dir.rglob("run-*.wandb")), list(user_dir.rglob("run-*.wandb"))


@pytest.mark.slow
def test_config_py_given_to_config(user_dir: Path, shapes_root: Path) -> None:
    """``fit --config x.py`` (what users type) runs the mmdet config like ``fit x.py``."""
    config = _seed_style_config(user_dir)
    done = run_as_user(["mmdet-lightning", "fit", "--config", str(config), "--model.data_root", str(shapes_root),
                        "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1"], cwd=user_dir)
    assert done.returncode == 0, explain(done)
    assert (user_dir / "run" / "derived_fit.yaml").is_file() and (user_dir / "run" / "last.ckpt").is_file()


@pytest.mark.slow
def test_sweep_command_line_as_the_agent_runs_it(user_dir: Path) -> None:
    """The command of ``examples/sweep.yaml`` with one value per parameter, as ``wandb agent`` expands it."""
    sweep = yaml.safe_load((REPO / "examples" / "sweep.yaml").read_text())
    values = {key: spec.get("value", spec.get("values", [spec.get("min")])[0]) for key, spec in
              sweep["parameters"].items()}
    values["train_cfg.max_epochs"] = 1  # the sweep's fixed 12 epochs, shortened for the test
    swept = [f"{key}={value}" for key, value in values.items()]
    command: list[str] = []
    for part in sweep["command"]:
        command += {"${env}": ["/usr/bin/env"], "${args_no_hyphens}": swept}.get(part, [part])
    make_data = run_as_user(["mmdet-lightning", "data", "--out", "data/shapes", "--num-train", "8", "--num-val", "4",
                             "--size", "96"], cwd=user_dir)
    assert make_data.returncode == 0, explain(make_data)
    done = run_as_user(command, cwd=user_dir)
    assert done.returncode == 0, explain(done)
    derived = yaml.safe_load((user_dir / "work_dirs" / "shapes_retinanet" / "derived_fit.yaml").read_text())
    assert derived["model"]["cfg_options"] == swept and derived["trainer"]["max_epochs"] == 1
    records = read_records(find_run_file(user_dir / "wandb"))
    assert next(r.run for r in records if r.WhichOneof("record_type") == "run").project == "mmdet-lightning-sweep"
    assert any("coco/bbox_mAP" in row for row in history(records))  # the sweep's metric
    config = {u.key: json.loads(u.value_json) for r in records if r.WhichOneof("record_type") == "config"
              for u in r.config.update}
    assert config["config"]["optim_wrapper"]["optimizer"]["lr"] == values["optim_wrapper.optimizer.lr"]
    assert config["config"]["param_scheduler"][1]["milestones"] == json.loads(values["param_scheduler.1.milestones"])
