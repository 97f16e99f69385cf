"""Whole-detector export graphs: mmdet's inference (``predict``) as tensor code that ``torch.export`` can trace.

mmdet's heads post-process with ``InstanceData``, Python loops and data-dependent branches; each family here
redoes that post-processing with the same arithmetic in plain tensor operations, one image at a time:

* one-stage dense heads (``BaseDenseHead.predict_by_feat``: RetinaNet, RTMDet, FCOS, ATSS, SSD, ...; and
  ``GFLHead``'s: GFL, LD);
* two-stage detectors: ``RPNHead`` + ``StandardRoIHead`` (``BBoxHead``), with ``FCNMaskHead`` for masks;
* cascades: ``RPNHead`` + ``CascadeRoIHead`` (Cascade R-CNN, Cascade Mask R-CNN).

Every graph takes ``image`` (float32 ``(1, 3, H, W)``, the test pipeline's output, channels as the pipeline
loads them), ``img_shape`` (int64 ``(2,)``: mmdet's ``img_shape``, h, w; boxes are clipped to it) and
``scale_factor`` (float32 ``(2,)``: mmdet's ``scale_factor``, w, h; boxes are divided by it, so ``[1, 1]``
gives boxes in the input's coordinates), and returns ``boxes`` ``(N, 4)``, ``scores`` ``(N,)``, ``labels``
``(N,)`` (and ``masks`` ``(N, M, M)``: each box's mask probabilities for its class, to paste into the image).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .errors import ExportError
from .ops import nms

__all__ = ["DetectorGraph", "DenseDetectorGraph", "TwoStageDetectorGraph", "CascadeDetectorGraph", "build_graph"]

_MAX_OUTPUT = 100_000  # "keep all" for max_per_img <= 0
_DELTA_CODERS = ("DeltaXYWHBBoxCoder",)
_DISTANCE_CODERS = ("DistancePointBBoxCoder",)


def _type_name(obj: Any) -> str:
    return type(obj).__name__


def _cfg_get(cfg: Any, key: str, default: Any = None) -> Any:
    if cfg is None:
        return default
    return cfg.get(key, default) if isinstance(cfg, Mapping) or hasattr(cfg, "get") else getattr(cfg, key, default)


def _max_xyxy(img_shape: Tensor, like: Tensor) -> Tensor:
    """``[w, h, w, h]`` of ``img_shape`` (h, w) as ``like``'s dtype."""
    wh = img_shape.flip(0).to(like.dtype)
    return torch.cat([wh, wh])


def delta2bbox(rois: Tensor, deltas: Tensor, coder: Any, img_shape: Tensor | None) -> Tensor:
    """mmdet's ``delta2bbox`` (``DeltaXYWHBBoxCoder.decode``) for ``(N, 4)`` rois and deltas, op for op,
    clipping to a tensor ``img_shape``."""
    means = deltas.new_tensor(coder.means).view(1, -1)
    stds = deltas.new_tensor(coder.stds).view(1, -1)
    denorm = deltas * stds + means
    dxy = denorm[:, :2]
    dwh = denorm[:, 2:]
    pxy = (rois[:, :2] + rois[:, 2:]) * 0.5
    pwh = rois[:, 2:] - rois[:, :2]
    dxy_wh = pwh * dxy
    max_ratio = float(abs(math.log(16 / 1000)))  # decode()'s default wh_ratio_clip
    if getattr(coder, "add_ctr_clamp", False):
        dxy_wh = torch.clamp(dxy_wh, max=coder.ctr_clamp, min=-coder.ctr_clamp)
        dwh = torch.clamp(dwh, max=max_ratio)
    else:
        dwh = dwh.clamp(min=-max_ratio, max=max_ratio)
    gxy = pxy + dxy_wh
    gwh = pwh * dwh.exp()
    bboxes = torch.cat([gxy - (gwh * 0.5), gxy + (gwh * 0.5)], dim=-1)
    if getattr(coder, "clip_border", True) and img_shape is not None:
        bboxes = torch.minimum(bboxes.clamp(min=0), _max_xyxy(img_shape, bboxes))
    return bboxes


def distance2bbox(points: Tensor, distance: Tensor, coder: Any, img_shape: Tensor | None) -> Tensor:
    """mmdet's ``distance2bbox`` (``DistancePointBBoxCoder.decode``) with a tensor ``img_shape``."""
    x1 = points[..., 0] - distance[..., 0]
    y1 = points[..., 1] - distance[..., 1]
    x2 = points[..., 0] + distance[..., 2]
    y2 = points[..., 1] + distance[..., 3]
    bboxes = torch.stack([x1, y1, x2, y2], -1)
    if getattr(coder, "clip_border", True) and img_shape is not None:
        bboxes = torch.minimum(bboxes.clamp(min=0), _max_xyxy(img_shape, bboxes))
    return bboxes


def decode(coder: Any, priors: Tensor, deltas: Tensor, img_shape: Tensor | None) -> Tensor:
    name = _type_name(coder)
    if name in _DELTA_CODERS:
        return delta2bbox(priors, deltas, coder, img_shape)
    if name in _DISTANCE_CODERS:
        return distance2bbox(priors, deltas, coder, img_shape)
    raise ExportError(f"box coder {name} has no export form (supported: "
                      f"{', '.join(_DELTA_CODERS + _DISTANCE_CODERS)})", op=name)


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, valid: Tensor, nms_cfg: Any,
                max_num: int) -> Tensor:
    """Indices kept by mmcv's ``batched_nms`` among the ``valid`` boxes (class-aware through mmcv's coordinate
    offsets, computed from the valid boxes as mmcv computes them), highest score first, at most ``max_num``."""
    nms_cfg = dict(nms_cfg or {})
    kind = nms_cfg.pop("type", "nms")
    if kind != "nms":
        raise ExportError(f"NMS of type {kind!r} has no export form (only 'nms')", op=str(kind))
    iou = float(nms_cfg.pop("iou_threshold", nms_cfg.pop("iou_thr", 0.5)))
    class_agnostic = bool(nms_cfg.pop("class_agnostic", False))
    inner_max = int(nms_cfg.pop("max_num", -1))
    score_thr = float(nms_cfg.pop("score_threshold", 0.0))
    nms_cfg.pop("split_thr", None)
    if nms_cfg.pop("offset", 0) != 0:
        raise ExportError("NMS with a nonzero offset has no ONNX form", op="nms")
    if nms_cfg:
        raise ExportError(f"NMS options {sorted(nms_cfg)} have no export form", op="nms")
    if score_thr > 0:
        valid = valid & (scores > score_thr)
    if class_agnostic:
        boxes_for_nms = boxes
    else:
        masked = torch.where(valid[:, None], boxes, torch.full_like(boxes, float("-inf")))
        max_coordinate = masked.max()
        max_coordinate = torch.where(torch.isfinite(max_coordinate), max_coordinate,
                                     torch.zeros_like(max_coordinate))
        offsets = idxs.to(boxes) * (max_coordinate + torch.tensor(1).to(boxes))
        boxes_for_nms = boxes + offsets[:, None]
    limit = max_num if max_num > 0 else _MAX_OUTPUT
    if inner_max > 0:
        limit = min(limit, inner_max)
    # every valid score is >= 0 (sigmoid, softmax): -1 marks the invalid ones, under the -0.5 threshold
    return nms(boxes_for_nms, torch.where(valid, scores, torch.full_like(scores, -1.0)), iou, -0.5, limit)


class DetectorGraph(nn.Module):
    """The data preprocessor's part (channel order, normalisation, padding to the size divisor) and the
    backbone and neck; subclasses add the heads."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector
        pre = detector.data_preprocessor
        self.bgr_to_rgb = bool(getattr(pre, "_channel_conversion", False))
        self.normalize = bool(getattr(pre, "_enable_normalize", False))
        self.pad_size_divisor = int(getattr(pre, "pad_size_divisor", 1) or 1)
        self.pad_value = float(getattr(pre, "pad_value", 0) or 0)
        self.with_mask = False
        self.family_name = type(detector).__name__

    def preprocess(self, image: Tensor) -> Tensor:
        x = image.float()
        if self.bgr_to_rgb:
            x = x[:, [2, 1, 0], ...]
        if self.normalize:
            pre = self.detector.data_preprocessor
            x = (x - pre.mean.view(1, -1, 1, 1)) / pre.std.view(1, -1, 1, 1)
        divisor = self.pad_size_divisor
        if divisor > 1:
            height, width = x.shape[-2], x.shape[-1]
            # (d - n % d) % d, not the ceil-division form: ONNX's integer Div truncates negative quotients
            pad_h = (divisor - height % divisor) % divisor
            pad_w = (divisor - width % divisor) % divisor
            x = nn.functional.pad(x, (0, pad_w, 0, pad_h), value=self.pad_value)
        return x

    def features(self, image: Tensor) -> tuple[Tensor, ...]:
        return tuple(self.detector.extract_feat(self.preprocess(image)))


class DenseDetectorGraph(DetectorGraph):
    """One-stage detectors whose head post-processes with ``BaseDenseHead._predict_by_feat_single``."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__(detector)
        self.head = detector.bbox_head
        decode_check = _type_name(self.head.bbox_coder)
        if decode_check not in _DELTA_CODERS + _DISTANCE_CODERS:
            raise ExportError(f"box coder {decode_check} has no export form", op=decode_check)

    def forward(self, image: Tensor, img_shape: Tensor, scale_factor: Tensor) -> tuple[Tensor, ...]:
        outs = self.head(self.features(image))
        cls_scores, bbox_preds = outs[0], outs[1]
        score_factors = outs[2] if len(outs) > 2 and outs[2] is not None and outs[2][0] is not None else None
        return dense_predict(self.head, list(cls_scores), list(bbox_preds),
                             list(score_factors) if score_factors is not None else None,
                             self.head.test_cfg, img_shape, scale_factor, rescale=True)


def _topk(scores: Tensor, nms_pre: int) -> tuple[Tensor, Tensor]:
    """The ``nms_pre`` highest scores of a flat tensor, highest first (all of them, sorted, without a limit)."""
    if nms_pre > 0:
        return scores.topk(torch.sym_min(nms_pre, scores.shape[0]))
    return scores.sort(descending=True)


def dense_predict(head: Any, cls_scores: list[Tensor], bbox_preds: list[Tensor],
                  score_factors: list[Tensor] | None, cfg: Any, img_shape: Tensor, scale_factor: Tensor,
                  rescale: bool) -> tuple[Tensor, Tensor, Tensor]:
    """``BaseDenseHead._predict_by_feat_single`` + ``_bbox_post_process`` for the first image, as tensors."""
    featmap_sizes = [c.shape[-2:] for c in cls_scores]
    mlvl_priors = head.prior_generator.grid_priors(featmap_sizes, dtype=cls_scores[0].dtype,
                                                   device=cls_scores[0].device)
    nms_pre = int(_cfg_get(cfg, "nms_pre", -1))
    score_thr = float(_cfg_get(cfg, "score_thr", 0))
    num_classes = int(head.cls_out_channels)
    dim = int(head.bbox_coder.encode_size)
    from .families import is_gfl_head

    gfl = is_gfl_head(head)  # GFLHead._predict_by_feat_single: distribution integral x stride, anchor centres
    all_scores, all_labels, all_preds, all_priors, all_factors = [], [], [], [], []
    for level, (cls_score, bbox_pred, priors) in enumerate(zip(cls_scores, bbox_preds, mlvl_priors, strict=False)):
        if gfl:
            bbox_pred = head.integral(bbox_pred[0].permute(1, 2, 0)) * head.prior_generator.strides[level][0]
            priors = head.anchor_center(priors)
        else:
            bbox_pred = bbox_pred[0].permute(1, 2, 0).reshape(-1, dim)
        cls_score = cls_score[0].permute(1, 2, 0).reshape(-1, num_classes)
        if getattr(getattr(head, "loss_cls", None), "custom_cls_channels", False):
            raise ExportError("a classification loss with custom channels has no export form",
                              op=_type_name(head.loss_cls))
        scores = cls_score.sigmoid() if head.use_sigmoid_cls else cls_score.softmax(-1)[:, :-1]
        per_class = scores.shape[1]
        top, flat_idx = _topk(scores.reshape(-1), nms_pre)
        prior_idx = torch.div(flat_idx, per_class, rounding_mode="floor")
        all_scores.append(top)
        all_labels.append(flat_idx % per_class)
        all_preds.append(bbox_pred[prior_idx])
        all_priors.append(priors[prior_idx])
        if score_factors is not None:
            all_factors.append(score_factors[level][0].permute(1, 2, 0).reshape(-1).sigmoid()[prior_idx])
    scores = torch.cat(all_scores)
    labels = torch.cat(all_labels)
    valid = scores > score_thr
    bboxes = decode(head.bbox_coder, torch.cat(all_priors), torch.cat(all_preds), img_shape)
    if rescale:
        bboxes = bboxes * (1.0 / scale_factor).repeat(2)
    if score_factors is not None:
        scores = scores * torch.cat(all_factors)
    min_size = _cfg_get(cfg, "min_bbox_size", -1)
    if min_size is not None and min_size >= 0:
        w = bboxes[:, 2] - bboxes[:, 0]
        h = bboxes[:, 3] - bboxes[:, 1]
        valid = valid & (w > min_size) & (h > min_size)
    keep = batched_nms(bboxes, scores, labels, valid, _cfg_get(cfg, "nms"), int(_cfg_get(cfg, "max_per_img", -1)))
    return bboxes[keep], scores[keep], labels[keep]


class TwoStageDetectorGraph(DetectorGraph):
    """``RPNHead`` proposals, then ``StandardRoIHead``'s box head (and ``FCNMaskHead``)."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__(detector)
        self.rpn_head = detector.rpn_head
        self.roi_head = detector.roi_head
        self.with_mask = bool(getattr(self.roi_head, "with_mask", False))
        bbox_heads = self.roi_head.bbox_head
        bbox_heads = list(bbox_heads) if isinstance(bbox_heads, nn.ModuleList) else [bbox_heads]  # cascades: a stage
        for coder in [self.rpn_head.bbox_coder, *(head.bbox_coder for head in bbox_heads)]:
            if _type_name(coder) not in _DELTA_CODERS:
                raise ExportError(f"box coder {_type_name(coder)} has no export form", op=_type_name(coder))

    def forward(self, image: Tensor, img_shape: Tensor, scale_factor: Tensor) -> tuple[Tensor, ...]:
        feats = self.features(image)
        proposals = self.proposals(feats, img_shape)
        rois = torch.cat([proposals.new_zeros((proposals.shape[0], 1)), proposals], dim=1)
        roi_head = self.roi_head
        bbox_feats = roi_features(roi_head.bbox_roi_extractor, feats, rois)
        if roi_head.with_shared_head:
            bbox_feats = roi_head.shared_head(bbox_feats)
        cls_score, bbox_pred = roi_head.bbox_head(bbox_feats)
        boxes, scores, labels = rcnn_predict(roi_head.bbox_head, rois, cls_score, bbox_pred, roi_head.test_cfg,
                                             img_shape, scale_factor, rescale=not self.with_mask)
        if not self.with_mask:
            return boxes, scores, labels
        mask_rois = torch.cat([boxes.new_zeros((boxes.shape[0], 1)), boxes], dim=1)
        mask_feats = roi_features(roi_head.mask_roi_extractor, feats, mask_rois)
        if roi_head.with_shared_head:
            mask_feats = roi_head.shared_head(mask_feats)
        mask_preds = roi_head.mask_head(mask_feats)
        mask_head = roi_head.mask_head
        if getattr(mask_head, "class_agnostic", False):
            chosen = mask_preds[:, 0]
        else:
            chosen = mask_preds[torch.arange(mask_preds.shape[0]), labels]
        boxes = boxes / scale_factor.repeat(2)  # FCNMaskHead rescales in place: bboxes /= scale_factor
        return boxes, scores, labels, chosen.sigmoid()

    def proposals(self, feats: Sequence[Tensor], img_shape: Tensor) -> Tensor:
        """``RPNHead.predict`` (``rescale=False``): the proposal boxes of the first image."""
        head = self.rpn_head
        cfg = head.test_cfg
        cls_scores, bbox_preds = head(feats)
        featmap_sizes = [c.shape[-2:] for c in cls_scores]
        mlvl_priors = head.prior_generator.grid_priors(featmap_sizes, dtype=cls_scores[0].dtype,
                                                       device=cls_scores[0].device)
        nms_pre = int(_cfg_get(cfg, "nms_pre", -1))
        dim = int(head.bbox_coder.encode_size)
        all_scores, all_preds, all_priors, all_levels = [], [], [], []
        for level, (cls_score, bbox_pred, priors) in enumerate(zip(cls_scores, bbox_preds, mlvl_priors, strict=False)):
            bbox_pred = bbox_pred[0].permute(1, 2, 0).reshape(-1, dim)
            cls_score = cls_score[0].permute(1, 2, 0).reshape(-1, head.cls_out_channels)
            scores = cls_score.sigmoid() if head.use_sigmoid_cls else cls_score.softmax(-1)[:, :-1]
            scores = scores.reshape(-1)
            top, idx = _topk(scores, nms_pre)
            all_scores.append(top)
            all_preds.append(bbox_pred[idx])
            all_priors.append(priors[idx])
            all_levels.append(torch.full_like(idx, level))
        scores = torch.cat(all_scores)
        levels = torch.cat(all_levels)
        bboxes = decode(head.bbox_coder, torch.cat(all_priors), torch.cat(all_preds), img_shape)
        valid = torch.ones_like(scores, dtype=torch.bool)
        min_size = _cfg_get(cfg, "min_bbox_size", -1)
        if min_size is not None and min_size >= 0:
            w = bboxes[:, 2] - bboxes[:, 0]
            h = bboxes[:, 3] - bboxes[:, 1]
            valid = (w > min_size) & (h > min_size)
        keep = batched_nms(bboxes, scores, levels, valid, _cfg_get(cfg, "nms"), int(_cfg_get(cfg, "max_per_img", -1)))
        return bboxes[keep]


class CascadeDetectorGraph(TwoStageDetectorGraph):
    """``RPNHead`` proposals, then ``CascadeRoIHead``: each stage's box head refines the rois of the stage before
    (``regress_by_class`` with the argmax label), the classification logits are averaged over the stages, the
    last stage's boxes are post-processed as ``BBoxHead``'s; masks are the mean of every stage's mask head's
    probabilities (``merge_aug_masks``)."""

    def forward(self, image: Tensor, img_shape: Tensor, scale_factor: Tensor) -> tuple[Tensor, ...]:
        feats = self.features(image)
        proposals = self.proposals(feats, img_shape)
        rois = torch.cat([proposals.new_zeros((proposals.shape[0], 1)), proposals], dim=1)
        roi_head = self.roi_head
        stage_scores = []
        bbox_pred = None
        for stage in range(roi_head.num_stages):
            bbox_head = roi_head.bbox_head[stage]
            cls_score, bbox_pred = bbox_head(roi_features(roi_head.bbox_roi_extractor[stage], feats, rois))
            stage_scores.append(cls_score)
            if stage < roi_head.num_stages - 1:
                label = cls_score[:, :-1].argmax(dim=1)
                deltas = bbox_pred
                dim = int(bbox_head.bbox_coder.encode_size)
                if not bbox_head.reg_class_agnostic:
                    deltas = deltas.view(deltas.shape[0], -1, dim)[torch.arange(deltas.shape[0]), label]
                refined = decode(bbox_head.bbox_coder, rois[:, 1:], deltas, img_shape)
                rois = torch.cat([rois[:, :1], refined], dim=1)
        cls_score = sum(stage_scores[1:], stage_scores[0]) / float(len(stage_scores))
        last = roi_head.bbox_head[-1]
        boxes, scores, labels = rcnn_predict(last, rois, cls_score, bbox_pred, roi_head.test_cfg, img_shape,
                                             scale_factor, rescale=not self.with_mask)
        if not self.with_mask:
            return boxes, scores, labels
        mask_rois = torch.cat([boxes.new_zeros((boxes.shape[0], 1)), boxes], dim=1)
        merged = None
        for stage in range(roi_head.num_stages):
            mask_preds = roi_head.mask_head[stage](roi_features(roi_head.mask_roi_extractor[stage], feats, mask_rois))
            merged = mask_preds.sigmoid() if merged is None else merged + mask_preds.sigmoid()
        assert merged is not None
        merged = merged / float(roi_head.num_stages)
        if getattr(roi_head.mask_head[-1], "class_agnostic", False):
            chosen = merged[:, 0]
        else:
            chosen = merged[torch.arange(merged.shape[0]), labels]
        boxes = boxes / scale_factor.repeat(2)  # FCNMaskHead rescales in place: bboxes /= scale_factor
        return boxes, scores, labels, chosen


def roi_features(extractor: Any, feats: Sequence[Tensor], rois: Tensor) -> Tensor:
    """``SingleRoIExtractor.forward`` without data-dependent indexing: every level pools every roi, and each
    roi keeps the level ``map_roi_levels`` assigns it (the same numbers as pooling it there only)."""
    if _type_name(extractor) != "SingleRoIExtractor":
        raise ExportError(f"RoI extractor {_type_name(extractor)} has no export form (only SingleRoIExtractor)",
                          op=_type_name(extractor))
    feats = list(feats)[: extractor.num_inputs]
    num_levels = len(feats)
    rois = rois.type_as(feats[0])
    if num_levels == 1:
        return extractor.roi_layers[0](feats[0], rois)
    target = extractor.map_roi_levels(rois, num_levels)
    out = None
    for level in range(num_levels):
        pooled = extractor.roi_layers[level](feats[level], rois)
        if out is None:
            out = pooled
        else:
            out = torch.where((target == level).view(-1, 1, 1, 1), pooled, out)
    return out


def rcnn_predict(bbox_head: Any, rois: Tensor, cls_score: Tensor, bbox_pred: Tensor, cfg: Any,
                 img_shape: Tensor, scale_factor: Tensor, rescale: bool) -> tuple[Tensor, Tensor, Tensor]:
    """``BBoxHead._predict_by_feat_single`` (softmax, per-class decoding, ``multiclass_nms``) as tensors."""
    if getattr(bbox_head, "custom_cls_channels", False):
        raise ExportError("a box head with custom classification channels has no export form",
                          op=_type_name(bbox_head.loss_cls))
    scores = nn.functional.softmax(cls_score, dim=-1)
    num_rois = rois.shape[0]
    num_classes = 1 if bbox_head.reg_class_agnostic else bbox_head.num_classes
    roi = rois.repeat_interleave(num_classes, dim=0)
    deltas = bbox_pred.view(-1, bbox_head.bbox_coder.encode_size)
    bboxes = decode(bbox_head.bbox_coder, roi[:, 1:], deltas, img_shape)
    if rescale:
        bboxes = bboxes * (1.0 / scale_factor).repeat(2)
    bboxes = bboxes.view(num_rois, -1)
    # multiclass_nms
    real_classes = scores.shape[1] - 1
    if bboxes.shape[1] > 4:
        bboxes = bboxes.view(num_rois, -1, 4)
    else:
        bboxes = bboxes[:, None].expand(num_rois, real_classes, 4)
    scores = scores[:, :-1]
    labels = torch.arange(real_classes, dtype=torch.long, device=scores.device).view(1, -1).expand_as(scores)
    bboxes = bboxes.reshape(-1, 4)
    scores = scores.reshape(-1)
    labels = labels.reshape(-1)
    valid = scores > float(_cfg_get(cfg, "score_thr", 0))
    keep = batched_nms(bboxes, scores, labels, valid, _cfg_get(cfg, "nms"), int(_cfg_get(cfg, "max_per_img", -1)))
    return bboxes[keep], scores[keep], labels[keep]


def build_graph(detector: nn.Module) -> DetectorGraph:
    """The export graph of an mmdet detector, or :class:`ExportError` naming what has no export form."""
    from .families import check_exportable

    family = check_exportable(detector)
    graph: DetectorGraph | None = None
    if family.kind == "dense":
        graph = DenseDetectorGraph(detector)
    elif family.kind == "two_stage":
        graph = TwoStageDetectorGraph(detector)
    elif family.kind == "cascade":
        graph = CascadeDetectorGraph(detector)
    if graph is not None:
        graph.family_name = family.name
        return graph
    raise ExportError(f"no export graph for kind {family.kind}", family=family.name)
