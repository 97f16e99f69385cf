# RTMDet at a quarter of RTMDet-tiny's width, trained from scratch on the synthetic shapes dataset.
_base_ = ["./_base_/shapes_detection.py"]

model = dict(
    type="RTMDet",
    data_preprocessor=dict(
        type="DetDataPreprocessor", mean=[103.53, 116.28, 123.675], std=[57.375, 57.12, 58.395], bgr_to_rgb=False,
        batch_augments=None,
    ),
    backbone=dict(
        type="CSPNeXt", arch="P5", expand_ratio=0.5, deepen_factor=0.167, widen_factor=0.25, channel_attention=True,
        norm_cfg=dict(type="BN"), act_cfg=dict(type="SiLU", inplace=True),
    ),
    neck=dict(
        type="CSPNeXtPAFPN", in_channels=[64, 128, 256], out_channels=64, num_csp_blocks=1, expand_ratio=0.5,
        norm_cfg=dict(type="BN"), act_cfg=dict(type="SiLU", inplace=True),
    ),
    bbox_head=dict(
        type="RTMDetSepBNHead", num_classes=3, in_channels=64, stacked_convs=2, feat_channels=64,
        anchor_generator=dict(type="MlvlPointGenerator", offset=0, strides=[8, 16, 32]),
        bbox_coder=dict(type="DistancePointBBoxCoder"),
        loss_cls=dict(type="QualityFocalLoss", use_sigmoid=True, beta=2.0, loss_weight=1.0),
        loss_bbox=dict(type="GIoULoss", loss_weight=2.0),
        with_objectness=False, exp_on_reg=False, share_conv=True, pred_kernel_size=1,
        norm_cfg=dict(type="BN"), act_cfg=dict(type="SiLU", inplace=True),
    ),
    train_cfg=dict(assigner=dict(type="DynamicSoftLabelAssigner", topk=13), allowed_border=-1, pos_weight=-1,
                   debug=False),
    test_cfg=dict(nms_pre=1000, min_bbox_size=0, score_thr=0.05, nms=dict(type="nms", iou_threshold=0.6),
                  max_per_img=50),
)
optim_wrapper = dict(
    _delete_=True,
    type="OptimWrapper",
    optimizer=dict(type="AdamW", lr=0.004, weight_decay=0.05),
    paramwise_cfg=dict(norm_decay_mult=0, bias_decay_mult=0, bypass_duplicate=True),
)
param_scheduler = [
    dict(type="LinearLR", start_factor=1.0e-5, by_epoch=False, begin=0, end=100),
    dict(type="CosineAnnealingLR", eta_min=0.0002, begin=6, end=12, T_max=6, by_epoch=True,
         convert_to_iter_based=True),
]
