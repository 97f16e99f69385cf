"""A short Faster R-CNN fit that can be killed, terminated or resumed; run as a script by test_fault_tolerance.py.

    python tests/helpers/fault_fit.py OUT_DIR DATA_ROOT [--kill-at N] [--sigterm-at N] [--resume CKPT] [--wandb]

2 epochs of 6 batches; ModelCheckpoint every 2 iterations (``last.ckpt`` too) and OnExceptionCheckpoint.
``--kill-at N`` sends SIGKILL to this process during the backward pass of iteration N (counted from 0), once
wandb-core has written to the transaction log every artifact the W&B callbacks count as logged (a SIGKILL loses
what wandb's service still holds in memory: wandb's limit, not what the tests are about);
``--sigterm-at N`` sends SIGTERM at the start of iteration N (Lightning stops after that batch).
``--wandb`` logs offline with MMDetWandbCallback(log_checkpoint=True); with ``--resume`` it continues the
W&B run stored in the checkpoint; ``--wandb --online`` uses ResilientWandbLogger with the environment's W&B settings.
A run that ends writes OUT_DIR/final.pt: the detector's weights, the
learning rate at each iteration, the MessageHub's runtime info and the optimizer wrapper's counter.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch

from mmdet_lightning.lightning_package import pl

ModelCheckpoint, OnExceptionCheckpoint = pl.callbacks.ModelCheckpoint, pl.callbacks.OnExceptionCheckpoint

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from mmdet_lightning import MMDetDataModule, MMDetModule  # noqa: E402
from mmdet_lightning.config import load_config, replace_data_root  # noqa: E402

EPOCHS = 2


class FaultInjector(pl.Callback):
    """Records the learning rate of every iteration; sends SIGKILL / SIGTERM at the given iterations."""

    def __init__(self, kill_at: int | None, sigterm_at: int | None) -> None:
        self.kill_at, self.sigterm_at = kill_at, sigterm_at
        self.wandb: Any = None  # the MMDetWandbCallback, when W&B logs
        self.lrs: dict[int, float] = {}
        self.batches: dict[int, list[str]] = {}
        self.losses: dict[int, float] = {}

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        iteration = pl_module._iteration()
        self.lrs[iteration] = trainer.optimizers[0].param_groups[0]["lr"]
        self.batches[iteration] = [Path(s.img_path).name + ("f" if s.flip else "") for s in batch["data_samples"]]
        if iteration == self.sigterm_at:
            os.kill(os.getpid(), signal.SIGTERM)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.losses[pl_module._iteration()] = float(outputs["loss"])

    def on_before_backward(self, trainer: pl.Trainer, pl_module: Any, loss: torch.Tensor) -> None:
        if pl_module._iteration() == self.kill_at:
            if self.wandb is not None:
                self._wait_for_wandb_log(trainer)
            os.kill(os.getpid(), signal.SIGKILL)

    def _wait_for_wandb_log(self, trainer: pl.Trainer, timeout: float = 120.0) -> None:
        from mmdet_lightning.wandb.records import artifacts, find_run_file, read_records
        from mmdet_lightning.wandb.worker import drain_all_workers

        drain_all_workers()
        state = self.wandb.state_dict()
        # last.ckpt counts as uploaded with the iter_N.ckpt it copies; the artifact holds that one
        expected = {Path(path).name for path in state["WandbCheckpointArtifacts"]["uploaded"]} - {"last.ckpt"}
        expected |= {"val"} if state["WandbDetectionTables"]["val_logged"] else set()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            written = artifacts(read_records(find_run_file(trainer.default_root_dir), finished_within=0))
            logged = {a.name for a in written} | {e.path for a in written for e in a.manifest.contents}
            if expected <= logged:
                return
            time.sleep(0.2)
        raise TimeoutError(f"wandb-core did not write {sorted(expected - logged)} within {timeout} s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("data_root")
    parser.add_argument("--kill-at", type=int)
    parser.add_argument("--sigterm-at", type=int)
    parser.add_argument("--resume")
    parser.add_argument("--wandb", action="store_true")
    parser.add_argument("--online", action="store_true",
                        help="ResilientWandbLogger; WANDB_MODE etc. from the environment")
    args = parser.parse_args()

    cfg = replace_data_root(load_config(REPO / "configs" / "mmdet" / "shapes_faster_rcnn.py"), args.data_root)
    cfg.train_dataloader.batch_size = 2
    cfg.val_dataloader.batch_size = 2
    cfg.param_scheduler = [
        dict(type="LinearLR", start_factor=0.1, by_epoch=False, begin=0, end=8),
        dict(type="MultiStepLR", by_epoch=True, begin=0, end=EPOCHS, milestones=[1], gamma=0.1),
    ]
    pl.seed_everything(0)
    injector = FaultInjector(args.kill_at, args.sigterm_at)
    ckpt_dir = args.out / "ckpt"
    callbacks: list[pl.Callback] = [
        injector,
        ModelCheckpoint(dirpath=str(ckpt_dir), filename="iter_{step}", auto_insert_metric_name=False,
                        every_n_train_steps=2, save_top_k=-1, save_last=True),
        OnExceptionCheckpoint(str(ckpt_dir)),
    ]
    logger: Any = False
    if args.wandb:
        from mmdet_lightning.callbacks import MMDetWandbCallback, wandb_run_id

        run_id = wandb_run_id(args.resume) if args.resume else None
        if args.online:
            import wandb

            from mmdet_lightning.wandb import ResilientWandbLogger

            logger = ResilientWandbLogger(save_dir=str(args.out), project="faults",
                                          settings=wandb.Settings(init_timeout=3))
        else:
            logger = pl.loggers.WandbLogger(offline=True, save_dir=str(args.out), project="faults", id=run_id,
                                 resume="allow" if run_id else None)
        injector.wandb = MMDetWandbCallback(interval=1, log_checkpoint=True, log_checkpoint_metadata=False,
                                            num_eval_images=2)
        callbacks.append(injector.wandb)
    trainer = pl.Trainer(max_epochs=EPOCHS, accelerator="cpu", logger=logger, callbacks=callbacks,
                         enable_progress_bar=False, num_sanity_val_steps=0, default_root_dir=str(args.out))
    module = MMDetModule(cfg)
    trainer.fit(module, datamodule=MMDetDataModule(cfg), ckpt_path=args.resume)

    from mmengine.logging import MessageHub

    hub = MessageHub.get_current_instance()
    torch.save({"state_dict": module.model.state_dict(), "lrs": injector.lrs, "batches": injector.batches,
                "losses": injector.losses,
                "final_lr": trainer.optimizers[0].param_groups[0]["lr"],
                "optimizer": trainer.optimizers[0].state_dict(),
                "hub_info": {k: hub.get_info(k) for k in ("epoch", "iter", "max_iters")},
                "hub_scalar_counts": {k: len(v.data[0]) for k, v in hub.log_scalars.items()},
                "inner_count": module.optim_wrapper._inner_count, "package": pl.__name__}, args.out / "final.pt")
    if args.wandb:
        import wandb

        wandb.finish()


if __name__ == "__main__":
    main()
