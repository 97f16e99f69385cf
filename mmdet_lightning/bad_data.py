"""Bad training data is skipped with one warning per file, and counted, instead of crashing a long run.

Two checks, both installed by :class:`~mmdet_lightning.MMDetDataModule` on the training set:

    while the dataset parses its annotations     (audit_annotations: COCO-style raw annotations)
        zero-area or malformed box, empty or malformed polygon, image file that does not exist
        -> one warning per file; mmdet already ignores such boxes and masks
    while a sample goes through the pipeline     (SkipBadSamples, in the loader's processes)
        any exception (unreadable or missing image, broken annotation) -> the sample is replaced by
        another (mmengine's BaseDataset refetches when the pipeline returns None); the file and the
        reason travel with the next sample of that process to the main process, where
        BadDataReport warns once per file and counts, also with ``num_workers > 0``

Example::
    >>> report = BadDataReport()
    >>> report.add("a.png", "cannot be read", skipped=True)  # doctest: +SKIP
    >>> report.files, report.skipped_samples  # doctest: +SKIP
    ({'a.png': 'cannot be read'}, 1)
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterator
from typing import Any

from .lightning_package import pl

rank_zero_warn = pl.utilities.rank_zero_warn

__all__ = ["BadDataReport", "SkipBadSamples", "audit_annotations"]

#: metainfo key of a sample's ``data_samples`` that carries the files skipped before it
SKIPPED_KEY = "skipped_files"


class BadDataReport:
    """Bad training files met so far in this process: ``files`` (path -> first reason) and
    ``skipped_samples`` (how many times a sample was replaced). Warns once per file."""

    def __init__(self) -> None:
        self.files: dict[str, str] = {}
        self.skipped_samples = 0

    def add(self, path: str, reason: str, skipped: bool, rank_zero: bool = False) -> None:
        self.skipped_samples += int(skipped)
        if path in self.files:
            return
        self.files[path] = reason
        message = f"Bad training data: {path}: {reason}"
        message += " (sample skipped; another one is used instead)." if skipped else "."
        if rank_zero:
            rank_zero_warn(message)
        else:
            warnings.warn(message, UserWarning, stacklevel=2)

    def collect(self, batch: Any) -> None:
        """Take the skip records out of a collated batch's ``data_samples`` (main process)."""
        samples = batch.get("data_samples") if isinstance(batch, dict) else None
        for sample in samples or []:
            records = sample.metainfo.get(SKIPPED_KEY) if hasattr(sample, "metainfo") else None
            if records is None:
                continue
            delattr(sample, SKIPPED_KEY)
            for path, reason in records:
                self.add(path, reason, skipped=True)


class SkipBadSamples:
    """Wraps a dataset's pipeline: a sample whose pipeline raises becomes ``None`` (mmengine's dataset
    then draws another) and is reported with the next sample this process produces.

    Args:
        pipeline: the dataset's ``Compose`` pipeline.
    """

    def __init__(self, pipeline: Callable[[dict], Any]) -> None:
        self.pipeline = pipeline
        self._pending: list[tuple[str, str]] = []

    def __call__(self, data_info: dict) -> Any:
        try:
            result = self.pipeline(data_info)
        except Exception as err:  # any transform may fail on a broken file
            path = str(data_info.get("img_path", f"sample {data_info.get('sample_idx', '?')}"))
            self._pending.append((path, f"{type(err).__name__}: {err}".strip()))
            return None
        if self._pending and isinstance(result, dict) and hasattr(result.get("data_samples"), "set_metainfo"):
            result["data_samples"].set_metainfo({SKIPPED_KEY: list(self._pending)})
            self._pending = []
        return result

    def __getattr__(self, name: str) -> Any:  # `transforms` etc. of the wrapped Compose
        if name == "pipeline":
            raise AttributeError(name)
        return getattr(self.pipeline, name)


def guard_pipeline(dataset: Any) -> None:
    """Install :class:`SkipBadSamples` on ``dataset`` and on the datasets inside dataset wrappers."""
    for leaf in _leaf_datasets(dataset):
        if hasattr(leaf, "pipeline") and not getattr(leaf, "test_mode", False) \
                and not isinstance(leaf.pipeline, SkipBadSamples):
            leaf.pipeline = SkipBadSamples(leaf.pipeline)


def _leaf_datasets(dataset: Any) -> Iterator[Any]:
    if hasattr(dataset, "datasets"):
        for sub in dataset.datasets:
            yield from _leaf_datasets(sub)
    elif hasattr(dataset, "dataset"):
        yield from _leaf_datasets(dataset.dataset)
    else:
        yield dataset


@contextlib.contextmanager
def audit_annotations(dataset_classes: list[type], report: BadDataReport) -> Iterator[None]:
    """While datasets of these classes are built, report raw COCO-style annotations that mmdet drops
    silently (zero-area boxes, empty polygons) and image files that do not exist.

    The classes' ``parse_data_info`` is replaced for the block only, and restored after it even on error: mmdet's
    datasets call it from their own ``full_init`` and take no argument through which to hand in an auditor."""
    patched: list[tuple[Any, Any, bool]] = []
    classes: list[Any] = list(dict.fromkeys(dataset_classes))
    for cls in classes:
        original = getattr(cls, "parse_data_info", None)
        if original is None:
            continue

        def audited(self: Any, raw: Any, _original: Any = original) -> Any:
            info = _original(self, raw)
            for item in info if isinstance(info, list) else [info]:
                if isinstance(raw, dict) and isinstance(item, dict):
                    for problem in _annotation_problems(raw, item):
                        report.add(str(item.get("img_path")), problem, skipped=False, rank_zero=True)
            return info

        patched.append((cls, original, "parse_data_info" in vars(cls)))
        cls.parse_data_info = audited
    try:
        yield
    finally:
        for cls, original, own in patched:
            if own:
                cls.parse_data_info = original
            else:
                del cls.parse_data_info


def _annotation_problems(raw: dict, info: dict) -> list[str]:
    problems = []
    path = info.get("img_path")
    if path and "://" not in str(path) and not os.path.exists(path):
        problems.append("the image file does not exist")
    for ann in raw.get("raw_ann_info") or []:
        if not isinstance(ann, dict) or ann.get("ignore", False):
            continue
        ann_id = ann.get("id", "?")
        bbox = ann.get("bbox")
        if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4):
            problems.append(f"annotation {ann_id}: malformed bbox {bbox!r} (ignored)")
        elif bbox[2] < 1 or bbox[3] < 1 or ann.get("area", 1) <= 0:
            problems.append(f"annotation {ann_id}: zero-area box {list(bbox)} (ignored)")
        segmentation = ann.get("segmentation")
        if isinstance(segmentation, list):
            polygons = [p for p in segmentation if isinstance(p, list)]
            if any(len(p) < 6 or len(p) % 2 for p in polygons):
                problems.append(f"annotation {ann_id}: empty or malformed polygon (mask ignored)")
    return ["; ".join(problems)] if problems else []
