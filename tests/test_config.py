"""mmdet_lightning.config: loading configs, --cfg-options, data roots, classes, dataset wrappers."""

from __future__ import annotations

from pathlib import Path

import pytest
from mmengine.config import Config

from mmdet_lightning.config import (
    apply_cfg_options,
    check_supported_task,
    leaf_dataset_cfgs,
    load_config,
    parse_cfg_options,
    replace_data_root,
    set_classes,
)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "mmdet"


# ---------------------------------------------------------------- load_config
def test_load_config_from_path_dict_and_config_copies_its_input() -> None:
    from_path = load_config(CONFIGS / "shapes_retinanet.py")
    assert from_path.model.type == "RetinaNet"
    given = {"model": {"type": "RetinaNet", "bbox_head": {"num_classes": 3}}}
    from_dict = load_config(given)
    from_dict.model.bbox_head.num_classes = 5
    assert given["model"]["bbox_head"]["num_classes"] == 3  # the caller's dict is left alone
    from_config = load_config(from_path)
    from_config.model.type = "Other"
    assert from_path.model.type == "RetinaNet"


def test_load_config_applies_cfg_options() -> None:
    cfg = load_config(CONFIGS / "shapes_retinanet.py", ["train_dataloader.batch_size=3"])
    assert cfg.train_dataloader.batch_size == 3


def test_load_config_without_model() -> None:
    with pytest.raises(ValueError, match="has no `model` dict"):
        load_config({"train_dataloader": {}})


def test_load_config_wrong_type() -> None:
    with pytest.raises(TypeError, match="Expected a config path, dict or mmengine Config, but got int"):
        load_config(3)  # type: ignore[arg-type]


def test_load_config_unsupported_task() -> None:
    with pytest.raises(ValueError, match="video instance segmentation"):
        load_config({"model": {"type": "MaskTrackRCNN"}})


# ---------------------------------------------------------------- --cfg-options
def test_parse_cfg_options_as_mmdet_tools() -> None:
    assert parse_cfg_options(["a.b=1", "c=[1,2]", "d=x,y"]) == {"a.b": 1, "c": [1, 2], "d": ["x", "y"]}
    assert parse_cfg_options({"a": 1}) == {"a": 1}
    with pytest.raises(ValueError, match=r"key=value, but got \['lr'\]"):
        parse_cfg_options(["lr"])


def test_apply_cfg_options_sets_nested_keys_and_list_items() -> None:
    cfg = Config(dict(optim_wrapper=dict(optimizer=dict(lr=0.02)), pipeline=[dict(type="A"), dict(type="B", scale=1)]))
    apply_cfg_options(cfg, ["optim_wrapper.optimizer.lr=0.01", "pipeline.1.scale=2", "work_dir=out"])
    assert cfg.optim_wrapper.optimizer.lr == 0.01 and cfg.pipeline[1].scale == 2
    assert cfg.work_dir == "out"  # a key mmengine's Runner reads with a default: allowed without being there


@pytest.mark.parametrize("key, message", [
    ("optim_wrapper.optimizer.lrr", r"`optim_wrapper.optimizer` has no `lrr` \(nearest: lr\)"),
    ("optim_wrapper.optimiser.lr", r"`optim_wrapper` has no `optimiser` \(nearest: optimizer\)"),
    ("pipeline.5.scale", r"`pipeline` has no `5`"),
    ("optim_wrapper.optimizer.lr.x", r"`optim_wrapper.optimizer.lr` has float value 0.02 `x`"),
    ("nothing", r"the config's top level has no `nothing`"),
])
def test_apply_cfg_options_unknown_keys_are_errors(key: str, message: str) -> None:
    cfg = Config(dict(optim_wrapper=dict(optimizer=dict(lr=0.02)), pipeline=[dict(type="A")]))
    with pytest.raises(ValueError, match=message):
        apply_cfg_options(cfg, {key: 1})
    assert cfg.optim_wrapper.optimizer.lr == 0.02  # nothing applied


def test_check_supported_task_takes_mask2former_for_instances_and_panoptic() -> None:
    check_supported_task({"type": "Mask2Former", "panoptic_head": {}, "test_cfg": {"panoptic_on": False}})
    check_supported_task({"type": "Mask2Former", "panoptic_head": {}})  # panoptic segmentation: PanopticTask
    with pytest.raises(ValueError, match="video instance segmentation"):
        check_supported_task({"type": "Mask2FormerVideo", "panoptic_head": {}})


# ---------------------------------------------------------------- data roots, classes, wrappers
def test_replace_data_root_in_every_string() -> None:
    cfg = Config(dict(data_root="data/coco/", val_evaluator=dict(ann_file="data/coco/ann.json"),
                      train_dataloader=dict(dataset=dict(data_root="data/coco", ann_file="train.json",
                                                         data_prefix=dict(img="data/coco/img/"))),
                      other="data/cocoa/x.json"))
    replace_data_root(cfg, "/new/root/")
    assert cfg.data_root == "/new/root/"
    assert cfg.val_evaluator.ann_file == "/new/root/ann.json"
    assert cfg.train_dataloader.dataset.data_root == "/new/root/"
    assert cfg.train_dataloader.dataset.ann_file == "train.json"  # relative to data_root: kept
    assert cfg.train_dataloader.dataset.data_prefix.img == "/new/root/img/"
    assert cfg.other == "data/cocoa/x.json"  # a longer folder name is not a prefix of the root


def test_replace_data_root_needs_one() -> None:
    with pytest.raises(ValueError, match="no top-level `data_root`"):
        replace_data_root(Config(dict(model=dict())), "/x")


def test_set_classes_heads_and_every_dataset_but_rpn() -> None:
    cfg = Config(dict(
        model=dict(rpn_head=dict(num_classes=1),
                   roi_head=dict(bbox_head=[dict(num_classes=80), dict(num_classes=80)],
                                 mask_head=dict(num_classes=80))),
        train_dataloader=dict(dataset=dict(type="RepeatDataset", times=2,
                                           dataset=dict(type="CocoDataset", ann_file="a.json"))),
        val_dataloader=dict(dataset=dict(type="CocoDataset", ann_file="v.json", metainfo=dict(palette=[(1, 2, 3)]))),
    ))
    set_classes(cfg, ["cat", "dog"])
    assert cfg.model.rpn_head.num_classes == 1
    assert [h.num_classes for h in cfg.model.roi_head.bbox_head] == [2, 2]
    assert cfg.model.roi_head.mask_head.num_classes == 2
    assert "metainfo" not in cfg.train_dataloader.dataset  # the wrapper: its inner dataset gets the classes
    assert cfg.train_dataloader.dataset.dataset.metainfo.classes == ("cat", "dog")
    assert cfg.val_dataloader.dataset.metainfo == dict(palette=[(1, 2, 3)], classes=("cat", "dog"))


def test_leaf_dataset_cfgs_through_wrappers() -> None:
    a, b, c = (dict(type="CocoDataset", ann_file=name) for name in "abc")
    wrapped = dict(type="ConcatDataset", datasets=[dict(type="RepeatDataset", dataset=a), b,
                                                   dict(type="ClassBalancedDataset", dataset=dict(
                                                       type="ConcatDataset", datasets=[c]))])
    assert leaf_dataset_cfgs(wrapped) == [a, b, c]
    assert leaf_dataset_cfgs(a) == [a]
