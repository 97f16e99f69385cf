"""Fit the panoptic config with strategy="ddp" on CPU (gloo) and W&B offline; run as a script by test_panoptic.py.

    python tests/helpers/ddp_panoptic.py OUT_DIR DATA_ROOT DEVICES

Lightning starts the other ranks by running this script again. Rank 0 writes OUT_DIR/metrics.json (the last
validation's scalars, float64) and OUT_DIR/ckpt/last.ckpt.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> None:
    import torch

    from mmdet_lightning import MMDetDataModule, MMDetModule
    from mmdet_lightning.callbacks import MMDetWandbCallback
    from mmdet_lightning.config import load_config, replace_data_root
    from mmdet_lightning.lightning_package import pl

    out, data_root, devices = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    torch.set_num_threads(1)
    cfg = replace_data_root(load_config(Path(__file__).parents[2] / "configs/mmdet/shapes_panoptic_fpn.py"),
                            data_root)
    cfg.train_dataloader.batch_size = 2
    cfg.val_dataloader.batch_size = 2
    pl.seed_everything(0)
    trainer = pl.Trainer(
        max_epochs=1, limit_train_batches=3, accelerator="cpu", devices=devices,
        strategy="ddp" if devices > 1 else "auto", num_sanity_val_steps=0, enable_progress_bar=False,
        logger=pl.loggers.WandbLogger(offline=True, save_dir=str(out), project="ddp"), default_root_dir=str(out),
        callbacks=[pl.callbacks.ModelCheckpoint(dirpath=str(out / "ckpt"), save_last=True),
                   MMDetWandbCallback(interval=1, num_eval_images=5)],
    )
    module = MMDetModule(cfg)
    trainer.fit(module, datamodule=MMDetDataModule(cfg))
    if trainer.is_global_zero:
        (out / "metrics.json").write_text(json.dumps(module.last_eval_metrics))
        import wandb

        wandb.finish()


if __name__ == "__main__":
    main()
