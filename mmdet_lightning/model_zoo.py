"""mmdet's model zoo: one representative config per family, adapted to train on another (small) dataset.

``tools/model_zoo_sweep.py`` trains each family's representative for a few iterations through
:class:`~mmdet_lightning.MMDetModule` and writes ``docs/model_zoo.md``; the tests run a few fast families.

Example::
    >>> from mmdet_lightning.model_zoo import REPRESENTATIVES, family_config
    >>> REPRESENTATIVES["retinanet"]
    'retinanet_r50_fpn_1x_coco.py'
    >>> family_config("retinanet").name
    'retinanet_r50_fpn_1x_coco.py'
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import leaf_dataset_cfgs
from .engine.optimization import plain_optim_wrapper_cfg
from .tasks.base import is_proposal_head
from .tasks.panoptic import is_panoptic_model

if TYPE_CHECKING:
    from mmengine.config import Config

__all__ = ["REPRESENTATIVES", "mmdet_configs_dir", "family_config", "adapt_to_dataset", "shrink_image_sizes",
           "stabilise_from_scratch"]

#: family (a folder of mmdet's ``configs``) -> its representative config: the standard (r50, fpn, 1x) one
#: where there is one; a family of a task we do not cover keeps a config too, so that the sweep shows the error
REPRESENTATIVES: dict[str, str] = {
    "albu_example": "mask-rcnn_r50_fpn_albu-1x_coco.py",
    "atss": "atss_r50_fpn_1x_coco.py",
    "autoassign": "autoassign_r50-caffe_fpn_1x_coco.py",
    "boxinst": "boxinst_r50_fpn_ms-90k_coco.py",
    "bytetrack": "bytetrack_yolox_x_8xb4-80e_crowdhuman-mot17halftrain_test-mot17halfval.py",
    "carafe": "faster-rcnn_r50_fpn-carafe_1x_coco.py",
    "cascade_rcnn": "cascade-mask-rcnn_r50_fpn_1x_coco.py",
    "cascade_rpn": "cascade-rpn_faster-rcnn_r50-caffe_fpn_1x_coco.py",
    "centernet": "centernet-update_r50-caffe_fpn_ms-1x_coco.py",
    "centripetalnet": "centripetalnet_hourglass104_16xb6-crop511-210e-mstest_coco.py",
    "cityscapes": "mask-rcnn_r50_fpn_1x_cityscapes.py",
    "common": "ms_3x_coco.py",
    "condinst": "condinst_r50_fpn_ms-poly-90k_coco_instance.py",
    "conditional_detr": "conditional-detr_r50_8xb2-50e_coco.py",
    "convnext": "mask-rcnn_convnext-t-p4-w7_fpn_amp-ms-crop-3x_coco.py",
    "cornernet": "cornernet_hourglass104_8xb6-210e-mstest_coco.py",
    "crowddet": "crowddet-rcnn_r50_fpn_8xb2-30e_crowdhuman.py",
    "dab_detr": "dab-detr_r50_8xb2-50e_coco.py",
    "dcn": "faster-rcnn_r50-dconv-c3-c5_fpn_1x_coco.py",
    "dcnv2": "faster-rcnn_r50-mdconv-c3-c5_fpn_1x_coco.py",
    "ddod": "ddod_r50_fpn_1x_coco.py",
    "ddq": "ddq-detr-4scale_r50_8xb2-12e_coco.py",
    "deepfashion": "mask-rcnn_r50_fpn_15e_deepfashion.py",
    "deepsort": "deepsort_faster-rcnn_r50_fpn_8xb2-4e_mot17halftrain_test-mot17halfval.py",
    "deformable_detr": "deformable-detr_r50_16xb2-50e_coco.py",
    "detectors": "detectors_cascade-rcnn_r50_1x_coco.py",
    "detr": "detr_r50_8xb2-150e_coco.py",
    "dino": "dino-4scale_r50_8xb2-12e_coco.py",
    "double_heads": "dh-faster-rcnn_r50_fpn_1x_coco.py",
    "dsdl": "coco.py",
    "dyhead": "atss_r50_fpn_dyhead_1x_coco.py",
    "dynamic_rcnn": "dynamic-rcnn_r50_fpn_1x_coco.py",
    "efficientnet": "retinanet_effb3_fpn_8xb4-crop896-1x_coco.py",
    "empirical_attention": "faster-rcnn_r50-attn1111_fpn_1x_coco.py",
    "fast_rcnn": "fast-rcnn_r50_fpn_1x_coco.py",
    "faster_rcnn": "faster-rcnn_r50_fpn_1x_coco.py",
    "fcos": "fcos_r50-caffe_fpn_gn-head_1x_coco.py",
    "foveabox": "fovea_r50_fpn_4xb4-1x_coco.py",
    "fpg": "faster-rcnn_r50_fpg_crop640-50e_coco.py",
    "free_anchor": "freeanchor_r50_fpn_1x_coco.py",
    "fsaf": "fsaf_r50_fpn_1x_coco.py",
    "gcnet": "mask-rcnn_r50-gcb-r4-c3-c5_fpn_1x_coco.py",
    "gfl": "gfl_r50_fpn_1x_coco.py",
    "ghm": "retinanet_r50_fpn_ghm-1x_coco.py",
    "glip": "glip_atss_swin-t_a_fpn_dyhead_16xb2_ms-2x_funtune_coco.py",
    "gn": "mask-rcnn_r50_fpn_gn-all_2x_coco.py",
    "gn+ws": "faster-rcnn_r50_fpn_gn-ws-all_1x_coco.py",
    "grid_rcnn": "grid-rcnn_r50_fpn_gn-head_1x_coco.py",
    "groie": "mask-rcnn_r50_fpn_groie_1x_coco.py",
    "grounding_dino": "grounding_dino_r50_scratch_8xb2_1x_coco.py",
    "guided_anchoring": "ga-retinanet_r50_fpn_1x_coco.py",
    "hrnet": "faster-rcnn_hrnetv2p-w18-1x_coco.py",
    "htc": "htc-without-semantic_r50_fpn_1x_coco.py",
    "instaboost": "mask-rcnn_r50_fpn_instaboost-4x_coco.py",
    "lad": "lad_r50-paa-r101_fpn_2xb8_coco_1x.py",
    "ld": "ld_r18-gflv1-r101_fpn_1x_coco.py",
    "legacy_1.x": "retinanet_r50_fpn_1x_coco_v1.py",
    "libra_rcnn": "libra-faster-rcnn_r50_fpn_1x_coco.py",
    "lvis": "mask-rcnn_r50_fpn_sample1e-3_ms-1x_lvis-v1.py",
    "mask2former": "mask2former_r50_8xb2-lsj-50e_coco.py",
    "mask2former_vis": "mask2former_r50_8xb2-8e_youtubevis2019.py",
    "mask_rcnn": "mask-rcnn_r50_fpn_1x_coco.py",
    "maskformer": "maskformer_r50_ms-16xb1-75e_coco.py",
    "masktrack_rcnn": "masktrack-rcnn_mask-rcnn_r50_fpn_8xb1-12e_youtubevis2019.py",
    "misc": "d2_faster-rcnn_r50-caffe_fpn_ms-90k_coco.py",
    # the COCO fine-tuning config (what fine-tuning on one's own COCO-format data runs); the pretraining configs
    # read ODVG data (ODVGDataset, RandomSamplingNegPos label maps) that the sweep does not make
    "mm_grounding_dino": "coco/grounding_dino_swin-t_finetune_16xb4_1x_coco.py",
    "ms_rcnn": "ms-rcnn_r50_fpn_1x_coco.py",
    "nas_fcos": "nas-fcos_r50-caffe_fpn_nashead-gn-head_4xb4-1x_coco.py",
    "nas_fpn": "retinanet_r50_nasfpn_crop640-50e_coco.py",
    "objects365": "faster-rcnn_r50_fpn_16xb4-1x_objects365v2.py",
    "ocsort": "ocsort_yolox_x_8xb4-amp-80e_crowdhuman-mot17halftrain_test-mot17halfval.py",
    "openimages": "faster-rcnn_r50_fpn_32xb2-1x_openimages.py",
    "paa": "paa_r50_fpn_1x_coco.py",
    "pafpn": "faster-rcnn_r50_pafpn_1x_coco.py",
    "panoptic_fpn": "panoptic-fpn_r50_fpn_1x_coco.py",
    "pascal_voc": "faster-rcnn_r50_fpn_1x_voc0712.py",
    "pisa": "faster-rcnn_r50_fpn_pisa_1x_coco.py",
    "point_rend": "point-rend_r50-caffe_fpn_ms-1x_coco.py",
    "pvt": "retinanet_pvtv2-b0_fpn_1x_coco.py",
    "qdtrack": "qdtrack_faster-rcnn_r50_fpn_8xb2-4e_mot17halftrain_test-mot17halfval.py",
    "queryinst": "queryinst_r50_fpn_1x_coco.py",
    "regnet": "faster-rcnn_regnetx-3.2GF_fpn_1x_coco.py",
    "reid": "reid_r50_8xb32-6e_mot17train80_test-mot17val20.py",
    "reppoints": "reppoints-moment_r50_fpn-gn_head-gn_1x_coco.py",
    "res2net": "faster-rcnn_res2net-101_fpn_2x_coco.py",
    "resnest": "faster-rcnn_s50_fpn_syncbn-backbone+head_ms-range-1x_coco.py",
    "resnet_strikes_back": "faster-rcnn_r50-rsb-pre_fpn_1x_coco.py",
    "retinanet": "retinanet_r50_fpn_1x_coco.py",
    "rpn": "rpn_r50_fpn_1x_coco.py",
    "rtmdet": "rtmdet_tiny_8xb32-300e_coco.py",
    "sabl": "sabl-retinanet_r50_fpn_1x_coco.py",
    "scnet": "scnet_r50_fpn_1x_coco.py",
    "scratch": "faster-rcnn_r50-scratch_fpn_gn-all_6x_coco.py",
    "seesaw_loss": "mask-rcnn_r50_fpn_seesaw-loss_random-ms-2x_lvis-v1.py",
    "selfsup_pretrain": "mask-rcnn_r50-mocov2-pre_fpn_1x_coco.py",
    "simple_copy_paste": "mask-rcnn_r50_fpn_rpn-2conv_4conv1fc_syncbn-all_32xb2-ssj-scp-90k_coco.py",
    "soft_teacher": "soft-teacher_faster-rcnn_r50-caffe_fpn_180k_semi-0.1-coco.py",
    "solo": "solo_r50_fpn_1x_coco.py",
    "solov2": "solov2_r50_fpn_1x_coco.py",
    "sort": "sort_faster-rcnn_r50_fpn_8xb2-4e_mot17halftrain_test-mot17halfval.py",
    "sparse_rcnn": "sparse-rcnn_r50_fpn_1x_coco.py",
    "ssd": "ssd300_coco.py",
    "strong_baselines": "mask-rcnn_r50_fpn_rpn-2conv_4conv1fc_syncbn-all_lsj-100e_coco.py",
    "strongsort": "strongsort_yolox_x_8xb4-80e_crowdhuman-mot17halftrain_test-mot17halfval.py",
    "swin": "mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py",
    "timm_example": "retinanet_timm-tv-resnet50_fpn_1x_coco.py",
    "tood": "tood_r50_fpn_1x_coco.py",
    "tridentnet": "tridentnet_r50-caffe_1x_coco.py",
    "v3det": "faster_rcnn_r50_fpn_8x4_sample1e-3_mstrain_v3det_2x.py",
    "vfnet": "vfnet_r50_fpn_1x_coco.py",
    "wider_face": "retinanet_r50_fpn_1x_widerface.py",
    "yolact": "yolact_r50_1xb8-55e_coco.py",
    "yolo": "yolov3_d53_8xb8-320-273e_coco.py",
    "yolof": "yolof_r50-c5_8xb8-1x_coco.py",
    "yolox": "yolox_s_8xb8-300e_coco.py",
}

# transform / preprocessor keys that hold image sizes in pixels
_SIZE_KEYS = ("scale", "img_scale", "scales", "crop_size", "size", "random_size_range", "border")
# the smallest input some models accept (SSD's anchors and VGG feature maps are laid out for 300 px)
_MIN_SIZE = {"SSDHead": 300}
# image sizes the sweep tries: the next one when a model fails at the smaller one under mmdet's runner too
# (unless the runner's error is a missing package or a CUDA-only op)
_SWEEP_SIZES = (128, 256, 512)
_NOT_ABOUT_SIZE = ("not installed", "No module named", "Failed to import", "implementation for device")
# a runner error that says the loss diverged: the sweep tries again at a tenth of the learning rate, clipped
_NON_FINITE = ("loss is nan", "loss is inf", "loss is -inf")
_STABILISED = ("trained at a tenth of the config's learning rate with gradient clipping (max_norm 35): NaN loss "
               "from scratch at its own, under mmdet's Runner too")


def stabilise_from_scratch(cfg: Config) -> Config:
    """A tenth of the optimizer's learning rate and gradient clipping (``max_norm=35``, as mmdet's two-stage
    configs clip) where the config clips nothing: for a deep backbone trained from scratch, which diverges at the
    learning rate of a pretrained one (in place; returned).

    Example::
        >>> from mmengine.config import Config
        >>> cfg = stabilise_from_scratch(Config(dict(optim_wrapper=dict(optimizer=dict(type="SGD", lr=0.02)))))
        >>> cfg.optim_wrapper.optimizer.lr, cfg.optim_wrapper.clip_grad.max_norm
        (0.002, 35)
    """
    optimizer = cfg.optim_wrapper.optimizer
    optimizer.lr = round(optimizer.lr / 10, 12)
    if not cfg.optim_wrapper.get("clip_grad"):
        cfg.optim_wrapper.clip_grad = dict(max_norm=35, norm_type=2)
    return cfg


def mmdet_configs_dir() -> Path:
    """The ``configs`` folder that ships inside the installed mmdet package (``mmdet/.mim/configs``)."""
    import mmdet

    return Path(mmdet.__file__).parent / ".mim" / "configs"


def family_config(family: str) -> Path:
    """Path of ``family``'s representative config.

    Raises:
        KeyError: ``family`` is not a config family of mmdet 3.3 (the message lists them).
    """
    if family not in REPRESENTATIVES:
        raise KeyError(f"Unknown model-zoo family {family!r}; expected one of {sorted(REPRESENTATIVES)}.")
    return mmdet_configs_dir() / family / REPRESENTATIVES[family]


def _walk(node: Any, visit: Callable[[dict], None]) -> None:
    if isinstance(node, dict):
        visit(node)
        for child in list(node.values()):
            _walk(child, visit)
    elif isinstance(node, (list, tuple)):
        for child in node:
            _walk(child, visit)


def _scaled(value: Any, factor: float) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and abs(value) > 8:
        return int(round(value * factor))
    if isinstance(value, (list, tuple)):
        return type(value)(_scaled(v, factor) for v in value)
    return value


def _max_size(node: Any) -> int:
    sizes: list[int] = []

    def visit(step: dict) -> None:
        for key in ("scale", "img_scale", "scales", "crop_size"):
            if key in step and step.get("crop_type", "absolute") in ("absolute", "absolute_range"):
                flat = [v for v in _flatten(step[key]) if isinstance(v, int) and not isinstance(v, bool)]
                sizes.extend(flat)

    _walk(node, visit)
    return max(sizes, default=0)


def _flatten(value: Any) -> list[Any]:
    if isinstance(value, (list, tuple)):
        return [x for v in value for x in _flatten(v)]
    return [value]


def shrink_image_sizes(cfg: Config, max_side: int) -> Config:
    """Scale every image size in the pipelines and the data preprocessor's batch augments so that the
    largest is ``max_side`` pixels (in place; returned). Sizes keep their ratios.

    Example::
        >>> from mmengine.config import Config
        >>> cfg = Config(dict(train_dataloader=dict(dataset=dict(pipeline=[dict(type="Resize", scale=(1333, 800))]))))
        >>> shrink_image_sizes(cfg, 256).train_dataloader.dataset.pipeline[0]["scale"]
        (256, 154)
    """
    largest = max(_max_size(cfg.get(key)) for key in ("train_dataloader", "val_dataloader", "test_dataloader"))
    if largest <= max_side:
        return cfg
    factor = max_side / largest

    def visit(step: dict) -> None:
        if "type" not in step:
            return
        for key in _SIZE_KEYS:
            if key == "crop_size" and step.get("crop_type", "absolute") not in ("absolute", "absolute_range"):
                continue
            if key in step and step[key] is not None:
                step[key] = _scaled(step[key], factor)

    for key in ("train_dataloader", "val_dataloader", "test_dataloader"):
        if cfg.get(key) is not None:
            _walk(cfg[key], visit)
    for preprocessor in ((cfg.get("model") or {}).get("data_preprocessor"), cfg.get("data_preprocessor")):
        _walk((preprocessor or {}).get("batch_augments") or [], visit)
    return cfg


def _has_masks(cfg: Config) -> bool:
    found = []
    _walk(cfg.train_dataloader, lambda step: found.append(step.get("type") == "LoadAnnotations"
                                                           and bool(step.get("with_mask"))))
    return any(found)


def _drop_pretrained(cfg: Config) -> None:
    def visit(node: dict) -> None:
        init_cfg = node.get("init_cfg")
        if isinstance(init_cfg, dict) and (init_cfg.get("type") == "Pretrained" or "checkpoint" in init_cfg):
            node["init_cfg"] = None
        if isinstance(node.get("pretrained"), (str, bool)) and node.get("pretrained"):
            node["pretrained"] = None if isinstance(node["pretrained"], str) else False
        if node.get("teacher_ckpt"):
            node["teacher_ckpt"] = None
        teacher = node.get("teacher_config")
        if isinstance(teacher, str) and teacher.startswith("configs/"):  # relative to mmdet's repository
            node["teacher_config"] = str(mmdet_configs_dir().parent / teacher)

    _walk(cfg.model, visit)
    cfg.load_from = None


def _set_num_classes(cfg: Config, num_classes: int, num_stuff: int = 0) -> None:
    """``num_classes`` (RPN heads excepted), ``num_things_classes``, ``num_stuff_classes`` (panoptic heads) and the
    per-class loss weights (``class_weight``: one per class, things then stuff, and maybe one for "no object")."""

    def visit(node: dict) -> None:
        old = None
        for key in ("num_classes", "num_things_classes"):
            proposals = is_proposal_head("", str(node.get("type", "")))
            if isinstance(node.get(key), int) and node[key] >= 1 and not proposals:
                old = node[key]
                node[key] = num_classes
        if old is None:
            return
        new = num_classes
        if isinstance(node.get("num_stuff_classes"), int):
            old += node["num_stuff_classes"]
            node["num_stuff_classes"] = num_stuff
            new += num_stuff

        def weights(child: dict) -> None:
            weight = child.get("class_weight")
            if isinstance(weight, list) and len(weight) in (old, old + 1):
                child["class_weight"] = weight[:new] + weight[old:]

        _walk(node, weights)

    for key, head in list(cfg.model.items()):
        if not is_proposal_head(key):
            _walk(head, visit)


def _set_syncbn_to_bn(cfg: Config) -> None:
    def visit(node: dict) -> None:
        if node.get("type") in ("SyncBN", "MMSyncBN", "NaiveSyncBatchNorm2d"):
            node["type"] = "BN"

    _walk(cfg.model, visit)


def _cap_detections(cfg: Config, max_per_img: int, nms_pre: int) -> None:
    """Fewer proposals and detections per image: an untrained model's thousands cost minutes on a CPU."""

    def visit(node: dict) -> None:
        for key, cap in (("max_per_img", max_per_img), ("nms_pre", nms_pre)):
            if isinstance(node.get(key), int) and node[key] > cap:
                node[key] = cap

    if "num_proposals" in str(cfg.model.get("rpn_head")):  # Sparse R-CNN, QueryInst: one detection per query
        return
    _walk(cfg.model.get("train_cfg"), visit)
    _walk(cfg.model.get("test_cfg"), visit)


def _cap_queries(cfg: Config, num_queries: int) -> None:
    """Fewer object queries (DETR family) and learned proposals (Sparse R-CNN, QueryInst): DINO's top-k of 900
    queries over the encoder's tokens fails on small images ("selected index k out of range": 128 px make 340
    tokens), and each query costs a CPU time."""

    def visit(node: dict) -> None:
        for key in ("num_queries", "num_proposals"):
            if isinstance(node.get(key), int) and node[key] > num_queries:
                node[key] = num_queries

    _walk(cfg.model, visit)


def adapt_to_dataset(cfg: Config, data_root: str | Path, classes: Sequence[str], *, max_side: int = 128,
                     train_batch_size: int = 2, val_batch_size: int = 2,
                     stuff_classes: Sequence[str] | None = None) -> Config:
    """A copy of an mmdet config that trains on the COCO-format dataset at ``data_root`` (the layout of
    :func:`~mmdet_lightning.synthetic.make_shapes_dataset`): datasets become ``CocoDataset``s of ``classes``
    (wrappers such as ``RepeatDataset`` and ``MultiImageMixDataset`` kept, their pipelines kept), the heads
    predict ``len(classes)`` classes, evaluators are ``CocoMetric`` (``segm`` too for mask models), image sizes
    are shrunk to ``max_side`` (SSD keeps its 300 px), at most 50 detections and 500 pre-NMS boxes per image, at
    most 100 object queries or learned proposals, pretrained weights and teacher checkpoints are dropped
    (teacher configs are found in mmdet's package), ``SyncBN`` becomes ``BN`` (one process) and
    ``AmpOptimWrapper`` a plain ``OptimWrapper`` (CUDA only; precision is the Trainer's here).

    A panoptic model (PanopticFPN, MaskFormer, Mask2Former with ``panoptic_on``) trains on the dataset's COCO
    panoptic annotations instead (the layout of ``make_shapes_dataset(..., panoptic=True)``, as
    ``configs/mmdet/shapes_panoptic_fpn.py`` reads them): ``CocoPanopticDataset``s of ``classes`` (things) then
    ``stuff_classes``, panoptic PNGs in ``annotations/panoptic_<split>/``, the heads' ``num_things_classes`` and
    ``num_stuff_classes`` set, a ``CocoPanopticMetric``, HeuristicFusionHead's ``stuff_area_limit`` shrunk with the
    image area. ``stuff_classes`` is required for those (``ValueError`` without) and ignored for other models.

    Example::
        >>> from mmengine.config import Config
        >>> cfg = adapt_to_dataset(Config.fromfile(str(family_config("retinanet"))), "data/shapes", ["a", "b"])
        >>> cfg.model.bbox_head.num_classes, cfg.train_dataloader.dataset.ann_file
        (2, 'annotations/instances_train.json')
    """
    cfg = copy.deepcopy(cfg)
    if not cfg.get("model"):
        return cfg
    classes = tuple(classes)
    root = str(data_root).rstrip("/") + "/"
    panoptic = is_panoptic_model(cfg.model)
    if panoptic and stuff_classes is None:
        raise ValueError(
            f"The config's model `{cfg.model.get('type')}` is a panoptic segmentation model: pass `stuff_classes` "
            "(e.g. mmdet_lightning.synthetic.STUFF_CLASSES) and a dataset with COCO panoptic annotations "
            "(make_shapes_dataset(..., panoptic=True), `python -m mmdet_lightning.synthetic --panoptic`).")
    stuff = tuple(stuff_classes or ()) if panoptic else ()
    _drop_pretrained(cfg)
    _set_num_classes(cfg, len(classes), len(stuff))
    _set_syncbn_to_bn(cfg)
    _cap_detections(cfg, max_per_img=50, nms_pre=500)
    _cap_queries(cfg, num_queries=100)
    if cfg.get("optim_wrapper"):  # AmpOptimWrapper is CUDA only; the Trainer's precision here
        cfg.optim_wrapper = plain_optim_wrapper_cfg(cfg.optim_wrapper, warn=False)
    heads = [type_ for type_ in _types(cfg.model) if type_ in _MIN_SIZE]
    largest = max(_max_size(cfg.get(key)) for key in ("train_dataloader", "val_dataloader", "test_dataloader"))
    shrink_image_sizes(cfg, max(max_side, *(_MIN_SIZE[t] for t in heads)) if heads else max_side)
    if panoptic and largest > max_side:
        _shrink_stuff_area(cfg, (max_side / largest) ** 2)
    with_mask = _has_masks(cfg)
    for key, split, batch_size in (("train_dataloader", "train", train_batch_size),
                                   ("val_dataloader", "val", val_batch_size),
                                   ("test_dataloader", "val", val_batch_size)):
        loader = cfg.get(key)
        if loader is None:
            continue
        loader.update(batch_size=batch_size, num_workers=0, persistent_workers=False)
        if "batch_size" in (loader.get("sampler") or {}):  # multi-source samplers (semi-supervised) batch themselves
            loader.sampler.batch_size = batch_size
        for dataset in leaf_dataset_cfgs(loader["dataset"]):
            pipeline = dataset.get("pipeline")
            test_mode = dataset.get("test_mode", split == "val")
            return_classes = dataset.get("return_classes")  # grounding: the class names are the prompt
            dataset.clear()
            dataset.update(type="CocoDataset", data_root=root, ann_file=f"annotations/instances_{split}.json",
                           data_prefix=dict(img=f"{split}/"), metainfo=dict(classes=classes), test_mode=test_mode,
                           filter_cfg=dict(filter_empty_gt=True, min_size=4), backend_args=None)
            if panoptic:
                dataset.update(type="CocoPanopticDataset", ann_file=f"annotations/panoptic_{split}.json",
                               data_prefix=dict(img=f"{split}/", seg=f"annotations/panoptic_{split}/"),
                               metainfo=dict(classes=classes + stuff, thing_classes=classes, stuff_classes=stuff))
            if return_classes is not None:
                dataset["return_classes"] = return_classes
            if pipeline is not None:
                dataset["pipeline"] = pipeline
    for key in ("val_evaluator", "test_evaluator"):
        if cfg.get(key) is not None and panoptic:
            cfg[key] = dict(type="CocoPanopticMetric", ann_file=root + "annotations/panoptic_val.json",
                            seg_prefix=root + "annotations/panoptic_val/", backend_args=None)
        elif cfg.get(key) is not None:
            cfg[key] = dict(type="CocoMetric", ann_file=root + "annotations/instances_val.json",
                            metric=_coco_metrics(cfg[key], with_mask), backend_args=None)
    _use_local_language_model(cfg, root + TINY_BERT_FOLDER)
    cfg.data_root = root
    return cfg


def _shrink_stuff_area(cfg: Config, factor: float) -> None:
    """HeuristicFusionHead drops stuff regions under ``stuff_area_limit`` pixels (4096 at COCO's scale: a quarter
    of a 128 px image); the limit shrinks with the image area."""
    def visit(node: dict) -> None:
        if isinstance(node.get("stuff_area_limit"), int):
            node["stuff_area_limit"] = max(1, int(round(node["stuff_area_limit"] * factor)))

    _walk(cfg.model, visit)


#: the folder under the dataset's root where the sweep writes a tiny BERT for grounding models
TINY_BERT_FOLDER = "tiny_bert"


def _use_local_language_model(cfg: Config, folder: str) -> None:
    """Grounding models (GLIP, Grounding DINO) load their language model from ``folder`` (a tiny BERT,
    :func:`~mmdet_lightning.language_model.make_tiny_bert`) instead of downloading ``bert-base-uncased``."""
    def visit(node: dict) -> None:
        for key in ("lang_model_name", "tokenizer_name"):  # GLIP's head; the ODVG pipelines' RandomSamplingNegPos
            if key in node:
                node[key] = folder
        if node.get("type") == "BertModel" and "name" in node:
            node["name"] = folder

    _walk(cfg.model, visit)
    if "language_model" in cfg.model and cfg.model.get("num_queries", 0) > 100:
        # Grounding DINO's 900 queries are picked (top-k) among the encoder's positions: more than 128-512 px
        # images have
        cfg.model.num_queries = 100
    for key in ("train_dataloader", "val_dataloader", "test_dataloader", "train_pipeline", "test_pipeline"):
        _walk(cfg.get(key), visit)
    if "lang_model_name" in cfg:
        cfg.lang_model_name = folder


def _coco_metrics(evaluator: Any, with_mask: bool) -> list[str]:
    first = evaluator[0] if isinstance(evaluator, (list, tuple)) else evaluator
    if first.get("type") == "CocoMetric" and first.get("metric"):
        metric = first["metric"]
        return list(metric) if isinstance(metric, (list, tuple)) else [metric]
    return ["bbox", "segm"] if with_mask else ["bbox"]


def _types(node: Any) -> list[str]:
    found: list[str] = []
    _walk(node, lambda d: found.append(str(d.get("type", ""))))
    return found


def run_family(family: str, data_root: str | Path, work_dir: str | Path, iterations: int = 2,
               check_with_runner: bool = True, panoptic_root: str | Path | None = None) -> dict[str, Any]:
    """Train ``family``'s representative config for ``iterations`` batches, validate and predict through
    ``pl.Trainer`` (the config's ``custom_hooks`` as callbacks) on the dataset at ``data_root``; panoptic models
    on the one at ``panoptic_root`` (default ``data_root``; made with ``panoptic=True``, with the stuff classes of
    :data:`~mmdet_lightning.synthetic.STUFF_CLASSES`).

    Images are shrunk to 128 px, then 256 and 512 px while the model fails on smaller ones under mmdet's
    runner too (for a reason other than a missing package or a CUDA-only op). Where the loss is NaN or infinite
    under mmdet's runner too (deep backbones from scratch at the config's learning rate), the same size is tried
    once more at a tenth of the learning rate with gradient clipping (:func:`stabilise_from_scratch`; the
    record's ``stabilised`` is True and its reason says so).
    Returns a record ``{"family", "config", "status", "seconds", "reason", "loss", "predictions", "max_side"}``
    (``predictions``: images predicted) where status is ``pass``, ``fail`` (mmdet's own runner trains the same
    adapted config), ``not-run`` (mmdet's runner fails too on this machine: the reason is its error) or
    ``not-covered`` (a task this package does not train: tracking, video instance segmentation).
    """
    import math
    import time

    from .config import check_supported_task

    start = time.perf_counter()
    record: dict[str, Any] = {"family": family, "config": REPRESENTATIVES.get(family, ""), "status": "fail",
                              "reason": "", "loss": None, "predictions": None}
    cfg = None
    try:
        cfg = _load_adapted(family, data_root, panoptic_root=panoptic_root)
        if not cfg.get("model"):
            record.update(status="not-run", reason="the folder holds dataset and schedule settings, no model")
            record["seconds"] = round(time.perf_counter() - start, 1)
            return record
        check_supported_task(cfg.model)
    except ValueError as err:
        if "mmdet-lightning trains object detection" in str(err):
            record.update(status="not-covered", reason=str(err).splitlines()[0])
            record["seconds"] = round(time.perf_counter() - start, 1)
            return record
        record.update(status="not-run", reason=_short(err))
    except Exception as err:  # noqa: BLE001  the config cannot even be loaded here (missing package, ...)
        record.update(status="not-run", reason=_short(err))
    attempts = [(side, False) for side in _SWEEP_SIZES] if cfg is not None else []
    while attempts:
        max_side, stabilised = attempts.pop(0)
        if max_side != _SWEEP_SIZES[0] or stabilised:  # too small, or NaN from scratch, under mmdet's runner too
            cfg = _load_adapted(family, data_root, max_side, panoptic_root=panoptic_root)
            if stabilised:
                stabilise_from_scratch(cfg)
        record.update(status="fail", max_side=max_side, stabilised=stabilised)
        try:
            loss, predictions = _train_validate_predict(cfg, Path(work_dir), iterations)
            record.update(loss=loss, predictions=predictions)
            if not math.isfinite(loss):
                raise FloatingPointError(f"training loss is {loss}")
            record.update(status="pass", reason=_STABILISED if stabilised else "")
            break
        except Exception as err:  # noqa: BLE001  recorded, then compared with mmdet's runner
            record["reason"] = _short(err)
            if not check_with_runner:
                break
            runner_error = _runner_error(cfg, Path(work_dir) / "runner")
            if runner_error is None:
                break
            record.update(status="not-run", reason=f"mmdet's Runner fails too: {runner_error}",
                          module_error=record["reason"])
            if any(words in runner_error for words in _NOT_ABOUT_SIZE):
                break
            if not stabilised and any(words in runner_error for words in _NON_FINITE):
                attempts.insert(0, (max_side, True))
    record["seconds"] = round(time.perf_counter() - start, 1)
    return record


def _short(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}".replace("\n", " ").split(", the current sys.path")[0]
    return text if len(text) <= 300 else text[:297] + "..."


def _load_adapted(family: str, data_root: str | Path, max_side: int = 128,
                  panoptic_root: str | Path | None = None) -> Config:
    """``family``'s config adapted to the synthetic shapes at ``data_root``, or at ``panoptic_root`` (default
    ``data_root``) with :data:`~mmdet_lightning.synthetic.STUFF_CLASSES` for a panoptic model."""
    from mmengine.config import Config

    from .config import init_mmdet_scope
    from .synthetic import CLASSES, STUFF_CLASSES

    init_mmdet_scope()
    raw = Config.fromfile(str(family_config(family)))
    if raw.get("model") and is_panoptic_model(raw.model):
        data_root = panoptic_root or data_root
    cfg = adapt_to_dataset(raw, data_root, CLASSES, max_side=max_side, stuff_classes=STUFF_CLASSES)
    if (cfg.get("model") or {}).get("language_model"):
        from .language_model import make_tiny_bert

        make_tiny_bert(Path(data_root) / TINY_BERT_FOLDER, hidden_size=64)
    return cfg


def _train_validate_predict(cfg: Config, work_dir: Path, iterations: int) -> tuple[float, int]:
    from .callbacks.custom_hooks import callbacks_from_config
    from .datamodule import MMDetDataModule
    from .lightning_package import pl
    from .module import MMDetModule

    pl.seed_everything(0)
    module = MMDetModule(cfg)
    losses: list[float] = []

    class _Losses(pl.Callback):
        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            losses.append(float(outputs["loss"]))

    trainer = pl.Trainer(max_epochs=1, limit_train_batches=iterations, limit_val_batches=1, limit_predict_batches=1,
                         num_sanity_val_steps=0, accelerator="cpu", devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, default_root_dir=str(work_dir),
                         callbacks=[*callbacks_from_config(cfg), _Losses()])
    datamodule = MMDetDataModule(cfg)
    trainer.fit(module, datamodule=datamodule)
    if "val_dataloader" in cfg and cfg.val_dataloader is not None and not module.last_eval_metrics:
        raise RuntimeError("validation ran but produced no metrics")
    predictions = trainer.predict(module, datamodule=datamodule)
    samples = [sample for batch in predictions or [] for sample in batch]
    if not samples or not all("pred_instances" in sample or "pred_panoptic_seg" in sample for sample in samples):
        raise RuntimeError(f"predict returned {len(samples)} images, not all with `pred_instances` "
                           "(or `pred_panoptic_seg`)")
    return (losses[-1] if losses else float("nan")), len(samples)


def _runner_error(cfg: Config, work_dir: Path) -> str | None:
    """The error of mmdet's own ``Runner`` training the same config for one short epoch, or None; a non-finite
    training loss is an error too (mmengine logs ``loss: nan`` and carries on, MMDetModule stops)."""
    import math

    from mmengine.runner import Runner

    cfg = copy.deepcopy(cfg)
    cfg.work_dir = str(work_dir)
    loop = cfg.get("train_cfg") or {}
    if "IterBased" in str(loop.get("type", "")):
        cfg.train_cfg = dict(type=loop["type"], max_iters=2, val_interval=2)
    else:
        cfg.train_cfg = dict(type=loop.get("type", "EpochBasedTrainLoop"), max_epochs=1, val_interval=1)
    hooks = cfg.get("default_hooks") or {}
    hooks["checkpoint"] = dict(type="CheckpointHook", interval=-1)
    hooks["visualization"] = dict(type="DetVisualizationHook", draw=False)
    cfg.default_hooks = hooks
    try:
        runner = Runner.from_cfg(cfg)
        runner.train()
    except Exception as err:  # noqa: BLE001
        return _short(err)
    loss = runner.message_hub.log_scalars.get("train/loss")
    if loss is not None and not math.isfinite(float(loss.current())):
        return f"FloatingPointError: training loss is {float(loss.current())}"
    return None
