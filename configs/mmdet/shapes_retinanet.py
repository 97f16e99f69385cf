# RetinaNet with a tiny ResNet-18 + FPN, for the synthetic shapes dataset.
_base_ = ["./_base_/shapes_detection.py"]

model = dict(
    type="RetinaNet",
    data_preprocessor={{_base_.data_preprocessor}},
    backbone={{_base_.tiny_backbone}},
    neck=dict(type="FPN", in_channels=[16, 32, 64, 128], out_channels=64, start_level=1, add_extra_convs="on_input",
              num_outs=5),
    bbox_head=dict(
        type="RetinaHead",
        num_classes=3,
        in_channels=64,
        stacked_convs=2,
        feat_channels=64,
        anchor_generator=dict(type="AnchorGenerator", octave_base_scale=3, scales_per_octave=3,
                              ratios=[0.5, 1.0, 2.0], strides=[8, 16, 32, 64, 128]),
        bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4, target_stds=[1.0] * 4),
        loss_cls=dict(type="FocalLoss", use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0),
        loss_bbox=dict(type="L1Loss", loss_weight=1.0),
    ),
    train_cfg=dict(
        assigner=dict(type="MaxIoUAssigner", pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0, ignore_iof_thr=-1),
        sampler=dict(type="PseudoSampler"),
        allowed_border=-1,
        pos_weight=-1,
        debug=False,
    ),
    test_cfg=dict(nms_pre=1000, min_bbox_size=0, score_thr=0.05, nms=dict(type="nms", iou_threshold=0.5),
                  max_per_img=50),
)
optim_wrapper = dict(optimizer=dict(lr=0.01))
