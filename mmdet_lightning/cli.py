"""mmdet-lightning: the Lightning CLI for mmdet detectors, from YAML or straight from an mmdet config.

    mmdet-lightning fit --config configs/lightning/shapes_faster_rcnn.yaml --trainer.max_epochs 3
    mmdet-lightning fit configs/mmdet/shapes_faster_rcnn.py            # an mmdet config as tools/train.py runs it
    mmdet-lightning validate --config configs/lightning/shapes_faster_rcnn.yaml --ckpt_path last.ckpt
    mmdet-lightning predict --config ... --ckpt_path last.ckpt --data.predict_folder my_images/
    mmdet-lightning data --out data/shapes                            # write the synthetic dataset
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Sequence

import yaml
from pytorch_lightning.callbacks import Checkpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from pytorch_lightning.utilities import rank_zero_info

from .hooks import callbacks_from_config
from .callbacks.prediction_writer import DetectionWriter
from .checkpoint import load_checkpoint_file
from .config import load_config
from .datamodule import MMDetDataModule
from .module import MMDetModule
from .wandb._common import run_id_in_checkpoint
from .wandb.logger import wandb_credentials

__all__ = ["MMDetLightningCLI", "lightning_config_from_mmdet", "run", "main"]

SUBCOMMANDS = ("fit", "validate", "test", "predict")
_HOOK_ARGS = ("interval", "log_checkpoint", "log_checkpoint_metadata", "num_eval_images", "bbox_score_thr")


class _SaveAndLogConfig(SaveConfigCallback):
    """Saves the resolved configuration in the run folder (overwriting one from an earlier run) and puts it
    in ``wandb.config`` under ``lightning_config`` when a WandbLogger is used."""

    def save_config(self, trainer: Any, pl_module: Any, stage: str) -> None:
        from pytorch_lightning.loggers import WandbLogger

        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                resolved = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
                logger.experiment.config.update({"lightning_config": resolved}, allow_val_change=True)


class MMDetLightningCLI(LightningCLI):
    """``LightningCLI`` for :class:`MMDetModule` and :class:`MMDetDataModule`, which share the mmdet config.

    ``--model.config`` and ``--model.data_root`` also set the data module's; the optimizer and schedules come from the
    mmdet config, so ``--optimizer`` / ``--lr_scheduler`` are not offered; so do the config's ``custom_hooks``
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
        kwargs.setdefault("parser_kwargs", {"description": __doc__.strip().splitlines()[0]})
        super().__init__(MMDetModule, MMDetDataModule, args=args, run=run, **kwargs)

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
        present = {type(callback) for callback in trainer.callbacks}
        position = next((i for i, cb in enumerate(trainer.callbacks) if isinstance(cb, Checkpoint)),
                        len(trainer.callbacks))
        added = [cb for cb in callbacks_from_config(self.model.cfg) if type(cb) not in present]
        trainer.callbacks[position:position] = added
        if added:
            rank_zero_info("custom_hooks -> callbacks: " + ", ".join(type(cb).__name__ for cb in added))
        return trainer

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("model.config", "data.config")
        parser.link_arguments("model.data_root", "data.data_root")

    def before_predict(self) -> None:
        if not any(isinstance(cb, DetectionWriter) for cb in self.trainer.callbacks):
            output = Path(self.trainer.default_root_dir) / "predictions"
            self.trainer.callbacks.append(DetectionWriter(output))
            rank_zero_info(f"predict: writing results.bbox.json and drawn images to {output}")


def _wandb_settings(cfg: Any) -> dict[str, Any] | None:
    """The W&B settings of an mmdet config: a ``WandbVisBackend`` in ``visualizer.vis_backends`` (3.x) or an
    ``MMDetWandbHook`` in ``log_config.hooks`` (2.x style), as ``{"init_kwargs": ..., <hook args>}``."""
    for hook in (cfg.get("log_config") or {}).get("hooks", []) or []:
        if str(hook.get("type", "")).endswith("MMDetWandbHook"):
            return {k: v for k, v in hook.items() if k != "type"}
    for backend in (cfg.get("visualizer") or {}).get("vis_backends", []) or []:
        if str(backend.get("type", "")).endswith("WandbVisBackend"):
            return {"init_kwargs": dict(backend.get("init_kwargs") or {})}
    return None


def lightning_config_from_mmdet(config_path: str | os.PathLike, subcommand: str = "fit") -> dict[str, Any]:
    """The LightningCLI configuration that runs an mmdet config as MMDetection's ``tools/train.py`` would.

    Epochs or iterations from ``train_cfg``, validation interval, checkpoint interval and count from
    ``default_hooks.checkpoint``, logging interval from ``default_hooks.logger``, seed from ``randomness``,
    output folder from ``work_dir`` (default ``work_dirs/<config name>``, as ``tools/train.py``); a
    ``WandbVisBackend`` or an ``MMDetWandbHook`` entry becomes a ``WandbLogger`` plus ``MMDetWandbCallback``
    with the same settings (offline when no W&B credentials are found).

    Example::
        >>> derived = lightning_config_from_mmdet("configs/mmdet/shapes_retinanet.py")
        >>> derived["trainer"]["max_epochs"], derived["seed_everything"]
        (12, 0)
    """
    cfg = load_config(config_path)
    train_cfg = cfg.get("train_cfg") or {}
    hooks = cfg.get("default_hooks") or {}
    work_dir = cfg.get("work_dir") or str(Path("work_dirs") / Path(config_path).stem)
    by_epoch = "IterBased" not in str(train_cfg.get("type", "EpochBasedTrainLoop"))
    trainer: dict[str, Any] = {"default_root_dir": work_dir, "num_sanity_val_steps": 0}
    val_interval = int(train_cfg.get("val_interval", 1))
    if by_epoch:
        trainer["max_epochs"] = int(train_cfg.get("max_epochs", 12))
        trainer["check_val_every_n_epoch"] = val_interval
    else:
        trainer.update(max_steps=int(train_cfg["max_iters"]), max_epochs=-1, val_check_interval=val_interval,
                       check_val_every_n_epoch=None)
    trainer["log_every_n_steps"] = int((hooks.get("logger") or {}).get("interval", 50))

    callbacks: list[dict[str, Any]] = []
    checkpoint = hooks.get("checkpoint") or {}
    interval = int(checkpoint.get("interval", 1))
    if interval > 0:
        every = {"every_n_epochs": interval} if checkpoint.get("by_epoch", by_epoch) else {"every_n_train_steps": interval}
        callbacks.append({"class_path": "pytorch_lightning.callbacks.ModelCheckpoint", "init_args": {
            "dirpath": work_dir, "filename": "epoch_{epoch}" if "every_n_epochs" in every else "iter_{step}",
            "auto_insert_metric_name": False, "save_top_k": int(checkpoint.get("max_keep_ckpts", -1)),
            "save_last": True, **every}})
    wandb = _wandb_settings(cfg)
    if wandb is not None:
        init_kwargs = dict(wandb.get("init_kwargs") or {})
        logger_args = {"save_dir": init_kwargs.pop("dir", work_dir), "offline": not wandb_credentials()}
        if init_kwargs.pop("mode", None) == "offline":
            logger_args["offline"] = True
        logger_args.update(init_kwargs)
        trainer["logger"] = {"class_path": "mmdet_lightning.wandb.ResilientWandbLogger", "init_args": logger_args}
        hook_args = {k: wandb[k] for k in _HOOK_ARGS if k in wandb}
        callbacks.append({"class_path": "mmdet_lightning.callbacks.MMDetWandbCallback", "init_args": hook_args})
    if callbacks:
        trainer["callbacks"] = callbacks
    derived: dict[str, Any] = {"trainer": trainer, "model": {"config": str(config_path)}}
    seed = (cfg.get("randomness") or {}).get("seed")
    if seed is not None:
        derived["seed_everything"] = int(seed)
    if cfg.get("load_from"):
        derived["model"]["load_from"] = str(cfg.load_from)
    return derived


def _is_mmdet_config(arg: str) -> bool:
    return arg.endswith(".py") and not arg.startswith("-")


def run(argv: Sequence[str] | None = None) -> MMDetLightningCLI | None:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); the CLI object for fit/validate/test/predict."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "data":
        from .synthetic import main as data_main

        data_main(args[1:])
        return None
    if len(args) >= 2 and args[0] in SUBCOMMANDS and _is_mmdet_config(args[1]):
        subcommand, config_path, rest = args[0], args[1], args[2:]
        derived = lightning_config_from_mmdet(config_path, subcommand)
        folder = Path(derived["trainer"]["default_root_dir"])
        folder.mkdir(parents=True, exist_ok=True)
        derived_file = folder / f"derived_{subcommand}.yaml"
        derived_file.write_text(yaml.safe_dump(derived, sort_keys=False))
        print(f"mmdet-lightning: derived from {config_path} (saved as {derived_file}):\n"
              + yaml.safe_dump(derived, sort_keys=False), flush=True)
        args = [subcommand, "--config", str(derived_file), *rest]
    if not args or args[0] in ("-h", "--help"):
        print(__doc__.strip().split("\n\n")[0] + "\n\nSubcommands: fit, validate, test, predict (Lightning CLI; "
              "`mmdet-lightning fit --help` lists every option), data (the synthetic dataset; "
              "`mmdet-lightning data --help`).\n\nExamples:\n" + __doc__.strip().split("\n\n")[1])
        return None
    try:
        if argv is None:  # the console script: LightningCLI reads sys.argv itself (and warns when given both)
            sys.argv[1:] = args
            cli = MMDetLightningCLI()
        else:
            cli = MMDetLightningCLI(args=args)
    except BaseException:
        _finish_wandb(exit_code=1)
        raise
    _finish_wandb(exit_code=0)
    return cli


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


def _finish_wandb(exit_code: int) -> None:
    """One command, one W&B run: finish it, also when the command fails (offline: ready for `wandb sync`)."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish(exit_code=exit_code)


def main() -> None:
    """Entry point of the ``mmdet-lightning`` console script."""
    run()


if __name__ == "__main__":
    main()
