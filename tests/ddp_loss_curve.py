"""RetinaNet trained from scratch with a fixed global batch on 1 or 2 CPU processes; run as a script by test_ddp.py.

    python tests/ddp_loss_curve.py OUT_DIR DATA_ROOT DEVICES [unused]

Each process loads 4 / DEVICES images per step (``MMDetDataModule(global_batch_size=4)``); rank 0 writes
OUT_DIR/losses.json, the loss of every step averaged over the processes. With ``unused``, the model gets a
parameter that no loss uses (DDP then needs find_unused_parameters).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def main() -> None:
    import pytorch_lightning as pl
    import torch

    from mmdet_lightning import MMDetDataModule, MMDetModule
    from mmdet_lightning.config import load_config, replace_data_root

    out, data_root, devices = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    out.mkdir(parents=True, exist_ok=True)
    unused = "unused" in sys.argv[4:]
    torch.set_num_threads(1)
    cfg = replace_data_root(load_config(Path(__file__).parents[1] / "configs/mmdet/shapes_retinanet.py"), data_root)
    losses: list[float] = []

    class AverageLoss(pl.Callback):
        def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, *unused: Any) -> None:
            losses.append(float(pl_module.all_gather(outputs["loss"]).mean()))  # collective: every rank

    pl.seed_everything(0)
    module = MMDetModule(cfg)
    if unused:
        module.model.never_used = torch.nn.Linear(2, 2)
    trainer = pl.Trainer(max_steps=12, max_epochs=2, accelerator="cpu", devices=devices, strategy="ddp",
                         num_sanity_val_steps=0, limit_val_batches=0, enable_progress_bar=False, logger=False,
                         enable_checkpointing=False, default_root_dir=str(out), callbacks=[AverageLoss()])
    trainer.fit(module, datamodule=MMDetDataModule(cfg, global_batch_size=4))
    if trainer.is_global_zero:
        (out / "losses.json").write_text(json.dumps(losses))


if __name__ == "__main__":
    main()
