"""RetinaNet trained from scratch with a fixed global batch on 1 or 2 CPU processes; run as a script by test_ddp.py.

    python tests/helpers/ddp_loss_curve.py OUT_DIR DATA_ROOT DEVICES [unused] [accumulate]

Each process loads 4 / DEVICES images per step (``MMDetDataModule(global_batch_size=4)``); rank 0 writes
OUT_DIR/losses.json, the loss of every step averaged over the processes. With ``unused``, the model gets a
parameter that no loss uses (DDP then needs find_unused_parameters). With ``accumulate``, the config
accumulates gradients over 2 steps, and OUT_DIR/gradients.json holds each process's gradient norm of one
layer after each accumulating step and before each update.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def main() -> None:
    import torch

    from mmdet_lightning import MMDetDataModule, MMDetModule
    from mmdet_lightning.config import load_config, replace_data_root
    from mmdet_lightning.lightning_package import pl

    out, data_root, devices = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    out.mkdir(parents=True, exist_ok=True)
    unused, accumulate = "unused" in sys.argv[4:], "accumulate" in sys.argv[4:]
    torch.set_num_threads(1)
    cfg = replace_data_root(load_config(Path(__file__).parents[2] / "configs/mmdet/shapes_retinanet.py"), data_root)
    losses: list[float] = []
    gradients: dict[str, list[list[float]]] = {"accumulating": [], "update": []}
    if accumulate:
        cfg.optim_wrapper.accumulative_counts = 2

    class AverageLoss(pl.Callback):
        def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any,
                               batch_idx: int) -> None:
            losses.append(float(pl_module.all_gather(outputs["loss"]).mean()))  # collective: every rank
            if accumulate and batch_idx % 2 == 0:
                gradients["accumulating"].append(_gradient_norms(pl_module))

        def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: Any, optimizer: Any) -> None:
            if accumulate:
                gradients["update"].append(_gradient_norms(pl_module))

    def _gradient_norms(pl_module: Any) -> list[float]:
        grad = pl_module.model.bbox_head.retina_cls.weight.grad
        return pl_module.all_gather(grad.norm()).flatten().tolist()

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
        (out / "gradients.json").write_text(json.dumps(gradients))


if __name__ == "__main__":
    main()
