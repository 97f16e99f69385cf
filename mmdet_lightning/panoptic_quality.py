"""The parts of panopticapi that mmdet's panoptic code imports, for installs without panopticapi.

panopticapi (COCO's panoptic toolkit) is not on the package registries, and mmdet 3.3 imports it for
``LoadPanopticAnnotations`` (``utils.rgb2id``), ``CocoPanopticMetric`` and its ``pq_compute_multi_core``
(``evaluation.PQStat``, ``VOID``, ``OFFSET``, ``utils.rgb2id`` / ``id2rgb``). The matching and the per-image
statistics are mmdet's own code (``mmdet.evaluation.functional.panoptic_utils``); what it takes from panopticapi
is the id <-> colour encoding of panoptic PNGs and the accumulator that turns per-class IoU sums and TP / FP / FN
counts into PQ, SQ and RQ. They are written here to panopticapi's definitions (same float operations in the same
order, so the same numbers to the last bit; ``tests/test_panoptic.py`` compares with hotcoco's independent
``pq_compute``), and :func:`install_panopticapi` makes mmdet use them where panopticapi is not installed.

Example::
    >>> import numpy as np
    >>> int(rgb2id(id2rgb(np.array([[70000]])))[0, 0])
    70000
    >>> stat = PQStat()
    >>> stat[1].tp, stat[1].iou, stat[2].fn = 1, 0.8, 1
    >>> all_, per_class = stat.pq_average({1: {"isthing": 1}, 2: {"isthing": 0}}, isthing=None)
    >>> round(all_["pq"], 3), all_["n"], per_class[2] == {"pq": 0.0, "sq": 0.0, "rq": 0.0}
    (0.4, 2, True)
"""

from __future__ import annotations

import sys
import types
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["OFFSET", "VOID", "PQStat", "PQStatCat", "rgb2id", "id2rgb", "install_panopticapi"]

#: panopticapi's constants: the pair (ground truth id, predicted id) is encoded as ``gt * OFFSET + pred``, and
#: segment id 0 is unlabelled ("void")
OFFSET = 256 * 256 * 256
VOID = 0


def rgb2id(color: Any) -> Any:
    """The segment ids of a panoptic PNG's (H, W, 3) RGB array (``R + 256 * G + 256**2 * B``); an RGB triple's id."""
    if isinstance(color, np.ndarray) and color.ndim == 3:
        if color.dtype == np.uint8:
            color = color.astype(np.int32)
        return color[:, :, 0] + 256 * color[:, :, 1] + 256 * 256 * color[:, :, 2]
    return int(color[0] + 256 * color[1] + 256 * 256 * color[2])


def id2rgb(id_map: Any) -> Any:
    """The RGB encoding (uint8, ``(*shape, 3)``) of an array of segment ids; a list ``[r, g, b]`` for one id."""
    if isinstance(id_map, np.ndarray):
        rest = id_map.copy()
        rgb = np.zeros((*id_map.shape, 3), dtype=np.uint8)
        for channel in range(3):
            rgb[..., channel] = rest % 256
            rest //= 256
        return rgb
    color = []
    for _ in range(3):
        color.append(id_map % 256)
        id_map //= 256
    return color


class PQStatCat:
    """One class's sums: IoU of the matched segments, true positives, false positives, false negatives.

    Example::
        >>> stat = PQStatCat()
        >>> stat.tp += 2
        >>> (stat.iou, stat.tp, stat.fp, stat.fn)
        (0.0, 2, 0, 0)
    """

    def __init__(self) -> None:
        self.iou = 0.0
        self.tp = 0
        self.fp = 0
        self.fn = 0

    def __iadd__(self, other: PQStatCat) -> PQStatCat:
        self.iou += other.iou
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn
        return self


class PQStat:
    """Per-class :class:`PQStatCat` (by category id), summed over images and processes; PQ / SQ / RQ from them.

    Example::
        >>> a, b = PQStat(), PQStat()
        >>> a[3].tp, b[3].fp = 1, 1
        >>> a += b
        >>> (a[3].tp, a[3].fp)
        (1, 1)
    """

    def __init__(self) -> None:
        self.pq_per_cat: defaultdict[int, PQStatCat] = defaultdict(PQStatCat)

    def __getitem__(self, label: int) -> PQStatCat:
        return self.pq_per_cat[label]

    def __iadd__(self, other: PQStat) -> PQStat:
        for label, stat in other.pq_per_cat.items():
            self.pq_per_cat[label] += stat
        return self

    def pq_average(self, categories: Mapping[int, Mapping[str, Any]],
                   isthing: bool | None) -> tuple[dict[str, float], dict[int, dict[str, float]]]:
        """The mean PQ, SQ and RQ over the classes of ``categories`` (id -> COCO category with ``isthing``) that have
        a segment (``n`` of them), all classes (``isthing=None``), things or stuff; and each class's values."""
        pq_sum, sq_sum, rq_sum, n = 0.0, 0.0, 0.0, 0
        per_class: dict[int, dict[str, float]] = {}
        for label, info in categories.items():
            if isthing is not None and (info["isthing"] == 1) != isthing:
                continue
            stat = self.pq_per_cat[label]
            iou, tp, fp, fn = stat.iou, stat.tp, stat.fp, stat.fn
            if tp + fp + fn == 0:
                per_class[label] = {"pq": 0.0, "sq": 0.0, "rq": 0.0}
                continue
            n += 1
            pq = iou / (tp + 0.5 * fp + 0.5 * fn)
            sq = iou / tp if tp != 0 else 0
            rq = tp / (tp + 0.5 * fp + 0.5 * fn)
            per_class[label] = {"pq": pq, "sq": sq, "rq": rq}
            pq_sum += pq
            sq_sum += sq
            rq_sum += rq
        return {"pq": pq_sum / n, "sq": sq_sum / n, "rq": rq_sum / n, "n": n}, per_class


def _modules() -> dict[str, types.ModuleType]:
    package = types.ModuleType("panopticapi", "mmdet_lightning.panoptic_quality standing in for panopticapi")
    evaluation = types.ModuleType("panopticapi.evaluation")
    utils = types.ModuleType("panopticapi.utils")
    evaluation.__dict__.update(OFFSET=OFFSET, VOID=VOID, PQStat=PQStat, PQStatCat=PQStatCat)
    utils.__dict__.update(rgb2id=rgb2id, id2rgb=id2rgb)
    package.__dict__.update(evaluation=evaluation, utils=utils, __path__=[])
    return {"panopticapi": package, "panopticapi.evaluation": evaluation, "panopticapi.utils": utils}


def install_panopticapi() -> bool:
    """Make mmdet's panoptic code work without panopticapi: where ``import panopticapi`` fails, these definitions
    become its ``panopticapi.evaluation`` / ``panopticapi.utils`` modules, and mmdet's modules that imported it at
    import time (and found nothing) get them. Returns whether they were installed (False: panopticapi is there,
    or they already were). Idempotent.

    Example::
        >>> install_panopticapi() in (True, False)
        True
        >>> from panopticapi.utils import rgb2id as loaded
        >>> loaded([1, 1, 0])
        257
    """
    try:
        import panopticapi  # noqa: F401
    except ImportError:
        pass
    else:
        return False
    modules = _modules()
    sys.modules.update(modules)
    names = {"panopticapi": modules["panopticapi"], "PQStat": PQStat, "VOID": VOID, "OFFSET": OFFSET,
             "rgb2id": rgb2id, "id2rgb": id2rgb}
    for module_name in ("mmdet.evaluation.functional.panoptic_utils", "mmdet.evaluation.metrics.coco_panoptic_metric",
                        "mmdet.apis.det_inferencer"):
        module = sys.modules.get(module_name)
        if module is None:  # imported later: finds panopticapi in sys.modules
            continue
        for name, value in names.items():
            if name in vars(module):
                setattr(module, name, value)
    return True
