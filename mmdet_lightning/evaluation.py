"""Faster COCO evaluators with mmdet ``CocoMetric``'s numbers: ``FastCocoMetric`` (faster_coco_eval) and
``HotCocoMetric`` (hotcoco), chosen by name with :func:`use_evaluator_backend`.

    backend             metric            COCOeval it builds
    "pycocotools"       CocoMetric        pycocotools' COCOeval (mmdet as configured)
    "faster_coco_eval"  FastCocoMetric    faster_coco_eval's COCOeval_faster (C++)
    "hotcoco"           HotCocoMetric     HotCocoEval: pycocotools' COCOeval, evaluate and accumulate in hotcoco
    "auto"              "hotcoco" where hotcoco is installed (a dependency), "pycocotools" otherwise
"""

from __future__ import annotations

import contextlib
import copy
import json
import types
import weakref
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

import numpy as np
from lightning_utilities.core.imports import RequirementCache
from mmdet.datasets.api_wrappers import COCOeval, COCOevalMP
from mmdet.evaluation.metrics import coco_metric, lvis_metric
from mmdet.registry import METRICS

__all__ = ["FastCocoMetric", "HotCocoMetric", "HotLVISMetric", "HotCocoEval", "EVALUATOR_BACKENDS",
           "resolve_evaluator_backend", "use_evaluator_backend", "record_coco_evals"]

_FASTER_COCO_EVAL = RequirementCache("faster-coco-eval>=1.6")
_HOTCOCO = RequirementCache("hotcoco>=1.3")
EVALUATOR_BACKENDS = ("auto", "pycocotools", "faster_coco_eval", "hotcoco")
#: ``"auto"``: hotcoco where it is installed (a dependency), pycocotools otherwise
EvaluatorBackend = Literal["auto", "pycocotools", "faster_coco_eval", "hotcoco"]
#: backend -> (the metrics that replace mmdet's, their requirement, the pip command that installs it)
_BACKENDS: dict[str, tuple[dict[str, str], RequirementCache, str]] = {
    "faster_coco_eval": ({"CocoMetric": "FastCocoMetric"}, _FASTER_COCO_EVAL, "pip install 'faster-coco-eval>=1.6'"),
    "hotcoco": ({"CocoMetric": "HotCocoMetric", "LVISMetric": "HotLVISMetric"}, _HOTCOCO,
                "pip install 'hotcoco>=1.3,<2'"),
}


@METRICS.register_module()
class FastCocoMetric(coco_metric.CocoMetric):
    """mmdet's ``CocoMetric`` with the COCO evaluation done by faster_coco_eval's C++ ``COCOeval_faster``.

    Same arguments, result keys and numbers as ``CocoMetric`` (faster_coco_eval follows pycocotools' rules,
    annotation ``area`` and ``iscrowd`` included; its statistics are pycocotools' ``summarize`` of its
    arrays), and several times faster on large validation sets. Use
    it as ``val_evaluator = dict(type="FastCocoMetric", ...)`` or through
    ``MMDetModule(config, evaluator_backend="faster_coco_eval")``.

    Example::
        >>> FastCocoMetric.__mro__[1].__name__
        'CocoMetric'
    """

    def compute_metrics(self, results: list) -> dict[str, float]:
        with _coco_eval_from_faster_coco_eval(), _results_json_by_c_encoder():
            return super().compute_metrics(results)


@contextlib.contextmanager
def _coco_eval_from_faster_coco_eval() -> Iterator[None]:
    """Make mmdet's coco_metric module use ``COCOeval_faster`` where it builds a ``COCOeval``."""
    if not _FASTER_COCO_EVAL:
        raise ModuleNotFoundError(f"FastCocoMetric needs faster-coco-eval. {_FASTER_COCO_EVAL}")
    from faster_coco_eval import COCOeval_faster

    def build(*args: Any, **kwargs: Any) -> Any:
        coco_eval = COCOeval_faster(*args, **kwargs)
        # pycocotools' summarize on faster_coco_eval's arrays (equal to pycocotools'): faster_coco_eval's own
        # takes mAP at the largest maxDets (1000 with mmdet's proposal_nums), pycocotools' at 100
        coco_eval.summarize = types.MethodType(COCOeval.summarize, coco_eval)
        return coco_eval

    with _coco_eval_classes(COCOeval=build):
        yield


@METRICS.register_module()
class HotCocoMetric(coco_metric.CocoMetric):
    """mmdet's ``CocoMetric`` with the COCO evaluation done by hotcoco's Rust ``COCOeval`` (:class:`HotCocoEval`).

    Same arguments, result keys and numbers as ``CocoMetric`` (``classwise=True`` and ``use_mp_eval=True``
    included), and far faster on large validation sets. Use it as ``val_evaluator = dict(type="HotCocoMetric",
    ...)`` or through ``MMDetModule(config, evaluator_backend="hotcoco")``. Needs ``pip install hotcoco``.

    Example::
        >>> HotCocoMetric.__mro__[1].__name__
        'CocoMetric'
    """

    def compute_metrics(self, results: list) -> dict[str, float]:
        if not _HOTCOCO:
            raise ModuleNotFoundError(f"HotCocoMetric needs hotcoco ({_HOTCOCO}).\nHint: {_BACKENDS['hotcoco'][2]}")
        with _coco_eval_classes(COCOeval=HotCocoEval, COCOevalMP=HotCocoEvalMP), _results_json_by_c_encoder():
            return super().compute_metrics(results)


@METRICS.register_module()
class HotLVISMetric(lvis_metric.LVISMetric):
    """mmdet's ``LVISMetric`` with lvis-api's ``LVIS``, ``LVISResults`` and ``LVISEval`` replaced by hotcoco's
    drop-ins (its Rust ``COCOeval`` in LVIS's federated mode): lvis-api is not needed.

    Same arguments and result keys as ``LVISMetric`` (``AP``.. ``APr``, ``APc``, ``APf``, ``classwise``). Use it as
    ``val_evaluator = dict(type="HotLVISMetric", ...)`` or through ``MMDetModule(config, evaluator_backend="hotcoco")``.

    Example::
        >>> HotLVISMetric.__mro__[1].__name__
        'LVISMetric'
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        with _lvis_from_hotcoco():
            super().__init__(*args, **kwargs)

    def compute_metrics(self, results: list) -> dict[str, float]:
        with _lvis_from_hotcoco():
            return super().compute_metrics(results)


@contextlib.contextmanager
def _lvis_from_hotcoco() -> Iterator[None]:
    """Make mmdet's lvis_metric module use hotcoco's lvis-api drop-ins in this block."""
    if not _HOTCOCO:
        raise ModuleNotFoundError(f"HotLVISMetric needs hotcoco ({_HOTCOCO}).\nHint: {_BACKENDS['hotcoco'][2]}")
    import hotcoco

    names = {"lvis": hotcoco, "LVIS": hotcoco.LVIS, "LVISResults": hotcoco.LVISResults, "LVISEval": hotcoco.LVISEval}
    missing = object()
    originals = {name: getattr(lvis_metric, name, missing) for name in names}  # no LVIS without lvis-api
    for name, value in names.items():
        setattr(lvis_metric, name, value)
    try:
        yield
    finally:
        for name, value in originals.items():
            if value is missing:
                delattr(lvis_metric, name)
            else:
                setattr(lvis_metric, name, value)


class HotCocoEval(COCOeval):
    """pycocotools' ``COCOeval`` whose ``evaluate`` and ``accumulate`` run in hotcoco's Rust ``COCOeval``.

    Built and configured as pycocotools' (``HotCocoEval(coco_gt, coco_dt, "bbox")`` with pycocotools ``COCO``
    objects, then ``params`` set), and read as pycocotools': ``params``, ``cocoGt`` and ``cocoDt`` are the
    pycocotools objects, ``eval`` holds hotcoco's ``precision``, ``recall`` and ``scores`` arrays (equal to
    pycocotools' bit for bit) and ``summarize`` is pycocotools' own on them. hotcoco's ``summarize`` is not
    used: with mmdet's ``proposal_nums=(100, 300, 1000)`` it takes mAP at 1000 detections an image where
    pycocotools takes it at 100 (the two differ once an image has more than 100 detections).

    The per-image matching stays inside hotcoco's evaluator, kept as ``hotcoco`` for its diagnostics
    (``tide_errors()``, ``calibration()``, ...); ``evalImgs`` and ``ious`` stay empty. hotcoco's copy of the
    ground truth is made once per ground-truth ``COCO`` object and reused by later evaluations.

    Example::
        >>> from mmdet_lightning.analysis import toy_coco_eval
        >>> gt = toy_coco_eval().cocoGt
        >>> run = HotCocoEval(gt, gt.loadRes([{"image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40],
        ...                                    "score": 0.9}]), "bbox")  # doctest: +SKIP
        >>> run.evaluate(); run.accumulate(); run.summarize()  # doctest: +SKIP
        >>> round(run.stats[1], 3)  # doctest: +SKIP
        1.0
    """

    #: hotcoco's evaluator after ``evaluate()``
    hotcoco: Any = None

    def evaluate(self) -> None:
        import hotcoco

        p = self.params
        # as pycocotools' COCOeval.evaluate prepares its parameters (the order of catIds decides the
        # class axis of ``eval["precision"]``)
        if getattr(p, "useSegm", None) is not None:
            p.iouType = "segm" if p.useSegm == 1 else "bbox"
        p.imgIds = list(np.unique(p.imgIds))
        if p.useCats:
            p.catIds = list(np.unique(p.catIds))
        p.maxDets = sorted(p.maxDets)
        run = hotcoco.COCOeval(_hotcoco_ground_truth(self.cocoGt), _hotcoco_dataset(self.cocoDt.dataset), p.iouType)
        theirs = run.params
        theirs.imgIds = [int(i) for i in p.imgIds]
        theirs.catIds = [int(i) for i in p.catIds]
        theirs.iouThrs = [float(t) for t in p.iouThrs]
        theirs.recThrs = [float(t) for t in p.recThrs]
        theirs.maxDets = [int(m) for m in p.maxDets]
        theirs.areaRng = [[float(a) for a in rng] for rng in p.areaRng]
        theirs.areaRngLbl = list(p.areaRngLbl)
        theirs.useCats = bool(p.useCats)
        if p.iouType == "keypoints":
            theirs.kpt_oks_sigmas = [float(s) for s in p.kpt_oks_sigmas]
        run.evaluate()
        self.hotcoco = run
        self._paramsEval = copy.copy(p)  # pycocotools' deep copy costs more than hotcoco's evaluation

    def accumulate(self, p: Any = None) -> None:
        if self.hotcoco is None:
            raise RuntimeError("HotCocoEval.accumulate() needs evaluate() first.")
        self.hotcoco.accumulate()
        self.eval = {**self.hotcoco.eval, "params": self.params}


class HotCocoEvalMP(HotCocoEval, COCOevalMP):
    """:class:`HotCocoEval` with the ``summarize`` of mmdet's ``COCOevalMP`` (``CocoMetric(use_mp_eval=True)``),
    whose mAP is taken at the largest ``maxDets``: that metric's numbers, without its worker processes."""


#: pycocotools ground truth -> (what it was made from, hotcoco's copy), for the life of the pycocotools object
_GROUND_TRUTHS: weakref.WeakKeyDictionary[Any, tuple[tuple[int, ...], Any]] = weakref.WeakKeyDictionary()


def _hotcoco_ground_truth(coco_gt: Any) -> Any:
    """hotcoco's ``COCO`` of a pycocotools ground truth, made once (mmdet's ``CocoMetric`` keeps one for its life)."""
    dataset = coco_gt.dataset
    made_from = (id(dataset), *(len(dataset.get(key, ())) for key in ("images", "annotations", "categories")))
    known = _GROUND_TRUTHS.get(coco_gt)
    if known is None or known[0] != made_from:
        known = made_from, _hotcoco_dataset(dataset)
        _GROUND_TRUTHS[coco_gt] = known
    return known[1]


def _hotcoco_dataset(dataset: Mapping[str, Any]) -> Any:
    """hotcoco's ``COCO`` of a pycocotools dataset dict (detections from pycocotools' ``loadRes`` keep the
    ``area`` and ``bbox`` it computed, so both libraries evaluate the same numbers)."""
    import hotcoco

    return hotcoco.COCO({"images": list(dataset.get("images", [])),
                         "categories": list(dataset.get("categories", [])),
                         "annotations": list(dataset.get("annotations", []))})


@contextlib.contextmanager
def _results_json_by_c_encoder() -> Iterator[None]:
    """Make mmdet's coco_metric module write local JSON files with json's C encoder in this block.

    ``CocoMetric.results2json`` writes every detection to a JSON file (then reads it back for ``loadRes``)
    through mmengine's ``dump``, that is ``json.dump``, which always takes json's pure-Python encoder: 0.37 s of a
    0.45 s evaluation of 5000 images with hotcoco. ``json.dumps`` encodes in C, to the same text (same
    separators, float repr and mmengine's ``set_default`` for numpy values). Other paths (a backend's URI) and
    files go through mmengine's ``dump`` as before."""
    from mmengine.fileio.handlers.json_handler import set_default

    mmengine_dump = coco_metric.dump

    def dump(obj: Any, file: Any = None, file_format: str | None = None, **kwargs: Any) -> Any:
        local_json = (isinstance(file, str) and "://" not in file and (file_format or file.rsplit(".", 1)[-1]) == "json"
                      and not kwargs)
        if not local_json:
            return mmengine_dump(obj, file, file_format, **kwargs)
        with open(file, "w", encoding="utf-8") as out:
            out.write(json.dumps(obj, default=set_default))
        return None

    coco_metric.dump = dump
    try:
        yield
    finally:
        coco_metric.dump = mmengine_dump


@contextlib.contextmanager
def _coco_eval_classes(**classes: Any) -> Iterator[None]:
    """Make mmdet's coco_metric module build these classes (``COCOeval=...``, ``COCOevalMP=...``) in this block,
    recorded by :func:`record_coco_evals` as the classes they replace."""
    originals = {name: getattr(coco_metric, name) for name in classes}
    for name, cls in classes.items():
        setattr(coco_metric, name, _recorded(cls))
    try:
        yield
    finally:
        for name, cls in originals.items():
            setattr(coco_metric, name, cls)


#: the list that ``record_coco_evals`` fills while it is active
_recording: list[Any] | None = None


def _recorded(cls: Any) -> Any:
    """``cls`` (a COCOeval class) as mmdet's coco_metric builds it, keeping each instance while recording."""

    def build(*args: Any, **kwargs: Any) -> Any:
        coco_eval = cls(*args, **kwargs)
        if _recording is not None:
            _recording.append(coco_eval)
        return coco_eval

    build.__wrapped__ = cls  # type: ignore[attr-defined]
    return build


@contextlib.contextmanager
def record_coco_evals() -> Iterator[list[Any]]:
    """Keep every ``COCOeval`` that mmdet's ``CocoMetric`` (or ``FastCocoMetric``, ``HotCocoMetric``) builds in
    this block.

    They are evaluated and accumulated by the metric itself, so their ``eval["precision"]``, ground truth
    and detections can be analysed afterwards without evaluating again (``MMDetModule.last_coco_eval``).

    Example::
        >>> with record_coco_evals() as coco_evals:
        ...     pass  # evaluator.evaluate(...)
        >>> coco_evals
        []
    """
    global _recording
    originals, outer = {name: getattr(coco_metric, name) for name in ("COCOeval", "COCOevalMP")}, _recording
    _recording = []
    for name, cls in originals.items():  # COCOevalMP: CocoMetric(use_mp_eval=True)
        setattr(coco_metric, name, _recorded(getattr(cls, "__wrapped__", cls)))
    try:
        yield _recording
    finally:
        for name, cls in originals.items():
            setattr(coco_metric, name, cls)
        _recording = outer


def resolve_evaluator_backend(backend: EvaluatorBackend) -> str:
    """The backend ``backend`` names: ``"auto"`` is ``"hotcoco"`` where hotcoco is installed, else ``"pycocotools"``.

    Raises:
        ValueError: ``backend`` is not one of :data:`EVALUATOR_BACKENDS`.

    Example::
        >>> resolve_evaluator_backend("pycocotools")
        'pycocotools'
        >>> resolve_evaluator_backend("auto") in ("hotcoco", "pycocotools")
        True
    """
    if backend not in EVALUATOR_BACKENDS:
        raise ValueError(
            f"Expected argument `evaluator_backend` to be one of {EVALUATOR_BACKENDS}, but got {backend!r}.")
    if backend == "auto":
        return "hotcoco" if _HOTCOCO else "pycocotools"
    return backend


def use_evaluator_backend(evaluator_cfg: Any, backend: EvaluatorBackend) -> Any:
    """The evaluator config with every ``CocoMetric`` computed by ``backend`` (a copy when changed).

    ``"auto"`` is ``"hotcoco"`` where hotcoco is installed and ``"pycocotools"`` otherwise
    (:func:`resolve_evaluator_backend`); ``"pycocotools"`` leaves it as configured; ``"faster_coco_eval"`` makes
    each ``CocoMetric`` a ``FastCocoMetric``; ``"hotcoco"`` each ``CocoMetric`` a ``HotCocoMetric`` and each
    ``LVISMetric`` a ``HotLVISMetric``. Other metrics are left alone.

    Raises:
        ValueError: ``backend`` is not one of :data:`EVALUATOR_BACKENDS`.
        ModuleNotFoundError: the backend's package is not installed (the message gives the pip command).

    Example::
        >>> use_evaluator_backend(dict(type="CocoMetric", metric="bbox"), "faster_coco_eval")["type"]
        'FastCocoMetric'
        >>> use_evaluator_backend([dict(type="mmdet.CocoMetric")], "pycocotools")
        [{'type': 'mmdet.CocoMetric'}]
        >>> use_evaluator_backend(dict(type="LVISMetric"), "faster_coco_eval")["type"]
        'LVISMetric'
    """
    resolved = resolve_evaluator_backend(backend)
    if resolved == "pycocotools":
        return evaluator_cfg
    replacements, requirement, install = _BACKENDS[resolved]
    if not requirement:
        raise ModuleNotFoundError(f"evaluator_backend={backend!r} needs a package that is not installed "
                                  f"({requirement}).\nHint: {install}")

    def swap(cfg: Any) -> Any:
        if isinstance(cfg, Mapping):
            cfg = dict(cfg)
            metric_type = str(cfg.get("type", "")).split(".")[-1]
            if metric_type in replacements:
                cfg["type"] = replacements[metric_type]
            if "metrics" in cfg:
                cfg["metrics"] = swap(cfg["metrics"])
            return cfg
        if isinstance(cfg, Sequence) and not isinstance(cfg, str):
            return [swap(c) for c in cfg]
        return cfg

    return swap(evaluator_cfg)
