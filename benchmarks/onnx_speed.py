"""Milliseconds per image: the exported detector on onnxruntime (CPU) against PyTorch eager, for the four models.

Both sides run the whole inference of one image file, as a serving process would: PyTorch is mmdet's test
pipeline + ``test_step`` (``inference_detector``'s path); onnxruntime is ``OnnxDetector`` (NumPy / OpenCV
pipeline + the graph + mask pasting). ``graph`` is onnxruntime's ``session.run`` alone. Each side runs
``--repeats`` passes over ``--images`` synthetic validation images after one warm-up pass, interleaved;
the table gives the median pass. Both use ``--threads`` threads (torch.set_num_threads, onnxruntime's
intra-op threads). Weights: the configs' initial weights with the heads' layers made decisive (the tests'
``_liven``) or ``--checkpoint name=path``; speed does not depend on them beyond the detection count, which
is printed.

    python benchmarks/onnx_speed.py --images 20 --repeats 3 --threads 1
    python benchmarks/onnx_speed.py --models retinanet faster_rcnn --checkpoint faster_rcnn=model.pth
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MODELS = {"retinanet": "shapes_retinanet.py", "faster_rcnn": "shapes_faster_rcnn.py",
          "mask_rcnn": "shapes_mask_rcnn.py", "rtmdet": "shapes_rtmdet.py"}


def _module(name: str, root: Path, checkpoint: str | None):
    import torch

    from mmdet_lightning import MMDetModule
    from mmdet_lightning.config import load_config, replace_data_root
    from tests.test_export import _calibrate_batch_norm, _liven

    cfg = replace_data_root(load_config(REPO / "configs" / "mmdet" / MODELS[name]), root)
    torch.manual_seed(0)
    module = MMDetModule(cfg, load_from=checkpoint)
    if checkpoint is None:
        _liven(module.model, heads=("bbox_head", "rpn_head", "roi_head"))
        if name == "rtmdet":
            _calibrate_batch_norm(module.model, sorted((root / "train").glob("*.png"))[:16])
    return module.eval()


def _each(predict: Callable[[Any], Any], inputs: list[Any]) -> list[Any]:
    """``predict`` of every input, in order (one timed side)."""
    return [predict(x) for x in inputs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--size", type=int, default=128, help="synthetic image side (the configs resize to 128)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--checkpoint", nargs="*", default=[], metavar="NAME=PATH")
    parser.add_argument("--out", default=None, help="folder for the data and .onnx files (default: a temporary one)")
    args = parser.parse_args()

    import torch

    from mmdet_lightning.deploy import OnnxDetector
    from mmdet_lightning.export import export_onnx
    from mmdet_lightning.export.reference import TorchPredictor
    from mmdet_lightning.synthetic import ShapesConfig, make_shapes_dataset

    torch.set_num_threads(args.threads)
    checkpoints = dict(item.split("=", 1) for item in args.checkpoint)
    out = Path(args.out or tempfile.mkdtemp(prefix="onnx_speed_"))
    root = make_shapes_dataset(out / "shapes", ShapesConfig(num_train=16, num_val=args.images, seed=0,
                                                            width=args.size, height=args.size))
    images = sorted((root / "val").glob("*.png"))
    rows = []
    for name in args.models:
        module = _module(name, root, checkpoints.get(name))
        start = time.perf_counter()
        path = export_onnx(module, out / f"{name}.onnx")
        export_s = time.perf_counter() - start
        torch_predict = TorchPredictor(module)
        onnx_predict = OnnxDetector(path, num_threads=args.threads)
        feeds = [onnx_predict.preprocess(image)[0] for image in images]
        sides = {
            "pytorch": functools.partial(_each, torch_predict, images),
            "onnxruntime": functools.partial(_each, onnx_predict, images),
            "graph": functools.partial(_each, onnx_predict.run, feeds),
        }
        times: dict[str, list[float]] = {side: [] for side in sides}
        for side in sides.values():  # warm-up
            side()
        for _ in range(args.repeats):
            for side, run in sides.items():
                start = time.perf_counter()
                run()
                times[side].append((time.perf_counter() - start) * 1000 / len(images))
        count = sum(len(onnx_predict(image)) for image in images) / len(images)
        medians = {side: statistics.median(values) for side, values in times.items()}
        rows.append((name, medians, count, export_s, path.stat().st_size / 2**20))
        print(f"{name}: {medians} ms/image, {count:.1f} detections/image", flush=True)
    print(f"\n{len(images)} images of {args.size}x{args.size}, {args.threads} thread(s), median of {args.repeats} "
          f"passes; torch {torch.__version__}")
    print("| model | PyTorch eager (ms/img) | onnxruntime, whole (ms/img) | onnxruntime, graph only (ms/img) | "
          "speed-up | detections/img | export (s) | .onnx (MiB) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, m, count, export_s, size in rows:
        print(f"| {name} | {m['pytorch']:.1f} | {m['onnxruntime']:.1f} | {m['graph']:.1f} | "
              f"{m['pytorch'] / m['onnxruntime']:.2f}x | {count:.1f} | {export_s:.0f} | {size:.1f} |")


if __name__ == "__main__":
    main()
