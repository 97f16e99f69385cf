"""The pure analytics converters against mmdet's own numbers: CocoMetric(classwise=True) and the confusion-matrix tool.

Predictions are made by hand from the ground truth of small synthetic datasets (jittered boxes, some with the
wrong class, some false positives), so these tests need no model and cover the edge cases: crowd annotations,
a class without ground truth, a one-class dataset, no detections at all.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
from pathlib import Path
from typing import Any

import mmdet
import numpy as np
import pytest
import torch

from mmdet_lightning import analysis
from mmdet_lightning.evaluation import record_coco_evals
from mmdet_lightning.synthetic import CLASSES, ShapesConfig, make_shapes_dataset

TOOL = Path(mmdet.__file__).parent / ".mim" / "tools" / "analysis_tools" / "confusion_matrix.py"


def mmdet_confusion_tool() -> Any:
    """mmdet's ``tools/analysis_tools/confusion_matrix.py`` as a module."""
    spec = importlib.util.spec_from_file_location("mmdet_confusion_matrix_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_variant(tmp_path: Path, variant: str) -> tuple[Path, list[str]]:
    """A validation set of 10 images: ``plain``, ``crowd`` (30% crowd annotations), ``no_gt`` (no
    triangle annotation, the class kept), ``one_class`` (circles only)."""
    crowd = 0.3 if variant == "crowd" else 0.0
    root = make_shapes_dataset(tmp_path / variant, ShapesConfig(num_train=1, num_val=10, seed=3, crowd_prob=crowd))
    ann_file = root / "annotations" / "instances_val.json"
    coco = json.loads(ann_file.read_text())
    classes = list(CLASSES)
    if variant == "no_gt":
        coco["annotations"] = [a for a in coco["annotations"] if a["category_id"] != 3]
    if variant == "one_class":
        classes = ["circle"]
        coco["categories"] = [c for c in coco["categories"] if c["id"] == 1]
        coco["annotations"] = [a for a in coco["annotations"] if a["category_id"] == 1]
    if variant == "crowd":
        assert any(a["iscrowd"] for a in coco["annotations"]) and not all(a["iscrowd"] for a in coco["annotations"])
    ann_file.write_text(json.dumps(coco))
    return root, classes


def make_predictions(root: Path, num_classes: int, seed: int = 0, empty: bool = False) -> dict[int, dict]:
    """image id -> pred_instances (x1, y1, x2, y2 boxes, labels, scores), from the ground truth."""
    coco = json.loads((root / "annotations" / "instances_val.json").read_text())
    rng = np.random.default_rng(seed)
    cat_index = {c["id"]: k for k, c in enumerate(coco["categories"])}
    predictions = {}
    for image in coco["images"]:
        boxes, labels = [], []
        for ann in (a for a in coco["annotations"] if a["image_id"] == image["id"]):
            x, y, w, h = ann["bbox"]
            jitter = rng.normal(0, 0.12, 4) * [w, h, w, h]
            boxes.append([x + jitter[0], y + jitter[1], x + w + jitter[2], y + h + jitter[3]])
            wrong = rng.random() < 0.25
            labels.append(int(rng.integers(num_classes)) if wrong else cat_index[ann["category_id"]])
        for _ in range(2):  # false positives
            x, y = rng.uniform(0, image["width"] - 30, 2)
            boxes.append([x, y, x + rng.uniform(8, 30), y + rng.uniform(8, 30)])
            labels.append(int(rng.integers(num_classes)))
        count = 0 if empty else len(boxes)
        predictions[image["id"]] = {
            "bboxes": torch.tensor(np.array(boxes, dtype=np.float32).reshape(-1, 4)[:count]),
            "labels": torch.tensor(labels[:count], dtype=torch.int64),
            "scores": torch.tensor(rng.uniform(0.05, 1.0, len(boxes)).astype(np.float32)[:count]),
        }
    return predictions


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.extend(str(record.getMessage()).splitlines())


def mmdet_classwise(root: Path, classes: list[str], predictions: dict[int, dict],
                    metric_type: str = "CocoMetric") -> tuple[dict, dict, list, Any]:
    """What ``CocoMetric(classwise=True)`` computes and prints, with the ``COCOeval`` objects it built."""
    from mmdet.evaluation import CocoMetric
    from mmengine.logging import MMLogger

    from mmdet_lightning.evaluation import FastCocoMetric

    coco = json.loads((root / "annotations" / "instances_val.json").read_text())
    metric_class = {"CocoMetric": CocoMetric, "FastCocoMetric": FastCocoMetric}[metric_type]
    metric = metric_class(ann_file=str(root / "annotations" / "instances_val.json"), metric="bbox", classwise=True)
    metric.dataset_meta = {"classes": tuple(classes)}
    samples = [{"img_id": image["id"], "ori_shape": (image["height"], image["width"]),
                "pred_instances": predictions[image["id"]]} for image in coco["images"]]
    metric.process({}, samples)
    logger = MMLogger.get_instance("test_analysis")
    capture = _Capture()
    logger.addHandler(capture)
    try:
        with record_coco_evals() as coco_evals:
            results = metric.compute_metrics(metric.results)
    finally:
        logger.removeHandler(capture)
    printed = {}
    for line in capture.lines:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 7 and cells[0] in classes:
            printed[cells[0]] = [float(c) for c in cells[1:4]]  # mAP, mAP_50, mAP_75
    return results, printed, coco_evals, metric


def tool_confusion_matrix(root: Path, classes: list[str], predictions: dict[int, dict], score_thr: float) -> np.ndarray:
    """mmdet's confusion-matrix tool on the dataset as mmdet's ``CocoDataset`` loads it."""
    from mmdet.datasets import CocoDataset

    dataset = CocoDataset(data_root=str(root), ann_file="annotations/instances_val.json", data_prefix=dict(img="val/"),
                          metainfo=dict(classes=tuple(classes)), test_mode=True, pipeline=[])
    results = [{"pred_instances": predictions[dataset.get_data_info(i)["img_id"]]} for i in range(len(dataset))]
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):  # its progress bar
        return mmdet_confusion_tool().calculate_confusion_matrix(dataset, results, score_thr=score_thr, tp_iou_thr=0.5)


@pytest.mark.parametrize("variant", ["plain", "crowd", "no_gt", "one_class"])
def test_converters_give_mmdet_numbers(tmp_path: Path, variant: str) -> None:
    root, classes = make_variant(tmp_path, variant)
    predictions = make_predictions(root, len(classes))
    results, printed, coco_evals, _ = mmdet_classwise(root, classes, predictions)
    (coco_eval,) = coco_evals
    coco = json.loads((root / "annotations" / "instances_val.json").read_text())

    # per-class AP: the numbers CocoMetric(classwise=True) prints (rounded to 3 decimals there)
    rows = analysis.class_ap(coco_eval, score_thr=0.3)
    assert [r.name for r in rows] == classes and set(printed) == set(classes)
    for row in rows:
        expected = printed[row.name]
        for ours, theirs in zip((row.ap, row.ap50, row.ap75), expected, strict=False):
            assert (ours is None) == np.isnan(theirs), (row, expected)
            if ours is not None:
                assert abs(ours - theirs) <= 1e-3
        assert (results[f"{row.name}_precision"] != results[f"{row.name}_precision"]) == (row.ap is None)
        cat_id = next(c["id"] for c in coco["categories"] if c["name"] == row.name)
        assert row.num_gt == sum(a["category_id"] == cat_id and not a["iscrowd"] for a in coco["annotations"])
        label = classes.index(row.name)
        shown = [int(((p["labels"] == label) & (p["scores"] > 0.3)).sum()) for p in predictions.values()]
        assert row.num_det == sum(shown)
    if variant == "no_gt":
        assert rows[2].ap is None and rows[2].num_gt == 0 and not rows[2].has_ground_truth and rows[2].num_det > 0
    if variant == "one_class":
        assert rows[0].ap == pytest.approx(coco_eval.stats[0])

    # PR curves: the precision array at the recall points; their means are COCO's AP50 and AP
    curves = analysis.pr_curves(coco_eval)
    precision = coco_eval.eval["precision"]
    assert curves.recall.tolist() == pytest.approx(np.linspace(0, 1, 101).tolist())
    assert list(curves.per_class) == [r.name for r in rows if r.has_ground_truth]
    for name, values in curves.per_class.items():
        assert values.tolist() == precision[0, :, classes.index(name), 0, -1].tolist()
    assert curves.mean.mean() == pytest.approx(coco_eval.stats[1])
    assert curves.mean_all_ious.mean() == pytest.approx(coco_eval.stats[0])
    assert analysis.pr_curves(coco_eval, iou=0.75).per_class[classes[0]].tolist() == \
        precision[5, :, 0, 0, -1].tolist()

    # confusion matrix: the counts of mmdet's tool on the same predictions
    for score_thr in (0.0, 0.3):
        ours = analysis.confusion_matrix(coco_eval, score_thr=score_thr)
        assert ours.shape == (len(classes) + 1,) * 2
        np.testing.assert_array_equal(ours, tool_confusion_matrix(root, classes, predictions, score_thr))
    assert ours[-1, :-1].sum() > 0 and ours[:-1, -1].sum() > 0  # false positives and missed objects both occur
    if variant == "no_gt":
        assert ours[2, :].sum() == 0


def test_faster_coco_eval_gives_the_same_analytics(tmp_path: Path) -> None:
    root, classes = make_variant(tmp_path, "crowd")
    predictions = make_predictions(root, len(classes))
    (reference,) = mmdet_classwise(root, classes, predictions)[2]
    (faster,) = mmdet_classwise(root, classes, predictions, "FastCocoMetric")[2]
    assert type(faster).__name__ == "COCOeval_faster"
    for ours, theirs in zip(analysis.class_ap(faster), analysis.class_ap(reference), strict=True):
        assert (ours.name, ours.num_gt, ours.num_det) == (theirs.name, theirs.num_gt, theirs.num_det)
        assert [ours.ap, ours.ap50, ours.ap75] == pytest.approx([theirs.ap, theirs.ap50, theirs.ap75], abs=1e-6)
    assert analysis.pr_curves(faster).mean.tolist() == pytest.approx(analysis.pr_curves(reference).mean.tolist())
    np.testing.assert_array_equal(analysis.confusion_matrix(faster), analysis.confusion_matrix(reference))


def test_no_detections_at_all(tmp_path: Path) -> None:
    root, classes = make_variant(tmp_path, "no_gt")
    predictions = make_predictions(root, len(classes), empty=True)
    results, _, coco_evals, metric = mmdet_classwise(root, classes, predictions)
    assert results == {} and coco_evals == []  # mmdet stops before evaluating
    coco_eval = analysis.empty_coco_eval(metric._coco_api, metric.cat_ids, metric.img_ids, "bbox", metric.iou_thrs)
    rows = analysis.class_ap(coco_eval)
    assert [(r.ap, r.ap50, r.num_det) for r in rows] == [(0.0, 0.0, 0), (0.0, 0.0, 0), (None, None, 0)]
    curves = analysis.pr_curves(coco_eval)
    assert list(curves.per_class) == classes[:2] and curves.mean.max() == 0.0
    matrix = analysis.confusion_matrix(coco_eval)
    np.testing.assert_array_equal(matrix, tool_confusion_matrix(root, classes, predictions, 0.3))
    assert matrix[:, :-1].sum() == 0 and matrix[:2, -1].tolist() == [r.num_gt for r in rows[:2]]


def test_pr_curves_at_an_iou_that_was_not_evaluated() -> None:
    with pytest.raises(ValueError, match=r"Expected argument `iou` to be one of the evaluation's IoU thresholds"):
        analysis.pr_curves(analysis.toy_coco_eval(), iou=0.42)
