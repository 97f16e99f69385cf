"""Export every model-zoo family that trains (``pass`` in docs/model_zoo.md) to ONNX and compare with PyTorch.

For each family its representative config is adapted to a tiny synthetic dataset as ``tools/model_zoo_sweep.py``
does (``mmdet_lightning.model_zoo``: 3 classes, 128 px images, no pretrained weights), built with its initial
weights and heads made decisive (``make_heads_decisive``, as tests/test_export.py does), and

1. checked (``check_exportable``, ``deploy_pipeline``): families that cannot be exported are refused here with
   the ``ExportError`` naming the op, before any tracing; all of these in one process (seconds each);
2. the others exported (``export_onnx``, dynamic size) in a fresh process each with a time limit, run with
   ``OnnxDetector`` on the 2 validation images and a non-square copy, and compared with mmdet's own
   ``test_step`` (``TorchPredictor``, ``compare_detections``: tests/test_export.py's tolerances, boxes within
   1e-3 of the image side, scores within 1e-4, same labels, every detection paired).

The table goes into docs/export.md between the sweep's markers.

    python tools/export_sweep.py                          # every family that passes (tens of minutes)
    python tools/export_sweep.py --families retinanet atss --timeout 300
    python tools/export_sweep.py --resume                 # skip families already in the results file
    python tools/export_sweep.py --table-only             # rewrite the doc's table from the results file
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]  # this checkout
import model_zoo_sweep as zoo  # noqa: E402  (the sweep machinery: processes, time limits, results file)

REPO = zoo.REPO
MARKER = zoo.MARKER
BEGIN, END = "<!-- export_sweep: begin (tools/export_sweep.py writes this table) -->", "<!-- export_sweep: end -->"
STATUS_ORDER = {"equal": 0, "differs": 1, "cannot-export": 2, "fail": 3, "timeout": 4, "exportable": 5}


def _module(family: str, data_root: str) -> Any:
    """The family's adapted config as an ``MMDetModule`` with initial weights and decisive heads, in eval mode."""
    import torch

    from mmdet_lightning import MMDetModule
    from mmdet_lightning.export.reference import make_heads_decisive
    from mmdet_lightning.model_zoo import _load_adapted

    cfg = _load_adapted(family, data_root)
    torch.manual_seed(0)
    module = MMDetModule(cfg)
    make_heads_decisive(module.model)
    return module.eval()


def check_family(family: str, data_root: str) -> dict[str, Any]:
    """Build ``family``'s model and check it for export; ``cannot-export`` with the op, else ``exportable``."""
    from mmdet_lightning.export import ExportError, check_exportable, deploy_pipeline
    from mmdet_lightning.export.families import describe_family

    start = time.perf_counter()
    record: dict[str, Any] = {"family": family, "config": zoo._representative(family)}
    try:
        module = _module(family, data_root)
        record["model"] = describe_family(module.model)
        check_exportable(module.model)
        deploy_pipeline(module.cfg)
        record["status"] = "exportable"
    except ExportError as error:
        record.update(status="cannot-export", op=error.op, reason=str(error))
    except Exception as error:  # noqa: BLE001  (a model that does not build here: recorded)
        record.update(status="fail", reason=_short(error))
    record["seconds"] = round(time.perf_counter() - start, 1)
    return record


def _short(error: BaseException) -> str:
    from mmdet_lightning.model_zoo import _short as short

    return short(error)


def run_one(family: str, data_root: str, work_dir: str) -> None:
    """In a fresh process: export ``family`` and compare onnxruntime with PyTorch; prints the record."""
    import cv2

    from mmdet_lightning.deploy import OnnxDetector
    from mmdet_lightning.export import ExportError, export_onnx
    from mmdet_lightning.export.families import describe_family
    from mmdet_lightning.export.reference import TorchPredictor, compare_detections

    start = time.perf_counter()
    record: dict[str, Any] = {"family": family, "config": zoo._representative(family)}
    try:
        module = _module(family, data_root)
        record["model"] = describe_family(module.model)
        work = Path(work_dir)
        work.mkdir(parents=True, exist_ok=True)
        images = sorted((Path(data_root) / "val").glob("*.png"))
        wide = work / "non_square.png"
        cv2.imwrite(str(wide), cv2.resize(cv2.imread(str(images[0])), (200, 150)))
        images.append(wide)
        export_start = time.perf_counter()
        path = export_onnx(module, work / f"{family}.onnx")
        record["export_seconds"] = round(time.perf_counter() - export_start, 1)
        reference, detector = TorchPredictor(module), OnnxDetector(path)
        worst = {"detections": 0, "box_diff": 0.0, "score_diff": 0.0}
        unmatched = []
        for image in images:
            expected, found = reference(image), detector(image)
            report = compare_detections(expected, found, cv2.imread(str(image)).shape[:2])
            worst["detections"] += len(expected["scores"])
            worst["box_diff"] = max(worst["box_diff"], report["box_diff"])
            worst["score_diff"] = max(worst["score_diff"], report["score_diff"])
            if "mask_iou_min" in report:
                worst["mask_iou_min"] = min(worst.get("mask_iou_min", 1.0), report["mask_iou_min"])
            if not report["matched"] or report.get("mask_iou_min", 1.0) < 0.99:
                unmatched.append(f"{image.name}: {report['count'][0]} PyTorch / {report['count'][1]} onnxruntime")
        record.update(worst, status="differs" if unmatched else "equal", images=len(images),
                      size_mib=round(path.stat().st_size / 2**20, 1))
        if unmatched:
            record["reason"] = "; ".join(unmatched)
    except ExportError as error:
        record.update(status="cannot-export", op=error.op, reason=str(error))
    except Exception as error:  # noqa: BLE001  recorded in the table
        record.update(status="fail", reason=_short(error))
    record["seconds"] = round(time.perf_counter() - start, 1)
    print(MARKER + json.dumps(record), flush=True)


def passing_families(doc: Path) -> list[str]:
    """The families that pass in docs/model_zoo.md."""
    return sorted(f for f, r in zoo.read_doc_table(doc).items() if r["status"] == "pass")


def _cell(record: dict[str, Any]) -> str:
    status = record["status"]
    if status in ("equal", "differs"):
        if not record.get("detections"):
            return "nothing detected on either side: equal, but nothing compared"
        text = (f"{record.get('detections', 0)} detections on {record.get('images', 0)} images; box diff "
                f"{record.get('box_diff', 0):.1e} of the side, score diff {record.get('score_diff', 0):.1e}")
        if "mask_iou_min" in record:
            text += f", min mask IoU {record['mask_iou_min']:.4f}"
        if status == "differs":
            text += f"; not paired: {record.get('reason', '')}"
        return text + f"; export {record.get('export_seconds', '')} s"
    if status == "exportable":
        return "passes the export check; not exported yet (the sweep was stopped first: `--resume` exports it)"
    reason = str(record.get("reason", ""))
    return reason.replace("|", "\\|")[:300]


def write_table(records: dict[str, dict[str, Any]], doc: Path) -> None:
    rows = sorted(records.values(), key=lambda r: (STATUS_ORDER.get(r["status"], 9), r["family"]))
    counts = {s: sum(r["status"] == s for r in rows) for s in STATUS_ORDER}
    ops: dict[str, int] = {}
    for r in rows:
        if r["status"] == "cannot-export":
            op = str(r.get("op") or "the export itself: torch.export, the ONNX translation or onnxruntime")
            ops[op] = ops.get(op, 0) + 1
    lines = [
        BEGIN,
        "",
        f"{len(rows)} families: " + ", ".join(f"{counts[s]} {s}" for s in STATUS_ORDER if counts[s]) + ".",
        "Refused by op or construct (`ExportError`'s `op`): "
        + ", ".join(f"`{op}` {n}" for op, n in sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))) + ".",
        "",
        "| family | config | model | result | details |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['family']} | `{r.get('config', '')}` | {r.get('model', '')} | {r['status']} "
                     f"| {_cell(r)} |")
    lines += ["", END]
    text = doc.read_text() if doc.is_file() else ""
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + "\n".join(lines) + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n## Coverage sweep\n\n" + "\n".join(lines) + "\n"
    doc.write_text(text)
    print(f"wrote {doc}: " + ", ".join(f"{counts[s]} {s}" for s in STATUS_ORDER if counts[s]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--families", nargs="*", help="families to run (default: those passing in docs/model_zoo.md)")
    parser.add_argument("--timeout", type=int, default=300, help="seconds per exported family")
    parser.add_argument("--jobs", type=int, default=1, help="families exported at the same time")
    parser.add_argument("--work-dir", default=str(REPO / "work_dirs" / "export_sweep"))
    parser.add_argument("--results", default=str(REPO / "work_dirs" / "export_sweep" / "results.jsonl"))
    parser.add_argument("--doc", default=str(REPO / "docs" / "export.md"))
    parser.add_argument("--zoo-doc", default=str(REPO / "docs" / "model_zoo.md"))
    parser.add_argument("--resume", action="store_true", help="skip the families already in --results")
    parser.add_argument("--table-only", action="store_true", help="only rewrite --doc from --results")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--data-root", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        run_one(args.one, args.data_root, args.work_dir)
        return
    results = Path(args.results)
    if not args.table_only:
        families = args.families or passing_families(Path(args.zoo_doc))
        checked: list[str] = []
        if args.resume:  # skip the families with a result; those only checked go on to their export
            done = zoo.read_results(results)
            checked = [f for f in families if done.get(f, {}).get("status") == "exportable"]
            families = [f for f in families if f not in done]
        data_root = zoo.sweep_dataset(Path(args.work_dir))
        results.parent.mkdir(parents=True, exist_ok=True)
        exportable = list(checked)
        for family in families:  # the cheap check, in this process: most refusals need no tracing
            record = check_family(family, str(data_root))
            print(f"{family:24s} {record['status']:14s} {record['seconds']:6.1f} s  {record.get('reason', '')[:120]}",
                  flush=True)
            if record["status"] == "exportable":
                exportable.append(family)
            with results.open("a") as out:  # "exportable" until its export's record follows
                out.write(json.dumps(record) + "\n")

        def command(family: str, data_root: Path, work_dir: Path) -> list[str]:
            return [sys.executable, __file__, "--one", family, "--data-root", str(data_root),
                    "--work-dir", str(work_dir)]

        zoo.sweep(exportable, args, one_command=command)
    records = zoo.read_results(results)
    write_table(records, Path(args.doc))


if __name__ == "__main__":
    main()
