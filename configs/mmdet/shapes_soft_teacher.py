# SoftTeacher (semi-supervised detection) with the tiny Faster R-CNN of shapes_faster_rcnn.py, on the synthetic
# shapes dataset with an unlabeled split: `python -m mmdet_lightning.synthetic --out data/shapes --num-unlabeled 400`.
# The structure of mmdet's configs/soft_teacher/ and configs/_base_/datasets/semi_coco_detection.py, at 128 px.
_base_ = ["./shapes_faster_rcnn.py"]

detector = _base_.model

model = dict(
    _delete_=True,
    type="SoftTeacher",
    detector=detector,
    data_preprocessor=dict(type="MultiBranchDataPreprocessor", data_preprocessor=detector.data_preprocessor),
    semi_train_cfg=dict(
        freeze_teacher=True,
        sup_weight=1.0,
        unsup_weight=4.0,
        pseudo_label_initial_score_thr=0.5,
        rpn_pseudo_thr=0.9,
        cls_pseudo_thr=0.9,
        reg_pseudo_thr=0.02,
        jitter_times=10,
        jitter_scale=0.06,
        min_pseudo_bbox_wh=(1e-2, 1e-2),
    ),
    semi_test_cfg=dict(predict_on="teacher"),
)

backend_args = None
color_space = [
    [dict(type="ColorTransform")],
    [dict(type="AutoContrast")],
    [dict(type="Equalize")],
    [dict(type="Sharpness")],
    [dict(type="Posterize")],
    [dict(type="Solarize")],
    [dict(type="Color")],
    [dict(type="Contrast")],
    [dict(type="Brightness")],
]
geometric = [
    [dict(type="Rotate")],
    [dict(type="ShearX")],
    [dict(type="ShearY")],
    [dict(type="TranslateX")],
    [dict(type="TranslateY")],
]
scale = [(128, 96), (128, 160)]
branch_field = ["sup", "unsup_teacher", "unsup_student"]
# labeled images, to the student for the supervised losses
sup_pipeline = [
    dict(type="LoadImageFromFile", backend_args=backend_args),
    dict(type="LoadAnnotations", with_bbox=True),
    dict(type="RandomResize", scale=scale, keep_ratio=True),
    dict(type="RandomFlip", prob=0.5),
    dict(type="RandAugment", aug_space=color_space, aug_num=1),
    dict(type="FilterAnnotations", min_gt_bbox_wh=(1e-2, 1e-2)),
    dict(type="MultiBranch", branch_field=branch_field, sup=dict(type="PackDetInputs")),
]
semi_meta_keys = ("img_id", "img_path", "ori_shape", "img_shape", "scale_factor", "flip", "flip_direction",
                  "homography_matrix")
# unlabeled images, weakly augmented: to the teacher, which predicts the pseudo instances
weak_pipeline = [
    dict(type="RandomResize", scale=scale, keep_ratio=True),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PackDetInputs", meta_keys=semi_meta_keys),
]
# the same images strongly augmented: to the student, trained on the pseudo instances
strong_pipeline = [
    dict(type="RandomResize", scale=scale, keep_ratio=True),
    dict(type="RandomFlip", prob=0.5),
    dict(type="RandomOrder", transforms=[
        dict(type="RandAugment", aug_space=color_space, aug_num=1),
        dict(type="RandAugment", aug_space=geometric, aug_num=1),
    ]),
    dict(type="RandomErasing", n_patches=(1, 5), ratio=(0, 0.2)),
    dict(type="FilterAnnotations", min_gt_bbox_wh=(1e-2, 1e-2)),
    dict(type="PackDetInputs", meta_keys=semi_meta_keys),
]
unsup_pipeline = [
    dict(type="LoadImageFromFile", backend_args=backend_args),
    dict(type="LoadEmptyAnnotations"),
    dict(type="MultiBranch", branch_field=branch_field, unsup_teacher=weak_pipeline, unsup_student=strong_pipeline),
]

labeled_dataset = dict(
    type=_base_.dataset_type,
    data_root=_base_.data_root,
    metainfo=_base_.metainfo,
    ann_file="annotations/instances_train.json",
    data_prefix=dict(img="train/"),
    filter_cfg=dict(filter_empty_gt=True, min_size=4),
    pipeline=sup_pipeline,
    backend_args=backend_args,
)
unlabeled_dataset = dict(
    type=_base_.dataset_type,
    data_root=_base_.data_root,
    metainfo=_base_.metainfo,
    ann_file="annotations/instances_unlabeled.json",
    data_prefix=dict(img="unlabeled/"),
    filter_cfg=dict(filter_empty_gt=False),
    pipeline=unsup_pipeline,
    backend_args=backend_args,
)
batch_size = 4
train_dataloader = dict(
    _delete_=True,
    batch_size=batch_size,
    num_workers=0,
    persistent_workers=False,
    # each batch: 2 labeled and 2 unlabeled images (mmdet's COCO configs: 1 and 4 of 5)
    sampler=dict(type="GroupMultiSourceSampler", batch_size=batch_size, source_ratio=[2, 2]),
    dataset=dict(type="ConcatDataset", datasets=[labeled_dataset, unlabeled_dataset]),
)

train_cfg = dict(_delete_=True, type="IterBasedTrainLoop", max_iters=400, val_interval=100)
val_cfg = dict(type="TeacherStudentValLoop")
test_cfg = dict(type="TestLoop")
param_scheduler = [
    dict(type="LinearLR", start_factor=0.001, by_epoch=False, begin=0, end=50),
    dict(type="MultiStepLR", begin=0, end=400, by_epoch=False, milestones=[300, 350], gamma=0.1),
]
optim_wrapper = dict(optimizer=dict(lr=0.01))
default_hooks = dict(checkpoint=dict(type="CheckpointHook", by_epoch=False, interval=100, max_keep_ckpts=2))
log_processor = dict(by_epoch=False)
custom_hooks = [dict(type="MeanTeacherHook")]
