"""Fit with strategy="ddp" on CPU (gloo) with the W&B callback offline; run as a script by test_ddp.py.

    python tests/helpers/ddp_fit.py OUT_DIR DATA_ROOT LOAD_FROM DEVICES PREDICT_FOLDER

Lightning starts the other ranks by running this script again. Rank 0 writes OUT_DIR/metrics.json; after the
fit, the images of PREDICT_FOLDER are predicted with a DetectionWriter into OUT_DIR/predictions.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> None:
    import torch

    from mmdet_lightning import MMDetDataModule, MMDetModule
    from mmdet_lightning.callbacks import DetectionWriter, MMDetWandbCallback
    from mmdet_lightning.config import load_config, replace_data_root
    from mmdet_lightning.lightning_package import pl

    class WrapperSeen(pl.Callback):
        """Keeps the DDP wrapper's ``broadcast_buffers`` (the strategy unwraps the model at teardown)."""

        broadcast_buffers = None

        def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            self.broadcast_buffers = trainer.strategy.model.broadcast_buffers

    wrapper = WrapperSeen()
    out, data_root, load_from = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    devices, predict_folder = int(sys.argv[4]), sys.argv[5]
    torch.set_num_threads(1)
    cfg = replace_data_root(load_config(Path(__file__).parents[2] / "configs/mmdet/shapes_faster_rcnn.py"), data_root)
    cfg.train_dataloader.batch_size = 2
    cfg.val_dataloader.batch_size = 2
    cfg.load_from = load_from
    pl.seed_everything(0)
    trainer = pl.Trainer(
        max_epochs=2, limit_train_batches=3, accelerator="cpu", devices=devices,
        strategy="ddp" if devices > 1 else "auto", num_sanity_val_steps=0, enable_progress_bar=False,
        logger=pl.loggers.WandbLogger(offline=True, save_dir=str(out), project="ddp"), default_root_dir=str(out),
        callbacks=[pl.callbacks.ModelCheckpoint(dirpath=str(out / "ckpt"), every_n_epochs=1, save_top_k=-1,
                                                save_last=True),
                   MMDetWandbCallback(interval=1, log_checkpoint=True, num_eval_images=5, bbox_score_thr=0.3),
                   DetectionWriter(out / "predictions", draw=False), wrapper],
    )
    module = MMDetModule(cfg)
    trainer.fit(module, datamodule=MMDetDataModule(cfg))
    if trainer.is_global_zero:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        (out / "metrics.json").write_text(json.dumps(metrics))
        (out / "ddp.json").write_text(json.dumps({"broadcast_buffers": wrapper.broadcast_buffers}))
    trainer.predict(module, datamodule=MMDetDataModule(cfg, predict_folder=predict_folder), return_predictions=False)
    if trainer.is_global_zero:
        import wandb

        wandb.finish()


if __name__ == "__main__":
    main()
