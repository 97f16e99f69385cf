"""mmdet_lightning._compat: every private attribute of a dependency that mmdet_lightning uses, read from the real
objects, so that an upgrade that removes or retypes one fails here, loudly, instead of degrading silently.

Each public function of a ``_compat`` module has a ``test_<name>`` here (checked by
``test_every_entry_has_a_test``)."""

from __future__ import annotations

import inspect
import json
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mmdet_lightning import _compat
from mmdet_lightning._compat import CompatError, installed_version, private_attr, private_method, set_private_attr
from mmdet_lightning._compat import lightning as lightning_compat
from mmdet_lightning._compat import mmdet as mmdet_compat
from mmdet_lightning._compat import mmengine as mmengine_compat
from mmdet_lightning._compat import numpy as numpy_compat
from mmdet_lightning._compat import torch as torch_compat
from mmdet_lightning._compat import wandb as wandb_compat
from mmdet_lightning.lightning_package import NAME, import_submodule, pl

MODULES = [lightning_compat, mmdet_compat, mmengine_compat, numpy_compat, torch_compat, wandb_compat]


def _trainer(tmp_path: Path, **kwargs) -> pl.Trainer:
    defaults = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                    accelerator="cpu", devices=1, max_epochs=1, default_root_dir=tmp_path)
    return pl.Trainer(**{**defaults, **kwargs})


def test_every_entry_has_a_test():
    source = Path(__file__).read_text()
    missing = [f"{module.__name__}.{name}" for module in MODULES for name in module.__all__
               if f"def test_{name}(" not in source]
    assert not missing, f"entries of mmdet_lightning._compat without a test here: {missing}"


# ---------------------------------------------------------------- the core
class _Thing:
    _size = 3

    def _grow(self) -> int:
        return 4


def test_private_attr_names_package_version_and_attribute():
    assert private_attr(_Thing(), "_size", package="torch", expected=int) == 3
    version = re.escape(installed_version("torch"))
    with pytest.raises(CompatError, match=rf"`_Thing._gone` of torch {version}, but it is missing"):
        private_attr(_Thing(), "_gone", package="torch")
    with pytest.raises(CompatError, match=r"`_Thing._size` of numpy .*it is a int, not a str or dict"):
        private_attr(_Thing(), "_size", package="numpy", expected=(str, dict))


def test_private_method_and_setter_check_first():
    assert private_method(_Thing(), "_grow", package="torch")() == 4
    with pytest.raises(CompatError, match="not a method"):
        private_method(_Thing(), "_size", package="torch")
    thing = _Thing()
    set_private_attr(thing, "_size", 5, package="torch", expected=int)
    assert thing._size == 5
    with pytest.raises(CompatError, match="missing"):
        set_private_attr(thing, "_renamed", 5, package="torch")
    assert not hasattr(thing, "_renamed")


def test_installed_version_of_the_lightning_packages():
    assert installed_version(NAME) == pl.__version__
    assert installed_version("no-such-package-here") == "not installed"
    assert issubclass(CompatError, RuntimeError) and _compat.CompatError is CompatError


# ---------------------------------------------------------------- Lightning: strategies and trainer
def test_ddp_kwargs():
    strategy = pl.strategies.DDPStrategy(find_unused_parameters=True)
    kwargs = lightning_compat.ddp_kwargs(strategy)
    assert kwargs == {"find_unused_parameters": True}
    kwargs.setdefault("broadcast_buffers", False)  # changed in place, as MMDetModule.setup does
    assert lightning_compat.ddp_kwargs(strategy)["broadcast_buffers"] is False


def test_layer_sync(tmp_path):
    assert lightning_compat.layer_sync(pl.strategies.SingleDeviceStrategy(device=torch.device("cpu"))) is None
    assert lightning_compat.layer_sync(pl.strategies.DDPStrategy()) is None
    trainer = _trainer(tmp_path, strategy=pl.strategies.DDPStrategy(), sync_batchnorm=True)
    assert isinstance(lightning_compat.layer_sync(trainer.strategy), pl.plugins.TorchSyncBatchNorm)


def test_logger_connector_should_update(tmp_path):
    assert lightning_compat.logger_connector_should_update(_trainer(tmp_path, log_every_n_steps=0)) is False
    assert lightning_compat.logger_connector_should_update(_trainer(tmp_path)) is True  # outside a loop
    # every `log_every_n_steps` steps during a fit: test_restart_train_data_fetcher


def test_fit_batches_completed(tmp_path):
    assert lightning_compat.fit_batches_completed(_trainer(tmp_path)) == 0


def test_sampler_replaced_by_lightning(tmp_path):
    assert lightning_compat.sampler_replaced_by_lightning(_trainer(tmp_path)) is False
    ddp = _trainer(tmp_path, strategy="ddp", devices=2)  # not launched: no process starts before fit
    assert lightning_compat.sampler_replaced_by_lightning(ddp) is True


def test_keep_config_samplers(tmp_path):
    trainer = _trainer(tmp_path, strategy="ddp", devices=2)
    lightning_compat.keep_config_samplers(trainer)
    assert lightning_compat.sampler_replaced_by_lightning(trainer) is False


class _Probe(pl.Callback):
    """Reads the trainer-state entries where the package reads them: during a (tiny) fit."""

    def __init__(self) -> None:
        self.seen: dict[str, object] = {}

    def on_train_epoch_start(self, trainer, pl_module):
        lightning_compat.restart_train_data_fetcher(trainer)
        self.seen["restarted"] = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.seen.setdefault("completed", []).append(lightning_compat.fit_batches_completed(trainer))
        self.seen.setdefault("should_update", []).append(lightning_compat.logger_connector_should_update(trainer))


def test_restart_train_data_fetcher(tmp_path):
    with pytest.raises(CompatError, match="_data_fetcher .* there is none"):  # no fit running: nothing to restart
        lightning_compat.restart_train_data_fetcher(_trainer(tmp_path))
    probe = _Probe()
    trainer = _trainer(tmp_path, max_steps=3, limit_val_batches=0, log_every_n_steps=2, callbacks=[probe])
    trainer.fit(import_submodule("demos.boring_classes").BoringModel())
    assert probe.seen["restarted"] is True
    assert probe.seen["completed"] == [0, 1, 2]  # counted after on_train_batch_end
    assert probe.seen["should_update"] == [False, True, False]


# ---------------------------------------------------------------- Lightning: callbacks
def test_checkpoint_every_n_train_steps(tmp_path):
    assert lightning_compat.checkpoint_every_n_train_steps(pl.callbacks.ModelCheckpoint(every_n_train_steps=5)) == 5
    assert lightning_compat.checkpoint_every_n_train_steps(pl.callbacks.ModelCheckpoint()) == 0


def test_checkpoint_every_n_epochs(tmp_path):
    assert lightning_compat.checkpoint_every_n_epochs(pl.callbacks.ModelCheckpoint(every_n_epochs=3)) == 3
    assert lightning_compat.checkpoint_every_n_epochs(pl.callbacks.ModelCheckpoint(every_n_train_steps=5)) == 0


def test_progress_bar_leave():
    assert lightning_compat.progress_bar_leave(pl.callbacks.TQDMProgressBar(leave=True)) is True
    assert lightning_compat.progress_bar_leave(pl.callbacks.TQDMProgressBar()) is False
    assert lightning_compat.progress_bar_leave(pl.callbacks.RichProgressBar(leave=True)) is True


def test_rich_console_kwargs():
    assert lightning_compat.rich_console_kwargs(pl.callbacks.RichProgressBar()) == {}
    bar = pl.callbacks.RichProgressBar(console_kwargs={"force_terminal": True})
    assert lightning_compat.rich_console_kwargs(bar) == {"force_terminal": True}


def test_tqdm_train_progress_bar():
    assert lightning_compat.tqdm_train_progress_bar(pl.callbacks.TQDMProgressBar()) is None


def test_tqdm_should_update():
    bar = pl.callbacks.TQDMProgressBar(refresh_rate=2)
    assert lightning_compat.tqdm_should_update(bar, 2, 10) is True
    assert lightning_compat.tqdm_should_update(bar, 1, 10) is False
    assert lightning_compat.tqdm_should_update(bar, 5, 5) is True  # the last batch
    # MMDetProgressBar overrides this method: Lightning's hooks must still ask it before they redraw
    assert "self._should_update(" in inspect.getsource(pl.callbacks.TQDMProgressBar.on_train_batch_end)


def test_rich_update():
    parameters = list(inspect.signature(pl.callbacks.RichProgressBar._update).parameters)
    assert parameters[:3] == ["self", "progress_bar_id", "current"]
    with pytest.raises(CompatError, match="RichProgressBar-like|`_Thing._update`"):
        lightning_compat.rich_update(_Thing(), 0, 1)


def test_rich_update_metrics():
    parameters = list(inspect.signature(pl.callbacks.RichProgressBar._update_metrics).parameters)
    assert parameters == ["self", "trainer", "pl_module"]
    assert callable(private_method(pl.callbacks.RichProgressBar(), "_update_metrics", NAME))


# ---------------------------------------------------------------- Lightning: WandbLogger (no run starts)
def test_wandb_logger_init_kwargs(tmp_path):
    logger = pl.loggers.WandbLogger(offline=True, save_dir=str(tmp_path), job_type="train")
    init = lightning_compat.wandb_logger_init_kwargs(logger)
    assert init["job_type"] == "train" and init["dir"] == str(tmp_path)
    init["job_type"] = "validate"  # changed in place, as set_default_job_type does
    assert lightning_compat.wandb_logger_init_kwargs(logger)["job_type"] == "validate"


def test_wandb_logger_run(tmp_path):
    assert lightning_compat.wandb_logger_run(pl.loggers.WandbLogger(offline=True, save_dir=str(tmp_path))) is None


def test_wandb_logger_go_offline(tmp_path):
    logger = pl.loggers.WandbLogger(save_dir=str(tmp_path), project="p")
    assert "mode" not in lightning_compat.wandb_logger_init_kwargs(logger) and logger._offline is False
    lightning_compat.wandb_logger_go_offline(logger)
    assert lightning_compat.wandb_logger_init_kwargs(logger)["mode"] == "offline"
    assert logger._offline is True  # what WandbLogger(offline=True) sets


# ---------------------------------------------------------------- Lightning: Fabric
def test_torch_checkpoint_io_class():
    from mmdet_lightning.lightning_package import fabric

    cls = lightning_compat.torch_checkpoint_io_class()
    assert issubclass(cls, fabric.plugins.CheckpointIO) and cls.__name__ == "TorchCheckpointIO"


def test_collect_rng_states():
    states = lightning_compat.collect_rng_states()
    assert {"torch", "numpy", "python"} <= set(states)


def test_set_rng_states():
    states = lightning_compat.collect_rng_states()
    first = (torch.rand(2), np.random.rand(2))
    lightning_compat.set_rng_states(states)
    again = (torch.rand(2), np.random.rand(2))
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1])


# ---------------------------------------------------------------- mmengine
def _optim_wrapper(**kwargs):
    from mmengine.optim import OptimWrapper

    layer = nn.Linear(2, 2)
    return layer, OptimWrapper(torch.optim.SGD(layer.parameters(), lr=0.1), **kwargs)


def test_optim_wrapper_inner_count():
    _, wrapper = _optim_wrapper()
    assert mmengine_compat.optim_wrapper_inner_count(wrapper) == 0


def test_set_optim_wrapper_inner_count():
    _, wrapper = _optim_wrapper(accumulative_counts=2)
    wrapper.initialize_count_status(nn.Linear(1, 1), 0, 4)
    mmengine_compat.set_optim_wrapper_inner_count(wrapper, 1)
    assert mmengine_compat.optim_wrapper_inner_count(wrapper) == 1
    assert not wrapper.should_update()  # mmengine decides accumulation from it
    mmengine_compat.set_optim_wrapper_inner_count(wrapper, 2)
    assert wrapper.should_update()


def test_optim_wrapper_clip_grad():
    layer, wrapper = _optim_wrapper(clip_grad=dict(max_norm=0.1))
    (layer(torch.ones(1, 2)) * 100).sum().backward()
    mmengine_compat.optim_wrapper_clip_grad(wrapper)
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in layer.parameters()]))
    assert norm <= 0.1 + 1e-6


def test_data_preprocessor_device():
    from mmengine.model import BaseDataPreprocessor

    assert mmengine_compat.data_preprocessor_device(BaseDataPreprocessor()) == torch.device("cpu")


def test_data_preprocessor_set_device():
    from mmengine.model import BaseDataPreprocessor

    preprocessor = BaseDataPreprocessor()
    mmengine_compat.data_preprocessor_set_device(preprocessor, torch.device("meta"))
    assert mmengine_compat.data_preprocessor_device(preprocessor) == torch.device("meta")
    assert preprocessor.cast_data(torch.zeros(1)).device == torch.device("meta")  # what the device is for


def test_param_scheduler_base():
    from mmengine.optim import LinearLR, MultiStepMomentum

    base = mmengine_compat.param_scheduler_base()
    assert issubclass(LinearLR, base) and issubclass(MultiStepMomentum, base)


def test_history_buffer_statistics_methods():
    assert {"min", "max", "mean", "current"} <= mmengine_compat.history_buffer_statistics_methods()


# ---------------------------------------------------------------- mmdet
def _coco_file(tmp_path: Path) -> str:
    path = tmp_path / "ann.json"
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg", "width": 4, "height": 4}],
                                "annotations": [], "categories": [{"id": 1, "name": "cat"}]}))
    return str(path)


def test_find_coco_metric(tmp_path):
    from mmdet.evaluation import CocoMetric, VOCMetric

    coco = CocoMetric(ann_file=None)
    assert mmdet_compat.find_coco_metric([VOCMetric(), coco]) is coco
    assert mmdet_compat.find_coco_metric([VOCMetric()]) is None


def test_coco_metric_api(tmp_path):
    from mmdet.evaluation import CocoMetric

    assert mmdet_compat.coco_metric_api(CocoMetric(ann_file=None)) is None
    api = mmdet_compat.coco_metric_api(CocoMetric(ann_file=_coco_file(tmp_path)))
    assert api is not None and api.get_img_ids() == [1]


# ---------------------------------------------------------------- torch and NumPy
def test_drop_dataloader_iterator():
    loader = torch.utils.data.DataLoader(list(range(4)), num_workers=0)
    assert private_attr(loader, "_iterator", "torch") is None
    torch_compat.drop_dataloader_iterator(loader)
    assert loader._iterator is None


def test_module_apply_is_what_to_runs():
    """Not an entry: MMDetModule overrides torch's private ``nn.Module._apply`` to follow its preprocessor's device;
    the override only works while ``.to()`` goes through it."""
    seen = []

    class Probe(nn.Linear):
        def _apply(self, fn, *args, **kwargs):
            seen.append(True)
            return super()._apply(fn, *args, **kwargs)

    Probe(1, 1).to(torch.float64)
    assert seen


def test_pickle_globals():
    found = dict((name, function) for function, name in numpy_compat.pickle_globals())
    assert any(name.endswith("multiarray._reconstruct") for name in found)
    assert any(name.endswith("multiarray.scalar") for name in found)
    # what a pickled array and scalar call: they must be among them
    calls = pickle.dumps(np.zeros(2)) + pickle.dumps(np.int64(3))
    assert b"_reconstruct" in calls and b"scalar" in calls


# ---------------------------------------------------------------- wandb
def test_image_masks(tmp_path):
    import wandb

    plain = wandb.Image(np.zeros((4, 4, 3), dtype=np.uint8))
    assert wandb_compat.image_masks(plain) == {}
    masked = wandb.Image(np.zeros((4, 4, 3), dtype=np.uint8),
                         masks={"ground_truth": {"mask_data": np.zeros((4, 4), dtype=np.uint8)}})
    assert list(wandb_compat.image_masks(masked)) == ["ground_truth"]


def test_media_local_path(tmp_path):
    import wandb

    image = wandb.Image(np.zeros((4, 4, 3), dtype=np.uint8))
    assert Path(wandb_compat.media_local_path(image)).is_file()


def test_artifact_client_id():
    import wandb

    client_id = wandb_compat.artifact_client_id(wandb.Artifact("val", type="dataset"))
    assert isinstance(client_id, str) and client_id


def test_artifact_register_local_path(tmp_path):
    import wandb

    source = wandb.Artifact("val", type="dataset")  # as WandbValidationTables references `val`'s images
    image = wandb.Image(np.zeros((4, 4, 3), dtype=np.uint8))
    local = wandb_compat.media_local_path(image)
    source.add_file(local, name="media/a.png")
    name = source.get_added_local_path_name(local)
    target = wandb.Artifact("pred", type="evaluation")
    url = f"wandb-client-artifact://{wandb_compat.artifact_client_id(source)}/{name}"
    entry = target.add_reference(url, name=name)[0]
    assert target.get_added_local_path_name(local) is None
    wandb_compat.artifact_register_local_path(target, local, entry)
    assert target.get_added_local_path_name(local) == name  # the public reader sees the registration


def test_artifact_add_file_with_digest(tmp_path):
    import wandb
    from wandb.sdk.lib.hashutil import md5_file_b64

    path = tmp_path / "epoch=0.ckpt"
    path.write_bytes(b"checkpoint bytes")
    artifact = wandb.Artifact("run_x_model", type="model")
    # the digest given is the one recorded: W&B did not read the file to hash it
    entry = wandb_compat.artifact_add_file_with_digest(artifact, str(path), "epoch=0.ckpt", "given-digest==")
    assert (entry.path, entry.digest, entry.size, entry.skip_cache) == ("epoch=0.ckpt", "given-digest==", 16, True)
    assert entry.local_path == str(path)  # immutable: no staging copy
    # without a digest, W&B hashes the file (public add_file), still without a cache copy
    other = wandb.Artifact("run_x_model", type="model")
    entry = wandb_compat.artifact_add_file_with_digest(other, str(path), "epoch=0.ckpt", None)
    assert entry.digest == md5_file_b64(str(path)) and entry.skip_cache is True


def test_boxes_without_checks(tmp_path):
    import wandb
    from wandb.sdk.data_types.helper_types.bounding_boxes_2d import BoundingBoxes2D

    box_data = [{"position": {"minX": 1.0, "minY": 2.0, "maxX": 5.0, "maxY": 6.0}, "class_id": 1,
                 "box_caption": "circle 0.90", "domain": "pixel", "scores": {"score": 0.9}}]
    labels = {1: "circle", 2: "square"}
    fast = wandb_compat.boxes_without_checks(box_data, "predictions", labels)
    slow = BoundingBoxes2D({"box_data": box_data, "class_labels": labels}, "predictions")
    assert isinstance(fast, BoundingBoxes2D) and fast._path is None  # no .boxes2D.json file written
    assert (fast._val, fast._key, fast._class_labels) == (slow._val, slow._key, slow._class_labels)
    # the same image JSON in a table's artifact as the constructor's boxes
    pixels = np.zeros((8, 8, 3), dtype=np.uint8)
    classes = wandb.Classes([{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}])
    jsons = []
    for boxes in (fast, {"box_data": box_data, "class_labels": labels}):
        image = wandb.Image(pixels, boxes={"predictions": boxes}, classes=classes)
        jsons.append(image.to_json(wandb.Artifact("t", type="evaluation")))
    assert jsons[0] == jsons[1] and jsons[0]["boxes"]["predictions"] == box_data


def test_image_from_image(tmp_path):
    import wandb
    from PIL import Image as PILImage

    path = tmp_path / "a.png"
    PILImage.fromarray(np.arange(6 * 10 * 3, dtype=np.uint8).reshape(6, 10, 3)).save(path)
    base = wandb.Image(str(path))
    assert base._image is None and (base._width, base._height) == (10, 6)  # freed after reading its size
    boxes = {"predictions": {"box_data": [{"position": {"minX": 1, "minY": 1, "maxX": 3, "maxY": 3}, "class_id": 1}],
                             "class_labels": {1: "circle"}}}
    classes = wandb.Classes([{"id": 1, "name": "circle"}])
    path.write_bytes(b"no longer an image")  # wandb.Image(base, ...) would decode the file again and fail
    fast = wandb_compat.image_from_image(base, boxes=boxes, classes=classes)
    assert base._image is None and fast._image is None and (fast._width, fast._height) == (10, 6)
    assert fast._path == base._path and set(fast._boxes) == {"predictions"}
    # what the constructor makes of a readable file: the same JSON
    PILImage.fromarray(np.arange(6 * 10 * 3, dtype=np.uint8).reshape(6, 10, 3)).save(path)
    slow = wandb.Image(wandb.Image(str(path)), boxes=boxes, classes=classes)
    artifact = wandb.Artifact("t", type="evaluation")
    assert fast.to_json(artifact) == slow.to_json(wandb.Artifact("t", type="evaluation"))


def test_run_is_finished(tmp_path, monkeypatch):
    import wandb

    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = wandb.init(mode="offline", dir=str(tmp_path), project="compat")
    try:
        assert wandb_compat.run_is_finished(run) is False
    finally:
        run.finish()
    assert wandb_compat.run_is_finished(run) is True
    disabled = wandb.init(mode="disabled")  # wandb's NoopRun: no `_is_finished`, nothing to write to
    assert wandb_compat.run_is_finished(disabled) is True
    disabled.finish()


# ---------------------------------------------------------------- SIGTERM protocol
def test_replace_signal_handlers():
    trainer = pl.Trainer(accelerator="cpu", logger=False)
    calls = []
    lightning_compat.replace_signal_handlers(trainer, lambda *a: calls.append("term"), lambda *a: calls.append("usr"))
    trainer._signal_connector.register_signal_handlers()  # binds the attributes, as Lightning does after setup
    try:
        import signal

        signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)
        assert calls == ["term"] and not trainer.received_sigterm
    finally:
        trainer._signal_connector.teardown()


def test_replace_step_sigterm_broadcast():
    trainer = pl.Trainer(accelerator="cpu", logger=False)
    lightning_compat.replace_step_sigterm_broadcast(trainer, lambda: "ours")
    assert trainer.fit_loop.epoch_loop._broadcast_sigterm_tensor() == "ours"


def test_set_received_sigterm():
    trainer = pl.Trainer(accelerator="cpu", logger=False)
    lightning_compat.set_received_sigterm(trainer)
    assert trainer.received_sigterm


def test_hpc_save_path(tmp_path):
    trainer = pl.Trainer(accelerator="cpu", logger=False)
    (tmp_path / "hpc_ckpt_3.ckpt").write_bytes(b"")
    assert lightning_compat.hpc_save_path(trainer, str(tmp_path)) == str(tmp_path / "hpc_ckpt_4.ckpt")
