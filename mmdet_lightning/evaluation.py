"""A faster COCO evaluator with mmdet ``CocoMetric``'s numbers: ``FastCocoMetric`` (faster_coco_eval)."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Literal, Mapping, Sequence

from lightning_utilities.core.imports import RequirementCache
from mmdet.evaluation.metrics import coco_metric
from mmdet.registry import METRICS

__all__ = ["FastCocoMetric", "EVALUATOR_BACKENDS", "use_evaluator_backend", "record_coco_evals"]

_FASTER_COCO_EVAL = RequirementCache("faster-coco-eval>=1.6")
EVALUATOR_BACKENDS = ("pycocotools", "faster_coco_eval")
EvaluatorBackend = Literal["pycocotools", "faster_coco_eval"]


@METRICS.register_module()
class FastCocoMetric(coco_metric.CocoMetric):
    """mmdet's ``CocoMetric`` with the COCO evaluation done by faster_coco_eval's C++ ``COCOeval_faster``.

    Same arguments, result keys and numbers as ``CocoMetric`` (faster_coco_eval follows pycocotools' rules,
    annotation ``area`` and ``iscrowd`` included), and several times faster on large validation sets. Use
    it as ``val_evaluator = dict(type="FastCocoMetric", ...)`` or through
    ``MMDetModule(config, evaluator_backend="faster_coco_eval")``.

    Example::
        >>> FastCocoMetric.__mro__[1].__name__
        'CocoMetric'
    """

    def compute_metrics(self, results: list) -> dict[str, float]:
        with _coco_eval_from_faster_coco_eval():
            return super().compute_metrics(results)


@contextlib.contextmanager
def _coco_eval_from_faster_coco_eval() -> Iterator[None]:
    """Make mmdet's coco_metric module use ``COCOeval_faster`` where it builds a ``COCOeval``."""
    if not _FASTER_COCO_EVAL:
        raise ModuleNotFoundError(f"FastCocoMetric needs faster-coco-eval. {_FASTER_COCO_EVAL}")
    from faster_coco_eval import COCOeval_faster

    original = coco_metric.COCOeval
    coco_metric.COCOeval = _recorded(COCOeval_faster)
    try:
        yield
    finally:
        coco_metric.COCOeval = original


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
    """Keep every ``COCOeval`` that mmdet's ``CocoMetric`` (or ``FastCocoMetric``) builds in this block.

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


def use_evaluator_backend(evaluator_cfg: Any, backend: EvaluatorBackend) -> Any:
    """The evaluator config with every ``CocoMetric`` computed by ``backend`` (a copy when changed).

    Example::
        >>> use_evaluator_backend(dict(type="CocoMetric", metric="bbox"), "faster_coco_eval")["type"]
        'FastCocoMetric'
    """
    if backend not in EVALUATOR_BACKENDS:
        raise ValueError(f"Expected argument `evaluator_backend` to be one of {EVALUATOR_BACKENDS}, but got {backend!r}.")
    if backend == "pycocotools":
        return evaluator_cfg
    if not _FASTER_COCO_EVAL:
        raise ModuleNotFoundError(f"evaluator_backend='faster_coco_eval' needs faster-coco-eval. {_FASTER_COCO_EVAL}")

    def swap(cfg: Any) -> Any:
        if isinstance(cfg, Mapping):
            cfg = dict(cfg)
            if str(cfg.get("type", "")).split(".")[-1] == "CocoMetric":
                cfg["type"] = "FastCocoMetric"
            if "metrics" in cfg:
                cfg["metrics"] = swap(cfg["metrics"])
            return cfg
        if isinstance(cfg, Sequence) and not isinstance(cfg, str):
            return [swap(c) for c in cfg]
        return cfg

    return swap(evaluator_cfg)
