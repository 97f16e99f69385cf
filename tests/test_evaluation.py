"""FastCocoMetric (faster_coco_eval) reports what mmdet's CocoMetric (pycocotools) reports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mmdet_lightning.config import init_mmdet_scope
from mmdet_lightning.synthetic import CLASSES, ShapesConfig, make_shapes_dataset


@pytest.fixture(scope="module")
def crowded_val(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 validation images, a quarter of the objects crowd, 15% of the images without objects."""
    root = make_shapes_dataset(tmp_path_factory.mktemp("crowded"),
                               ShapesConfig(num_train=0, num_val=60, crowd_prob=0.25, empty_prob=0.15, seed=3))
    return root / "annotations" / "instances_val.json"


def synthetic_predictions(ann_file: Path, seed: int = 0, empty_every: int = 7) -> list[dict[str, Any]]:
    """Detections near the ground truth (some with the wrong class), false positives, and images without
    any prediction, as data samples for mmdet's CocoMetric.process."""
    coco = json.loads(ann_file.read_text())
    rng = np.random.default_rng(seed)
    by_image: dict[int, list[dict]] = {image["id"]: [] for image in coco["images"]}
    for ann in coco["annotations"]:
        by_image[ann["image_id"]].append(ann)
    samples = []
    for image in coco["images"]:
        h, w = image["height"], image["width"]
        boxes, labels = [], []
        if image["id"] % empty_every:
            for ann in by_image[image["id"]]:
                if rng.random() < 0.85:
                    x, y, bw, bh = ann["bbox"]
                    jitter = rng.normal(0, 0.08, 4) * [bw, bh, bw, bh]
                    boxes.append([x + jitter[0], y + jitter[1], x + bw + jitter[2], y + bh + jitter[3]])
                    wrong = rng.random() < 0.15
                    labels.append(int(rng.integers(3)) if wrong else ann["category_id"] - 1)
            for _ in range(int(rng.integers(0, 3))):
                x0, y0 = rng.uniform(0, w - 20), rng.uniform(0, h - 20)
                boxes.append([x0, y0, x0 + rng.uniform(8, 40), y0 + rng.uniform(8, 40)])
                labels.append(int(rng.integers(3)))
        bboxes = torch.tensor(np.clip(boxes, 0, [w, h, w, h]) if boxes else np.zeros((0, 4)), dtype=torch.float32)
        masks = torch.zeros((len(boxes), h, w), dtype=torch.bool)
        for mask, (x0, y0, x1, y1) in zip(masks, bboxes.round().int().tolist(), strict=True):
            mask[y0:y1, x0:x1] = True
        samples.append({
            "img_id": image["id"], "ori_shape": (h, w),
            "pred_instances": {"bboxes": bboxes, "scores": torch.tensor(rng.uniform(0.05, 1, len(boxes)),
                                                                          dtype=torch.float32),
                               "labels": torch.tensor(labels, dtype=torch.int64), "masks": masks},
        })
    return samples


def _evaluate(metric_type: str, ann_file: Path, samples: list[dict], metric: Any = ("bbox", "segm")) -> dict:
    init_mmdet_scope()
    from mmdet.registry import METRICS

    evaluator = METRICS.build(dict(type=metric_type, ann_file=str(ann_file), metric=list(metric)))
    evaluator.dataset_meta = {"classes": CLASSES}
    for start in range(0, len(samples), 8):
        evaluator.process({}, samples[start:start + 8])
    return evaluator.evaluate(len(samples))


def test_fast_metric_equals_coco_metric(crowded_val: Path) -> None:
    coco = json.loads(crowded_val.read_text())
    assert any(a["iscrowd"] for a in coco["annotations"])
    annotated = {a["image_id"] for a in coco["annotations"]}
    assert any(image["id"] not in annotated for image in coco["images"]), "some images without ground truth"
    samples = synthetic_predictions(crowded_val)
    assert any(len(s["pred_instances"]["bboxes"]) == 0 for s in samples), "some images without predictions"

    reference = _evaluate("CocoMetric", crowded_val, samples)
    fast = _evaluate("FastCocoMetric", crowded_val, samples)
    assert set(fast) == set(reference) and len(reference) == 12  # bbox and segm: mAP, _50, _75, _s, _m, _l
    for key, value in reference.items():
        assert fast[key] == pytest.approx(value, abs=1e-4), key
    assert 0.2 < reference["coco/bbox_mAP"] < 0.95  # a result that can differ, not a degenerate 0 or 1


def test_unrounded_stats_agree(crowded_val: Path) -> None:
    """Both evaluators on the same detections, before CocoMetric rounds to 3 decimals."""
    from faster_coco_eval import COCOeval_faster
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    detections = []
    for sample in synthetic_predictions(crowded_val, seed=1):
        pred = sample["pred_instances"]
        columns = (pred["bboxes"].tolist(), pred["scores"].tolist(), pred["labels"].tolist())
        for box, score, label in zip(*columns, strict=True):
            detections.append({"image_id": sample["img_id"], "category_id": label + 1, "score": score,
                               "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]})
    gt = COCO(str(crowded_val))
    stats = []
    for evaluator in (COCOeval, COCOeval_faster):
        run = evaluator(gt, gt.loadRes(detections), "bbox")
        run.evaluate()
        run.accumulate()
        run.summarize()
        stats.append(np.asarray(run.stats[:12]))
    np.testing.assert_allclose(stats[1], stats[0], atol=1e-4)


def test_no_predictions_at_all(crowded_val: Path) -> None:
    samples = synthetic_predictions(crowded_val, empty_every=1)
    assert _evaluate("CocoMetric", crowded_val, samples, ["bbox"]) == {}
    assert _evaluate("FastCocoMetric", crowded_val, samples, ["bbox"]) == {}


def test_module_option_selects_the_fast_metric() -> None:
    from mmdet_lightning import MMDetModule

    from .conftest import CONFIGS

    module = MMDetModule(CONFIGS / "shapes_mask_rcnn.py", evaluator_backend="faster_coco_eval")
    assert module.cfg.val_evaluator.type == "FastCocoMetric" and module.cfg.test_evaluator.type == "FastCocoMetric"
    with pytest.raises(ValueError, match="`evaluator_backend` to be one of"):
        MMDetModule(CONFIGS / "shapes_retinanet.py", evaluator_backend="fast")
