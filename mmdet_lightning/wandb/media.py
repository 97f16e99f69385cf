"""Pure converters from mmdet annotations and predictions to the dicts W&B images take.

W&B conventions (what its UI expects): class ids are 1-based (``label + 1``; 0 is background), box
positions are in pixels (``domain: "pixel"``, ``minX/minY/maxX/maxY``), captions are ``"<class>"`` for
ground truth and ``"<class> <score:.2f>"`` for predictions, each prediction carries ``scores`` for the UI
slider, and masks are merged per class into one uint8 layer each.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Instances", "instance_name", "instances_from_data_info", "instances_from_prediction", "box_data",
           "class_mask_layers"]


@dataclass
class Instances:
    """Boxes (N, 4) as x1, y1, x2, y2 pixels, 0-based labels (N,), optional scores (N,) and masks (N, H, W).

    ``names`` (N,), when set, is the name of each instance in place of the class of its label: the phrase of the
    prompt that a grounding detector matched it to; ``prompt`` is then the text the image was prompted with.

    ``problems`` lists annotations that were skipped (empty or malformed masks), for one warning per image.
    ``boxed`` (N,) bool, where given, says which instances have their box drawn (panoptic: things, not stuff).

    Example::
        >>> Instances(np.zeros((0, 4)), np.zeros(0, dtype=int)).boxes.shape
        (0, 4)
    """

    boxes: np.ndarray
    labels: np.ndarray
    scores: np.ndarray | None = None
    masks: np.ndarray | None = None
    problems: list[str] = field(default_factory=list)
    boxed: np.ndarray | None = None
    names: list[str] | None = None
    prompt: str | None = None


def _mask_from_annotation(mask: Any, height: int, width: int) -> np.ndarray | None:
    """A polygon list, an RLE dict (compressed or not) or a bitmap as a (H, W) bool array; None if unusable."""
    from pycocotools import mask as mask_utils

    if isinstance(mask, np.ndarray):
        return mask.astype(bool) if mask.shape == (height, width) else None
    if isinstance(mask, Mapping):
        rle = mask
        if isinstance(rle.get("counts"), list):
            rle = mask_utils.frPyObjects(dict(rle), height, width)
        return mask_utils.decode(rle).astype(bool)
    polygons = [p for p in mask if len(p) >= 6 and len(p) % 2 == 0] if isinstance(mask, Sequence) else []
    if not polygons:
        return None
    rles = mask_utils.frPyObjects([list(map(float, p)) for p in polygons], height, width)
    return mask_utils.decode(mask_utils.merge(rles)).astype(bool)


def instances_from_data_info(data_info: Mapping[str, Any], height: int, width: int, with_masks: bool) -> Instances:
    """Ground truth of one image from an mmdet dataset's ``get_data_info`` (``instances`` list).

    Instances marked ``ignore_flag`` (crowd) are left out, as mmdet leaves them out of training.

    Example::
        >>> info = {"instances": [{"bbox": [1, 2, 5, 6], "bbox_label": 2, "ignore_flag": 0,
        ...                        "mask": [[1, 2, 5, 2, 5, 6]]}]}
        >>> gt = instances_from_data_info(info, 8, 8, with_masks=True)
        >>> gt.boxes.tolist(), gt.labels.tolist(), gt.masks.shape
        ([[1.0, 2.0, 5.0, 6.0]], [2], (1, 8, 8))
    """
    boxes, labels, masks, problems = [], [], [], []
    for index, instance in enumerate(data_info.get("instances", [])):
        if instance.get("ignore_flag", 0):
            continue
        bbox = instance.get("bbox")
        if bbox is None or len(bbox) != 4 or not np.all(np.isfinite(bbox)):
            problems.append(f"instance {index}: malformed bbox {bbox!r}")
            continue
        mask = None
        if with_masks and instance.get("mask") is not None:
            try:
                mask = _mask_from_annotation(instance["mask"], height, width)
            except Exception as err:  # pycocotools raises plain Exceptions on malformed input
                problems.append(f"instance {index}: malformed mask ({err})")
            if mask is None:
                problems.append(f"instance {index}: empty or malformed mask skipped")
        boxes.append([float(v) for v in bbox])
        labels.append(int(instance["bbox_label"]))
        masks.append(mask if mask is not None else np.zeros((height, width), dtype=bool))
    return Instances(
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        labels=np.asarray(labels, dtype=np.int64),
        masks=np.stack(masks) if with_masks and masks else None,
        problems=problems,
    )


def instances_from_prediction(sample: Any, score_thr: float) -> Instances:
    """Predictions of one ``DetDataSample`` with score > ``score_thr``, as numpy arrays on the CPU."""
    pred = sample.pred_instances
    keep = (pred.scores > score_thr).cpu()
    masks = pred.masks[keep.to(pred.masks.device)].cpu().numpy().astype(bool) if "masks" in pred else None
    return Instances(
        boxes=pred.bboxes[keep.to(pred.bboxes.device)].float().cpu().numpy(),
        labels=pred.labels[keep.to(pred.labels.device)].cpu().numpy(),
        scores=pred.scores[keep.to(pred.scores.device)].float().cpu().numpy(),
        masks=masks,
    )


def instance_name(instances: Instances, index: int, class_names: Sequence[str]) -> str:
    """The name of instance ``index``: its own (``names``, a grounding detector's phrase), else its label's class.

    Example::
        >>> inst = Instances(np.zeros((1, 4)), np.array([0]), names=["red disc"])
        >>> instance_name(inst, 0, ["circle"]), instance_name(Instances(np.zeros((1, 4)), np.array([0])), 0, ["circle"])
        ('red disc', 'circle')
    """
    if instances.names is not None:
        return instances.names[index]
    label = int(instances.labels[index])
    return class_names[label] if 0 <= label < len(class_names) else str(label)


def box_data(instances: Instances, class_names: Sequence[str]) -> list[dict[str, Any]]:
    """W&B ``box_data`` entries, with ``scores`` and ``"<class> <score>"`` captions for predictions.

    Example::
        >>> inst = Instances(np.array([[1.0, 2.0, 3.0, 4.0]]), np.array([0]), np.array([0.875]))
        >>> box_data(inst, ["circle"])[0]["box_caption"], box_data(inst, ["circle"])[0]["class_id"]
        ('circle 0.88', 1)
    """
    entries = []
    for index, (box, label) in enumerate(zip(instances.boxes.tolist(), instances.labels.tolist(), strict=True)):
        if instances.boxed is not None and not instances.boxed[index]:
            continue
        name = instance_name(instances, index, class_names)
        entry: dict[str, Any] = {
            "position": {"minX": box[0], "minY": box[1], "maxX": box[2], "maxY": box[3]},
            "class_id": int(label) + 1,
            "box_caption": name,
            "domain": "pixel",
        }
        if instances.scores is not None:
            score = float(instances.scores[index])
            entry["scores"] = {"score": score}
            entry["box_caption"] = f"{name} {score:.2f}"
        entries.append(entry)
    return entries


def class_mask_layers(instances: Instances, class_names: Sequence[str]) -> dict[str, np.ndarray]:
    """One uint8 layer per class present (pixels = ``label + 1``, 0 elsewhere), keyed by class name.

    Example::
        >>> masks = np.zeros((2, 4, 4), dtype=bool); masks[0, 0, 0] = masks[1, 3, 3] = True
        >>> layers = class_mask_layers(Instances(np.zeros((2, 4)), np.array([1, 1]), masks=masks), ["a", "b"])
        >>> list(layers), int(layers["b"].sum())
        (['b'], 4)
    """
    layers: dict[str, np.ndarray] = {}
    if instances.masks is None:
        return layers
    for mask, label in zip(instances.masks, instances.labels.tolist(), strict=True):
        name = class_names[label] if 0 <= label < len(class_names) else str(label)
        layer = layers.setdefault(name, np.zeros(mask.shape, dtype=np.uint8))
        layer[mask] = label + 1
    return layers
