"""``mmdet-lightning export CONFIG_OR_YAML --ckpt_path CKPT --output model.onnx``."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main", "config_from_yaml"]


def config_from_yaml(path: str | Path) -> tuple[str, list[str] | None, str | None]:
    """The mmdet config, ``cfg_options`` and ``load_from`` a LightningCLI YAML gives its model
    (``model: {config: ...}`` or ``model: {class_path: ..., init_args: {config: ...}}``)."""
    import yaml

    data = yaml.safe_load(Path(path).read_text()) or {}
    model = data.get("model") or {}
    args = model.get("init_args", model) if isinstance(model, dict) else {}
    if not args.get("config"):
        raise ValueError(f"{path}: no `model.config` (the mmdet config) in this YAML.")
    config = str(args["config"])
    if not Path(config).is_file() and (Path(path).parent / config).is_file():
        config = str(Path(path).parent / config)
    options = args.get("cfg_options")
    return config, (list(options) if isinstance(options, (list, tuple)) else None), args.get("load_from")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmdet-lightning export",
        description="Export a trained detector, pre- and post-processing included, to one ONNX file that "
                    "mmdet_lightning.deploy.OnnxDetector runs with onnxruntime (no torch, mmcv or mmdet).")
    parser.add_argument("config", help="an mmdet config (.py) or a LightningCLI YAML whose model.config is one")
    parser.add_argument("--ckpt_path", "--ckpt-path", "--checkpoint", dest="ckpt_path", default=None,
                        help="the weights: an mmdet checkpoint (.pth) or a Lightning checkpoint (.ckpt); default: "
                             "the YAML's model.load_from or the config's load_from")
    parser.add_argument("--output", "-o", default="model.onnx", help="the .onnx file to write (default: model.onnx)")
    parser.add_argument("--input-size", "--input_size", nargs=2, type=int, metavar=("HEIGHT", "WIDTH"),
                        default=None, help="a fixed input size; default: any size (dynamic height and width)")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (>= 16; default 18)")
    parser.add_argument("--cfg-options", "--cfg_options", nargs="+", default=None, metavar="KEY=VALUE",
                        help="override config values, as mmdet's tools do")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="allow a checkpoint that needs full unpickling (only for files you trust)")
    parser.add_argument("--no-check", action="store_true", help="skip the onnxruntime run before writing")
    return parser


def main(argv: Sequence[str] | None = None) -> Path:
    """Run the ``export`` subcommand; returns the written file."""
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    from .core import export_onnx, load_for_export
    from .errors import ExportError

    config, options, load_from = args.config, args.cfg_options, None
    if config.endswith((".yaml", ".yml")):
        config, yaml_options, load_from = config_from_yaml(config)
        options = list(yaml_options or []) + list(options or [])
    checkpoint = args.ckpt_path or load_from
    start = time.perf_counter()
    try:
        module = load_for_export(config, checkpoint, cfg_options=options or None, trust=args.trust_checkpoint)
        if checkpoint is None and not module.cfg.get("load_from"):
            print("mmdet-lightning export: no checkpoint given (--ckpt_path): exporting the initial weights",
                  file=sys.stderr)
        path = export_onnx(module, args.output, input_size=args.input_size, opset_version=args.opset,
                           check=not args.no_check)
    except ExportError as error:
        raise SystemExit(f"mmdet-lightning export: {error}") from None
    size = Path(path).stat().st_size / 2**20
    shape = "x".join(map(str, args.input_size)) if args.input_size else "dynamic"
    print(f"mmdet-lightning export: wrote {path} ({size:.1f} MiB, input size {shape}) in "
          f"{time.perf_counter() - start:.1f} s; run it with mmdet_lightning.deploy.OnnxDetector or "
          f"`mmdet-lightning predict {path} IMAGES/ --output DIR`")
    return Path(path)
