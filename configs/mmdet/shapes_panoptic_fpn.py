# Panoptic FPN with the tiny ResNet-18 + FPN of the Mask R-CNN config, on the synthetic shapes dataset's panoptic
# mode (`python -m mmdet_lightning.synthetic --out data/shapes_panoptic --panoptic`): things are the three shapes,
# stuff the textured background and the floor. Evaluated with mmdet's CocoPanopticMetric (PQ, SQ, RQ).
_base_ = ["./shapes_mask_rcnn.py"]

data_root = "data/shapes_panoptic/"
dataset_type = "CocoPanopticDataset"
thing_classes = ("circle", "square", "triangle")
stuff_classes = ("background", "floor")
metainfo = dict(classes=thing_classes + stuff_classes, thing_classes=thing_classes, stuff_classes=stuff_classes)
image_size = (64, 64)
num_things_classes = 3
num_stuff_classes = 2

model = dict(
    type="PanopticFPN",
    data_preprocessor=dict(pad_mask=True, mask_pad_value=0, pad_seg=True, seg_pad_value=255),
    roi_head=dict(mask_roi_extractor=dict(roi_layer=dict(output_size=7)),
                  mask_head=dict(num_convs=1, num_classes=num_things_classes)),
    semantic_head=dict(
        type="PanopticFPNHead",
        num_things_classes=num_things_classes,
        num_stuff_classes=num_stuff_classes,
        in_channels=64,
        inner_channels=32,
        start_level=0,
        end_level=4,
        norm_cfg=dict(type="GN", num_groups=8, requires_grad=True),
        conv_cfg=None,
        loss_seg=dict(type="CrossEntropyLoss", ignore_index=255, loss_weight=0.5),
    ),
    panoptic_fusion_head=dict(
        type="HeuristicFusionHead", num_things_classes=num_things_classes, num_stuff_classes=num_stuff_classes),
    train_cfg=dict(rcnn=dict(mask_size=14)),
    test_cfg=dict(
        rcnn=dict(score_thr=0.3, nms=dict(type="nms", iou_threshold=0.5, class_agnostic=True), max_per_img=20,
                  mask_thr_binary=0.5),
        # HeuristicFusionHead: stuff regions smaller than this many pixels (at the input's scale) are dropped
        panoptic=dict(mask_overlap=0.5, stuff_area_limit=64),
    ),
)

train_pipeline = [
    dict(type="LoadImageFromFile", backend_args=None),
    dict(type="LoadPanopticAnnotations", backend_args=None),
    dict(type="Resize", scale=image_size, keep_ratio=True),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PackDetInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile", backend_args=None),
    dict(type="Resize", scale=image_size, keep_ratio=True),
    dict(type="LoadPanopticAnnotations", backend_args=None),
    dict(type="PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor")),
]
train_dataloader = dict(
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        metainfo=metainfo,
        ann_file="annotations/panoptic_train.json",
        data_prefix=dict(_delete_=True, img="train/", seg="annotations/panoptic_train/"),
        pipeline=train_pipeline,
    )
)
val_dataloader = dict(
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        metainfo=metainfo,
        ann_file="annotations/panoptic_val.json",
        data_prefix=dict(_delete_=True, img="val/", seg="annotations/panoptic_val/"),
        pipeline=test_pipeline,
    )
)
test_dataloader = val_dataloader
val_evaluator = dict(
    _delete_=True,
    type="CocoPanopticMetric",
    ann_file=data_root + "annotations/panoptic_val.json",
    seg_prefix=data_root + "annotations/panoptic_val/",
    classwise=True,
    backend_args=None,
)
test_evaluator = val_evaluator
# mmdet's panoptic configs remove NumClassCheckHook (things and stuff): mmdet-lightning's PanopticTask checks both
custom_hooks = []
