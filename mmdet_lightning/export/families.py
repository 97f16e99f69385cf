"""Which detectors have an export graph, and why the others do not (named family and op)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from .errors import ExportError
from .ops import SUPPORTED_MMCV_OPS

__all__ = ["Family", "check_exportable", "describe_family", "is_gfl_head"]

_TWO_STAGE_RPN = ("RPNHead",)
_TWO_STAGE_ROI = ("StandardRoIHead", "CascadeRoIHead")
_ROI_EXTRACTORS = ("SingleRoIExtractor",)
_MASK_HEADS = ("FCNMaskHead",)
_DENSE_CODERS = ("DeltaXYWHBBoxCoder", "DistancePointBBoxCoder")  # the coders graphs.decode reproduces


@dataclass(frozen=True)
class Family:
    """An exportable detector: ``kind`` is ``"dense"``, ``"two_stage"`` or ``"cascade"``; ``name`` says what it
    is."""

    kind: str
    name: str
    with_mask: bool = False


def _name(obj: Any) -> str:
    return type(obj).__name__


def describe_family(detector: nn.Module) -> str:
    """``"RetinaNet (one-stage, RetinaHead)"``, ``"MaskRCNN (two-stage, RPNHead + StandardRoIHead)"``..."""
    if hasattr(detector, "bbox_head") and not hasattr(detector, "roi_head"):
        return f"{_name(detector)} (one-stage, {_name(detector.bbox_head)})"
    if hasattr(detector, "roi_head"):
        rpn = _name(detector.rpn_head) if getattr(detector, "rpn_head", None) is not None else "no RPN"
        return f"{_name(detector)} (two-stage, {rpn} + {_name(detector.roi_head)})"
    return _name(detector)


def _check_mmcv_ops(detector: nn.Module, family: str) -> None:
    for name, module in detector.named_modules():
        cls = type(module)
        if cls.__module__.startswith("mmcv.ops") and cls.__name__ not in SUPPORTED_MMCV_OPS:
            raise ExportError(f"mmcv op {cls.__name__} (module `{name}`) has no export form here (export forms: "
                              f"{', '.join(SUPPORTED_MMCV_OPS)}, mmcv's nms)", family=family, op=cls.__name__)


def _check_nms(cfg: Any, family: str, where: str) -> None:
    """The NMS settings of a ``test_cfg`` that the graphs reproduce: mmcv's ``nms`` only."""
    nms = (cfg or {}).get("nms") if hasattr(cfg, "get") else None
    if nms is None:
        return
    kind = nms.get("type", "nms")
    if kind != "nms":
        raise ExportError(f"NMS of type {kind!r} in {where} has no export form (only 'nms')", family=family,
                          op=str(kind))
    unknown = set(nms) - {"type", "iou_threshold", "iou_thr", "class_agnostic", "max_num", "score_threshold",
                          "split_thr", "offset"}
    if unknown:
        raise ExportError(f"NMS options {sorted(unknown)} in {where} have no export form", family=family, op="nms")
    if nms.get("offset", 0) != 0:
        raise ExportError(f"NMS with offset={nms['offset']} in {where} has no ONNX form", family=family, op="nms")


def _overrides(obj: Any, base: type, method: str) -> bool:
    return getattr(type(obj), method) is not getattr(base, method)


#: the methods of a RoI head that its inference runs: a subclass that keeps them (Dynamic R-CNN's, PISA's heads
#: change only the losses) predicts as its base
_ROI_PREDICT_METHODS = ("predict", "predict_bbox", "predict_mask", "_bbox_forward", "_mask_forward", "_refine_roi")


def _roi_base(roi: Any) -> str | None:
    """``"StandardRoIHead"`` or ``"CascadeRoIHead"`` when ``roi`` predicts as that class does, else None."""
    import mmdet.models.roi_heads as roi_heads

    for base_name in reversed(_TWO_STAGE_ROI):  # the cascade first: it is no StandardRoIHead
        base = getattr(roi_heads, base_name)
        if isinstance(roi, base) and not any(_overrides(roi, base, m) for m in _ROI_PREDICT_METHODS
                                             if hasattr(base, m)):
            return base_name
    return None


def is_gfl_head(head: Any) -> bool:
    """A head that post-processes as ``GFLHead._predict_by_feat_single`` does (GFL, LD): box distances as the
    integral of a distribution, times the stride, from the anchors' centres."""
    from mmdet.models.dense_heads import GFLHead

    return isinstance(head, GFLHead) and not any(_overrides(head, GFLHead, m) for m in (
        "_predict_by_feat_single", "anchor_center", "forward_single"))


def check_exportable(detector: nn.Module) -> Family:
    """The export family of ``detector``; :class:`ExportError` naming the family and the op otherwise."""
    from mmdet.models.dense_heads.base_dense_head import BaseDenseHead
    from mmdet.models.detectors import SingleStageDetector, TwoStageDetector
    from mmdet.models.roi_heads.bbox_heads import BBoxHead

    family = describe_family(detector)
    _check_mmcv_ops(detector, family)
    if isinstance(detector, TwoStageDetector):
        rpn, roi = getattr(detector, "rpn_head", None), detector.roi_head
        if rpn is None or _name(rpn) not in _TWO_STAGE_RPN:
            raise ExportError(f"proposal head {_name(rpn)} has no export form (only {', '.join(_TWO_STAGE_RPN)})",
                              family=family, op=_name(rpn))
        if _roi_base(roi) is None:
            raise ExportError(f"RoI head {_name(roi)} has no export form (only {', '.join(_TWO_STAGE_ROI)}, and "
                              f"subclasses that change only training: {', '.join(_ROI_PREDICT_METHODS)} as theirs)",
                              family=family, op=_name(roi))
        cascade = _roi_base(roi) == "CascadeRoIHead"  # one bbox head (and extractor, mask head) a stage
        stages = (lambda m: list(m)) if cascade else (lambda m: [m])  # noqa: E731
        for bbox_head in stages(roi.bbox_head):
            if not isinstance(bbox_head, BBoxHead) or _overrides(bbox_head, BBoxHead, "_predict_by_feat_single") \
                    or (cascade and (_overrides(bbox_head, BBoxHead, "regress_by_class")
                                     or getattr(bbox_head, "custom_activation", False))):
                raise ExportError(f"box head {_name(bbox_head)} post-processes in its own way, which has no "
                                  "export form", family=family, op=f"{_name(bbox_head)}.predict_by_feat")
        extractors = stages(roi.bbox_roi_extractor) + (stages(roi.mask_roi_extractor) if roi.with_mask else [])
        for extractor in extractors:
            if _name(extractor) not in _ROI_EXTRACTORS:
                raise ExportError(f"RoI extractor {_name(extractor)} has no export form", family=family,
                                  op=_name(extractor))
        for mask_head in stages(roi.mask_head) if roi.with_mask else []:
            if _name(mask_head) not in _MASK_HEADS:
                raise ExportError(f"mask head {_name(mask_head)} has no export form (only "
                                  f"{', '.join(_MASK_HEADS)})", family=family, op=_name(mask_head))
        _check_nms(rpn.test_cfg, family, "test_cfg.rpn")
        _check_nms(roi.test_cfg, family, "test_cfg.rcnn")
        if getattr(roi, "with_semantic", False):
            raise ExportError("semantic heads have no export form", family=family, op="semantic_head")
        return Family("cascade" if cascade else "two_stage", family, with_mask=bool(roi.with_mask))
    if isinstance(detector, SingleStageDetector):
        head = detector.bbox_head
        if not isinstance(head, BaseDenseHead):
            raise ExportError(f"head {_name(head)} is not a dense head", family=family, op=_name(head))
        for method in ("predict_by_feat", "_predict_by_feat_single", "_bbox_post_process"):
            if _overrides(head, BaseDenseHead, method) and not (method == "_predict_by_feat_single" and
                                                                is_gfl_head(head)):
                raise ExportError(f"head {_name(head)} post-processes in its own way ({method}), which has no "
                                  "export form yet", family=family, op=f"{_name(head)}.{method}")
        from mmdet.models.task_modules.prior_generators import AnchorGenerator, MlvlPointGenerator

        generator = head.prior_generator
        bases = [b for b in (AnchorGenerator, MlvlPointGenerator) if isinstance(generator, b)]
        if not bases or any(_overrides(generator, bases[0], m) for m in ("grid_priors", "single_level_grid_priors")):
            raise ExportError(f"prior generator {_name(head.prior_generator)} has no export form", family=family,
                              op=_name(head.prior_generator))
        coder = _name(head.bbox_coder)
        if coder not in _DENSE_CODERS:
            raise ExportError(f"box coder {coder} has no export form (only {', '.join(_DENSE_CODERS)})",
                              family=family, op=coder)
        _check_nms(head.test_cfg, family, "test_cfg")
        return Family("dense", family)
    raise ExportError("only one-stage (dense head) and two-stage (RPN + RoI head) detectors have export graphs",
                      family=family, op=_name(detector))
