"""MMDetModule on its own: construction from each config form, bad arguments, what it exposes."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from mmdet_lightning import MMDetModule
from mmdet_lightning.tasks import DetectionTask


def test_built_from_a_config_object_path_or_dict(shapes_config: Any) -> None:
    cfg = shapes_config("shapes_retinanet.py")
    for config in (cfg, cfg.to_dict()):
        module = MMDetModule.from_config(config)
        assert isinstance(module.task, DetectionTask) and module.num_classes() == {"bbox_head": 3}
    assert module.hparams["config"]["model"]["type"] == "RetinaNet"  # the resolved config, for loggers
    assert module.skipped_steps == 0 and module.last_eval_metrics == {} and module.last_coco_eval == {}


def test_bad_arguments_fail_at_construction(shapes_config: Any) -> None:
    cfg = shapes_config("shapes_retinanet.py")
    with pytest.raises(ValueError, match="`invalid_loss` to be one of \\('raise', 'skip'\\), but got 'ignore'"):
        MMDetModule(cfg, invalid_loss="ignore")  # type: ignore[arg-type]
    bad = cfg.to_dict()
    bad["model"]["type"] = "NoSuchDetector"
    with pytest.raises(ValueError, match="Could not build the config's model `NoSuchDetector`"):
        MMDetModule(bad)
    with pytest.raises(ValueError, match="is a video instance segmentation model"):
        MMDetModule(dict(bad, model=dict(type="MaskTrackRCNN")))


def test_the_preprocessor_follows_the_module_device(shapes_config: Any) -> None:
    module = MMDetModule(shapes_config("shapes_retinanet.py"))
    module.to("meta")
    assert module.model.data_preprocessor._device == torch.device("meta")


def test_compute_losses_is_the_override_point(shapes_config: Any) -> None:
    """A subclass replaces the losses and keeps the rest of the training step."""

    class HalfLoss(MMDetModule):
        def compute_losses(self, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            loss, log_vars = super().compute_losses(batch)
            return loss / 2, dict(log_vars, loss=loss / 2)

    from mmdet_lightning import MMDetDataModule

    cfg = shapes_config("shapes_retinanet.py", batch_size=2)
    data = MMDetDataModule(cfg)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    torch.manual_seed(0)
    plain = MMDetModule(cfg)
    torch.manual_seed(0)
    halved = HalfLoss(cfg)
    full, _ = plain.compute_losses(batch)
    half, log_vars = halved.compute_losses(batch)
    assert torch.allclose(half, full / 2) and log_vars["loss"] == half


@pytest.mark.slow
def test_to_onnx_is_lightnings_method_for_the_whole_detector(shapes_config: Any, tmp_path: Any) -> None:
    pytest.importorskip("onnxruntime")
    module = MMDetModule(shapes_config("shapes_retinanet.py"))
    with pytest.raises(ValueError, match="traces at a size of its own: pass input_size"):
        module.to_onnx(tmp_path / "m.onnx", input_sample=torch.zeros(1, 3, 64, 64))
    path = module.to_onnx(tmp_path / "m.onnx", input_size=(64, 64))
    import onnxruntime

    outputs = [o.name for o in onnxruntime.InferenceSession(str(path)).get_outputs()]
    assert outputs[:3] == ["boxes", "scores", "labels"]
