"""The LightningDataModule built from an mmdet config's dataloaders."""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader

from ._compat import lightning as lightning_compat
from .bad_data import BadDataReport, audit_annotations, guard_pipeline
from .config import ConfigLike, init_mmdet_scope, leaf_dataset_cfgs, load_config, replace_data_root
from .console import library_output
from .image_folder import DetImageFolder, list_images
from .lightning_package import check_one_package, pl
from .resume import ResumableBatchSampler, with_resumable_batches

rank_zero_info = pl.utilities.rank_zero_info

__all__ = ["MMDetDataModule"]

# the loaders each stage needs; `fit` validates only when the config has a `val_dataloader`
_STAGE_LOADERS = {
    "fit": ("train_dataloader",),
    "validate": ("val_dataloader",),
    "test": ("test_dataloader",),
    "predict": ("test_dataloader",),
}


class MMDetDataModule(pl.LightningDataModule):
    """Dataloaders from the config's ``train_dataloader`` / ``val_dataloader`` / ``test_dataloader``.

    Each loader is built by mmengine's ``Runner.build_dataloader`` (datasets, pipelines, samplers, batch
    samplers, collate function, worker seeding), so batches are the ones mmengine's runner would draw.
    The config's samplers already shard the data by process, so Lightning's distributed sampler is turned
    off when Lightning runs several processes. ``predict`` uses the test loader.

    Training is made to survive a long run: a training sample whose image cannot be read or whose
    annotation breaks the pipeline is replaced by another, with one warning per file; annotations that
    mmdet ignores silently (zero-area boxes, empty polygons) and missing image files are reported once
    (``bad_data.files``, ``bad_data.skipped_samples``). The training batches continue exactly where an
    interrupted epoch stopped when a checkpoint is resumed (see :mod:`mmdet_lightning.resume`).

    Args:
        config: mmdet config: a file path, a dict or an mmengine ``Config``.
        seed: seed of the samplers and workers; defaults to the seed of ``pl.seed_everything``, then the
            config's ``randomness.seed``.
        predict_folder: predict on the images of this folder (no annotations needed) instead of the test set.
        text: the prompt of a grounding detector (GLIP, Grounding DINO) for ``predict``, instead of the dataset's
            classes: ``"disc . ring ."`` or a list of phrases; the predictions' ``label_names`` are its phrases.
            Checked against the language model's tokenizer here (:mod:`mmdet_lightning.prompt`).
        data_root: dataset folder to use instead of the config's ``data_root``.
        global_batch_size: training images per step over all processes; each process then loads
            ``global_batch_size / world_size`` (instead of the config's per-process ``train_dataloader.batch_size``),
            so changing the number of GPUs keeps the optimisation the same.
        cfg_options: config values to override, as mmdet's ``--cfg-options`` (see :class:`MMDetModule`).

    Raises:
        FileNotFoundError: a dataset's annotation file or image folder does not exist (at ``setup``).
        ValueError: ``global_batch_size`` is not a positive multiple of the number of processes (at ``setup``).

    Example::
        >>> dm = MMDetDataModule.from_config("configs/mmdet/shapes_faster_rcnn.py")  # doctest: +SKIP
        >>> dm.setup("fit"); batch = next(iter(dm.train_dataloader()))  # doctest: +SKIP
        >>> sorted(batch)  # doctest: +SKIP
        ['data_samples', 'inputs']
    """

    def __init__(self, config: ConfigLike, seed: int | None = None, predict_folder: str | None = None,
                 data_root: str | None = None, global_batch_size: int | None = None,
                 cfg_options: dict[str, Any] | list[str] | None = None,
                 text: str | list[str] | None = None) -> None:
        check_one_package(type(self).__name__)
        super().__init__()
        if global_batch_size is not None and (not isinstance(global_batch_size, int) or global_batch_size < 1):
            raise ValueError(f"global_batch_size must be a positive integer, got {global_batch_size!r}.")
        self.global_batch_size = global_batch_size
        self.cfg = load_config(config, cfg_options)
        if data_root is not None:
            replace_data_root(self.cfg, data_root)
        self.seed = seed
        self.predict_folder = predict_folder
        #: the phrases of ``text`` (None: the datasets' own prompts)
        self.text: list[str] | None = None
        if text is not None:
            from .prompt import checked_prompt

            self.text = checked_prompt(self.cfg, text)
        #: bad training files met in this process (path -> reason) and how many samples were replaced
        self.bad_data = BadDataReport()
        self._train_batches: ResumableBatchSampler | None = None
        self._train_state_to_load: dict[str, Any] | None = None

    @classmethod
    def from_config(cls, config: ConfigLike, **kwargs: Any) -> MMDetDataModule:
        """Same as ``MMDetDataModule(config, **kwargs)``."""
        return cls(config, **kwargs)

    def setup(self, stage: str) -> None:
        init_mmdet_scope()
        stage = str(getattr(stage, "value", stage))
        needed = _STAGE_LOADERS.get(stage, ())
        for key in needed:
            if self.cfg.get(key) is None:
                raise ValueError(f"The config has no `{key}`, which `{stage}` needs.")
        optional = ("val_dataloader",) if stage == "fit" else ()
        if stage == "predict" and self.predict_folder is not None:
            list_images(self.predict_folder)  # fails early on a missing or empty folder
            needed = ()
        for key in needed + optional:
            for dataset_cfg in leaf_dataset_cfgs((self.cfg.get(key) or {}).get("dataset", {})):
                _check_dataset_paths(key, dataset_cfg)
            evaluator_key = key.replace("_dataloader", "_evaluator")
            if key != "train_dataloader" and stage != "predict":
                _check_evaluator_paths(self.cfg, evaluator_key if self.cfg.get(evaluator_key) else "val_evaluator")
        if stage == "fit" and self.cfg.get("model") is not None:
            from .tasks import task_for_model

            task_for_model(self.cfg.model).check_train_data(self.cfg.train_dataloader)
        trainer = self.trainer
        if stage == "fit" and self.global_batch_size is not None:
            self._split_global_batch(self.global_batch_size, trainer.world_size if trainer is not None else 1)
        if trainer is not None and lightning_compat.sampler_replaced_by_lightning(trainer):
            # Lightning would swap the config's sampler for a DistributedSampler; the config's
            # DefaultSampler / InfiniteSampler shard by rank themselves (mmengine.dist.get_dist_info).
            lightning_compat.keep_config_samplers(trainer)
            rank_zero_info("MMDetDataModule: using the config's samplers per process (use_distributed_sampler=False).")

    def _split_global_batch(self, global_batch_size: int, world_size: int) -> None:
        per_process, rest = divmod(global_batch_size, world_size)
        if rest or not per_process:
            lower = max(per_process, 1) * world_size
            raise ValueError(
                f"global_batch_size={self.global_batch_size} does not divide over {world_size} processes.\n"
                f"Hint: use a multiple of {world_size} (e.g. {lower} or {lower + world_size}), or leave "
                "global_batch_size unset to load the config's train_dataloader.batch_size in each process."
            )
        self.cfg.train_dataloader.batch_size = per_process

    def _seed(self) -> int | None:
        if self.seed is not None:
            return self.seed
        if os.environ.get("PL_GLOBAL_SEED"):
            return int(os.environ["PL_GLOBAL_SEED"])
        return (self.cfg.get("randomness") or {}).get("seed")

    def _build(self, key: str) -> DataLoader:
        if self.cfg.get(key) is None:
            raise ValueError(f"The config has no `{key}`.")
        return self._build_from(copy.deepcopy(self.cfg[key]))

    def _build_from(self, loader_cfg: Any) -> DataLoader:
        from mmengine.runner import Runner

        init_mmdet_scope()
        diff_rank_seed = bool((self.cfg.get("randomness") or {}).get("diff_rank_seed", False))
        try:
            with library_output():  # datasets load their COCO file with pycocotools' prints
                return Runner.build_dataloader(loader_cfg, seed=self._seed(), diff_rank_seed=diff_rank_seed)
        except json.JSONDecodeError as error:
            raise _damaged_annotation_error(loader_cfg, error) from error

    def transfer_batch_to_device(self, batch: Any, device: Any, dataloader_idx: int) -> Any:
        # The model's data preprocessor moves (and casts) the batch itself, as under mmengine's runner.
        return batch

    def train_dataloader(self) -> DataLoader:
        init_mmdet_scope()
        from mmdet.registry import DATASETS

        dataset_cfgs = leaf_dataset_cfgs((self.cfg.get("train_dataloader") or {}).get("dataset", {}))
        classes = [DATASETS.get(c["type"]) if isinstance(c.get("type"), str) else c.get("type") for c in dataset_cfgs]
        with audit_annotations([c for c in classes if isinstance(c, type)], self.bad_data):
            loader = with_resumable_batches(self._build("train_dataloader"))
        guard_pipeline(loader.dataset)
        self._train_batches = loader.batch_sampler if isinstance(loader.batch_sampler, ResumableBatchSampler) else None
        if self._train_batches is not None and self._train_state_to_load is not None:
            self._train_batches.load_state_dict(self._train_state_to_load)
        self._train_state_to_load = None
        return loader

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        self.bad_data.collect(batch)
        return batch

    def state_dict(self) -> dict[str, Any]:
        """Where the training data stands (epoch, batches done, random states), for an exact resume."""
        if self._train_batches is None:
            return {}
        state = self._train_batches.state_dict()
        trainer = self.trainer
        if trainer is not None:
            state["epoch_done"] = state["batches_done"] >= trainer.num_training_batches
        return {"train_batches": state, "bad_files": dict(self.bad_data.files),
                "skipped_samples": self.bad_data.skipped_samples}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._train_state_to_load = state_dict.get("train_batches")
        self.bad_data.files.update(state_dict.get("bad_files", {}))
        self.bad_data.skipped_samples = int(state_dict.get("skipped_samples", 0))

    def val_dataloader(self) -> DataLoader | list:
        # no `val_dataloader` in the config: an empty list, which tells Lightning not to validate
        return self._build("val_dataloader") if self.cfg.get("val_dataloader") is not None else []

    def test_dataloader(self) -> DataLoader:
        return self._build("test_dataloader")

    def predict_dataloader(self) -> DataLoader:
        from .prompt import SetTextPrompt

        prompt = [] if self.text is None else [dict(type=SetTextPrompt, text=self.text)]
        if self.predict_folder is None:
            if not prompt:
                return self._build("test_dataloader")
            loader = copy.deepcopy(self.cfg.test_dataloader)
            for dataset_cfg in leaf_dataset_cfgs(loader.dataset):
                dataset_cfg["pipeline"] = prompt + list(dataset_cfg.get("pipeline", []))
            return self._build_from(loader)
        # the test loader, with the folder's images and the test pipeline without annotations
        loader = copy.deepcopy(self.cfg.test_dataloader)
        dataset = loader.dataset
        while "dataset" in dataset:  # unwrap dataset wrappers
            dataset = dataset.dataset
        pipeline = [step for step in dataset.get("pipeline", []) if step.get("type") != "LoadAnnotations"]
        loader.dataset = dict(type=DetImageFolder, folder=self.predict_folder, metainfo=dataset.get("metainfo"),
                              pipeline=prompt + pipeline)
        loader.sampler = dict(type="DefaultSampler", shuffle=False)
        loader.pop("batch_sampler", None)
        return self._build_from(loader)


_DAMAGED_JSON_HINT = ("Hint: the file was probably cut short (a copy, download or export that did not finish): "
                      "write or copy it again; `python -m json.tool FILE` shows where it breaks.")


def _damaged_annotation_error(loader_cfg: Any, error: json.JSONDecodeError) -> ValueError:
    """The dataset of ``loader_cfg`` failed to parse its annotation JSON: name the file (parsing each one of the
    loader's datasets again, only now that one failed) and the JSON error."""
    for dataset_cfg in leaf_dataset_cfgs(loader_cfg.get("dataset", {})):
        path = _resolve(dataset_cfg.get("data_root") or "", dataset_cfg.get("ann_file") or "")
        if path is None or not path.is_file() or path.suffix != ".json":
            continue
        try:
            with open(path, encoding="utf-8") as file:
                json.load(file)
        except json.JSONDecodeError as bad:
            return ValueError(f"Annotation file {str(path)!r} is not valid JSON ({path.stat().st_size} bytes): "
                              f"{bad}.\n{_DAMAGED_JSON_HINT}")
    return ValueError(f"An annotation file of the dataset is not valid JSON: {error}.\n{_DAMAGED_JSON_HINT}")


def _resolve(data_root: str | None, path: str) -> Path | None:
    if "://" in path:  # remote backends (s3://, http://) are not checked here
        return None
    return Path(data_root) / path if data_root and not os.path.isabs(path) else Path(path)


def _check_dataset_paths(loader_key: str, cfg: Mapping[str, Any]) -> None:
    data_root = cfg.get("data_root") or ""
    hint = (
        "Hint: generate the synthetic dataset with `python -m mmdet_lightning.synthetic --out data/shapes`, "
        "or point the config's `data_root` at your data (mmdet_lightning.config.replace_data_root)."
    )
    if "panoptic" in str(cfg.get("type", "")).lower():
        hint = _PANOPTIC_HINT
    ann_file = cfg.get("ann_file")
    if ann_file:
        path = _resolve(data_root, ann_file)
        if path is not None and not path.is_file():
            raise FileNotFoundError(
                f"{loader_key}: annotation file {str(path)!r} does not exist "
                f"(data_root={data_root!r}, ann_file={ann_file!r}).\n{hint}"
            )
        if path is not None and path.suffix == ".json" and path.stat().st_size == 0:
            raise ValueError(f"{loader_key}: Annotation file {str(path)!r} is empty (0 bytes).\n" + _DAMAGED_JSON_HINT)
    img_dir = (cfg.get("data_prefix") or {}).get("img")
    if img_dir is not None:
        path = _resolve(data_root, img_dir)
        if path is not None and not path.is_dir():
            raise FileNotFoundError(
                f"{loader_key}: image folder {str(path)!r} does not exist "
                f"(data_root={data_root!r}, data_prefix.img={img_dir!r}).\n{hint}"
            )
    _check_panoptic_maps(loader_key, cfg, data_root)


_PANOPTIC_HINT = (
    "Hint: a panoptic dataset (CocoPanopticDataset) needs its COCO panoptic PNGs (one per image, segment ids as "
    "RGB) in the folder `data_prefix.seg` names, beside the panoptic JSON: `python -m mmdet_lightning.synthetic "
    "--out data/shapes_panoptic --panoptic` writes them for the synthetic data; for COCO, unzip "
    "panoptic_annotations_trainval2017's panoptic_train2017.zip / panoptic_val2017.zip into annotations/."
)


def _check_panoptic_maps(loader_key: str, cfg: Mapping[str, Any], data_root: str) -> None:
    """A panoptic dataset's PNG folder (``data_prefix.seg``) is named, exists and holds PNG files."""
    if "panoptic" not in str(cfg.get("type", "")).lower():
        return
    seg_dir = (cfg.get("data_prefix") or {}).get("seg")
    if not seg_dir:
        prefix = dict(cfg.get("data_prefix") or {})
        raise ValueError(f"{loader_key}: the panoptic dataset {cfg.get('type')} has no `data_prefix.seg`, the folder "
                         f"of its panoptic PNGs (data_prefix={prefix!r}).\n{_PANOPTIC_HINT}")
    path = _resolve(data_root, seg_dir)
    if path is None:
        return
    if not path.is_dir():
        raise FileNotFoundError(f"{loader_key}: the folder of the panoptic PNGs {str(path)!r} does not exist "
                                f"(data_root={data_root!r}, data_prefix.seg={seg_dir!r}).\n{_PANOPTIC_HINT}")
    if next(path.glob("*.png"), None) is None:
        raise FileNotFoundError(f"{loader_key}: the folder of the panoptic PNGs {str(path)!r} holds no PNG file "
                                f"(data_root={data_root!r}, data_prefix.seg={seg_dir!r}).\n{_PANOPTIC_HINT}")


def _check_evaluator_paths(cfg: Mapping[str, Any], key: str) -> None:
    """The PNG folder of a ``CocoPanopticMetric`` (``seg_prefix``) exists, so that a missing one stops before
    training rather than at the first validation."""
    evaluators = cfg.get(key) or []
    for evaluator in evaluators if isinstance(evaluators, (list, tuple)) else [evaluators]:
        seg_prefix = evaluator.get("seg_prefix") if isinstance(evaluator, Mapping) else None
        path = _resolve("", seg_prefix) if seg_prefix else None
        if path is not None and not path.is_dir():
            raise FileNotFoundError(f"{key}: the folder of the panoptic PNGs {str(path)!r} (seg_prefix of "
                                    f"{evaluator.get('type')}) does not exist.\n{_PANOPTIC_HINT}")
