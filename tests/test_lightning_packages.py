"""Both Lightning packages: user code that says ``import lightning as L`` or ``import pytorch_lightning as pl``.

Each flow runs in a fresh process as a user's script does (no ``MMDET_LIGHTNING_PACKAGE``, no W&B variable): the
package the script imports first is the one mmdet_lightning builds on. A mix gets mmdet_lightning's error, which
names the fix, at construction.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from mmdet_lightning.lightning_package import ENV
from mmdet_lightning.wandb.records import artifacts, find_run_file, history, read_records

from .conftest import CONFIGS
from .helpers.user_env import explain, run_as_user

# the README's example (`import lightning as L`, or `import pytorch_lightning as L`), made small: fit, validate and
# predict, W&B offline
SCRIPT = """
import {top} as L
from {package}.callbacks import ModelCheckpoint
from {package}.loggers import WandbLogger
from mmdet_lightning import MMDetDataModule, MMDetModule
from mmdet_lightning.callbacks import MMDetWandbCallback
from mmdet_lightning.config import load_config, replace_data_root

cfg = replace_data_root(load_config({config!r}), {data_root!r})
cfg.train_cfg.max_epochs = 1
L.seed_everything(0)
trainer = L.Trainer(max_epochs=1, limit_train_batches=2,
                    logger=WandbLogger(project="mmdetection", offline=True, save_dir="run"),
                    callbacks=[ModelCheckpoint(dirpath="run/ckpt", save_last=True),
                               MMDetWandbCallback(interval=1, log_checkpoint=True, num_eval_images=2)],
                    num_sanity_val_steps=0, default_root_dir="run", enable_progress_bar=False)
module, data = MMDetModule.from_config(cfg), MMDetDataModule.from_config(cfg)
trainer.fit(module, datamodule=data)
print("package", type(trainer).__module__.split(".")[0], type(module).__mro__[1].__module__)
trainer.validate(module, datamodule=data)
predictions = [s for batch in trainer.predict(module, dataloaders=data.val_dataloader()) for s in batch]
print("predicted", len(predictions))
"""


@pytest.mark.slow
@pytest.mark.parametrize("package", ["lightning.pytorch", "pytorch_lightning"])
def test_user_code_of_either_package(shapes_root: Path, tmp_path: Path, package: str) -> None:
    script = tmp_path / "train.py"
    script.write_text(SCRIPT.format(top=package.split(".")[0], package=package,
                                    config=str(CONFIGS / "shapes_retinanet.py"), data_root=str(shapes_root)))
    done = run_as_user(["python", str(script)], cwd=tmp_path, **{ENV: ""})
    assert done.returncode == 0, explain(done)
    assert f"package {package.split('.')[0]} {package}.core.module" in done.stdout, done.stdout[-2000:]
    assert "predicted 8" in done.stdout  # the session dataset's validation images
    records = read_records(find_run_file(tmp_path / "run"))
    logged = {a.type for a in artifacts(records)}
    assert {"model", "evaluation", "dataset"} <= logged, logged
    assert any("train/loss" in row for row in history(records))
    assert any("coco/bbox_mAP" in row for row in history(records))


def test_mixed_packages_get_a_clear_error(tmp_path: Path) -> None:
    """mmdet_lightning used (so bound to pytorch_lightning, the default) before the script imports lightning."""
    script = tmp_path / "mixed.py"
    script.write_text(textwrap.dedent(f"""
        from mmdet_lightning import MMDetModule
        import lightning as L
        MMDetModule({str(CONFIGS / "shapes_retinanet.py")!r})
    """))
    done = run_as_user(["python", str(script)], cwd=tmp_path, **{ENV: ""})
    assert done.returncode != 0
    assert "LightningPackageError: MMDetModule is a pytorch_lightning class" in done.stderr, explain(done)
    assert "import lightning before mmdet_lightning, or set MMDET_LIGHTNING_PACKAGE=lightning" in done.stderr


@pytest.mark.parametrize("value, message", [("lightnin", "is not a Lightning package"),
                                            (None, "Both pytorch_lightning and lightning.pytorch are imported")])
def test_unclear_choice(tmp_path: Path, value: str | None, message: str) -> None:
    script = tmp_path / "both.py"
    script.write_text("import lightning, pytorch_lightning\nimport mmdet_lightning.module\n")
    done = run_as_user(["python", str(script)], cwd=tmp_path, **{ENV: value or ""})
    assert done.returncode != 0 and message in done.stderr, explain(done)


def test_the_variable_settles_a_mix(tmp_path: Path) -> None:
    script = tmp_path / "both.py"
    script.write_text("import lightning, pytorch_lightning\nfrom mmdet_lightning.callbacks import MMDetWandbCallback\n"
                      "print(MMDetWandbCallback.__mro__[1].__module__)\n")
    done = run_as_user(["python", str(script)], cwd=tmp_path, **{ENV: "lightning"})
    assert done.returncode == 0 and done.stdout.startswith("lightning.pytorch."), explain(done)


@pytest.mark.both_packages
def test_yaml_class_paths_of_the_other_package(shapes_root: Path, tmp_path: Path) -> None:
    """A YAML naming ``lightning.pytorch.*`` / ``pytorch_lightning.*`` classes runs on the package in use."""
    from mmdet_lightning.cli import run
    from mmdet_lightning.lightning_package import pl

    config = tmp_path / "other.yaml"
    config.write_text(textwrap.dedent(f"""
        model:
          config: {CONFIGS / "shapes_retinanet.py"}
          data_root: {shapes_root}
        trainer:
          default_root_dir: {tmp_path}
          logger:
            class_path: lightning.pytorch.loggers.CSVLogger
            init_args: {{save_dir: {tmp_path}}}
          callbacks:
            - class_path: pytorch_lightning.callbacks.ModelCheckpoint
            - class_path: lightning.pytorch.callbacks.LearningRateMonitor
    """))
    cli = run(["fit", "--config", str(config), "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1",
               "--trainer.limit_val_batches", "1"])
    assert isinstance(cli.trainer.logger, pl.loggers.CSVLogger)
    assert {pl.callbacks.ModelCheckpoint, pl.callbacks.LearningRateMonitor} <= {type(c) for c in cli.trainer.callbacks}
