"""mmdet-lightning: the Lightning CLI for mmdet detectors, from YAML or straight from an mmdet config.

    mmdet-lightning fit --config configs/lightning/shapes_faster_rcnn.yaml --trainer.max_epochs 3
    mmdet-lightning fit configs/mmdet/shapes_faster_rcnn.py            # an mmdet config as tools/train.py runs it
    mmdet-lightning fit configs/mmdet/shapes_faster_rcnn.py --cfg-options optim_wrapper.optimizer.lr=0.01
    mmdet-lightning validate --config configs/lightning/shapes_faster_rcnn.yaml --ckpt_path last.ckpt
    mmdet-lightning predict --config ... --ckpt_path last.ckpt --data.predict_folder my_images/
    mmdet-lightning predict --config ... --ckpt_path last.ckpt --data.predict_folder my_images/ --text "disc . ring ."
    mmdet-lightning data --out data/shapes                            # write the synthetic dataset
    mmdet-lightning export configs/mmdet/shapes_faster_rcnn.py --ckpt_path model.pth --output model.onnx
    mmdet-lightning predict model.onnx my_images/ --output predictions/ # onnxruntime only (no torch needed)
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import yaml

if TYPE_CHECKING:
    from .lightning_cli import MMDetLightningCLI

__all__ = ["MMDetLightningCLI", "lightning_config_from_mmdet", "run", "main"]

SUBCOMMANDS = ("fit", "validate", "test", "predict")
_HOOK_ARGS = ("interval", "log_checkpoint", "log_checkpoint_metadata", "num_eval_images", "bbox_score_thr")


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


def lightning_config_from_mmdet(config_path: str | os.PathLike, subcommand: str = "fit",
                                cfg_options: Sequence[str] | None = None) -> dict[str, Any]:
    """The LightningCLI configuration that runs an mmdet config as MMDetection's ``tools/train.py`` would.

    Epochs or iterations from ``train_cfg``, validation interval, checkpoint interval and count from
    ``default_hooks.checkpoint``, logging interval from ``default_hooks.logger``, seed from ``randomness``,
    output folder from ``work_dir`` (default ``work_dirs/<config name>``, as ``tools/train.py``); a
    ``WandbVisBackend`` or an ``MMDetWandbHook`` entry becomes a ``WandbLogger`` plus ``MMDetWandbCallback``
    with the same settings (offline when no W&B credentials are found). ``cfg_options`` (mmdet's
    ``--cfg-options`` items) apply before the derivation and are passed on to the module and data module.

    Example::
        >>> derived = lightning_config_from_mmdet("configs/mmdet/shapes_retinanet.py")
        >>> derived["trainer"]["max_epochs"], derived["seed_everything"]
        (12, 0)
        >>> lightning_config_from_mmdet("configs/mmdet/shapes_retinanet.py", cfg_options=["train_cfg.max_epochs=2"])["trainer"]["max_epochs"]
        2
    """
    from .config import load_config

    cfg = load_config(config_path, cfg_options)
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
        # ResilientWandbLogger logs offline without an account (and says how to sync), unless WANDB_MODE decides
        logger_args: dict[str, Any] = {"save_dir": init_kwargs.pop("dir", work_dir)}
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
    if cfg_options:
        derived["model"]["cfg_options"] = list(cfg_options)
    return derived


def _is_mmdet_config(arg: str) -> bool:
    return arg.endswith(".py") and not arg.startswith("-")


def _mmdet_config_as_positional(args: list[str]) -> list[str]:
    """``fit --config x.py ...`` (an mmdet config given to ``--config``, which jsonargparse would read as
    YAML) is ``fit x.py ...``."""
    if len(args) < 2 or args[0] not in SUBCOMMANDS:
        return args
    for index, arg in enumerate(args[1:], start=1):
        value = arg.split("=", 1)[1] if arg.startswith("--config=") else (
            args[index + 1] if arg == "--config" and index + 1 < len(args) else None)
        if value is not None and _is_mmdet_config(value):
            width = 1 if arg.startswith("--config=") else 2
            return [args[0], value, *args[1:index], *args[index + width:]]
        if value is not None:
            return args
    return args


def _take_cfg_options(args: list[str]) -> tuple[list[str], list[str]]:
    """``--cfg-options k=v k2=v2`` (mmdet's tools' syntax) taken out of ``args``: (the rest, the items)."""
    rest: list[str] = []
    items: list[str] = []
    taking = False
    for arg in args:
        if arg in ("--cfg-options", "--cfg_options"):
            taking = True
        elif arg.startswith(("--cfg-options=", "--cfg_options=")):
            items.append(arg.split("=", 1)[1])
            taking = True
        elif taking and not arg.startswith("-"):
            items.append(arg)
        else:
            taking = False
            rest.append(arg)
    return rest, items


def _print_help() -> None:
    print(__doc__.strip().split("\n\n")[0] + "\n\nSubcommands: fit, validate, test, predict (Lightning CLI; "
          "`mmdet-lightning fit --help` lists every option), data (the synthetic dataset; "
          "`mmdet-lightning data --help`), export (a trained detector to ONNX; `mmdet-lightning export --help`), "
          "predict MODEL.onnx FOLDER (the exported model on onnxruntime; `mmdet-lightning predict x.onnx --help`).\n\nOptions of every subcommand, besides Lightning's:\n"
          "  --cfg-options KEY=VALUE ...  override mmdet config values, as mmdet's tools/train.py (mmengine's "
          "DictAction syntax: lr=0.01, scale=(96,96), milestones=[6,9]); a key not in the config is an error\n"
          "\nExamples:\n" + __doc__.strip().split("\n\n")[1])


def run(argv: Sequence[str] | None = None) -> "MMDetLightningCLI | None":
    """Run the command line ``argv`` (default ``sys.argv[1:]``); the CLI object for fit/validate/test/predict.

    ``--help`` and ``data`` answer without importing Lightning or mmdet.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "data":
        from .synthetic import main as data_main

        data_main(args[1:])
        return None
    if args and args[0] == "export":
        from .export.cli import main as export_main

        export_main(args[1:])
        return None
    if len(args) >= 2 and args[0] == "predict" and args[1].endswith(".onnx"):
        from .deploy.predict import main as deploy_predict

        deploy_predict(args)
        return None
    if not args or args[0] in ("-h", "--help"):
        _print_help()
        return None
    args, cfg_options = _take_cfg_options(_mmdet_config_as_positional(args))
    # `predict --text "disc . ring ."`: the prompt of a grounding detector, MMDetDataModule's `text`
    args = ["--data.text" + arg[len("--text"):] if arg == "--text" or arg.startswith("--text=") else arg
            for arg in args]
    if len(args) >= 2 and args[0] in SUBCOMMANDS and _is_mmdet_config(args[1]):
        subcommand, config_path, rest = args[0], args[1], args[2:]
        derived = lightning_config_from_mmdet(config_path, subcommand, cfg_options)
        folder = Path(derived["trainer"]["default_root_dir"])
        folder.mkdir(parents=True, exist_ok=True)
        derived_file = folder / f"derived_{subcommand}.yaml"
        derived_file.write_text(yaml.safe_dump(derived, sort_keys=False))
        print(f"mmdet-lightning: derived from {config_path} (saved as {derived_file}):\n"
              + yaml.safe_dump(derived, sort_keys=False), flush=True)
        args = [subcommand, "--config", str(derived_file), *rest]
    elif cfg_options:  # after the YAML configs, before the other options (--print_config acts where it stands)
        configs = [i for i, arg in enumerate(args) if arg == "--config" or arg.startswith("--config=")]
        at = (configs[-1] + (1 if args[configs[-1]].startswith("--config=") else 2)) if configs else 1
        args.insert(at, "--model.cfg_options=" + json.dumps(cfg_options))
    from .lightning_cli import MMDetLightningCLI

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


def _finish_wandb(exit_code: int) -> None:
    """One command, one W&B run: finish it, also when the command fails (offline: ready for `wandb sync`)."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish(exit_code=exit_code)


def main() -> None:
    """Entry point of the ``mmdet-lightning`` console script."""
    run()


def __getattr__(name: str) -> Any:
    if name == "MMDetLightningCLI":  # imported on use: `mmdet-lightning --help` needs no Lightning
        from .lightning_cli import MMDetLightningCLI

        return MMDetLightningCLI
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    main()
