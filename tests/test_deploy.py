"""``mmdet_lightning.deploy`` without torch: the test pipeline, mask pasting and RLE against mmdet / mmcv /
pycocotools, and the import that must stay free of the training stack."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mmdet_lightning.deploy.masks import encode_rle, paste_masks
from mmdet_lightning.deploy.preprocess import apply_pipeline

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "mmcv", "mmdet", "mmengine", "lightning", "pytorch_lightning", "wandb")


def test_deploy_imports_none_of_the_training_stack() -> None:
    code = (
        "import sys\n"
        "import mmdet_lightning.deploy as deploy\n"
        "from mmdet_lightning.deploy import OnnxDetector, Detections, predict_folder\n"
        "import mmdet_lightning.deploy.__main__\n"
        f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


@pytest.mark.parametrize("size", [(128, 128), (100, 200), (301, 77), (40, 40), (500, 333)])
@pytest.mark.parametrize("steps", [
    [dict(type="Resize", scale=(128, 128), keep_ratio=True)],
    [dict(type="Resize", scale=(96, 160), keep_ratio=False)],
    [dict(type="Resize", scale=(320, 320), keep_ratio=True), dict(type="Pad", size=(320, 320), pad_val=dict(img=114))],
    [dict(type="Resize", scale=(1333, 800), keep_ratio=True), dict(type="Pad", size_divisor=32)],
])
def test_pipeline_is_mmdets(size: tuple[int, int], steps: list[dict]) -> None:
    """Pixels, ``img_shape`` and ``scale_factor`` as mmdet's transforms give them."""
    from mmcv.transforms import Compose

    from mmdet_lightning.config import init_mmdet_scope
    from mmdet_lightning.export.core import deploy_pipeline

    init_mmdet_scope()
    image = np.random.default_rng(sum(size)).integers(0, 256, (size[0], size[1], 3), dtype=np.uint8)
    expected = Compose(steps)({"img": image.copy(), "img_shape": image.shape[:2], "ori_shape": image.shape[:2]})
    ours, meta = apply_pipeline(image, deploy_pipeline({"test_pipeline": steps}))
    assert np.array_equal(ours, expected["img"])
    assert meta["img_shape"] == tuple(expected["img_shape"])
    assert meta["scale_factor"] == pytest.approx(tuple(expected.get("scale_factor", (1.0, 1.0))), abs=1e-12)


def test_paste_masks_is_mmdets() -> None:
    from mmdet.models.roi_heads.mask_heads.fcn_mask_head import _do_paste_mask

    generator = torch.Generator().manual_seed(0)
    probs = torch.rand(20, 1, 28, 28, generator=generator)
    x1y1 = torch.rand(20, 2, generator=generator) * 60  # inside the image, as the heads clip them
    boxes = torch.cat([x1y1, x1y1 + 0.5 + torch.rand(20, 2, generator=generator) * 60], 1)
    ours = paste_masks(probs[:, 0].numpy(), boxes.numpy(), 100, 120)
    for index in range(20):  # mmdet on CPU: one box at a time, the region around it
        pasted, region = _do_paste_mask(probs[index:index + 1], boxes[index:index + 1], 100, 120, skip_empty=True)
        theirs = np.zeros((100, 120), bool)
        theirs[region] = (pasted[0] >= 0.5).numpy()
        assert np.array_equal(ours[index], theirs), index


def test_encode_rle_is_pycocotools() -> None:
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(0)
    for shape in [(1, 1), (7, 5), (64, 48), (128, 128)]:
        for fill in (0.0, 0.02, 0.5, 1.0):
            mask = rng.random(shape) < fill
            theirs = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            ours = encode_rle(mask)
            assert ours["counts"] == theirs["counts"].decode() and ours["size"] == list(theirs["size"])
