"""Train a detector from scratch on the synthetic shapes dataset, log to W&B offline, print the mAP.

    python examples/train_shapes.py                        # the README's demo
    python examples/train_shapes.py --config configs/mmdet/shapes_retinanet.py --epochs 6

Nothing is downloaded: the dataset is generated (``data/shapes``), the model starts from random weights,
and W&B runs in offline mode (``wandb sync work_dirs/demo/wandb/offline-run-*`` uploads it later).
"""

from __future__ import annotations

import argparse
import os
import time

from mmdet_lightning import MMDetDataModule, MMDetModule, make_shapes_dataset
from mmdet_lightning.callbacks import MMDetWandbCallback
from mmdet_lightning.config import load_config, replace_data_root
from mmdet_lightning.lightning_package import pl

ModelCheckpoint = pl.callbacks.ModelCheckpoint
WandbLogger = pl.loggers.WandbLogger


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/mmdet/shapes_faster_rcnn.py")
    parser.add_argument("--data-root", default="data/shapes")
    parser.add_argument("--num-train", type=int, default=600)
    parser.add_argument("--num-val", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=None, help="default: the config's train_cfg.max_epochs")
    parser.add_argument("--work-dir", default="work_dirs/demo")
    parser.add_argument("--num-eval-images", type=int, default=20, help="images in the W&B tables")
    args = parser.parse_args()

    make_shapes_dataset(args.data_root, num_train=args.num_train, num_val=args.num_val)
    cfg = replace_data_root(load_config(args.config), args.data_root)
    epochs = args.epochs or cfg.train_cfg.max_epochs
    cfg.train_cfg.max_epochs = epochs
    pl.seed_everything(cfg.randomness.seed)

    os.makedirs(args.work_dir, exist_ok=True)
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="auto",
        devices=1,
        logger=WandbLogger(project="mmdet-lightning-demo", save_dir=args.work_dir, offline=True),
        callbacks=[
            ModelCheckpoint(dirpath=os.path.join(args.work_dir, "checkpoints"), monitor="coco/bbox_mAP", mode="max",
                            save_last=True),
            # what mmdet 2.x's MMDetWandbHook logged: interval metrics, checkpoint artifacts, val/prediction tables
            MMDetWandbCallback(interval=10, log_checkpoint=True, num_eval_images=args.num_eval_images,
                               bbox_score_thr=0.3),
        ],
        check_val_every_n_epoch=cfg.train_cfg.get("val_interval", 1),
        log_every_n_steps=10,
        num_sanity_val_steps=0,
        default_root_dir=args.work_dir,
    )
    start = time.perf_counter()
    trainer.fit(MMDetModule.from_config(cfg), datamodule=MMDetDataModule.from_config(cfg))
    minutes = (time.perf_counter() - start) / 60
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("coco/")}
    print(f"\ntrained {epochs} epochs in {minutes:.1f} min; validation on {args.num_val} images:")
    for key, value in metrics.items():
        print(f"  {key:24s} {value:.3f}")
    print(f"bbox mAP: {metrics.get('coco/bbox_mAP', float('nan')):.3f}")


if __name__ == "__main__":
    main()
