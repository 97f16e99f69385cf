"""The LightningCLI over MMDetModule and MMDetDataModule (imported only when a subcommand runs)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import yaml
from jsonargparse import get_loader, set_loader

from .callbacks.custom_hooks import callbacks_from_config
from .callbacks.prediction_writer import DetectionWriter
from .checkpoint import load_checkpoint_file
from .datamodule import MMDetDataModule
from .engine.preemption import newest_hpc_checkpoint
from .lightning_package import check_one_package, fabric, import_submodule, pl, translate_class_path
from .module import MMDetModule
from .wandb._common import run_id_in_checkpoint

Checkpoint = pl.callbacks.Checkpoint
if TYPE_CHECKING:  # type checkers see one package's classes; both have the same API
    from pytorch_lightning.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
else:
    _cli = import_submodule("cli")
    LightningArgumentParser, LightningCLI, SaveConfigCallback = (_cli.LightningArgumentParser, _cli.LightningCLI,
                                                                  _cli.SaveConfigCallback)
rank_zero_info = pl.utilities.rank_zero_info

__all__ = ["MMDetLightningCLI"]

_DESCRIPTION = "mmdet-lightning: the Lightning CLI for mmdet detectors, from YAML or straight from an mmdet config."
#: jsonargparse's YAML mode, with the class paths of either Lightning package read as the chosen one's
PARSER_MODE = "yaml_either_lightning"


def _translated(value: Any) -> Any:
    if isinstance(value, str):
        return translate_class_path(value)
    if isinstance(value, dict):
        return {key: _translated(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_translated(item) for item in value]
    return value


def _load_yaml_either_lightning(text: str) -> Any:
    """jsonargparse's YAML loader (config files and command-line values), ``pytorch_lightning.X`` /
    ``lightning.pytorch.X`` class paths translated to the package mmdet_lightning uses."""
    return _translated(_load_yaml(text))


_load_yaml = get_loader("yaml")
set_loader(PARSER_MODE, _load_yaml_either_lightning, exceptions=(yaml.YAMLError,))


class _SaveAndLogConfig(SaveConfigCallback):
    """Saves the resolved configuration in the run folder (overwriting one from an earlier run) and puts it
    in ``wandb.config`` under ``lightning_config`` when a WandbLogger is used."""

    def save_config(self, trainer: Any, pl_module: Any, stage: str) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, pl.loggers.WandbLogger):
                resolved = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
                logger.experiment.config.update({"lightning_config": resolved}, allow_val_change=True)


class MMDetLightningCLI(LightningCLI):
    """``LightningCLI`` for :class:`MMDetModule` and :class:`MMDetDataModule`, which share the mmdet config.

    ``--model.config``, ``--model.data_root`` and ``--model.cfg_options`` also set the data module's; the
    optimizer and schedules come from the mmdet config, so ``--optimizer`` / ``--lr_scheduler`` are not offered;
    so do the config's ``custom_hooks``
    (EMA, pipeline switches, ...: :func:`~mmdet_lightning.callbacks.callbacks_from_config`). ``predict`` writes
    COCO results and drawn images with a :class:`DetectionWriter` (``<default_root_dir>/predictions`` unless one is
    configured).

    Example::
        >>> MMDetLightningCLI(args=["fit", "--config", "configs/lightning/shapes_retinanet.yaml"])  # doctest: +SKIP
    """

    def __init__(self, args: Sequence[str] | None = None, run: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault("save_config_callback", _SaveAndLogConfig)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("auto_configure_optimizers", False)
        kwargs.setdefault("parser_kwargs", {"description": _DESCRIPTION})
        kwargs["parser_kwargs"].setdefault("parser_mode", PARSER_MODE)
        check_one_package("MMDetLightningCLI")
        super().__init__(MMDetModule, MMDetDataModule, args=cast(Any, args), run=run, **kwargs)

    def _parse_ckpt_path(self) -> None:
        # LightningCLI would replace --model.* by the checkpoint's hyperparameters; ours are the resolved
        # mmdet config (a dict, for `load_from_checkpoint` and wandb.config). Here the config comes from the
        # command line and only the weights from --ckpt_path, which must exist: say so before anything runs.
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path and ckpt_path not in ("last", "best", "hpc", "registry") and "://" not in str(ckpt_path) \
                and not Path(ckpt_path).is_file():
            raise FileNotFoundError(
                f"--ckpt_path {ckpt_path!r} does not exist (working directory: {os.getcwd()}).\n"
                "Hint: pass a checkpoint written by ModelCheckpoint, e.g. work_dirs/<run>/checkpoints/last.ckpt."
            )
        if subcommand == "fit" and (ckpt_path == "hpc" or ckpt_path is None
                                    and fabric.plugins.environments.SLURMEnvironment.detect()):
            # a preempted job, requeued: the newest hpc checkpoint (Lightning resumes it; the W&B run is read here)
            root = (self.config[subcommand].get("trainer") or {}).get("default_root_dir") or os.getcwd()
            ckpt_path = newest_hpc_checkpoint(root) or ckpt_path
        if ckpt_path and Path(str(ckpt_path)).is_file():
            # read it now, safely (weights_only=True): a file that would run code, or a damaged one, stops here
            trust = bool((self.config[subcommand].get("model") or {}).get("trust_checkpoint", False))
            checkpoint = load_checkpoint_file(ckpt_path, trust=trust)
            if subcommand == "fit":
                _continue_wandb_run(self.config[subcommand].get("trainer"), run_id_in_checkpoint(checkpoint))

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        """The Trainer, with the mmdet config's ``custom_hooks`` as callbacks (``callbacks_from_config``),
        placed before the checkpoint callbacks; a callback type the Trainer already has is not added twice."""
        trainer = super().instantiate_trainer(**kwargs)
        callbacks: list[pl.Callback] = trainer.callbacks  # type: ignore[attr-defined]  # set by its callback connector
        present = {type(callback) for callback in callbacks}
        position = next((i for i, cb in enumerate(callbacks) if isinstance(cb, Checkpoint)), len(callbacks))
        added = [cb for cb in callbacks_from_config(self.model.cfg) if type(cb) not in present]
        callbacks[position:position] = added
        if added:
            rank_zero_info("custom_hooks -> callbacks: " + ", ".join(type(cb).__name__ for cb in added))
        return trainer

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("model.config", "data.config")
        parser.link_arguments("model.data_root", "data.data_root")
        parser.link_arguments("model.cfg_options", "data.cfg_options")

    def before_predict(self) -> None:
        callbacks: list[pl.Callback] = self.trainer.callbacks  # type: ignore[attr-defined]  # set by its connector
        if not any(isinstance(cb, DetectionWriter) for cb in callbacks):
            output = Path(self.trainer.default_root_dir) / "predictions"
            callbacks.append(DetectionWriter(output))
            rank_zero_info(f"predict: writing results.bbox.json and drawn images to {output}")


def _continue_wandb_run(trainer_config: Any, run_id: str | None) -> None:
    """``fit --ckpt_path``: the WandbLogger (created before the checkpoint is read) logs to the W&B run that the
    W&B callbacks stored in the checkpoint (``id``; Lightning's WandbLogger resumes with ``resume="allow"``)."""
    loggers = (trainer_config or {}).get("logger")
    loggers = loggers if isinstance(loggers, list) else [loggers]
    wandb_loggers = [logger for logger in loggers if "Wandb" in str(getattr(logger, "class_path", ""))]
    for logger in wandb_loggers:
        if run_id and logger.init_args.get("id") is None and logger.init_args.get("version") is None:
            logger.init_args["id"] = run_id
            rank_zero_info(f"fit --ckpt_path: continuing W&B run {run_id} of the checkpoint")


