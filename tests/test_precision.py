"""bf16 mixed precision on the CPU: every config trains a few iterations with finite losses."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from mmdet_lightning import MMDetDataModule, MMDetModule
from mmdet_lightning.lightning_package import pl

from .test_configs import CONFIG_NAMES


class LossRecorder(pl.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.losses.append(float(outputs["loss"]))


@pytest.mark.slow
@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_bf16_mixed_on_cpu(name: str, shapes_config: Any, tmp_path: Any) -> None:
    cfg = shapes_config(name, max_epochs=1, batch_size=4)
    recorder = LossRecorder()
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=3, limit_val_batches=1, precision="bf16-mixed",
                         accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         num_sanity_val_steps=0, callbacks=[recorder], default_root_dir=str(tmp_path))
    pl.seed_everything(0)
    trainer.fit(MMDetModule(cfg), datamodule=MMDetDataModule(cfg))
    assert len(recorder.losses) == 3 and np.all(np.isfinite(recorder.losses)), recorder.losses
    assert 0.0 <= float(trainer.callback_metrics["coco/bbox_mAP"]) <= 1.0


def test_mmcv_ops_compute_in_fp32_under_autocast() -> None:
    """Ops whose kernels lack bf16 (on the CPU here; the focal loss on CUDA) compute on float32 inputs and
    return the inputs' dtype; the gradient comes back in the input's dtype."""
    import importlib

    import torch
    from mmcv.ops import DeformConv2d, RoIAlign

    from mmdet_lightning.precision import FP32_MMCV_OPS, FP32_OUTPUT_MMCV_OPS, keep_mmcv_ops_in_fp32

    keep_mmcv_ops_in_fp32()
    for name in FP32_MMCV_OPS + FP32_OUTPUT_MMCV_OPS:  # every listed op is wrapped
        module_name, class_name = name.rsplit(".", 1)
        function = getattr(importlib.import_module(f"mmcv.ops.{module_name}"), class_name)
        assert function.forward.__name__ == "forward_in_fp32", name
        assert function.backward.__name__ == "backward_in_fp32", name

    torch.manual_seed(0)
    features = torch.randn(1, 4, 16, 16)
    rois = torch.tensor([[0.0, 1.0, 2.0, 12.0, 9.0]])
    deform = DeformConv2d(4, 2, kernel_size=3, padding=1)
    offset = torch.randn(1, 18, 16, 16) * 0.5
    for op, inputs in ((RoIAlign((3, 3), 1.0, 2), (features, rois)), (deform, (features, offset))):
        expected = op(*inputs)
        low = [x.bfloat16().requires_grad_() for x in inputs]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            result = op(*low)
        assert result.dtype == torch.bfloat16
        torch.testing.assert_close(result, op(*[x.bfloat16().float() for x in inputs]).bfloat16())
        assert (result.float() - expected).abs().max() < 0.1  # only the rounding to bf16 differs
        (result.float() * torch.randn_like(expected)).sum().backward()
        assert low[0].grad is not None and low[0].grad.dtype == torch.bfloat16
        assert low[0].grad.abs().sum() > 0
