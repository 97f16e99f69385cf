# Grounding DINO fine-tuned on the synthetic shapes dataset with the class names as the text prompt, as mmdet's
# grounding_dino_swin-t_finetune_16xb2_1x_coco.py does on COCO, shrunk for a CPU: a tiny ResNet-18, one encoder
# and two decoder layers, 30 queries. The language model is a local BERT folder (`lang_model_name`): the shapes
# dataset's `tiny_bert/` (random weights, a vocabulary of the shape words), made by
#   python -m mmdet_lightning.language_model --out data/shapes/tiny_bert
# For a real fine-tune, set `lang_model_name = "bert-base-uncased"` (downloaded once into the Hugging Face cache)
# or the folder of a local copy.
_base_ = ["./_base_/shapes_detection.py"]

lang_model_name = "data/shapes/tiny_bert"
embed_dims = 256  # mmdet's text encoder layers add 256-wide position embeddings: Grounding DINO needs 256

model = dict(
    type="GroundingDINO",
    num_queries=30,
    with_box_refine=True,
    as_two_stage=True,
    data_preprocessor=dict(
        type="DetDataPreprocessor",
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        pad_mask=False,
        pad_size_divisor=32,
    ),
    language_model=dict(
        type="BertModel",
        name=lang_model_name,
        max_tokens=64,
        pad_to_max=False,
        use_sub_sentence_represent=True,
        special_tokens_list=["[CLS]", "[SEP]", ".", "?"],
        add_pooling_layer=False,
    ),
    backbone=dict(_base_.tiny_backbone, out_indices=(1, 2, 3)),
    neck=dict(
        type="ChannelMapper",
        in_channels=[32, 64, 128],
        kernel_size=1,
        out_channels=embed_dims,
        act_cfg=None,
        bias=True,
        norm_cfg=dict(type="GN", num_groups=32),
        num_outs=3,
    ),
    num_feature_levels=3,
    encoder=dict(
        num_layers=1,
        layer_cfg=dict(
            self_attn_cfg=dict(embed_dims=embed_dims, num_levels=3, num_points=2, dropout=0.0),
            ffn_cfg=dict(embed_dims=embed_dims, feedforward_channels=256, ffn_drop=0.0)),
        text_layer_cfg=dict(
            self_attn_cfg=dict(num_heads=4, embed_dims=embed_dims, dropout=0.0),
            ffn_cfg=dict(embed_dims=embed_dims, feedforward_channels=256, ffn_drop=0.0)),
        fusion_layer_cfg=dict(v_dim=embed_dims, l_dim=embed_dims, embed_dim=128, num_heads=4, init_values=1e-4),
    ),
    decoder=dict(
        num_layers=2,
        return_intermediate=True,
        layer_cfg=dict(
            self_attn_cfg=dict(embed_dims=embed_dims, num_heads=8, dropout=0.0),
            cross_attn_text_cfg=dict(embed_dims=embed_dims, num_heads=8, dropout=0.0),
            cross_attn_cfg=dict(embed_dims=embed_dims, num_levels=3, num_points=2, dropout=0.0),
            ffn_cfg=dict(embed_dims=embed_dims, feedforward_channels=256, ffn_drop=0.0)),
        post_norm_cfg=None,
    ),
    positional_encoding=dict(num_feats=embed_dims // 2, normalize=True, offset=0.0, temperature=20),
    bbox_head=dict(
        type="GroundingDINOHead",
        num_classes=3,
        sync_cls_avg_factor=True,
        contrastive_cfg=dict(max_text_len=64, log_scale=0.0, bias=False),
        loss_cls=dict(type="FocalLoss", use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0),
        loss_bbox=dict(type="L1Loss", loss_weight=5.0),
        loss_iou=dict(type="GIoULoss", loss_weight=2.0),
    ),
    dn_cfg=dict(
        label_noise_scale=0.5,
        box_noise_scale=1.0,
        group_cfg=dict(dynamic=True, num_groups=None, num_dn_queries=10),
    ),
    train_cfg=dict(
        assigner=dict(
            type="HungarianAssigner",
            match_costs=[
                dict(type="BinaryFocalLossCost", weight=2.0),
                dict(type="BBoxL1Cost", weight=5.0, box_format="xywh"),
                dict(type="IoUCost", iou_mode="giou", weight=2.0),
            ])),
    test_cfg=dict(max_per_img=50),
)

# the class names are the prompt ("circle . square . triangle ."): `return_classes=True`; the images' `text` and
# `custom_entities` travel with the samples
train_pipeline = [
    dict(type="LoadImageFromFile", backend_args=_base_.backend_args),
    dict(type="LoadAnnotations", with_bbox=True),
    dict(type="Resize", scale=_base_.image_size, keep_ratio=True),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor", "flip",
                                          "flip_direction", "text", "custom_entities")),
]
test_pipeline = [
    dict(type="LoadImageFromFile", backend_args=_base_.backend_args),
    dict(type="Resize", scale=_base_.image_size, keep_ratio=True),
    dict(type="LoadAnnotations", with_bbox=True),
    dict(type="PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor", "text",
                                          "custom_entities")),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline, return_classes=True))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline, return_classes=True))
test_dataloader = val_dataloader

optim_wrapper = dict(
    _delete_=True,
    type="OptimWrapper",
    optimizer=dict(type="AdamW", lr=0.0004, weight_decay=0.0001),
    clip_grad=dict(max_norm=0.1, norm_type=2),
    paramwise_cfg=dict(custom_keys={"backbone": dict(lr_mult=0.1)}),
)
param_scheduler = [
    dict(type="LinearLR", start_factor=0.01, by_epoch=False, begin=0, end=30),
    dict(type="MultiStepLR", begin=0, end=12, by_epoch=True, milestones=[11], gamma=0.1),
]
