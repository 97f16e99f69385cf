"""Detection analytics from a finished COCO evaluation: per-class AP, precision-recall curves, confusion matrix.

Pure converters (no W&B): they read the ``COCOeval`` object that mmdet's ``CocoMetric`` already evaluated
and accumulated (pycocotools' or faster_coco_eval's; :func:`mmdet_lightning.evaluation.record_coco_evals`
keeps it), so nothing is predicted or evaluated a second time.

    class_ap            COCOeval -> one ClassAP a class (AP, AP50, AP75, ground truths, detections)
    pr_curves           COCOeval -> recall points and precision per class / mean (at IoU 0.5, and 0.5:0.95)
    confusion_matrix    COCOeval's ground truth and detections -> counts of mmdet's confusion-matrix tool
    empty_coco_eval     a COCOeval of no detections (what CocoMetric skips when nothing was detected)

Example::
    >>> coco_eval = toy_coco_eval()
    >>> [(c.name, c.ap50 and round(c.ap50, 3), c.num_gt) for c in class_ap(coco_eval)]
    [('cat', 1.0, 1), ('dog', None, 0)]
    >>> confusion_matrix(coco_eval).tolist()
    [[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
"""

from __future__ import annotations

import contextlib
import io
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["ClassAP", "PRCurves", "class_ap", "class_names", "pr_curves", "confusion_matrix", "empty_coco_eval",
           "toy_coco_eval"]


@dataclass
class ClassAP:
    """AP of one class as mmdet's ``CocoMetric(classwise=True)`` prints it (None: no ground truth).

    Example::
        >>> ClassAP("cat", 0.5, 0.8, 0.4, num_gt=3, num_det=2).has_ground_truth
        True
    """

    name: str
    ap: float | None
    ap50: float | None
    ap75: float | None
    num_gt: int
    num_det: int

    @property
    def has_ground_truth(self) -> bool:
        return self.num_gt > 0


def _mean_valid(precision: np.ndarray) -> float | None:
    valid = precision[precision > -1]
    return float(np.mean(valid)) if valid.size else None


def _iou_index(coco_eval: Any, iou: float) -> int | None:
    found = np.flatnonzero(np.isclose(np.asarray(coco_eval.params.iouThrs, dtype=float), iou))
    return int(found[0]) if found.size else None


def class_names(coco_eval: Any) -> list[str]:
    """The class names of a ``COCOeval``, in ``params.catIds`` order.

    Example::
        >>> class_names(toy_coco_eval())
        ['cat', 'dog']
    """
    return [coco_eval.cocoGt.cats[int(cat_id)]["name"] for cat_id in coco_eval.params.catIds]


def _anns(coco: Any, img_ids: set[int]) -> list[dict[str, Any]]:
    return [ann for ann in coco.anns.values() if ann["image_id"] in img_ids]


def class_ap(coco_eval: Any, score_thr: float = 0.3) -> list[ClassAP]:
    """One :class:`ClassAP` for each class of an accumulated ``COCOeval`` (in ``params.catIds`` order).

    AP is the mean of the precision array over IoU thresholds and recall points (all areas, the largest
    ``maxDets``), AP50 / AP75 at IoU 0.5 / 0.75: mmdet's ``classwise`` numbers before its rounding. A class
    without ground truth has None. ``num_gt`` counts non-crowd ground truths, ``num_det`` detections with a
    score above ``score_thr``.

    Example::
        >>> class_ap(toy_coco_eval(), score_thr=0.95)[0].num_det
        0
    """
    precision = coco_eval.eval["precision"]  # (iou, recall, class, area, max dets)
    img_ids = set(coco_eval.params.imgIds)
    num_gt = Counter(a["category_id"] for a in _anns(coco_eval.cocoGt, img_ids) if not a.get("iscrowd", 0))
    num_det = Counter(a["category_id"] for a in _anns(coco_eval.cocoDt, img_ids) if a.get("score", 1.0) > score_thr)
    at = [_iou_index(coco_eval, iou) for iou in (0.5, 0.75)]
    rows = []
    for k, (cat_id, name) in enumerate(zip(coco_eval.params.catIds, class_names(coco_eval), strict=True)):
        ap50, ap75 = (None if i is None else _mean_valid(precision[i, :, k, 0, -1]) for i in at)
        rows.append(ClassAP(name=name, ap=_mean_valid(precision[:, :, k, 0, -1]), ap50=ap50, ap75=ap75,
                            num_gt=num_gt[cat_id], num_det=num_det[cat_id]))
    return rows


@dataclass
class PRCurves:
    """Precision at COCO's recall points: per class at one IoU, and means (classes without ground truth left out).

    Example::
        >>> curves = pr_curves(toy_coco_eval())
        >>> len(curves.recall), list(curves.per_class), round(curves.mean[-1], 3)
        (101, ['cat'], 1.0)
    """

    recall: np.ndarray
    per_class: dict[str, np.ndarray]
    mean: np.ndarray
    mean_all_ious: np.ndarray
    iou: float


def _mean_over(precision: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    valid = precision > -1
    total = np.where(valid, precision, 0.0).sum(axis=axes)
    count = valid.sum(axis=axes)
    return np.divide(total, count, out=np.full(total.shape, np.nan), where=count > 0)


def pr_curves(coco_eval: Any, iou: float = 0.5) -> PRCurves:
    """Precision-recall curves from an accumulated ``COCOeval``'s precision array (all areas, largest maxDets).

    ``per_class[name][r]`` is ``eval["precision"][iou, r, class, 0, -1]``; ``mean`` averages the classes
    with ground truth at each recall point, ``mean_all_ious`` also the IoU thresholds (0.5:0.95); NaN
    where no class has ground truth.

    Raises:
        ValueError: ``iou`` is not one of the evaluation's IoU thresholds.

    Example::
        >>> round(pr_curves(toy_coco_eval(), iou=0.75).per_class["cat"][0], 3)
        1.0
    """
    index = _iou_index(coco_eval, iou)
    if index is None:
        raise ValueError(f"Expected argument `iou` to be one of the evaluation's IoU thresholds "
                         f"{list(coco_eval.params.iouThrs)}, but got {iou!r}.")
    precision = coco_eval.eval["precision"][:, :, :, 0, -1]  # (iou, recall, class)
    per_class = {name: precision[index, :, k] for k, name in enumerate(class_names(coco_eval))
                 if (precision[index, :, k] > -1).any()}
    return PRCurves(recall=np.asarray(coco_eval.params.recThrs, dtype=float), per_class=per_class,
                    mean=_mean_over(precision[index], (1,)), mean_all_ious=_mean_over(precision, (0, 2)), iou=iou)


def confusion_matrix(coco_eval: Any, score_thr: float = 0.3, tp_iou_thr: float = 0.5) -> np.ndarray:
    """Counts of mmdet's ``tools/analysis_tools/confusion_matrix.py`` from a ``COCOeval``'s ground truth and
    detections: rows are ground-truth classes, columns predicted classes, the last row and column background.

    As the tool's ``analyze_per_img_dets``: a detection with score >= ``score_thr`` adds one to (gt class,
    its class) for every ground truth it overlaps with IoU >= ``tp_iou_thr``, or to (background, its class)
    when it overlaps none; a ground truth that no detection of its class matched adds one to (its class,
    background). Ground truth is what mmdet's ``CocoDataset`` loads (crowd regions included, boxes under
    one pixel wide or high left out), so the counts equal the tool's on the same predictions.

    Example::
        >>> confusion_matrix(toy_coco_eval(), score_thr=0.95).tolist()
        [[0.0, 0.0, 1.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    """
    from mmdet.evaluation import bbox_overlaps

    cat_ids = list(coco_eval.params.catIds)
    label_of = {cat_id: k for k, cat_id in enumerate(cat_ids)}
    matrix = np.zeros((len(cat_ids) + 1, len(cat_ids) + 1))
    img_ids = list(coco_eval.params.imgIds)
    gts: dict[int, list[dict]] = {i: [] for i in img_ids}
    dets: dict[int, list[dict]] = {i: [] for i in img_ids}
    for coco, by_image in ((coco_eval.cocoGt, gts), (coco_eval.cocoDt, dets)):
        for ann in coco.anns.values():
            if ann["image_id"] in by_image and ann["category_id"] in label_of:
                by_image[ann["image_id"]].append(ann)
    for img_id in img_ids:
        truth = [a for a in gts[img_id] if _loaded_by_coco_dataset(a)]
        found = [a for a in dets[img_id] if a.get("score", 1.0) >= score_thr]
        gt_labels = np.array([label_of[a["category_id"]] for a in truth], dtype=int)
        det_labels = np.array([label_of[a["category_id"]] for a in found], dtype=int)
        ious = bbox_overlaps(_xyxy(found), _xyxy(truth)) if found and truth else np.zeros((len(found), len(truth)))
        overlaps = ious >= tp_iou_thr
        det_index, gt_index = np.nonzero(overlaps)
        np.add.at(matrix, (gt_labels[gt_index], det_labels[det_index]), 1)
        np.add.at(matrix, (-1, det_labels[~overlaps.any(axis=1)]), 1)
        matched = (overlaps & (det_labels[:, None] == gt_labels[None, :])).any(axis=0)
        np.add.at(matrix, (gt_labels[~matched], -1), 1)
    return matrix


def _loaded_by_coco_dataset(ann: dict[str, Any]) -> bool:
    """What ``mmdet.datasets.CocoDataset.parse_data_info`` keeps as an instance (its ``ignore`` check left out:
    ``COCOeval`` overwrites that key of the ground truth with ``iscrowd``)."""
    x, y, w, h = ann["bbox"]
    return w >= 1 and h >= 1 and ann.get("area", w * h) > 0


def _xyxy(anns: list[dict[str, Any]]) -> np.ndarray:
    boxes = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    return boxes


def empty_coco_eval(coco_gt: Any, cat_ids: list[int], img_ids: list[int], iou_type: str = "bbox",
                    iou_thrs: Any = None, max_dets: Any = (100, 300, 1000)) -> Any:
    """An evaluated and accumulated pycocotools ``COCOeval`` of no detections against ``coco_gt``.

    mmdet's ``CocoMetric`` stops before building one when the whole dataset has no detection; this gives
    the analytics the same object (precision 0 for classes with ground truth, -1 for the others), at the
    cost of matching nothing. Its printout is silenced.

    Example::
        >>> gt = toy_coco_eval().cocoGt
        >>> empty_coco_eval(gt, [1, 2], [1]).eval["precision"][0, 0, :, 0, -1].tolist()
        [0.0, -1.0]
    """
    from mmdet.datasets.api_wrappers import COCO, COCOeval

    coco_dt = COCO()
    coco_dt.dataset = {"images": list(coco_gt.dataset.get("images", [])),
                       "categories": list(coco_gt.dataset.get("categories", [])), "annotations": []}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt.createIndex()
        coco_eval = COCOeval(coco_gt, coco_dt, iou_type)
        coco_eval.params.catIds = list(cat_ids)
        coco_eval.params.imgIds = list(img_ids)
        coco_eval.params.maxDets = list(max_dets)
        if iou_thrs is not None:
            coco_eval.params.iouThrs = iou_thrs
        coco_eval.evaluate()
        coco_eval.accumulate()
    return coco_eval


def toy_coco_eval(detections: list[dict[str, Any]] | None = None) -> Any:
    """A small accumulated ``COCOeval`` for examples and tests: one image, classes ``cat`` (one box) and
    ``dog`` (none); by default one ``cat`` detection on the box with score 0.9.

    Example::
        >>> round(toy_coco_eval().stats[1], 3)  # AP50
        1.0
    """
    from mmdet.datasets.api_wrappers import COCO, COCOeval

    gt = {"images": [{"id": 1, "width": 100, "height": 100, "file_name": "a.png"}],
          "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "area": 1600,
                           "iscrowd": 0}]}
    if detections is None:
        detections = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "score": 0.9}]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        if not detections:
            return empty_coco_eval(coco_gt, [1, 2], [1])
        coco_eval = COCOeval(coco_gt, coco_gt.loadRes(detections), "bbox")
        coco_eval.params.catIds = [1, 2]
        coco_eval.params.imgIds = [1]
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return coco_eval
