"""mmdet's model zoo through MMDetModule: config adaptation, and a few fast families trained end to end
(the whole sweep is tools/model_zoo_sweep.py, its table docs/model_zoo.md)."""

from __future__ import annotations

import json
import math
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from mmengine.config import Config

from mmdet_lightning.model_zoo import REPRESENTATIVES, adapt_to_dataset, family_config, mmdet_configs_dir, run_family
from mmdet_lightning.synthetic import CLASSES, STUFF_CLASSES, ShapesConfig, make_shapes_dataset

from .helpers.user_env import REPO, explain, run_as_user

FAST_FAMILIES = ["yolox", "rtmdet", "detr", "condinst"]  # custom hooks, transformer, instance masks


@pytest.fixture(scope="module")
def tiny_shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("zoo_shapes"), ShapesConfig(num_train=8, num_val=2, seed=0))


def _types(node: object) -> list[str]:
    found: list[str] = []
    if isinstance(node, dict):
        found.append(str(node.get("type", "")))
        for child in node.values():
            found.extend(_types(child))
    elif isinstance(node, (list, tuple)):
        for child in node:
            found.extend(_types(child))
    return found


def test_every_family_has_an_existing_representative() -> None:
    families = sorted(p.name for p in mmdet_configs_dir().iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
    assert sorted(REPRESENTATIVES) == families
    missing = [f for f in families if not family_config(f).is_file()]
    assert not missing


def test_adaptation_points_at_the_dataset_and_drops_pretrained_weights(tiny_shapes: Path) -> None:
    cfg = adapt_to_dataset(Config.fromfile(str(family_config("mask2former"))), tiny_shapes, CLASSES)
    head = cfg.model.panoptic_head
    assert head.num_things_classes == 3 and head.num_stuff_classes == 0
    assert head.loss_cls.class_weight == [1.0, 1.0, 1.0, 0.1]  # 3 classes + "no object", was 80 + 1
    assert cfg.model.backbone.init_cfg is None
    assert cfg.train_dataloader.dataset.type == "CocoDataset"
    assert cfg.train_dataloader.dataset.data_root == str(tiny_shapes) + "/"
    assert cfg.val_evaluator == dict(type="CocoMetric", ann_file=f"{tiny_shapes}/annotations/instances_val.json",
                                     metric=["bbox", "segm"], backend_args=None)
    sizes = [step["scale"] for step in cfg.train_dataloader.dataset.pipeline if "scale" in step]
    assert sizes and max(max(s) for s in sizes) <= 128

    resnest = adapt_to_dataset(Config.fromfile(str(family_config("resnest"))), tiny_shapes, CLASSES)
    assert "SyncBN" not in _types(resnest.model.to_dict()) and "BN" in _types(resnest.model.to_dict())


def test_panoptic_configs_are_pointed_at_the_panoptic_data_as_the_shapes_config_is(panoptic_root: Path,
                                                                                   panoptic_config: Any) -> None:
    """mmdet's Panoptic FPN adapted to the synthetic panoptic data reads it as configs/mmdet/shapes_panoptic_fpn.py
    (the hand-written mapping) does: same datasets, PNG folders, classes, evaluator; heads of 3 things + 2 stuff."""
    from mmdet.registry import DATASETS

    from mmdet_lightning.config import init_mmdet_scope

    init_mmdet_scope()
    ours = adapt_to_dataset(Config.fromfile(str(family_config("panoptic_fpn"))), panoptic_root, CLASSES,
                            stuff_classes=STUFF_CLASSES)
    theirs = panoptic_config()
    for loader in ("train_dataloader", "val_dataloader"):
        mine, hand = ours[loader].dataset, theirs[loader].dataset
        for key in ("type", "ann_file", "data_prefix", "metainfo"):
            assert mine[key] == hand[key], (loader, key)
        assert Path(mine.data_root) == Path(hand.data_root)
    for key in ("type", "ann_file", "seg_prefix"):
        assert ours.val_evaluator[key] == theirs.val_evaluator[key]
    assert ours.test_evaluator == ours.val_evaluator
    model = ours.model
    assert (model.semantic_head.num_things_classes, model.semantic_head.num_stuff_classes) == (3, 2)
    assert (model.panoptic_fusion_head.num_things_classes, model.panoptic_fusion_head.num_stuff_classes) == (3, 2)
    assert model.roi_head.bbox_head.num_classes == 3 and model.roi_head.mask_head.num_classes == 3
    assert model.rpn_head.get("num_classes", 1) == 1
    assert model.test_cfg.panoptic.stuff_area_limit < 4096  # shrunk with the image area
    assert len(DATASETS.build(ours.val_dataloader.dataset)) == 6
    train = DATASETS.build(ours.train_dataloader.dataset)
    assert train.metainfo["stuff_classes"] == STUFF_CLASSES
    sample = train[0]  # resized with its panoptic PNG's semantic map (things and stuff)
    assert sample["data_samples"].gt_sem_seg.sem_seg.shape[-2:] == sample["inputs"].shape[-2:]
    assert set(sample["data_samples"].gt_sem_seg.sem_seg.unique().tolist()) & {3, 4}  # a stuff class present

    maskformer = adapt_to_dataset(Config.fromfile(str(family_config("maskformer"))), panoptic_root, CLASSES,
                                  stuff_classes=STUFF_CLASSES)
    head = maskformer.model.panoptic_head
    assert (head.num_things_classes, head.num_stuff_classes) == (3, 2)
    assert head.loss_cls.class_weight == [1.0] * 5 + [0.1]  # things + stuff + "no object", was 133 + 1
    assert maskformer.val_evaluator.type == "CocoPanopticMetric"

    with pytest.raises(ValueError, match="panoptic segmentation model: pass `stuff_classes`"):
        adapt_to_dataset(Config.fromfile(str(family_config("panoptic_fpn"))), panoptic_root, CLASSES)


def _doc_rows(doc: Path) -> dict[str, list[str]]:
    rows = [line.strip("|").split(" | ") for line in doc.read_text().splitlines() if line.startswith("| ")]
    return {cells[0].strip(): [c.strip() for c in cells] for cells in rows if cells[0].strip() != "family"}


def test_a_sweep_of_some_families_updates_their_rows_only(tmp_path: Path) -> None:
    """`model_zoo_sweep.py --table-only` merges a results file into the doc: the families in it get their new
    status, the other rows and every "no compiler" and "mmcv-lite sweep" cell stay, the header counts are those of
    all rows."""
    doc = tmp_path / "model_zoo.md"
    shutil.copy(REPO / "docs" / "model_zoo.md", doc)
    before = _doc_rows(doc)
    results = tmp_path / "results.jsonl"
    results.write_text(json.dumps({"family": "retinanet", "config": REPRESENTATIVES["retinanet"], "status": "timeout",
                                   "reason": "still running after 1 s", "seconds": 1.0}) + "\n")
    done = run_as_user(["python", str(REPO / "tools" / "model_zoo_sweep.py"), "--table-only", "--results",
                        str(results), "--doc", str(doc)], tmp_path, timeout=120)
    assert done.returncode == 0, explain(done)
    after = _doc_rows(doc)
    assert after.keys() == before.keys() and len(after) == len(REPRESENTATIVES)
    assert {k: v for k, v in after.items() if k != "retinanet"} == {k: v for k, v in before.items() if k != "retinanet"}
    family, config, status, side, seconds, no_compiler, lite, reason = after["retinanet"]
    assert (status, side, seconds, reason) == ("timeout", "", "1.0", "still running after 1 s")
    assert no_compiler == before["retinanet"][5] and no_compiler.startswith("yes")
    assert lite == before["retinanet"][6] == "pass"  # the mmcv-lite sweep's cell stays too
    counts = Counter(row[2] for row in after.values())
    header = next(line for line in doc.read_text().splitlines() if line.endswith(".") and "families:" in line)
    assert header.startswith(f"{len(after)} families: ") and f"{counts['timeout']} timeout" in header
    assert all(f"{n} {status}" in header for status, n in counts.items())


def test_task_we_do_not_cover_is_reported(tiny_shapes: Path, tmp_path: Path) -> None:
    record = run_family("masktrack_rcnn", tiny_shapes, tmp_path)
    assert record["status"] == "not-covered"
    assert "video instance segmentation model" in record["reason"]


@pytest.mark.slow
@pytest.mark.parametrize("family", FAST_FAMILIES)
def test_family_trains_validates_and_predicts(family: str, tiny_shapes: Path, tmp_path: Path) -> None:
    record = run_family(family, tiny_shapes, tmp_path, check_with_runner=False)
    assert record["status"] == "pass", record["reason"]
    assert math.isfinite(record["loss"])
    assert record["predictions"] == 2  # the two validation images


@pytest.mark.slow
def test_norm_eval_backbone_keeps_its_batchnorm_statistics(shapes_config: object, tmp_path: Path) -> None:
    """Model-zoo backbones freeze BatchNorm with `norm_eval=True`, applied by `ResNet.train()`, which mmengine's
    train loop calls every epoch and Lightning does not: MMDetModule must."""
    import torch

    from mmdet_lightning import MMDetDataModule, MMDetModule
    from mmdet_lightning.lightning_package import pl

    cfg = shapes_config("shapes_faster_rcnn.py")
    cfg.model.backbone.update(norm_eval=True, frozen_stages=1)
    module = MMDetModule(cfg)
    before = {k: v.clone() for k, v in module.model.backbone.state_dict().items() if "running" in k}
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=0, accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, default_root_dir=str(tmp_path))
    trainer.fit(module, datamodule=MMDetDataModule(cfg))
    after = module.model.backbone.state_dict()
    assert before and all(torch.equal(after[k], v) for k, v in before.items())
    norms = [m for m in module.model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and not any(m.training for m in norms)
    assert module.model.neck.training  # the rest trains
