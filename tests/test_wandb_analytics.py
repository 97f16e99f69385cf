"""WandbEvalAnalytics on real offline W&B runs, read back from the run's transaction log and files.

Reference numbers come from mmdet itself: the per-class table CocoMetric(classwise=True) prints, the COCOeval it
built, and its confusion-matrix tool on the same predictions.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mmdet_lightning import MMDetDataModule, MMDetModule
from mmdet_lightning.callbacks import MMDetWandbCallback, WandbEvalAnalytics
from mmdet_lightning.lightning_package import pl
from mmdet_lightning.utilities import first_dataset
from mmdet_lightning.wandb.records import artifacts, find_run_file, history, logged_table, read_records, summary

from .test_analysis import mmdet_confusion_tool

WandbLogger = pl.loggers.WandbLogger

THR = 0.3


class MMDetRecorder(pl.Callback):
    """What mmdet computed at each evaluation: its printed classwise tables, its COCOeval objects, the
    metrics, and every prediction (for mmdet's confusion-matrix tool)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.evals: list[dict[str, Any]] = []
        self.predictions: dict[str, Any] = {}
        self._handler = logging.Handler()
        self._handler.emit = lambda record: self.lines.extend(record.getMessage().splitlines())  # type: ignore

    def _start(self, *args: Any) -> None:
        from mmengine.logging import MMLogger

        self.lines, self.predictions = [], {}
        MMLogger.get_current_instance().addHandler(self._handler)

    on_validation_start = on_test_start = _start

    def _batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, *args: Any) -> None:
        for sample in outputs:
            self.predictions[sample.metainfo["img_path"]] = {
                k: sample.pred_instances[k].cpu() for k in ("bboxes", "labels", "scores")}

    on_validation_batch_end = on_test_batch_end = _batch_end

    def _end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if trainer.sanity_checking:
            return
        self.evals.append({
            "printed": _classwise_tables(self.lines), "metrics": dict(pl_module.last_eval_metrics),
            "precision": {k: ev.eval["precision"].copy() for k, ev in pl_module.last_coco_eval.items()},
            "tool": _tool_counts(first_dataset(trainer.test_dataloaders if trainer.testing
                                               else trainer.val_dataloaders), self.predictions)})

    on_validation_end = on_test_end = _end


def _classwise_tables(lines: list[str]) -> list[dict[str, list[float]]]:
    """Each classwise table mmdet printed (in metric order): class -> [mAP, mAP_50, mAP_75]."""
    tables: list[dict[str, list[float]]] = []
    for line in lines:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[:2] == ["category", "mAP"]:
            tables.append({})
        elif tables and len(cells) == 7:
            tables[-1][cells[0]] = [float(c) for c in cells[1:4]]
    return tables


def _tool_counts(dataset: Any, predictions: dict[str, Any]) -> np.ndarray:
    import contextlib
    import io

    results = [{"pred_instances": predictions[dataset.get_data_info(i)["img_path"]]} for i in range(len(dataset))]
    with contextlib.redirect_stdout(io.StringIO()):
        return mmdet_confusion_tool().calculate_confusion_matrix(dataset, results, score_thr=THR, tp_iou_thr=0.5)


def _run(tmp_path: Path, cfg: Any, fn: str, callback: MMDetWandbCallback, epochs: int = 1,
         **logger_kwargs: Any) -> tuple[list, Path, MMDetRecorder, MMDetModule]:
    recorder = MMDetRecorder()
    logger = WandbLogger(offline=True, save_dir=str(tmp_path), project="mmdet-lightning-tests", **logger_kwargs)
    trainer = pl.Trainer(max_epochs=epochs, limit_train_batches=1, accelerator="cpu", logger=logger,
                         callbacks=[recorder, callback], enable_progress_bar=False, num_sanity_val_steps=1,
                         enable_checkpointing=False, default_root_dir=str(tmp_path))
    pl.seed_everything(0)
    module = MMDetModule(cfg)
    getattr(trainer, fn)(module, datamodule=MMDetDataModule(cfg))
    logger.experiment.finish()
    run_file = find_run_file(tmp_path)
    return read_records(run_file), run_file, recorder, module


def _trained_faster_rcnn(shapes_config: Any, trained_checkpoint: Path) -> Any:
    """The session's trained Faster R-CNN, its evaluator printing mmdet's classwise table (what the tests compare)."""
    cfg = shapes_config("shapes_faster_rcnn.py", batch_size=4)
    cfg.load_from = str(trained_checkpoint)
    cfg.val_evaluator.classwise = True
    return cfg


def _rows_with(records: list, key: str) -> list[dict[str, Any]]:
    return [row for row in history(records) if f"{key}/path" in row]


def _check_per_class(table: dict[str, Any], printed: list[dict[str, list[float]]], iou_types: list[str]) -> None:
    columns = table["columns"]
    assert columns == ["class", *[f"{t}_{c}" for t in iou_types for c in ("AP", "AP50", "AP75")],
                       "num_gt", "num_det", "note"]
    assert [row[0] for row in table["data"]] == list(printed[0])
    for row in table["data"]:
        for k in range(len(iou_types)):
            ours = row[1 + 3 * k: 4 + 3 * k]
            theirs = printed[k][row[0]]
            for a, b in zip(ours, theirs, strict=False):
                assert (a is None) == np.isnan(b)
                assert a is None or abs(a - b) <= 1e-3, (row, theirs)
        assert (row[-1] == "no ground truth") == (row[-3] == 0)


def _check_pr_curves(table: dict[str, Any], precision: np.ndarray, classes: list[str]) -> None:
    assert table["columns"] == ["step", "lineKey", "lineVal"]
    lines: dict[str, list[tuple[float, float]]] = {}
    for recall, key, value in table["data"]:
        lines.setdefault(key, []).append((recall, value))
    at50 = precision[0, :, :, 0, -1]
    with_gt = [k for k in range(len(classes)) if (at50[:, k] > -1).any()]
    assert list(lines) == [classes[k] for k in with_gt] + ["mean@0.5", "mean@0.5:0.95"]
    for k in with_gt:
        assert [r for r, _ in lines[classes[k]]] == pytest.approx(np.linspace(0, 1, 101).tolist())
        assert [v for _, v in lines[classes[k]]] == pytest.approx(at50[:, k].tolist())
    assert [v for _, v in lines["mean@0.5"]] == pytest.approx(at50[:, with_gt].mean(axis=1).tolist())
    assert [v for _, v in lines["mean@0.5:0.95"]] == pytest.approx(
        precision[:, :, with_gt, 0, -1].mean(axis=(0, 2)).tolist())


def _check_confusion(records_row: dict, run_file: Path, prefix: str, expected: np.ndarray, classes: list[str]) -> None:
    names = [*classes, "background"]
    counts = logged_table(run_file, records_row, f"{prefix}/confusion_matrix_counts")
    assert counts["columns"] == ["ground_truth", *names]
    assert [row[0] for row in counts["data"]] == names
    np.testing.assert_array_equal(np.array([row[1:] for row in counts["data"]]), expected)
    chart = logged_table(run_file, records_row, f"{prefix}/confusion_matrix_table")
    assert chart["columns"] == ["Actual", "Predicted", "nPredictions"]
    assert {(a, p): n for a, p, n in chart["data"]} == {
        (names[i], names[j]): expected[i, j] for i in range(len(names)) for j in range(len(names))}


@pytest.mark.slow
def test_fit_logs_mmdet_numbers_after_each_validation(shapes_config: Any, trained_checkpoint: Path,
                                                      tmp_path: Path) -> None:
    cfg = _trained_faster_rcnn(shapes_config, trained_checkpoint)
    callback = MMDetWandbCallback(interval=1, num_eval_images=4, bbox_score_thr=THR)
    records, run_file, recorder, module = _run(tmp_path, cfg, "fit", callback, epochs=2)
    classes = list(module.trainer.datamodule.val_dataloader().dataset.metainfo["classes"])
    assert len(recorder.evals) == 2

    for row, evaluation in zip(_rows_with(records, "eval/per_class_ap"), recorder.evals, strict=True):
        _check_per_class(logged_table(run_file, row, "eval/per_class_ap"), evaluation["printed"], ["bbox"])
        _check_pr_curves(logged_table(run_file, row, "eval/bbox_pr_curve_table"), evaluation["precision"]["bbox"],
                         classes)
        _check_confusion(row, run_file, "eval", evaluation["tool"], classes)
    assert recorder.evals[-1]["tool"][:-1, :-1].trace() > 0, "the trained model finds objects"

    # run summary: best mAP and its epoch, model size and speed
    found = summary(records)
    maps = [e["metrics"]["coco/bbox_mAP"] for e in recorder.evals]
    assert found["best/coco/bbox_mAP"] == pytest.approx(max(maps)) and found["best/epoch"] == 1 + maps.index(max(maps))
    assert found["model/params"] == sum(p.numel() for p in module.model.parameters())
    assert found["model/flops"] > 1e8 and 0 < found["speed/ms_per_image"] < 60_000
    # counted on the worker, on copies: the FLOPs of mmengine's whole complexity analysis (get_flops.py's)
    assert found["model/flops"] == _get_flops_tool(module.model, module.trainer.datamodule.val_dataloader())

    # eval_data: a mean-confidence column a class, the mean score of that class's boxes in the row
    preds = [a for a in artifacts(records) if a.name.endswith("_pred")]
    entry = next(e for e in preds[-1].manifest.contents if e.path == "eval_data.table.json")
    table = json.loads(Path(entry.local_path).read_text())
    assert table["columns"] == ["image_name", "ground_truth", "prediction", *[f"conf_{c}" for c in classes]]
    filled = 0
    for row in table["data"]:
        boxes = row[2]["boxes"]["predictions"]
        for k, value in enumerate(row[3:]):
            scores = [b["scores"]["score"] for b in boxes if b["class_id"] == k + 1]
            assert (value is None) == (not scores)
            if scores:
                assert value == pytest.approx(np.mean(scores), abs=1e-5)
                filled += 1
    assert filled > 0


def _get_flops_tool(model: Any, loader: Any) -> int:
    """FLOPs as mmdet's tools/analysis_tools/get_flops.py counts them, on the first image of ``loader``."""
    import torch
    from mmengine.analysis import get_model_complexity_info

    from mmdet_lightning.wandb.analytics import _TensorForward

    batch = next(iter(loader))
    model.eval()
    with torch.no_grad():
        data = model.data_preprocessor({key: value[:1] for key, value in batch.items()}, False)
        info = get_model_complexity_info(_TensorForward(model, data["data_samples"]), inputs=data["inputs"],
                                         show_table=False, show_arch=False)
    return int(info["flops"])


@pytest.mark.slow
def test_validate_run_has_its_job_type_tables_and_charts(shapes_config: Any, trained_checkpoint: Path,
                                                         tmp_path: Path) -> None:
    cfg = _trained_faster_rcnn(shapes_config, trained_checkpoint)
    callback = MMDetWandbCallback(num_eval_images=3, bbox_score_thr=THR)
    records, run_file, recorder, module = _run(tmp_path, cfg, "validate", callback)
    classes = list(module.trainer.datamodule.val_dataloader().dataset.metainfo["classes"])
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert run.job_type == "validate"
    (row,) = _rows_with(records, "eval/per_class_ap")
    (evaluation,) = recorder.evals
    _check_per_class(logged_table(run_file, row, "eval/per_class_ap"), evaluation["printed"], ["bbox"])
    _check_pr_curves(logged_table(run_file, row, "eval/bbox_pr_curve_table"), evaluation["precision"]["bbox"], classes)
    _check_confusion(row, run_file, "eval", evaluation["tool"], classes)
    logged = artifacts(records)
    assert [a.type for a in logged if a.name == "val"] == ["dataset"]
    (pred,) = [a for a in logged if a.name.endswith("_pred")]
    assert set(pred.aliases) == {"validate", "latest"}
    found = summary(records)
    assert "best/epoch" not in found and found["model/flops"] > 0 and found["speed/ms_per_image"] > 0


@pytest.mark.slow
def test_test_run_of_instance_segmentation_has_segm_ap(shapes_config: Any, tmp_path: Path) -> None:
    cfg = shapes_config("shapes_mask_rcnn.py", batch_size=4)
    cfg.test_evaluator = dict(cfg.test_evaluator, classwise=True)
    callback = MMDetWandbCallback(num_eval_images=0, bbox_score_thr=THR)
    records, run_file, recorder, module = _run(tmp_path, cfg, "test", callback, job_type="my-eval")
    classes = list(module.trainer.datamodule.test_dataloader().dataset.metainfo["classes"])
    assert next(r.run for r in records if r.WhichOneof("record_type") == "run").job_type == "my-eval"  # user's kept
    (row,) = _rows_with(records, "test/per_class_ap")
    (evaluation,) = recorder.evals
    assert len(evaluation["printed"]) == 2  # mmdet's bbox and segm tables
    _check_per_class(logged_table(run_file, row, "test/per_class_ap"), evaluation["printed"], ["bbox", "segm"])
    _check_pr_curves(logged_table(run_file, row, "test/segm_pr_curve_table"), evaluation["precision"]["segm"], classes)
    _check_confusion(row, run_file, "test", evaluation["tool"], classes)


def test_validation_without_any_detection(shapes_config: Any, shapes_root: Path, tmp_path: Path) -> None:
    cfg = shapes_config("shapes_faster_rcnn.py", batch_size=4)
    cfg.model.test_cfg.rcnn.score_thr = 1.01  # nothing is detected
    callback = MMDetWandbCallback(num_eval_images=0, pr_curves=False, run_summary=False)
    with pytest.warns(UserWarning, match="no detections on the whole dataset"):
        records, run_file, recorder, module = _run(tmp_path, cfg, "validate", callback)
    (row,) = _rows_with(records, "eval/per_class_ap")
    assert not any("pr_curve" in key for key in row) and "model/params" not in summary(records)
    table = logged_table(run_file, row, "eval/per_class_ap")
    coco = json.loads((shapes_root / "annotations" / "instances_val.json").read_text())
    gt = [sum(a["category_id"] == k + 1 and not a["iscrowd"] for a in coco["annotations"]) for k in range(3)]
    assert [r[1:] for r in table["data"]] == [[0.0, 0.0, 0.0, n, 0, ""] for n in gt]
    _check_confusion(row, run_file, "eval", recorder.evals[0]["tool"], ["circle", "square", "triangle"])
    assert recorder.evals[0]["tool"][:-1, -1].tolist() == gt  # every object missed


def test_parts_turn_off_and_bad_arguments() -> None:
    names = [type(p).__name__ for p in MMDetWandbCallback(per_class_ap=False, pr_curves=False, confusion_matrix=False,
                                                          run_summary=False).parts]
    assert "WandbEvalAnalytics" not in names
    part = MMDetWandbCallback(pr_curves=False, bbox_score_thr=0.5, monitor="coco/segm_mAP").parts[-1]
    assert isinstance(part, WandbEvalAnalytics) and not part.pr_curves and part.per_class_ap
    assert part.bbox_score_thr == 0.5 and part.monitor == "coco/segm_mAP"
    for kwargs, message in [
        (dict(pr_curves="yes"), "`pr_curves` to be a bool, but got 'yes'"),
        (dict(mode="best"), r"`mode` to be one of \('max', 'min'\), but got 'best'"),
        (dict(tp_iou_thr=1.5), r"`tp_iou_thr` to be a float in \[0, 1\], but got 1.5"),
        (dict(monitor=""), "`monitor` to be a metric name, but got ''"),
    ]:
        with pytest.raises(ValueError, match=message):
            WandbEvalAnalytics(**kwargs)
    with pytest.raises(ValueError, match="`mean_confidence` to be a bool, but got 1"):
        MMDetWandbCallback(mean_confidence=1)


def test_cli_validate_logs_the_analytics(shapes_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mmdet_lightning.cli import run

    from .conftest import CONFIGS, REPO

    monkeypatch.chdir(tmp_path)  # the YAML writes checkpoints to work_dirs/
    # an absolute W&B folder: wandb's service process resolves a relative one against its own working
    # directory, which is that of the first test in this process that started a run
    save_dir = tmp_path / "work_dirs" / "shapes_faster_rcnn"
    run(["validate", "--config", str(REPO / "configs" / "lightning" / "shapes_faster_rcnn.yaml"),
         "--model.config", str(CONFIGS / "shapes_faster_rcnn.py"), "--model.data_root", str(shapes_root),
         "--trainer.logger.init_args.save_dir", str(save_dir)])
    run_file = find_run_file(save_dir / "wandb")
    records = read_records(run_file)
    assert next(r.run for r in records if r.WhichOneof("record_type") == "run").job_type == "validate"
    (row,) = _rows_with(records, "eval/per_class_ap")
    table = logged_table(run_file, row, "eval/per_class_ap")
    assert [r[0] for r in table["data"]] == ["circle", "square", "triangle"]
    assert {"eval/bbox_pr_curve_table/path", "eval/confusion_matrix_counts/path"} <= set(row)
    (pred,) = [a for a in artifacts(records) if a.name.endswith("_pred")]
    assert set(pred.aliases) == {"validate", "latest"}
    assert summary(records)["model/params"] > 0


def test_validate_from_a_fit_checkpoint_starts_its_run_afresh(tmp_path: Path) -> None:
    """``validate --ckpt_path`` restores callback states (Lightning does for every stage) into a new W&B run:
    the same images, but `val` is logged there, and the fit's best metric is not that run's."""
    from mmdet_lightning.callbacks import WandbDetectionTables

    trainer = pl.Trainer(logger=WandbLogger(offline=True, save_dir=str(tmp_path)), accelerator="cpu")
    fit_state = {"WandbDetectionTables": {"indices": [1, 4], "val_logged": True},
                 "WandbEvalAnalytics": {"best": 0.5, "best_epoch": 3}}
    for stage, restored in (("validate", False), ("fit", True)):
        tables, analytics = WandbDetectionTables(), WandbEvalAnalytics()
        for part in (tables, analytics):
            part.setup(trainer, None, stage)
            part.load_state_dict(fit_state[type(part).__name__])
        assert tables.indices == [1, 4] and tables.val_logged is restored
        assert (analytics.best, analytics.best_epoch) == ((0.5, 3) if restored else (None, None))
