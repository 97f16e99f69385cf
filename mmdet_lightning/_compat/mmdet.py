"""Private attributes of mmdet's evaluation metrics."""

from __future__ import annotations

from typing import Any

from ._core import private_attr

__all__ = ["coco_metric_api", "find_coco_metric"]

_PACKAGE = "mmdet"


def find_coco_metric(metrics: Any) -> Any | None:
    """The first of ``metrics`` that is an mmdet ``CocoMetric`` (subclasses included: ``LVISMetric``,
    ``FastCocoMetric``), or None."""
    from mmdet.evaluation import CocoMetric

    return next((metric for metric in metrics if isinstance(metric, CocoMetric)), None)


def coco_metric_api(metric: Any) -> Any | None:
    """The ground truth a ``CocoMetric`` evaluates against (``_coco_api``, a pycocotools-style ``COCO``); None
    when the metric has no ``ann_file`` (it then builds the ground truth from the data samples)."""
    return private_attr(metric, "_coco_api", _PACKAGE)
