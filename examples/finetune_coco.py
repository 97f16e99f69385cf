"""Fine-tune an mmdet model-zoo checkpoint on your own COCO-format dataset, with another class count.

    python examples/finetune_coco.py \\
        --config configs/mmdet/shapes_faster_rcnn.py \\
        --load-from https://download.openmmlab.com/mmdetection/v3.0/...pth \\
        --data-root my_data --epochs 12

``my_data`` holds ``annotations/instances_train.json``, ``annotations/instances_val.json``, ``train/`` and
``val/`` (the layout of the config's ``data_root``). The classes are read from the training annotations'
``categories``; every head's ``num_classes`` follows them. Tensors of the checkpoint that no longer fit
(the class-dependent layers) are skipped and listed; all others are loaded. ``--load-from`` takes a
local path or a URL (downloaded once into torch's hub cache).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mmdet_lightning import MMDetDataModule, MMDetModule
from mmdet_lightning.callbacks import MMDetWandbCallback
from mmdet_lightning.config import load_config, replace_data_root, set_classes
from mmdet_lightning.lightning_package import pl

ModelCheckpoint = pl.callbacks.ModelCheckpoint
WandbLogger = pl.loggers.WandbLogger


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="an mmdet 3.x config (its model and schedule are used)")
    parser.add_argument("--load-from", required=True, help="model-zoo checkpoint: local path or URL")
    parser.add_argument("--data-root", required=True, help="your COCO-format dataset folder")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--work-dir", default="work_dirs/finetune")
    parser.add_argument("--offline", action="store_true", help="W&B offline (no account needed)")
    args = parser.parse_args()

    categories = json.loads((Path(args.data_root) / "annotations" / "instances_train.json").read_text())["categories"]
    classes = [c["name"] for c in sorted(categories, key=lambda c: c["id"])]
    cfg = set_classes(replace_data_root(load_config(args.config), args.data_root), classes)
    cfg.train_cfg.max_epochs = args.epochs

    module = MMDetModule(cfg, load_from=args.load_from)
    print(f"classes {classes}; load_from: {module.load_report.summary() if module.load_report else 'nothing'}")
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        default_root_dir=args.work_dir,
        logger=WandbLogger(project="mmdet-lightning-finetune", save_dir=args.work_dir, offline=args.offline),
        callbacks=[ModelCheckpoint(monitor="coco/bbox_mAP", mode="max", save_last=True),
                   MMDetWandbCallback(interval=10, log_checkpoint=True, num_eval_images=50)],
    )
    trainer.fit(module, datamodule=MMDetDataModule(cfg))


if __name__ == "__main__":
    main()
