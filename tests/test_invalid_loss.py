"""A NaN loss stops training with a message naming the iteration and the loss terms, or skips the step."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from mmdet_lightning import MMDetDataModule, MMDetModule
from mmdet_lightning.lightning_package import pl

from .helpers.user_env import explain, run_as_user

NAN_AT = 1


def _module_with_nan_loss(cfg: Any, **kwargs: Any) -> MMDetModule:
    module = MMDetModule(cfg, **kwargs)
    parse_losses = module.model.parse_losses

    def parse_with_nan(losses: Any) -> Any:
        loss, log_vars = parse_losses(losses)
        if module._iteration() == NAN_AT:
            loss = loss * float("nan")
            log_vars["loss"] = loss
        return loss, log_vars

    module.model.parse_losses = parse_with_nan
    return module


class StepSnapshot(pl.Callback):
    """Parameters and optimizer state before and after the iteration with the NaN loss (BatchNorm statistics
    do change: the forward pass ran in training mode, as it would under mmengine's runner)."""

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if pl_module._iteration() == NAN_AT:
            self.before = ({k: p.detach().clone() for k, p in pl_module.model.named_parameters()},
                           copy.deepcopy(trainer.optimizers[0].state_dict()))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if pl_module._iteration() == NAN_AT:
            self.after = ({k: p.detach().clone() for k, p in pl_module.model.named_parameters()},
                          copy.deepcopy(trainer.optimizers[0].state_dict()))


def _trainer(tmp_path: Any, callbacks: list | None = None) -> pl.Trainer:
    return pl.Trainer(max_epochs=1, limit_train_batches=3, limit_val_batches=0, accelerator="cpu", logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, callbacks=callbacks or [],
                      default_root_dir=str(tmp_path))


def test_nan_loss_raises_naming_iteration_and_terms(shapes_config: Any, tmp_path: Any) -> None:
    cfg = shapes_config("shapes_retinanet.py", batch_size=2)
    with pytest.raises(FloatingPointError, match=r"iteration 1 \(epoch 0\): loss=nan, loss_cls=[0-9.e-]+, "
                                                 r"loss_bbox=[0-9.e-]+\.\nHint: .*invalid_loss='skip'"):
        _trainer(tmp_path).fit(_module_with_nan_loss(cfg), datamodule=MMDetDataModule(cfg))


def test_nan_loss_skips_the_step_without_touching_weights_or_optimizer(shapes_config: Any, tmp_path: Any) -> None:
    cfg = shapes_config("shapes_retinanet.py", batch_size=2)
    module = _module_with_nan_loss(cfg, invalid_loss="skip")
    snapshot = StepSnapshot()
    trainer = _trainer(tmp_path, [snapshot])
    with pytest.warns(UserWarning, match=r"Skipping the step at iteration 1 \(epoch 0\).*loss=nan"):
        trainer.fit(module, datamodule=MMDetDataModule(cfg))
    assert trainer.state.finished and module.skipped_steps == 1
    assert trainer.global_step == 2  # optimizer steps: iterations 0 and 2
    weights_before, optimizer_before = snapshot.before
    weights_after, optimizer_after = snapshot.after
    for key, value in weights_before.items():
        assert torch.equal(weights_after[key], value), key
    for key, state in optimizer_before["state"].items():
        assert torch.equal(optimizer_after["state"][key]["momentum_buffer"], state["momentum_buffer"])
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_invalid_loss_argument_is_checked(shapes_config: Any) -> None:
    with pytest.raises(ValueError, match="Expected argument `invalid_loss` to be one of"):
        MMDetModule(shapes_config("shapes_retinanet.py"), invalid_loss="ignore")  # type: ignore[arg-type]


def test_every_rank_skips_the_step_that_one_rank_found_invalid(tmp_path: Path) -> None:
    """Under DDP (2 gloo processes) a NaN loss on rank 1 and an infinite one on rank 0 skip those steps on both
    ranks; the flag's all-reduce runs beside the gradient all-reduces of the default group and neither waits."""
    helper = Path(__file__).parent / "helpers" / "invalid_loss_agreement.py"
    done = run_as_user(["python", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        str(helper), str(tmp_path)], cwd=tmp_path, timeout=300)
    assert done.returncode == 0, explain(done)
    ranks = [json.loads((tmp_path / f"invalid{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1] == {"skipped": [7, 12], "gradients": 20 * 2 * (1 + 2 + 3)}
