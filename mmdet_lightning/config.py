"""Loading and checking mmdet configs.

Every entry point of the package (module, data module, scripts) takes a config as a file path, a dict
or an mmengine ``Config`` and goes through :func:`load_config`, so bad input fails here, early, with
one message style.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from .optional_packages import check_optional_packages
from .tasks.base import is_proposal_head

if TYPE_CHECKING:
    from mmengine.config import Config

__all__ = ["ConfigLike", "CfgOptions", "load_config", "apply_cfg_options", "parse_cfg_options", "init_mmdet_scope",
           "check_supported_task", "replace_data_root", "set_classes", "apply_env_cfg"]

# Union, not `|`: a runtime alias, and `|` cannot join the "Config" forward reference
ConfigLike = Union[str, os.PathLike, Mapping[str, Any], "Config"]  # noqa: UP007
#: ``--cfg-options`` as mmdet's tools take them: ``["optim_wrapper.optimizer.lr=0.01", ...]``, or already a dict
CfgOptions = Mapping[str, Any] | Sequence[str]
# top-level keys that mmengine's Runner reads with a default, so they may be set without being in the config
_RUNNER_KEYS = ("load_from", "resume", "work_dir", "launcher", "randomness", "env_cfg", "auto_scale_lr",
                "find_unused_parameters", "default_scope", "log_level", "experiment_name")

def init_mmdet_scope() -> None:
    """Register every mmdet module and make ``mmdet`` the default registry scope (idempotent)."""
    from mmdet.utils import register_all_modules

    register_all_modules(init_default_scope=True)
    from . import evaluation  # noqa: F401  registers FastCocoMetric in mmdet's METRICS


def apply_env_cfg(cfg: Mapping[str, Any]) -> None:
    """What mmengine's ``Runner.setup_env`` sets from the config's ``env_cfg`` for speed: cuDNN's autotuner
    (``cudnn_benchmark``, which some mmdet configs turn on) and OpenCV's threads (``mp_cfg.opencv_num_threads``,
    0 by default, so that the data pipeline does not compete with torch for the cores).

    Example::
        >>> apply_env_cfg({"env_cfg": {"cudnn_benchmark": False, "mp_cfg": {"opencv_num_threads": 0}}})
    """
    import torch

    env_cfg = cfg.get("env_cfg") or {}
    if env_cfg.get("cudnn_benchmark"):
        torch.backends.cudnn.benchmark = True
    try:
        import cv2
    except ImportError:
        return
    cv2.setNumThreads(int((env_cfg.get("mp_cfg") or {}).get("opencv_num_threads", 0)))


def load_config(config: ConfigLike, cfg_options: CfgOptions | None = None) -> Config:
    """Return an mmengine ``Config`` from a path, a dict or a ``Config``, checked for a ``model``.

    Args:
        config: path of an mmdet config file (``.py``, ``.yaml``, ``.json``), a dict or a ``Config``.
        cfg_options: values to override, as mmdet's ``--cfg-options`` (see :func:`apply_cfg_options`).

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: the file cannot be parsed, or has no ``model``, or the model's task is not supported;
            a ``cfg_options`` key that is not in the config.
        ModuleNotFoundError: the config needs a package beyond mmdet's requirements that is not installed
            (:mod:`mmdet_lightning.optional_packages`; the message names the extra).

    Example::
        >>> cfg = load_config({"model": {"type": "RetinaNet"}})
        >>> cfg.model.type
        'RetinaNet'
    """
    from mmengine.config import Config

    if isinstance(config, Config):
        cfg = copy.deepcopy(config)
        source = cfg.filename or "the given Config"
    elif isinstance(config, Mapping):
        cfg = Config(copy.deepcopy(dict(config)))
        source = "the given dict"
    elif isinstance(config, (str, os.PathLike)):
        path = Path(config)
        if not path.is_file():
            raise FileNotFoundError(
                f"Config file {str(path)!r} does not exist (working directory: {os.getcwd()}).\n"
                "Hint: pass the path of an mmdet 3.x config, for example configs/mmdet/shapes_faster_rcnn.py."
            )
        try:
            cfg = Config.fromfile(str(path), import_custom_modules=False)
        except Exception as err:  # mmengine raises SyntaxError, KeyError, ImportError, ... for bad files
            raise ValueError(f"Could not parse the config file {str(path)!r}: {type(err).__name__}: {err}") from err
        source = str(path)
    else:
        raise TypeError(
            f"Expected a config path, dict or mmengine Config, but got {type(config).__name__}: {config!r}."
        )
    if cfg_options:
        apply_cfg_options(cfg, cfg_options)
    if not isinstance(cfg.get("model"), Mapping):
        raise ValueError(
            f"The config from {source} has no `model` dict, so no detector can be built from it.\n"
            "Hint: an mmdet config defines `model = dict(type=..., backbone=..., ...)`, directly or through `_base_`."
        )
    check_supported_task(cfg.model)
    check_optional_packages(cfg, f"The config from {source}")
    if isinstance(config, (str, os.PathLike)):  # parsed without them: imported once the packages are checked
        _import_custom_modules(cfg, source)
    return cfg


def _import_custom_modules(cfg: Config, source: str) -> None:
    """Import the config's ``custom_imports``, as ``Config.fromfile`` does, once the packages are checked."""
    from mmengine.utils import import_modules_from_strings

    if cfg.get("custom_imports"):
        try:
            import_modules_from_strings(**cfg["custom_imports"])
        except ImportError as err:
            raise ValueError(
                f"Could not import the custom modules {dict(cfg['custom_imports'])} of the config {source!r}: {err}\n"
                "Hint: install the package that provides them, or put its folder on PYTHONPATH."
            ) from err


def parse_cfg_options(options: CfgOptions) -> dict[str, Any]:
    """``["a.b=1", "c=[1,2]"]`` parsed as mmengine's ``DictAction`` parses ``--cfg-options`` (a dict is kept).

    Example::
        >>> parse_cfg_options(["optim_wrapper.optimizer.lr=0.01", "img_scale=(96,96)", "classes=a,b"])
        {'optim_wrapper.optimizer.lr': 0.01, 'img_scale': (96, 96), 'classes': ['a', 'b']}
    """
    if isinstance(options, Mapping):
        return dict(options)
    import argparse

    from mmengine.config import DictAction

    items = [options] if isinstance(options, str) else list(options)
    bad = [item for item in items if "=" not in item]
    if bad:
        raise ValueError(f"Expected --cfg-options items of the form key=value, but got {bad}.\n"
                         "Hint: --cfg-options optim_wrapper.optimizer.lr=0.01 train_dataloader.batch_size=4")
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, default={})
    return dict(parser.parse_args(["--cfg-options", *items]).cfg_options)


def apply_cfg_options(cfg: Config, options: CfgOptions) -> Config:
    """Override config values by dotted key, as mmdet's ``tools/train.py --cfg-options`` (in place; returned).

    Unlike mmengine, a key that is not in the config is an error naming the nearest existing keys (a typo
    in a sweep would otherwise add an unused key and train with the old value), except the top-level keys
    that mmengine's Runner reads with a default (``load_from``, ``work_dir``, ``randomness``, ...). List items
    are addressed by index (``train_dataloader.dataset.pipeline.2.scale``).

    Raises:
        ValueError: an item without ``=``; a key that is not in the config.

    Example::
        >>> from mmengine.config import Config
        >>> cfg = Config(dict(optim_wrapper=dict(optimizer=dict(type="SGD", lr=0.02))))
        >>> apply_cfg_options(cfg, ["optim_wrapper.optimizer.lr=0.01"]).optim_wrapper.optimizer.lr
        0.01
        >>> apply_cfg_options(cfg, {"optim_wrapper.optimizer.lrr": 0.1})
        Traceback (most recent call last):
        ...
        ValueError: --cfg-options: `optim_wrapper.optimizer.lrr` is not in the config: ... has no `lrr` (nearest: lr)...
    """
    parsed = parse_cfg_options(options)
    for key in parsed:
        _check_key(cfg, key)
    cfg.merge_from_dict(parsed, allow_list_keys=True)
    return cfg


def _check_key(cfg: Mapping[str, Any], key: str) -> None:
    import difflib

    parts = key.split(".")
    if len(parts) == 1 and parts[0] in _RUNNER_KEYS:
        return
    node: Any = cfg
    for depth, part in enumerate(parts):
        parent = ".".join(parts[:depth]) or "the config's top level"
        if hasattr(node, "keys"):  # a dict, ConfigDict or Config
            found = part in node
            choices = [str(k) for k in node.keys()]
        elif isinstance(node, (list, tuple)):
            found = part.isdigit() and int(part) < len(node)
            choices = [str(i) for i in range(len(node))]
        else:
            found, choices = False, []
        if not found:
            near = difflib.get_close_matches(part, choices, n=3, cutoff=0.5) or choices[:8]
            where = f"`{parent}`" if depth else parent
            what = f"{type(node).__name__} value {node!r}" if not choices else "no"
            raise ValueError(
                f"--cfg-options: `{key}` is not in the config: {where} has {what} `{part}`"
                + (f" (nearest: {', '.join(near)})" if choices else "") + ".\n"
                "Hint: check the spelling against the config (mmengine's `Config.fromfile(path).pretty_text` shows "
                "every key); mmengine would add an unknown key silently and train with the old value."
            )
        node = node[part] if hasattr(node, "keys") else node[int(part)]


def check_supported_task(model_cfg: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` for models of tasks that no task of :mod:`mmdet_lightning.tasks` trains.

    Example::
        >>> check_supported_task({"type": "MaskTrackRCNN"})
        Traceback (most recent call last):
        ...
        ValueError: The config's model `MaskTrackRCNN` is a video instance segmentation model; ...
    """
    from .tasks import task_for_model

    task_for_model(model_cfg)


def leaf_dataset_cfgs(cfg: Mapping[str, Any]) -> list[Any]:
    """The leaf dataset configs inside dataset wrappers (RepeatDataset, ConcatDataset, ...), in order.

    Example::
        >>> leaf_dataset_cfgs(dict(type="RepeatDataset", dataset=dict(type="CocoDataset")))
        [{'type': 'CocoDataset'}]
    """
    if "dataset" in cfg:
        return leaf_dataset_cfgs(cfg["dataset"])
    if "datasets" in cfg:
        return [leaf for sub in cfg["datasets"] for leaf in leaf_dataset_cfgs(sub)]
    return [cfg]


def replace_data_root(cfg: Config, data_root: str | os.PathLike) -> Config:
    """Point every path under the config's ``data_root`` to ``data_root`` instead (in place; returned).

    mmdet configs join ``data_root`` into evaluator ``ann_file`` strings when they are parsed, so the old
    prefix is replaced in every string value, not only in the ``data_root`` keys.

    Example::
        >>> from mmengine.config import Config
        >>> cfg = Config(dict(data_root="data/a/", val_evaluator=dict(ann_file="data/a/ann.json")))
        >>> replace_data_root(cfg, "/tmp/b").val_evaluator.ann_file
        '/tmp/b/ann.json'
    """
    old = cfg.get("data_root")
    if not old:
        raise ValueError("The config has no top-level `data_root` to replace.")
    new = str(data_root).rstrip("/") + "/"
    old_prefix = str(old).rstrip("/") + "/"

    def swap(value: Any) -> Any:
        if isinstance(value, str):
            if value.rstrip("/") + "/" == old_prefix:
                return new
            return new + value[len(old_prefix):] if value.startswith(old_prefix) else value
        if isinstance(value, Mapping):
            return {k: swap(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(swap(v) for v in value)
        return value

    for key in list(cfg.keys()):
        cfg[key] = swap(cfg[key])
    return cfg


def set_classes(cfg: Config, classes: Sequence[str]) -> Config:
    """Train the config's model on ``classes``: ``num_classes`` of every head (RPN heads excluded) and
    ``metainfo.classes`` of every dataset (in place; returned). For fine-tuning a model-zoo config on
    one's own COCO-format data.

    Example::
        >>> from mmengine.config import Config
        >>> cfg = Config(dict(model=dict(rpn_head=dict(num_classes=1), roi_head=dict(bbox_head=dict(num_classes=80))),
        ...                   train_dataloader=dict(dataset=dict(type="CocoDataset"))))
        >>> cfg = set_classes(cfg, ["cat", "dog"])
        >>> cfg.model.roi_head.bbox_head.num_classes, cfg.model.rpn_head.num_classes
        (2, 1)
        >>> cfg.train_dataloader.dataset.metainfo.classes
        ('cat', 'dog')
    """
    classes = tuple(classes)

    def heads(node: Any, key: str = "") -> None:
        if isinstance(node, MutableMapping):
            if "num_classes" in node and not is_proposal_head(key, str(node.get("type", ""))):
                node["num_classes"] = len(classes)
            for child_key, child in node.items():
                heads(child, child_key)
        elif isinstance(node, (list, tuple)):
            for child in node:
                heads(child, key)

    def datasets(node: Any) -> None:
        if isinstance(node, MutableMapping):
            is_dataset = "ann_file" in node or str(node.get("type", "")).endswith("Dataset")
            if "type" in node and is_dataset and "dataset" not in node and "datasets" not in node:
                node["metainfo"] = dict(node.get("metainfo") or {}, classes=classes)
            for child in node.values():
                datasets(child)
        elif isinstance(node, (list, tuple)):
            for child in node:
                datasets(child)

    heads(cfg.model)
    for key in ("train_dataloader", "val_dataloader", "test_dataloader"):
        if cfg.get(key):
            datasets(cfg[key])
    return cfg
