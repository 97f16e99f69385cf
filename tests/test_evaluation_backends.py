"""Every evaluator backend reports what mmdet's CocoMetric (pycocotools) reports, and the analytics read them alike.

The same predictions (jittered ground-truth boxes with elliptic masks, wrong classes, false positives) go through
``CocoMetric``, ``FastCocoMetric`` (faster_coco_eval) and ``HotCocoMetric`` (hotcoco) with ``classwise=True``,
bbox and segm, on small synthetic datasets that hold the edge cases: crowd annotations, a class without ground
truth, one class only, images without ground truth and images without detections, images with more than 100
detections (where mmdet's ``proposal_nums=(100, 300, 1000)`` makes mAP and mAP_50 use different ``maxDets``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mmdet_lightning import analysis
from mmdet_lightning.config import init_mmdet_scope
from mmdet_lightning.evaluation import _HOTCOCO, record_coco_evals
from mmdet_lightning.synthetic import CLASSES, ShapesConfig, make_shapes_dataset

from .test_analysis import make_variant

needs_hotcoco = pytest.mark.skipif(not _HOTCOCO, reason=str(_HOTCOCO))
BACKENDS = ["FastCocoMetric", pytest.param("HotCocoMetric", marks=needs_hotcoco)]
VARIANTS = ["plain", "crowd", "no_gt", "one_class", "empty_images", "many_detections"]


def make_dataset(tmp_path: Path, variant: str) -> tuple[Path, list[str]]:
    """The annotation file and classes of a variant of 10 images (``empty_images``: 12, a third without objects)."""
    if variant == "empty_images":
        root = make_shapes_dataset(tmp_path / variant, ShapesConfig(num_train=0, num_val=12, seed=4, empty_prob=0.34,
                                                                     crowd_prob=0.1))
        coco = json.loads((root / "annotations" / "instances_val.json").read_text())
        annotated = {a["image_id"] for a in coco["annotations"]}
        assert 0 < len(annotated) < len(coco["images"]), "some images with and some without ground truth"
        return root / "annotations" / "instances_val.json", list(CLASSES)
    root, classes = make_variant(tmp_path, "plain" if variant == "many_detections" else variant)
    return root / "annotations" / "instances_val.json", classes


def make_samples(ann_file: Path, num_classes: int, variant: str, seed: int = 0) -> list[dict[str, Any]]:
    """mmdet data samples with boxes, scores, labels and masks (an ellipse in each box)."""
    coco = json.loads(ann_file.read_text())
    rng = np.random.default_rng(seed)
    cat_index = {c["id"]: k for k, c in enumerate(coco["categories"])}
    samples = []
    for n, image in enumerate(coco["images"]):
        h, w = image["height"], image["width"]
        boxes, labels = [], []
        for ann in (a for a in coco["annotations"] if a["image_id"] == image["id"]):
            x, y, bw, bh = ann["bbox"]
            jitter = rng.normal(0, 0.1, 4) * [bw, bh, bw, bh]
            boxes.append([x + jitter[0], y + jitter[1], x + bw + jitter[2], y + bh + jitter[3]])
            labels.append(int(rng.integers(num_classes)) if rng.random() < 0.2 else cat_index[ann["category_id"]])
        crowded = variant == "many_detections" and n % 3 == 0
        for _ in range(130 if crowded else 2):  # false positives; on some images over 100 of the first class
            x0, y0 = rng.uniform(0, w - 12), rng.uniform(0, h - 12)
            boxes.append([x0, y0, x0 + rng.uniform(6, 40), y0 + rng.uniform(6, 40)])
            labels.append(0 if crowded else int(rng.integers(num_classes)))
        if variant == "empty_images" and n % 4 == 1:
            boxes, labels = [], []  # an image without any detection
        bboxes = np.clip(np.array(boxes, dtype=np.float32).reshape(-1, 4), 0, [w, h, w, h])
        yy, xx = np.mgrid[0:h, 0:w]
        masks = np.zeros((len(bboxes), h, w), dtype=bool)
        for mask, (x0, y0, x1, y1) in zip(masks, bboxes, strict=False):
            cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, max((x1 - x0) / 2, 1), max((y1 - y0) / 2, 1)
            mask[((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1] = True
        scores = rng.uniform(0.05, 1.0, len(bboxes)).astype(np.float32)
        if crowded:  # the objects of the first class under 100 false positives: found only with maxDets > 100
            scores[-130:] = rng.uniform(0.6, 1.0, 130)
        samples.append({"img_id": image["id"], "ori_shape": (h, w), "pred_instances": {
            "bboxes": torch.from_numpy(bboxes), "labels": torch.tensor(labels, dtype=torch.int64),
            "scores": torch.from_numpy(scores),
            "masks": torch.from_numpy(masks)}})
    if variant == "many_detections":
        assert max(int((s["pred_instances"]["labels"] == 0).sum()) for s in samples) > 100
    return samples


def evaluate(metric_type: str, ann_file: Path, classes: list[str], samples: list[dict], metric: Any = ("bbox", "segm"),
             **kwargs: Any) -> tuple[dict[str, float], list[Any]]:
    """``metric_type(classwise=True)``'s results and the ``COCOeval`` objects it built (recorded, as the module
    does)."""
    init_mmdet_scope()
    from mmdet.registry import METRICS

    evaluator = METRICS.build({"type": metric_type, "ann_file": str(ann_file), "metric": list(metric),
                               "classwise": True, **kwargs})
    evaluator.dataset_meta = {"classes": tuple(classes)}
    for start in range(0, len(samples), 4):
        evaluator.process({}, samples[start:start + 4])
    with record_coco_evals() as coco_evals:
        results = evaluator.evaluate(len(samples))
    return results, coco_evals


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_reports_coco_metric_numbers(tmp_path: Path, variant: str, backend: str) -> None:
    ann_file, classes = make_dataset(tmp_path, variant)
    samples = make_samples(ann_file, len(classes), variant)
    reference, reference_evals = evaluate("CocoMetric", ann_file, classes, samples)
    results, coco_evals = evaluate(backend, ann_file, classes, samples)

    # every key CocoMetric returns (bbox and segm mAP.., and the per-class AP of classwise=True)
    assert len(reference) == 12 + len(classes)  # "<class>_precision": bbox, then segm, under one key
    assert list(results) == list(reference)
    for key, value in reference.items():
        if np.isnan(value):  # a class without ground truth
            assert np.isnan(results[key]), key
        elif backend == "HotCocoMetric":
            assert results[key] == value, key
        else:
            assert results[key] == pytest.approx(value, abs=1e-4), key
    low = 0.01 if variant == "many_detections" else 0.1  # 130 false positives an image drown most objects
    assert low < reference["coco/bbox_mAP"] < 0.95 and low < reference["coco/segm_mAP"] < 0.95

    # the unrounded numbers of the COCOeval each built, and what the analytics read from it
    assert [ev.params.iouType for ev in coco_evals] == [ev.params.iouType for ev in reference_evals] == ["bbox", "segm"]
    for ours, theirs in zip(coco_evals, reference_evals, strict=False):
        assert_same_evaluation(ours, theirs, exact=backend == "HotCocoMetric")


def assert_same_evaluation(ours: Any, theirs: Any, exact: bool) -> None:
    """The 12 statistics, the precision and recall arrays and every analytic of two accumulated ``COCOeval``s."""
    tolerance = 0 if exact else 1e-4
    np.testing.assert_allclose(np.asarray(ours.stats), np.asarray(theirs.stats), rtol=0, atol=tolerance)
    for key in ("precision", "recall"):
        np.testing.assert_allclose(ours.eval[key], theirs.eval[key], rtol=0, atol=tolerance)
    assert list(ours.params.catIds) == list(theirs.params.catIds)
    assert list(ours.params.imgIds) == list(theirs.params.imgIds)
    assert analysis.class_names(ours) == analysis.class_names(theirs)
    for mine, reference in zip(analysis.class_ap(ours), analysis.class_ap(theirs), strict=True):
        assert (mine.name, mine.num_gt, mine.num_det) == (reference.name, reference.num_gt, reference.num_det)
        for a, b in ((mine.ap, reference.ap), (mine.ap50, reference.ap50), (mine.ap75, reference.ap75)):
            assert (a is None) == (b is None) and (a is None or abs(a - b) <= tolerance), (mine, reference)
    for iou in (0.5, 0.75):
        mine_curves, reference_curves = analysis.pr_curves(ours, iou), analysis.pr_curves(theirs, iou)
        np.testing.assert_array_equal(mine_curves.recall, reference_curves.recall)
        assert list(mine_curves.per_class) == list(reference_curves.per_class)
        for name, values in mine_curves.per_class.items():
            np.testing.assert_allclose(values, reference_curves.per_class[name], rtol=0, atol=tolerance)
        np.testing.assert_allclose(mine_curves.mean, reference_curves.mean, rtol=0, atol=tolerance)
        np.testing.assert_allclose(mine_curves.mean_all_ious, reference_curves.mean_all_ious, rtol=0, atol=tolerance)
    np.testing.assert_array_equal(analysis.confusion_matrix(ours), analysis.confusion_matrix(theirs))
    np.testing.assert_array_equal(analysis.confusion_matrix(ours, score_thr=0.0, tp_iou_thr=0.3),
                                  analysis.confusion_matrix(theirs, score_thr=0.0, tp_iou_thr=0.3))


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_detections_at_all(tmp_path: Path, backend: str) -> None:
    ann_file, classes = make_dataset(tmp_path, "plain")
    samples = make_samples(ann_file, len(classes), "plain")
    for sample in samples:
        sample["pred_instances"] = {k: v[:0] for k, v in sample["pred_instances"].items()}
    assert evaluate("CocoMetric", ann_file, classes, samples) == ({}, [])  # mmdet stops before evaluating
    assert evaluate(backend, ann_file, classes, samples) == ({}, [])


@needs_hotcoco
def test_hotcoco_with_mmdet_options(tmp_path: Path) -> None:
    """``iou_thrs``, ``proposal_nums``, ``metric_items`` and the class-agnostic ``proposal`` metric."""
    ann_file, classes = make_dataset(tmp_path, "many_detections")
    samples = make_samples(ann_file, len(classes), "many_detections", seed=2)
    options = dict(iou_thrs=[0.5, 0.6, 0.75], proposal_nums=(10, 50, 100), classwise=False)  # mmdet's classwise
    # table indexes the IoU thresholds of the default list
    for metric, extra in ((("bbox",), options), (("proposal",), {}),
                          (("bbox", "segm"), dict(metric_items=["mAP", "mAP_50", "AR@100", "AR_l@1000"]))):
        reference, reference_evals = evaluate("CocoMetric", ann_file, classes, samples, metric, **extra)
        results, coco_evals = evaluate("HotCocoMetric", ann_file, classes, samples, metric, **extra)
        assert results == reference and len(coco_evals) == len(reference_evals)
        for ours, theirs in zip(coco_evals, reference_evals, strict=False):
            np.testing.assert_array_equal(np.asarray(ours.stats), np.asarray(theirs.stats))
            np.testing.assert_array_equal(ours.eval["precision"], theirs.eval["precision"])


@needs_hotcoco
def test_hotcoco_eval_reads_as_pycocotools(tmp_path: Path) -> None:
    """What the analytics and ``MMDetModule`` read from a recorded evaluation, and hotcoco's evaluator beside it."""
    from pycocotools.cocoeval import COCOeval

    from mmdet_lightning.evaluation import HotCocoEval

    ann_file, classes = make_dataset(tmp_path, "crowd")
    _, (coco_eval,) = evaluate("HotCocoMetric", ann_file, classes, make_samples(ann_file, len(classes), "crowd"),
                               ["bbox"])
    assert isinstance(coco_eval, HotCocoEval) and isinstance(coco_eval, COCOeval)
    assert type(coco_eval.cocoGt).__module__.startswith("mmdet") and coco_eval.cocoDt.anns
    assert coco_eval.params.iouType == "bbox" and coco_eval.params.useCats == 1
    assert coco_eval.eval["params"] is coco_eval.params and coco_eval.eval["precision"].shape == (10, 101, 3, 4, 3)
    assert coco_eval.hotcoco.tide_errors()  # hotcoco's own diagnostics stay available
    for name, empty in (("evalImgs", []), ("ious", {})):  # what MMDetModule drops from the evaluation it keeps
        setattr(coco_eval, name, empty)
    assert analysis.class_ap(coco_eval)[0].ap is not None


@needs_hotcoco
def test_hotcoco_use_mp_eval_keeps_its_summary(tmp_path: Path) -> None:
    """``CocoMetric(use_mp_eval=True)`` builds mmdet's ``COCOevalMP`` (mAP at the largest ``maxDets``): the same
    numbers from hotcoco, without worker processes."""
    from mmdet.datasets.api_wrappers import COCO, COCOevalMP

    from mmdet_lightning.evaluation import HotCocoEval, HotCocoEvalMP

    ann_file, classes = make_dataset(tmp_path, "many_detections")
    _, (plain,) = evaluate("CocoMetric", ann_file, classes, make_samples(ann_file, len(classes), "many_detections"),
                           ["bbox"])
    runs = []
    for cls in (COCOevalMP, HotCocoEvalMP, HotCocoEval):
        run = cls(plain.cocoGt, plain.cocoDt, "bbox")
        run.params.maxDets = [100, 300, 1000]
        run.params.catIds, run.params.imgIds = list(plain.params.catIds), list(plain.params.imgIds)
        run.evaluate()
        run.accumulate()
        run.summarize()
        runs.append(np.asarray(run.stats))
    np.testing.assert_array_equal(runs[1], runs[0])
    np.testing.assert_array_equal(runs[2], np.asarray(plain.stats))
    assert runs[1][0] != runs[2][0]  # mAP at 1000 and at 100 detections an image: COCOevalMP's and pycocotools'
    assert isinstance(plain.cocoGt, COCO)


def test_unknown_backend_lists_the_valid_ones() -> None:
    from mmdet_lightning.evaluation import EVALUATOR_BACKENDS, use_evaluator_backend

    assert EVALUATOR_BACKENDS == ("auto", "pycocotools", "faster_coco_eval", "hotcoco")
    valid = r"one of \('auto', 'pycocotools', 'faster_coco_eval', 'hotcoco'\), but got 'hot_coco'"
    with pytest.raises(ValueError, match=valid):
        use_evaluator_backend(dict(type="CocoMetric"), "hot_coco")  # type: ignore[arg-type]


def test_missing_hotcoco_fails_at_construction(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without hotcoco, ``evaluator_backend="hotcoco"`` fails when the module is built, naming the pip command."""
    from lightning_utilities.core.imports import RequirementCache

    from mmdet_lightning import MMDetModule, evaluation

    from .conftest import CONFIGS

    replacements, _, install = evaluation._BACKENDS["hotcoco"]
    monkeypatch.setitem(evaluation._BACKENDS, "hotcoco", (replacements, RequirementCache("hotcoco>=999"), install))
    with pytest.raises(ModuleNotFoundError, match=r"evaluator_backend='hotcoco'.*\n.*pip install 'hotcoco>=1.3,<2'"):
        evaluation.use_evaluator_backend(dict(type="CocoMetric"), "hotcoco")
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'hotcoco"):
        MMDetModule(CONFIGS / "shapes_retinanet.py", evaluator_backend="hotcoco")


@needs_hotcoco
def test_hotcoco_backend_replaces_coco_and_lvis_metrics() -> None:
    from mmdet_lightning.evaluation import use_evaluator_backend

    evaluators = [dict(type="CocoMetric", metric="bbox"), dict(type="mmdet.LVISMetric"), dict(type="VOCMetric")]
    assert [e["type"] for e in use_evaluator_backend(evaluators, "hotcoco")] == \
        ["HotCocoMetric", "HotLVISMetric", "VOCMetric"]
    assert [e["type"] for e in use_evaluator_backend(evaluators, "faster_coco_eval")] == \
        ["FastCocoMetric", "mmdet.LVISMetric", "VOCMetric"]
    assert evaluators[0]["type"] == "CocoMetric"  # a copy


@needs_hotcoco
def test_module_option_selects_hotcoco() -> None:
    from mmdet_lightning import MMDetModule

    from .conftest import CONFIGS

    module = MMDetModule(CONFIGS / "shapes_mask_rcnn.py", evaluator_backend="hotcoco")
    assert module.cfg.val_evaluator.type == "HotCocoMetric" and module.cfg.test_evaluator.type == "HotCocoMetric"


def make_lvis_dataset(tmp_path: Path, seed: int = 0) -> Path:
    """A synthetic LVIS-format validation set: 20 images, the three shapes as a frequent, a common and a rare
    category, per image a random part of the absent categories verified absent (``neg_category_ids``) and now
    and then a present one not exhaustively annotated."""
    root = make_shapes_dataset(tmp_path / "lvis", ShapesConfig(num_train=0, num_val=20, seed=seed))
    coco = json.loads((root / "annotations" / "instances_val.json").read_text())
    rng = np.random.default_rng(seed)
    for category, frequency in zip(coco["categories"], "fcr", strict=False):
        category["frequency"] = frequency
    present: dict[int, set[int]] = {image["id"]: set() for image in coco["images"]}
    for ann in coco["annotations"]:
        ann.pop("iscrowd")
        present[ann["image_id"]].add(ann["category_id"])
    for image in coco["images"]:
        absent = [c["id"] for c in coco["categories"] if c["id"] not in present[image["id"]]]
        image["neg_category_ids"] = [c for c in absent if rng.random() < 0.6]
        image["not_exhaustive_category_ids"] = [c for c in sorted(present[image["id"]]) if rng.random() < 0.2]
    ann_file = root / "annotations" / "lvis_val.json"
    ann_file.write_text(json.dumps(coco))
    return ann_file


LVIS_KEYS = {f"lvis/{kind}_{key}" for kind in ("bbox", "segm")
             for key in ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")}


@needs_hotcoco
def test_hot_lvis_metric_without_lvis_api(tmp_path: Path) -> None:
    ann_file = make_lvis_dataset(tmp_path)
    samples = make_samples(ann_file, len(CLASSES), "plain")
    results, _ = evaluate("HotLVISMetric", ann_file, list(CLASSES), samples, prefix="lvis")
    assert LVIS_KEYS <= set(results) and {f"lvis/{name}_precision" for name in CLASSES} <= set(results)
    assert 0.1 < results["lvis/bbox_AP"] < 0.95 and all(-1 <= results[key] <= 1 for key in LVIS_KEYS)


@needs_hotcoco
def test_hot_lvis_metric_equals_lvis_metric(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """mmdet's ``LVISMetric`` on lvis-api (skipped where lvis-api is not installed) and on hotcoco."""
    pytest.importorskip("lvis")
    monkeypatch.setattr(np, "float", float, raising=False)  # lvis-api 0.5.3, PyPI's, still uses np.float
    ann_file = make_lvis_dataset(tmp_path, seed=1)
    samples = make_samples(ann_file, len(CLASSES), "plain", seed=1)
    reference, _ = evaluate("LVISMetric", ann_file, list(CLASSES), samples, prefix="lvis")
    results, _ = evaluate("HotLVISMetric", ann_file, list(CLASSES), samples, prefix="lvis")
    assert LVIS_KEYS <= set(reference) and set(results) == set(reference)  # get_results orders them otherwise
    for key, value in reference.items():
        assert results[key] == value or (np.isnan(value) and np.isnan(results[key])), key


@needs_hotcoco
@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_hotcoco_lvis_eval_unrounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, iou_type: str) -> None:
    """lvis-api's and hotcoco's ``LVISEval`` before mmdet rounds: every result and the precision array."""
    lvis = pytest.importorskip("lvis")
    import hotcoco
    from pycocotools import mask as mask_utils

    monkeypatch.setattr(np, "float", float, raising=False)  # lvis-api 0.5.3, PyPI's, still uses np.float
    ann_file = make_lvis_dataset(tmp_path, seed=2)
    detections = []
    for sample in make_samples(ann_file, len(CLASSES), "many_detections", seed=2):
        pred = sample["pred_instances"]
        for box, score, label, mask in zip(pred["bboxes"].tolist(), pred["scores"].tolist(), pred["labels"].tolist(),
                                           pred["masks"].numpy(), strict=False):
            detection = {"image_id": sample["img_id"], "category_id": label + 1, "score": score,
                         "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]}
            if iou_type == "segm":
                rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
                detection["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode()}
            detections.append(detection)
    runs = []
    for api in (lvis, hotcoco):
        gt = api.LVIS(str(ann_file))
        run = api.LVISEval(gt, api.LVISResults(gt, detections), iou_type)
        run.run()
        runs.append(run)
    reference, ours = (run.get_results() for run in runs)
    assert set(ours) == set(reference)
    for key, value in reference.items():
        assert ours[key] == pytest.approx(value, abs=1e-12), key
    np.testing.assert_array_equal(np.asarray(runs[1].eval["precision"]).squeeze(),
                                  np.asarray(runs[0].eval["precision"]).squeeze())


@needs_hotcoco
def test_module_validation_with_hotcoco(shapes_config: Any, tmp_path: Path) -> None:
    """``MMDetModule(evaluator_backend="hotcoco")`` through Lightning's validate: the logged metrics and the evaluation
    it keeps for the analytics (``last_coco_eval``, slimmed by the module) equal pycocotools'. An untrained Faster
    R-CNN: its detections are poor but many (class scores near 1/4), which is all the comparison needs."""
    from mmdet_lightning import MMDetDataModule, MMDetModule
    from mmdet_lightning.evaluation import HotCocoEval
    from mmdet_lightning.lightning_package import pl

    cfg = shapes_config("shapes_faster_rcnn.py")
    runs = {}
    for backend in ("pycocotools", "hotcoco"):
        pl.seed_everything(0)
        module = MMDetModule(cfg, evaluator_backend=backend)
        trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_checkpointing=False,
                             default_root_dir=str(tmp_path), enable_model_summary=False)
        (metrics,) = trainer.validate(module, datamodule=MMDetDataModule(cfg), verbose=False)
        runs[backend] = metrics, module.last_coco_eval["bbox"]
    (reference, reference_eval), (metrics, coco_eval) = runs["pycocotools"], runs["hotcoco"]
    assert isinstance(coco_eval, HotCocoEval) and len(coco_eval.cocoDt.anns) > 0
    assert set(metrics) == set(reference) and "coco/bbox_mAP" in metrics
    for key, value in reference.items():
        assert metrics[key] == value, key
    assert_same_evaluation(coco_eval, reference_eval, exact=True)


def test_auto_backend_is_hotcoco_where_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """``evaluator_backend="auto"``: ``HotCocoMetric`` with hotcoco, the config's ``CocoMetric`` without it."""
    from lightning_utilities.core.imports import RequirementCache

    from mmdet_lightning import evaluation

    evaluators = [dict(type="CocoMetric", metric="bbox"), dict(type="LVISMetric")]
    if evaluation._HOTCOCO:
        assert evaluation.resolve_evaluator_backend("auto") == "hotcoco"
        assert [e["type"] for e in evaluation.use_evaluator_backend(evaluators, "auto")] == \
            ["HotCocoMetric", "HotLVISMetric"]
    monkeypatch.setattr(evaluation, "_HOTCOCO", RequirementCache("hotcoco>=999"))
    assert evaluation.resolve_evaluator_backend("auto") == "pycocotools"
    assert evaluation.use_evaluator_backend(evaluators, "auto") is evaluators


@needs_hotcoco
def test_module_auto_backend() -> None:
    from mmdet_lightning import MMDetModule

    from .conftest import CONFIGS

    module = MMDetModule(CONFIGS / "shapes_mask_rcnn.py", evaluator_backend="auto")
    assert module.cfg.val_evaluator.type == "HotCocoMetric"


@pytest.mark.parametrize("metric_type", BACKENDS)
def test_result_files_are_the_ones_mmdet_writes(tmp_path: Path, metric_type: str) -> None:
    """With ``outfile_prefix``, ``results.bbox.json`` and ``results.segm.json`` hold the bytes that mmdet's
    ``CocoMetric`` writes (the faster backends encode them with json's C encoder)."""
    ann_file, classes = make_dataset(tmp_path, "crowd")
    samples = make_samples(ann_file, len(classes), "crowd")
    written = {}
    for name in ("CocoMetric", metric_type):
        prefix = tmp_path / name / "results"
        prefix.parent.mkdir()
        evaluate(name, ann_file, classes, samples, outfile_prefix=str(prefix))
        written[name] = {kind: (tmp_path / name / f"results.{kind}.json").read_bytes() for kind in ("bbox", "segm")}
    assert written[metric_type] == written["CocoMetric"]
    assert len(json.loads(written["CocoMetric"]["segm"])) > 10
