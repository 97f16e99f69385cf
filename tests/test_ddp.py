"""Several processes (DDP, gloo, CPU): one W&B run, nothing logged twice, the same results as one process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from mmdet_lightning import MMDetDataModule, MMDetModule, analysis
from mmdet_lightning.callbacks import DetectionWriter
from mmdet_lightning.lightning_package import pl
from mmdet_lightning.wandb.records import artifacts, find_run_file, history, logged_table, read_records

from .helpers.user_env import run_as_user

HELPERS = Path(__file__).parent / "helpers"


def _run_script(name: str, out: Path, *args: Any) -> subprocess.CompletedProcess:
    """``tests/helpers/<name> out args...`` in a fresh process, as a new user's shell runs it (no W&B account or
    WANDB_MODE: the script's WandbLogger(offline=True) decides), stdin closed."""
    out.mkdir(parents=True, exist_ok=True)
    return run_as_user(["python", str(HELPERS / name), str(out), *map(str, args)], cwd=out, timeout=900)


def _predictions_by_image(path: Path) -> dict[int, list[tuple[int, float]]]:
    found: dict[int, list[tuple[int, float]]] = {}
    for result in json.loads(path.read_text()):
        found.setdefault(result["image_id"], []).append((result["category_id"], round(result["score"], 4)))
    return {image: sorted(results) for image, results in found.items()}


@pytest.mark.slow
@pytest.mark.both_packages
def test_two_processes_log_once_and_evaluate_like_one(shapes_root: Path, shapes_config: Any,
                                                        trained_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    folder = tmp_path / "seven_images"  # 7 images over 2 processes: the sampler pads one
    folder.mkdir()
    for image in sorted((shapes_root / "val").glob("*.png"))[:7]:
        shutil.copy(image, folder)
    done = _run_script("ddp_fit.py", out, shapes_root, trained_checkpoint, 2, folder)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    # wrapped as mmengine's runner wraps: no broadcast of rank 0's buffers before every forward
    assert json.loads((out / "ddp.json").read_text()) == {"broadcast_buffers": False}

    records = read_records(find_run_file(out))  # exactly one W&B run
    logged = artifacts(records)
    models = [a for a in logged if a.type == "model"]
    assert [sorted(a.aliases) for a in models] == [["epoch_1", "latest"], ["epoch_2", "latest"]]
    assert len([a for a in logged if a.name == "val"]) == 1
    preds = [a for a in logged if a.type == "evaluation"]
    assert len(preds) == 2
    for pred in preds:
        entry = next(e for e in pred.manifest.contents if e.path == "eval_data.table.json")
        assert len(json.loads(Path(entry.local_path).read_text())["data"]) == 5

    # one process, the same weights: the same mAP (DDP's evaluation drops the samplers' padding)
    cfg = shapes_config("shapes_faster_rcnn.py", batch_size=2)
    module = MMDetModule(cfg, load_from=str(out / "ckpt" / "last.ckpt"))
    single_out = tmp_path / "single_predictions"
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         callbacks=[DetectionWriter(single_out, draw=False)])
    single = trainer.validate(module, datamodule=MMDetDataModule(cfg))[0]
    assert metrics["coco/bbox_mAP"] > 0
    assert single["coco/bbox_mAP"] == pytest.approx(metrics["coco/bbox_mAP"], abs=1e-3)

    # the analytics of the last validation (logged from rank 0, every image once): those of one process
    row = [r for r in history(records) if "eval/per_class_ap/path" in r][-1]
    per_class = logged_table(find_run_file(out), row, "eval/per_class_ap")["data"]
    rows = analysis.class_ap(module.last_coco_eval["bbox"], score_thr=0.3)
    assert [r[-3:-1] for r in per_class] == [[c.num_gt, c.num_det] for c in rows] and sum(c.num_det for c in rows) > 0
    counts = logged_table(find_run_file(out), row, "eval/confusion_matrix_counts")["data"]
    expected = analysis.confusion_matrix(module.last_coco_eval["bbox"], score_thr=0.3)
    assert [r[1:] for r in counts] == expected.astype(int).tolist()

    # the predictions gathered from both processes: every image once, as one process predicts them
    trainer.predict(module, datamodule=MMDetDataModule(cfg, predict_folder=str(folder)), return_predictions=False)
    gathered = _predictions_by_image(out / "predictions" / DetectionWriter.RESULTS_FILE)
    expected = _predictions_by_image(single_out / DetectionWriter.RESULTS_FILE)
    assert sorted(gathered) == sorted(expected) and len(expected) >= 5
    assert sum(map(len, gathered.values())) == sum(map(len, expected.values())) > 0
    for image, results in expected.items():
        assert [c for c, _ in gathered[image]] == [c for c, _ in results]
        assert [s for _, s in gathered[image]] == pytest.approx([s for _, s in results], abs=2e-3)


@pytest.mark.slow
def test_two_processes_give_the_loss_curve_of_one_with_the_same_global_batch(shapes_root: Path,
                                                                              tmp_path: Path) -> None:
    curves = {}
    for devices in (1, 2):
        out = tmp_path / f"devices{devices}"
        done = _run_script("ddp_loss_curve.py", out, shapes_root, devices)
        assert done.returncode == 0, done.stderr[-3000:]
        curves[devices] = json.loads((out / "losses.json").read_text())
    one, two = curves[1], curves[2]
    assert len(one) == len(two) == 12
    assert two[0] == pytest.approx(one[0], rel=0.02)  # same weights, the same 4 images
    relative = [abs(a - b) / a for a, b in zip(one, two, strict=True)]
    assert max(relative) < 0.03, list(zip(one, two, strict=True))  # measured: 0.8 % at most
    assert one[-1] < one[0] and two[-1] < two[0]


@pytest.mark.slow
def test_unused_parameters_are_named_after_the_first_iteration(shapes_root: Path, tmp_path: Path) -> None:
    done = _run_script("ddp_loss_curve.py", tmp_path, shapes_root, 1, "unused")
    assert done.returncode != 0
    assert "2 parameters received no gradient in the first iteration (never_used.weight, never_used.bias)" \
        in done.stderr
    assert "find_unused_parameters = True" in done.stderr


def _setup(module_or_datamodule: Any, **trainer_kwargs: Any) -> None:
    """Run ``setup("fit")`` as each DDP process would, without starting processes."""
    module_or_datamodule.trainer = pl.Trainer(accelerator="cpu", logger=False, **trainer_kwargs)
    module_or_datamodule.setup("fit")


def test_more_cpu_processes_than_cores_run_with_a_warning(shapes_config: Any) -> None:
    cores = os.cpu_count()
    with pytest.warns(UserWarning, match=rf"devices={cores + 1} CPU processes per node, but this machine has "
                                         rf"{cores} CPU cores: the processes share the cores"):
        _setup(MMDetModule(shapes_config("shapes_retinanet.py")), devices=cores + 1, strategy="ddp")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*CPU processes per node")
        _setup(MMDetModule(shapes_config("shapes_retinanet.py")), devices=cores, strategy="ddp")


def test_sync_batchnorm_on_cpu_processes(shapes_config: Any) -> None:
    with pytest.raises(ValueError, match="sync_batchnorm=True needs CUDA"):
        _setup(MMDetModule(shapes_config("shapes_retinanet.py")), devices=2, strategy="ddp", sync_batchnorm=True)


def test_strategy_that_cannot_run_here() -> None:
    with pytest.raises(ValueError, match="requires a GPU accelerator"):
        pl.Trainer(accelerator="cpu", strategy="fsdp", logger=False)


def test_global_batch_size_must_divide(shapes_config: Any) -> None:
    cfg = shapes_config("shapes_retinanet.py")
    with pytest.raises(ValueError, match=r"(?s)global_batch_size=5 does not divide over 2 processes.*multiple of 2"):
        _setup(MMDetDataModule(cfg, global_batch_size=5), devices=2, strategy="ddp")
    with pytest.raises(ValueError, match="positive integer"):
        MMDetDataModule(cfg, global_batch_size=0)
    datamodule = MMDetDataModule(cfg, global_batch_size=6)
    _setup(datamodule, devices=2, strategy="ddp")
    assert datamodule.cfg.train_dataloader.batch_size == 3


def test_sync_bn_configs_run_in_one_process_and_every_norm_converts_for_ddp(shapes_config: Any) -> None:
    from torch.nn.modules.batchnorm import _BatchNorm

    cfg = shapes_config("shapes_rtmdet.py", batch_size=2)
    for part in ("backbone", "neck", "bbox_head"):
        cfg.model[part].norm_cfg = dict(type="SyncBN", requires_grad=True)  # as mmdet's RTMDet configs
    module = MMDetModule(cfg)
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in module.modules())
    trainer = pl.Trainer(accelerator="cpu", max_steps=2, limit_val_batches=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(module, datamodule=MMDetDataModule(cfg))  # SyncBN reverted to BatchNorm, as mmengine's runner does
    norms = [m for m in module.modules() if isinstance(m, _BatchNorm)]
    assert norms and not any(isinstance(m, torch.nn.SyncBatchNorm) for m in norms)
    converted = pl.plugins.TorchSyncBatchNorm().apply(module.model)  # what Trainer(sync_batchnorm=True) does under DDP
    assert sum(isinstance(m, torch.nn.SyncBatchNorm) for m in converted.modules()) == len(norms)


@pytest.mark.slow
def test_accumulating_steps_do_not_synchronise_gradients(shapes_root: Path, tmp_path: Path) -> None:
    done = _run_script("ddp_loss_curve.py", tmp_path, shapes_root, 2, "accumulate")
    assert done.returncode == 0, done.stderr[-3000:]
    gradients = json.loads((tmp_path / "gradients.json").read_text())
    assert len(gradients["accumulating"]) == len(gradients["update"]) == 6
    for rank0, rank1 in gradients["accumulating"]:  # each process's own gradient: no all-reduce yet
        assert rank0 != pytest.approx(rank1, rel=1e-6)
    for rank0, rank1 in gradients["update"]:  # all-reduced over both steps before the update
        assert rank0 == pytest.approx(rank1, rel=1e-6)
