"""Each config in configs/mmdet trains and validates (a tiny run) through the module."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from mmdet_lightning import MMDetDataModule, MMDetModule
from mmdet_lightning.lightning_package import pl

from .conftest import CONFIGS

# the panoptic configs train on the panoptic data (tests/test_panoptic.py); semi-supervised configs need an unlabeled
# split and log teacher/ and student/ metrics (tests/test_semi_supervised.py)
CONFIG_NAMES = sorted(p.name for p in CONFIGS.glob("shapes_*.py")
                      if "panoptic" not in p.name and p.name != "shapes_soft_teacher.py")


def test_every_required_model_has_a_config() -> None:
    assert {"shapes_faster_rcnn.py", "shapes_retinanet.py", "shapes_mask_rcnn.py", "shapes_rtmdet.py"} <= set(
        CONFIG_NAMES
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_config_trains_and_validates(name: str, shapes_config: Any, tmp_path: Any) -> None:
    cfg = shapes_config(name, max_epochs=1, batch_size=4)
    pl.seed_everything(0)
    module = MMDetModule.from_config(cfg)
    trainer = pl.Trainer(
        max_epochs=1, limit_train_batches=3, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, num_sanity_val_steps=1, default_root_dir=str(tmp_path),
    )
    before = {k: v.clone() for k, v in module.model.state_dict().items() if v.is_floating_point()}
    trainer.fit(module, datamodule=MMDetDataModule.from_config(cfg))

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert np.isfinite(metrics["train/loss"])
    assert 0.0 <= metrics["coco/bbox_mAP"] <= 1.0
    expected = {"coco/bbox_mAP", "coco/bbox_mAP_50", "coco/bbox_mAP_75", "coco/bbox_mAP_s", "coco/bbox_mAP_m",
                "coco/bbox_mAP_l"}
    if "mask" in name:
        expected |= {"coco/segm_mAP", "coco/segm_mAP_50"}
    assert expected <= set(metrics), sorted(metrics)
    changed = [k for k, v in module.model.state_dict().items() if k in before and not v.equal(before[k])]
    assert changed, "no weight changed in training"

    predictions = trainer.predict(module, datamodule=MMDetDataModule.from_config(cfg))
    sample = predictions[0][0]
    assert sample.ori_shape == (128, 128)
    boxes = sample.pred_instances.bboxes
    assert boxes.shape[-1] == 4 and (boxes.numel() == 0 or float(boxes.max()) <= 128.5)


@pytest.mark.slow
def test_iteration_based_run_with_epoch_schedules_converted(shapes_config: Any, tmp_path: Any) -> None:
    """RTMDet's cosine schedule is epoch-based with convert_to_iter_based: it needs the epoch length also
    when the Trainer runs for max_steps."""
    cfg = shapes_config("shapes_rtmdet.py", batch_size=4)
    trainer = pl.Trainer(max_steps=4, limit_val_batches=0, accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, default_root_dir=str(tmp_path))
    module = MMDetModule.from_config(cfg)
    trainer.fit(module, datamodule=MMDetDataModule.from_config(cfg))
    assert trainer.global_step == 4
    cosine = [s for s in module.param_schedulers if type(s).__name__ == "CosineAnnealingLR"]
    assert cosine and not cosine[0].by_epoch  # converted to iterations with the real epoch length
