"""A 2-process DDP fit (gloo, Lightning's launcher) that a signal can preempt; run as a script by test_preemption.py.

    python tests/helpers/preempt_fit.py OUT_DIR DATA_ROOT [--signal-at N] [--signal-rank R] [--during train|val|save]
                                [--signal-name SIGTERM|SIGUSR1] [--send-to self|parent|group] [--resume]

RetinaNet, 2 epochs of 4 batches per process, validation and a checkpoint (``last.ckpt``) every epoch, W&B
offline with MMDetWandbCallback(log_checkpoint=True). ``--signal-at N`` has rank R send the signal: ``train`` at
the start of iteration N, ``val`` at the first validation batch after iteration N, ``save`` while the checkpoint
after iteration N is written; to its own process (``self``), to its parent (``parent``: the ``torchrun`` agent, which
passes it on to every worker, as a cluster's SIGTERM to the job does) or to its process group (``group``: every task
of a SLURM-style job, as SLURM's ``--signal`` does, see ``tests/helpers/slurm_job.py``). Under ``torchrun`` or a
SLURM-style launch each process is one rank and Lightning's environment is detected from the variables.
``--resume`` continues from the newest ``hpc_ckpt_*.ckpt`` into the W&B
run stored in it. Each rank writes OUT_DIR/rank<R>.json (learning rate and loss of every iteration it trained);
a run that ends writes OUT_DIR/final.pt (weights, optimizer state) from rank 0.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def main() -> None:
    import torch

    from mmdet_lightning import MMDetDataModule, MMDetModule
    from mmdet_lightning.callbacks import MMDetWandbCallback, PreemptionHandler, wandb_run_id
    from mmdet_lightning.config import load_config, replace_data_root
    from mmdet_lightning.lightning_package import pl

    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("data_root")
    parser.add_argument("--signal-at", type=int)
    parser.add_argument("--signal-rank", type=int, default=0)
    parser.add_argument("--during", choices=("train", "val", "save"), default="train")
    parser.add_argument("--signal-name", default="SIGTERM")
    parser.add_argument("--send-to", choices=("self", "parent", "group"), default="self")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--ckpt-dir", type=Path, help="ModelCheckpoint's folder (default OUT_DIR/ckpt)")
    args = parser.parse_args()
    signum = getattr(signal, args.signal_name)

    class Recorder(pl.Callback):
        def __init__(self) -> None:
            self.lrs: dict[int, float] = {}
            self.losses: dict[int, float] = {}
            self.sent = False

        def _send(self, trainer: pl.Trainer, pl_module: Any, during: str) -> None:
            if (args.signal_at is not None and not self.sent and args.during == during
                    and trainer.global_rank == args.signal_rank and pl_module._iteration() >= args.signal_at):
                self.sent = True
                if args.send_to == "group":
                    os.killpg(0, signum)
                else:
                    os.kill(os.getppid() if args.send_to == "parent" else os.getpid(), signum)

        def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
            self.lrs[pl_module._iteration()] = trainer.optimizers[0].param_groups[0]["lr"]
            self._send(trainer, pl_module, "train")

        def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any,
                               batch_idx: int) -> None:
            self.losses[pl_module._iteration()] = float(outputs["loss"])

        def on_validation_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int,
                                      dataloader_idx: int = 0) -> None:
            self._send(trainer, pl_module, "val")

        def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: Any, checkpoint: dict) -> None:
            self._send(trainer, pl_module, "save")

        def on_exception(self, trainer: pl.Trainer, pl_module: Any, exception: BaseException) -> None:
            self.exception = type(exception).__name__
            self.teardown(trainer, pl_module, "fit")

        def teardown(self, trainer: pl.Trainer, pl_module: Any, stage: str) -> None:
            part = "resumed" if args.resume else "first"
            path = args.out / f"rank{trainer.global_rank}.{part}.json"
            path.write_text(json.dumps({"lrs": self.lrs, "losses": self.losses,
                                        "exception": getattr(self, "exception", None)}))

    torch.set_num_threads(1)
    cfg = replace_data_root(load_config(REPO / "configs/mmdet/shapes_retinanet.py"), args.data_root)
    cfg.train_dataloader.batch_size = 2
    cfg.val_dataloader.batch_size = 2
    ckpt = None
    run_id = None
    if args.resume:
        ckpt = "hpc"
        newest = max(args.out.glob("hpc_ckpt_*.ckpt"), key=lambda p: int(p.stem.split("_")[-1]))
        run_id = wandb_run_id(newest)
    pl.seed_everything(0)
    recorder = Recorder()
    trainer = pl.Trainer(
        max_epochs=2, limit_train_batches=4, accelerator="cpu", devices=2, strategy="ddp", num_sanity_val_steps=0,
        enable_progress_bar=False, default_root_dir=str(args.out),
        logger=pl.loggers.WandbLogger(offline=True, save_dir=str(args.out), project="preempt", id=run_id,
                                      resume="allow" if run_id else None),
        callbacks=[pl.callbacks.ModelCheckpoint(dirpath=str(args.ckpt_dir or args.out / "ckpt"), every_n_epochs=1,
                                                save_last=True),
                   MMDetWandbCallback(interval=1, log_checkpoint=True, num_eval_images=2), recorder,
                   # 8 batches leave room for the ranks agreeing after every batch (the default spaces the
                   # agreements by 0.25 s of training: tests/helpers/preemption_agreement.py tests that schedule)
                   PreemptionHandler(seconds_between_agreements=0)],
    )
    module = MMDetModule(cfg)
    trainer.fit(module, datamodule=MMDetDataModule(cfg), ckpt_path=ckpt)
    if trainer.is_global_zero:
        torch.save({"state_dict": module.model.state_dict(), "optimizer": trainer.optimizers[0].state_dict()},
                   args.out / "final.pt")
        import wandb

        wandb.finish()


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
