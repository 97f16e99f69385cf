# GLIP fine-tuned on the synthetic shapes dataset with the class names as the text prompt, as mmdet's
# glip_atss_swin-t_a_fpn_dyhead_16xb2_ms-2x_funtune_coco.py does on COCO, shrunk for a CPU: a tiny ResNet-18
# instead of the Swin-T and one DyHead block (mmdet's: 6). The DyHead's
# modulated deformable convolutions (mmcv's ModulatedDeformConv2d) run on the CPU. The language model is a local
# BERT folder (`lang_model_name`, read by the language model and by the head's fusion module): the shapes
# dataset's `tiny_bert/` (random weights, a vocabulary of the shape words), made by
#   python -m mmdet_lightning.language_model --out data/shapes/tiny_bert
# For a real fine-tune, set `lang_model_name = "bert-base-uncased"` (downloaded once into the Hugging Face cache)
# or the folder of a local copy, and `load_from` a GLIP checkpoint.
_base_ = ["./_base_/shapes_detection.py"]

lang_model_name = "data/shapes/tiny_bert"
# mmdet's ATSSVLFusionHead builds its classification targets `feat_channels` wide from positive maps of 256 text
# tokens: it needs 256 (and the DyHead's first block its deformable convolutions, in_channels == feat_channels)
feat_channels = 256

model = dict(
    type="GLIP",
    data_preprocessor=dict(
        type="DetDataPreprocessor",
        mean=[103.53, 116.28, 123.675],
        std=[57.375, 57.12, 58.395],
        bgr_to_rgb=False,
        pad_size_divisor=32,
    ),
    backbone=dict(_base_.tiny_backbone, out_indices=(1, 2, 3)),
    neck=dict(
        type="FPN",
        in_channels=[32, 64, 128],
        out_channels=feat_channels,
        start_level=0,
        relu_before_extra_convs=True,
        add_extra_convs="on_output",
        num_outs=5,
    ),
    bbox_head=dict(
        type="ATSSVLFusionHead",
        lang_model_name=lang_model_name,
        num_dyhead_blocks=1,
        num_classes=3,
        in_channels=feat_channels,
        feat_channels=feat_channels,
        anchor_generator=dict(
            type="AnchorGenerator",
            ratios=[1.0],
            octave_base_scale=4,
            scales_per_octave=1,
            strides=[8, 16, 32, 64, 128],
            center_offset=0.5,
        ),
        bbox_coder=dict(
            type="DeltaXYWHBBoxCoderForGLIP", target_means=[0.0, 0.0, 0.0, 0.0], target_stds=[0.1, 0.1, 0.2, 0.2]),
        loss_cls=dict(type="FocalLoss", use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0),
        loss_bbox=dict(type="GIoULoss", loss_weight=2.0),
        loss_centerness=dict(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=1.0),
    ),
    # mmdet's GLIP: 256 tokens, padded (the head's positive maps are 256 wide)
    language_model=dict(type="BertModel", name=lang_model_name),
    train_cfg=dict(
        assigner=dict(type="ATSSAssigner", topk=9, iou_calculator=dict(type="BboxOverlaps2D_GLIP")),
        allowed_border=-1,
        pos_weight=-1,
        debug=False,
    ),
    test_cfg=dict(nms_pre=1000, min_bbox_size=0, score_thr=0.05, nms=dict(type="nms", iou_threshold=0.6),
                  max_per_img=50),
)

# the class names are the prompt ("circle . square . triangle ."): `return_classes=True`; GLIP's own transforms
# (boxes' x2/y2 minus one, its flip), the images' `text` and `custom_entities` travel with the samples
train_pipeline = [
    dict(type="LoadImageFromFile", backend_args=_base_.backend_args),
    dict(type="LoadAnnotations", with_bbox=True),
    dict(type="GTBoxSubOne_GLIP"),
    dict(type="FixScaleResize", scale=_base_.image_size, keep_ratio=True),
    dict(type="RandomFlip_GLIP", prob=0.5),
    dict(type="FilterAnnotations", min_gt_bbox_wh=(1, 1)),
    dict(type="PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor", "flip",
                                          "flip_direction", "text", "custom_entities")),
]
test_pipeline = [
    dict(type="LoadImageFromFile", backend_args=_base_.backend_args),
    dict(type="FixScaleResize", scale=_base_.image_size, keep_ratio=True),
    dict(type="LoadAnnotations", with_bbox=True),
    dict(type="PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor", "text",
                                          "custom_entities")),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline, return_classes=True))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline, return_classes=True))
test_dataloader = val_dataloader

# mmdet's GLIP fine-tuning optimizer (AdamW, no weight decay on norms, no gradient clipping), with a learning
# rate for training from scratch (mmdet's 2e-5 fine-tunes a pretrained GLIP)
optim_wrapper = dict(
    _delete_=True,
    type="OptimWrapper",
    optimizer=dict(type="AdamW", lr=0.0004, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={"norm": dict(decay_mult=0.0)}),
    clip_grad=None,
)
