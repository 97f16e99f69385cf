"""Panoptic segmentation: ``PanopticFPN`` (and every ``TwoStagePanopticSegmentor``), ``MaskFormer`` and
``Mask2Former`` with ``panoptic_on``; predictions in ``DetDataSample.pred_panoptic_seg``, evaluated by mmdet's
``CocoPanopticMetric`` (PQ, SQ, RQ; panopticapi's pieces from :mod:`mmdet_lightning.panoptic_quality` where it is
not installed)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from .detection import DetectionTask, other_task

if TYPE_CHECKING:
    from mmengine.evaluator import Evaluator

    from ..wandb.media import Instances

__all__ = ["PanopticTask", "is_panoptic_model", "panoptic_instances"]

def is_panoptic_model(model_cfg: Mapping[str, Any]) -> bool:
    """Whether ``model_cfg`` (a config's ``model``) is a panoptic segmentor: PanopticFPN, or a MaskFormer /
    Mask2Former (or a model with a ``panoptic_head``) whose ``test_cfg.panoptic_on`` is not False; not a video one.

    Example::
        >>> is_panoptic_model({"type": "PanopticFPN"}), is_panoptic_model({"type": "FasterRCNN"})
        (True, False)
        >>> is_panoptic_model({"type": "Mask2Former", "panoptic_head": {}, "test_cfg": {"panoptic_on": False}})
        False
        >>> is_panoptic_model({"type": "Mask2FormerVideo", "panoptic_head": {}})
        False
    """
    return other_task(model_cfg) == "panoptic segmentation"


def panoptic_instances(segment_ids: np.ndarray, labels_of: Mapping[int, int], things: int) -> Instances:
    """The segments of an (H, W) id map as :class:`~mmdet_lightning.wandb.media.Instances`: one mask and 0-based
    label each (``labels_of``: segment id -> label; ids missing from it, void, are left out), boxes around the
    masks, drawn for things only (labels below ``things``).

    Example::
        >>> ids = np.array([[1, 1, 2], [1, 5, 2]])
        >>> inst = panoptic_instances(ids, {1: 3, 2: 0}, things=3)
        >>> inst.labels.tolist(), inst.boxes.tolist(), inst.boxed.tolist()
        ([3, 0], [[0.0, 0.0, 2.0, 2.0], [2.0, 0.0, 3.0, 2.0]], [False, True])
    """
    from ..wandb.media import Instances

    boxes, labels, masks = [], [], []
    for segment_id, label in labels_of.items():
        mask = segment_ids == segment_id
        ys, xs = np.nonzero(mask)
        if len(xs) == 0:
            continue
        boxes.append([float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)])
        labels.append(int(label))
        masks.append(mask)
    label_array = np.asarray(labels, dtype=np.int64)
    return Instances(boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4), labels=label_array,
                     masks=np.stack(masks) if masks else np.zeros((0, *segment_ids.shape), dtype=bool),
                     boxed=label_array < things)


class PanopticTask(DetectionTask):
    """Panoptic segmentation (``pred_panoptic_seg``: things and stuff classes, ``num_things_classes`` +
    ``num_stuff_classes`` = the dataset's classes, things first).

    Training is mmdet's (``mode="loss"``, as for detection); what differs is the class check (things and stuff,
    the instance heads of PanopticFPN predicting things only), the predictions (the panoptic map, and instances
    where the model also predicts them) and what a W&B table shows: each segment as a mask with its class.

    Example::
        >>> from mmdet_lightning.tasks import task_for_model
        >>> task_for_model({"type": "PanopticFPN"})
        PanopticTask()
        >>> PanopticTask.handles({"type": "Mask2Former", "panoptic_head": {}, "test_cfg": {"panoptic_on": False}})
        False
    """

    name: ClassVar[str] = "panoptic segmentation"
    description: ClassVar[str] = "panoptic segmentation"

    def __init__(self) -> None:
        from ..panoptic_quality import install_panopticapi

        install_panopticapi()  # LoadPanopticAnnotations and CocoPanopticMetric import panopticapi
        #: the model's ``(num_things_classes, num_stuff_classes)``, once :meth:`setup_model` has read them
        self.things_and_stuff: tuple[int, int] | None = None

    @classmethod
    def handles(cls, model_cfg: Mapping[str, Any]) -> bool:
        return is_panoptic_model(model_cfg)

    def setup_model(self, model: torch.nn.Module) -> None:
        """Keep the model's ``(num_things_classes, num_stuff_classes)`` where its panoptic heads agree on them."""
        splits = set(self.panoptic_heads(model).values())
        if len(splits) == 1:
            self.things_and_stuff = next(iter(splits))

    # ------------------------------------------------------------------ predictions
    def predictions_to_float32(self, samples: Any) -> Any:
        """``pred_instances`` (where the model predicts them too) as for detection, and the floating fields of
        ``pred_panoptic_seg`` / ``pred_sem_seg`` in float32 (in place; returned)."""
        super().predictions_to_float32(samples)
        for sample in samples if isinstance(samples, (list, tuple)) else []:
            for field in ("pred_panoptic_seg", "pred_sem_seg"):
                data = getattr(sample, field, None)
                if data is None:
                    continue
                for key in list(data.keys()):
                    value = data.get(key)
                    if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != torch.float32:
                        data.set_field(value.float(), key)
        return samples

    def predicted_instances(self, sample: Any, score_thr: float) -> Instances | None:
        """The segments of ``pred_panoptic_seg`` (``label + instance * INSTANCE_OFFSET``; labels from the class count
        on are void), each a mask with its class; boxes for things. ``score_thr`` does not apply (segments have no
        score). The class counts are the model's (:meth:`setup_model`)."""
        from mmdet.evaluation.functional import INSTANCE_OFFSET

        pred = getattr(sample, "pred_panoptic_seg", None)
        if pred is None:
            return None
        ids = pred.sem_seg[0].cpu().numpy().astype(np.int64)
        things, stuff = self.things_and_stuff or (0, 0)
        labels_of = {int(i): int(i) % INSTANCE_OFFSET for i in np.unique(ids)
                     if int(i) % INSTANCE_OFFSET < things + stuff}
        return panoptic_instances(ids, labels_of, things)

    def ground_truth_instances(self, data_info: Mapping[str, Any], height: int, width: int,
                               with_masks: bool) -> Instances:
        """The segments of the image's panoptic PNG (``seg_map_path``, ``segments_info`` of mmdet's
        ``CocoPanopticDataset``), each a mask with its class, things and stuff; boxes for things. Crowd segments
        (marked not-thing by the dataset) are shown as masks of their class."""
        from PIL import Image

        from ..panoptic_quality import rgb2id
        from ..wandb.media import Instances

        path = data_info.get("seg_map_path")
        if not path:
            return Instances(np.zeros((0, 4), np.float32), np.zeros(0, np.int64),
                             problems=["no panoptic PNG (`seg_map_path`) in the dataset's data info"])
        with Image.open(path) as png:
            ids = rgb2id(np.asarray(png.convert("RGB")))
        labels_of = {int(seg["id"]): int(seg["category"]) for seg in data_info.get("segments_info", [])}
        things = self.things_and_stuff[0] if self.things_and_stuff else sum(
            1 for seg in data_info.get("segments_info", []) if seg.get("is_thing"))
        return panoptic_instances(ids, labels_of, things)

    def has_masks(self, sample: Any) -> bool:
        return hasattr(sample, "pred_panoptic_seg") or super().has_masks(sample)

    # ------------------------------------------------------------------ classes
    @staticmethod
    def panoptic_heads(model: torch.nn.Module) -> dict[str, tuple[int, int]]:
        """``(num_things_classes, num_stuff_classes)`` of every module that has both, by module name."""
        found = {}
        for name, module in model.named_modules():
            things, stuff = getattr(module, "num_things_classes", None), getattr(module, "num_stuff_classes", None)
            if isinstance(things, int) and isinstance(stuff, int):
                found[name or "model"] = (things, stuff)
        return found

    def class_counts(self, model: torch.nn.Module) -> dict[str, int]:
        """Things + stuff of every panoptic head (those with ``num_things_classes`` and ``num_stuff_classes``)."""
        return {name: things + stuff for name, (things, stuff) in self.panoptic_heads(model).items()}

    def check_classes(self, model: torch.nn.Module, classes: Any, stage: str) -> None:
        """Every panoptic head predicts ``num_things_classes + num_stuff_classes`` = the dataset's classes, all
        with the same split, and the instance heads of a two-stage panoptic segmentor (PanopticFPN's bbox and
        mask heads) predict the things; ``ValueError`` naming the heads otherwise. Keeps the model's split for
        the W&B tables (:attr:`things_and_stuff`)."""
        heads = self.panoptic_heads(model)
        splits = set(heads.values())
        wrong = [f"{name}: num_things_classes={t}, num_stuff_classes={s}" for name, (t, s) in heads.items()
                 if t + s != len(classes)]
        if len(splits) > 1:
            wrong = [f"{name}: num_things_classes={t}, num_stuff_classes={s}" for name, (t, s) in heads.items()]
        things = next(iter(splits))[0] if len(splits) == 1 else None
        inside = tuple(f"{name}." for name in heads if name != "model")
        for name, count in DetectionTask.class_counts(self, model).items():
            if name in heads or name.startswith(inside) or things is None or count == things:
                continue
            wrong.append(f"{name}.num_classes={count} (the instance heads predict the {things} thing classes)")
        if wrong:
            raise ValueError(
                f"The {stage} dataset has {len(classes)} classes {tuple(classes)} (things first, then stuff), but "
                f"the model's heads do not fit them: {'; '.join(wrong)}.\nHint: set num_things_classes and "
                "num_stuff_classes (their sum: the dataset's class count) alike in every panoptic head of the "
                "config's `model` (panoptic_head, panoptic_fusion_head, semantic_head), num_classes = "
                "num_things_classes in its bbox and mask heads, or `metainfo=dict(classes=..., thing_classes=..., "
                "stuff_classes=...)` on the dataset to the model's classes."
            )
        if things is not None:
            self.things_and_stuff = next(iter(splits))

    # ------------------------------------------------------------------ evaluation
    @contextlib.contextmanager
    def recording_evaluation(self, evaluator: Evaluator) -> Iterator[dict[str, Any]]:
        """Keep what ``CocoPanopticMetric`` computes besides its scalars: ``pq_results`` (All / Things / Stuff, and
        ``classwise``: PQ, SQ, RQ by category id, whether or not the metric has ``classwise=True``) and the
        ``categories`` (id -> name, ``isthing``) they refer to. Read where mmdet hands them to its table printer."""
        from mmdet.evaluation.metrics import CocoPanopticMetric
        from mmdet.evaluation.metrics import coco_panoptic_metric as module

        details: dict[str, Any] = {}
        printer = module.print_panoptic_table

        def record(pq_results: dict, classwise_results: dict | None = None, logger: Any = None) -> None:
            details["pq_results"] = pq_results
            printer(pq_results, classwise_results, logger=logger)

        module.print_panoptic_table = record
        try:
            yield details
        finally:
            module.print_panoptic_table = printer
        metric = next((m for m in evaluator.metrics if isinstance(m, CocoPanopticMetric)), None)
        if "pq_results" in details and metric is not None:
            details["categories"] = dict(getattr(metric, "categories", None) or {})

    def analytics_tables(self, details: Mapping[str, Any], prefix: str) -> dict[str, Any]:
        """``<prefix>/per_class_pq``: one row a class (things, then stuff), ``class``, ``kind``, ``PQ``, ``SQ``,
        ``RQ`` (percent, as ``coco_panoptic/PQ``; 0 for a class without any segment, as panopticapi has it)."""
        import wandb

        results, categories = details.get("pq_results"), details.get("categories")
        if not results or not categories:
            return {}
        table = wandb.Table(columns=["class", "kind", "PQ", "SQ", "RQ"])
        for cat_id, stats in results["classwise"].items():
            category = categories.get(cat_id, {})
            table.add_data(str(category.get("name", cat_id)), "thing" if category.get("isthing") else "stuff",
                           *(100 * float(stats[k]) for k in ("pq", "sq", "rq")))
        return {f"{prefix}/per_class_pq": table}
