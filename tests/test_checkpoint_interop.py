"""Lightning checkpoints convert to mmdet checkpoints that mmdet's own inference API loads, and back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mmdet_lightning import MMDetDataModule, MMDetModule
from mmdet_lightning.checkpoint import to_mmdet_checkpoint
from mmdet_lightning.lightning_package import pl
from mmdet_lightning.synthetic import CLASSES


def test_lightning_to_mmdet_and_back(shapes_config: Any, shapes_root: Path, tmp_path: Path) -> None:
    from mmdet.apis import inference_detector, init_detector

    cfg = shapes_config("shapes_retinanet.py", batch_size=4)
    module = MMDetModule(cfg)
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=0, accelerator="cpu", logger=False,
                         enable_progress_bar=False, default_root_dir=str(tmp_path))
    trainer.fit(module, datamodule=MMDetDataModule(cfg))
    lightning_ckpt = tmp_path / "model.ckpt"
    trainer.save_checkpoint(lightning_ckpt)

    mmdet_ckpt = to_mmdet_checkpoint(lightning_ckpt, tmp_path / "model.pth")
    detector = init_detector(cfg, str(mmdet_ckpt), device="cpu")
    assert tuple(detector.dataset_meta["classes"]) == CLASSES
    for key, value in module.model.state_dict().items():
        assert torch.equal(detector.state_dict()[key], value), key
    result = inference_detector(detector, str(shapes_root / "val" / "000000.png"))
    assert result.pred_instances.bboxes.shape[-1] == 4

    back = MMDetModule(cfg, load_from=str(mmdet_ckpt))
    assert back.load_report is not None and not (back.load_report.missing or back.load_report.mismatched)
    for key, value in module.model.state_dict().items():
        assert torch.equal(back.model.state_dict()[key], value), key
