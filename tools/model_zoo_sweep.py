"""Train every mmdet 3.3 config family's representative for a few iterations through MMDetModule.

Each family runs in a fresh subprocess with a timeout (pretrained weights off, adapted to a small synthetic
dataset, see ``mmdet_lightning.model_zoo``): a few training iterations, a validation and a predict under
``pl.Trainer``. One JSON line per family goes to ``--results``; the table goes to ``docs/model_zoo.md``.

    python tools/model_zoo_sweep.py                       # every family (an hour or more on 2 CPU cores)
    python tools/model_zoo_sweep.py --families retinanet yolox --timeout 300
    python tools/model_zoo_sweep.py --resume              # skip families already in the results file
    python tools/model_zoo_sweep.py --table-only          # rewrite docs/model_zoo.md from the results file
    python tools/model_zoo_sweep.py --ops                 # which mmcv ops each family's model uses (minutes)

``--ops`` fills the table's "no compiler" column: it builds each family's adapted model (no training) and lists
the ``mmcv.ops`` modules in it and the ``mmcv._ext`` functions those modules call, plus the ones reached by
function (NMS in every detector's post-processing, Soft-NMS and ``nms_match`` where the config asks for them,
RoIAlign in mask targets); a family runs without mmcv's compiled ops when all of them have a PyTorch
implementation in ``mmdet_lightning.mmcv_ext`` (derived from the ops, not from training in that mode).
The doc's rows are kept for the families that the results file does not hold, so a sweep of a few families
updates their rows only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MARKER = "MODEL_ZOO_RESULT "
STATUS_ORDER = {"pass": 0, "fail": 1, "timeout": 2, "not-run": 3, "not-covered": 4}


def run_one(family: str, data_root: str, work_dir: str, iterations: int, panoptic_root: str | None = None) -> None:
    from mmdet_lightning.model_zoo import run_family

    record = run_family(family, data_root, work_dir, iterations=iterations, panoptic_root=panoptic_root)
    print(MARKER + json.dumps(record), flush=True)


def sweep_dataset(work: Path) -> Path:
    """The sweep's synthetic dataset (8 training, 2 validation images) under ``work``."""
    from mmdet_lightning.synthetic import ShapesConfig, make_shapes_dataset

    return make_shapes_dataset(work / "shapes", ShapesConfig(num_train=8, num_val=2, seed=0))


def sweep(families: list[str], args: argparse.Namespace,
          one_command: Callable[[str, Path, Path], list[str]] | None = None) -> None:
    """Run each family in a fresh process with ``args.timeout``, ``args.jobs`` at a time; one JSON record a
    family (the process's last ``MARKER`` line, else ``fail`` / ``timeout``) appended to ``args.results``.
    ``one_command(family, data_root, work_dir)`` is the process's command (default: this script's ``--one``)."""
    from mmdet_lightning.synthetic import ShapesConfig, make_shapes_dataset

    work = Path(args.work_dir)
    data_root = sweep_dataset(work)
    # the same shapes with a floor and COCO panoptic annotations, for the panoptic models
    panoptic_root = make_shapes_dataset(work / "shapes_panoptic",
                                        ShapesConfig(num_train=8, num_val=2, seed=0, panoptic=True))
    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    threads = str(max(1, (os.cpu_count() or 1) // args.jobs))
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", OMP_NUM_THREADS=threads)
    lock = threading.Lock()

    def run(family: str) -> None:
        command = one_command(family, data_root, work / family) if one_command is not None else [
            sys.executable, __file__, "--one", family, "--data-root", str(data_root),
            "--panoptic-root", str(panoptic_root), "--work-dir", str(work / family),
            "--iterations", str(args.iterations)]
        start = time.perf_counter()
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout, env=env)
            lines = [line for line in done.stdout.splitlines() if line.startswith(MARKER)]
            if lines:
                record = json.loads(lines[-1][len(MARKER):])
            else:
                tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
                record = {"family": family, "status": "fail", "reason": f"crashed (exit {done.returncode}): {tail[0]}"}
        except subprocess.TimeoutExpired:
            record = {"family": family, "status": "timeout", "reason": f"still running after {args.timeout} s"}
        record.setdefault("seconds", round(time.perf_counter() - start, 1))
        record.setdefault("config", _representative(family))
        with lock:
            with results.open("a") as out:
                out.write(json.dumps(record) + "\n")
            print(f"{family:24s} {record['status']:12s} {record['seconds']:7.1f} s  {record.get('reason', '')[:150]}",
                  flush=True)

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        list(pool.map(run, families))


def _representative(family: str) -> str:
    from mmdet_lightning.model_zoo import REPRESENTATIVES

    return REPRESENTATIVES.get(family, "")


def ops_of_family(family: str, data_root: str) -> dict[str, Any]:
    """The mmcv ops that ``family``'s adapted model uses, and whether mmdet_lightning.mmcv_ext covers them."""
    import re

    import mmcv

    from mmdet_lightning.mmcv_ext import torch_ext
    from mmdet_lightning.model_zoo import _load_adapted

    record: dict[str, Any] = {"family": family}
    try:
        cfg = _load_adapted(family, data_root)
        from mmdet.registry import MODELS

        try:
            import torch

            with torch.device("meta"):  # the modules only: no memory, no weight initialisation
                model = MODELS.build(cfg.model)
        except Exception:  # noqa: BLE001  (a constructor that needs real tensors)
            model = MODELS.build(cfg.model)
    except Exception as err:  # noqa: BLE001  (a family whose model does not build here)
        record["ops_error"] = f"{type(err).__name__}: {str(err)[:200]}"
        return record
    ops_dir = Path(mmcv.__file__).parent / "ops"
    modules = sorted({type(m).__module__ for m in model.modules() if type(m).__module__.startswith("mmcv.ops.")})
    ext: set[str] = set()
    for name in modules:
        source = (ops_dir / (name.rsplit(".", 1)[1] + ".py")).read_text()
        for block in re.findall(r"load_ext\(\s*'_ext',\s*\[(.*?)\]\)", source, re.S):
            ext.update(re.findall(r"'(\w+)'", block))
    ext.add("nms")  # every detector's post-processing (batched_nms)
    text = cfg.pretty_text
    if "soft_nms" in text:
        ext.add("softnms")
    if "ScoreHLRSampler" in text:
        ext.add("nms_match")
    if "mask_head" in text or "mask_roi_extractor" in text:
        ext.update({"roi_align_forward", "roi_align_backward"})  # mask targets: BitmapMasks.crop_and_resize
    record["mmcv_ops"] = [m.split(".", 2)[2] for m in modules]
    record["ext"] = sorted(ext)
    record["stubbed"] = sorted(ext & set(torch_ext.STUBBED))
    return record


def ops_sweep(families: list[str], args: argparse.Namespace) -> None:
    """One process for every family (building models only); records to ``ops.jsonl`` beside --results."""
    data_root = sweep_dataset(Path(args.work_dir))
    out = Path(args.results).with_name("ops.jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as f:
        for family in families:
            record = ops_of_family(family, str(data_root))
            f.write(json.dumps(record) + "\n")
            f.flush()
            verdict = record.get("ops_error") or (", ".join(record["stubbed"]) or "all in PyTorch")
            print(f"{family:24s} {verdict[:150]}", flush=True)


def no_compiler_cell(record: dict[str, Any] | None) -> str:
    if record is None:
        return ""
    if "ops_error" in record:
        return "unknown (model not built here)"
    if record["stubbed"]:
        return "no: " + ", ".join(f"`{op}`" for op in record["stubbed"])
    uses = [m for m in record.get("mmcv_ops", []) if m not in ("merge_cells", "corner_pool", "cc_attention")]
    return "yes" + (f" ({', '.join(uses)})" if uses else "")


def read_doc_table(doc: Path) -> dict[str, dict[str, Any]]:
    """The rows already in the doc (when the results file that wrote them is not here)."""
    records: dict[str, dict[str, Any]] = {}
    if not doc.is_file():
        return records
    header: list[str] = []
    for line in doc.read_text().splitlines():
        if not line.startswith("| "):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if cells[0] == "family":
            header = cells
            continue
        if not header:
            continue
        row = dict(zip(header, cells, strict=False))
        record: dict[str, Any] = {"family": row["family"], "config": row["config"].strip("`"),
                                  "status": row["status"], "reason": row.get("reason", "").replace("\\|", "|")}
        if row.get("seconds"):
            record["seconds"] = float(row["seconds"])
        if row.get("image px"):
            record["max_side"] = int(row["image px"])
        if row.get("no compiler"):
            record["no_compiler"] = row["no compiler"]
        if row.get("mmcv-lite sweep"):
            record["lite"] = row["mmcv-lite sweep"]
        records[row["family"]] = record
    return records


def read_results(path: Path) -> dict[str, dict[str, Any]]:
    """The latest record of each family in the results file."""
    records: dict[str, dict[str, Any]] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                records[record["family"]] = record
    return records


def lite_cell(record: dict[str, Any] | None) -> str:
    """The status of a family in a sweep run without compiled ops (``MMCV_OPS=lite``), with the reason when it
    did not pass."""
    if record is None:
        return ""
    if record["status"] in ("pass", "not-covered"):
        return record["status"]
    reason = str(record.get("reason", "")).replace("mmdet's Runner fails too: ", "").replace("|", "/")
    return f"{record['status']}: {reason[:90]}" + ("..." if len(reason) > 90 else "")


def _count_text(counts: dict[str, int]) -> str:
    """``"94 pass, 12 not-run, 9 not-covered"``: the statuses that occur, in table order."""
    return ", ".join(f"{counts[status]} {status}" for status in STATUS_ORDER if counts[status])


def write_table(records: dict[str, dict[str, Any]], doc: Path, iterations: int,
                ops: dict[str, dict[str, Any]] | None = None, lite: dict[str, dict[str, Any]] | None = None) -> None:
    ops, lite = ops or {}, lite or {}
    rows = sorted(records.values(), key=lambda r: (STATUS_ORDER.get(r["status"], 9), r["family"]))
    counts = {status: sum(r["status"] == status for r in rows) for status in STATUS_ORDER}
    lines = [
        "# mmdet 3.3 model zoo under MMDetModule",
        "",
        "Written by `python tools/model_zoo_sweep.py` (do not edit by hand). For each config family (a folder of",
        "mmdet's `configs`), its representative config is adapted to the synthetic shapes dataset",
        "(`mmdet_lightning.model_zoo.adapt_to_dataset`: 3 classes, and for panoptic models the panoptic mode's 2",
        "stuff classes and COCO panoptic PNGs; images shrunk to 128 px (256, then 512 when",
        "too small for the model under mmdet's runner too), no pretrained",
        "weights (a tenth of the learning rate, with gradient clipping, where the loss is NaN from scratch under",
        f"mmdet's runner too), SyncBN as BN) and trained for {iterations} iterations, validated and run in predict",
        "through `pl.Trainer`, with the config's `custom_hooks` as callbacks (`callbacks_from_config`), in a fresh",
        "process.",
        "",
        "- **pass**: trained (finite loss), validated (COCO metrics; PQ for panoptic models) and predicted.",
        "- **fail**: failed under MMDetModule although mmdet's own `Runner` trains the same adapted config.",
        "- **not-run**: mmdet's own `Runner` cannot run the config on this machine either; the reason is its error.",
        "- **not-covered**: a task this package does not train (video: multi-object tracking, re-identification,",
        "  video instance segmentation); `MMDetModule` refuses the config with this message.",
        "- **timeout**: did not finish within the sweep's per-family time limit on 2 CPU cores.",
        "",
        "**no compiler** (`--ops`): whether the family runs with mmcv-lite, the default set-up, where",
        "`mmdet_lightning.mmcv_ext` serves mmcv's compiled ops in PyTorch: *yes* (with the `mmcv.ops` modules the",
        "model uses) when every `mmcv._ext` function its `mmcv.ops` modules call, and NMS, Soft-NMS, `nms_match` and",
        "RoIAlign where the config reaches them, has a PyTorch implementation; *no* names the missing ops, which",
        "need `MMCV_OPS=compiled` (see the README). Derived from the built models' ops.",
        "",
        "**mmcv-lite sweep** (`--lite-results`): the same sweep run in the default set-up (mmcv-lite,",
        "`.venv-lite`, no compiled ops), measured: its status there, and its reason when it did not pass.",
        "",
        f"{len(rows)} families: {_count_text(counts)}.",
    ]
    lite_cells = {r["family"]: lite_cell(lite.get(r["family"])) or r.get("lite", "") for r in rows}
    lite_counts = {status: sum(cell.split(":")[0] == status for cell in lite_cells.values()) for status in STATUS_ORDER}
    if any(lite_counts.values()):
        lines.append(f"Without compiled ops (mmcv-lite sweep): {_count_text(lite_counts)}.")
    lines += [
        "",
        "| family | config | status | image px | seconds | no compiler | mmcv-lite sweep | reason |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        reason = str(r.get("reason", "")).replace("|", "\\|")
        side = r.get("max_side", 128) if r["status"] in ("pass", "fail") else ""  # 128: the first size tried
        lines.append(f"| {r['family']} | `{r.get('config', '')}` | {r['status']} | {side} "
                     f"| {r.get('seconds', '')} | {no_compiler_cell(ops.get(r['family'])) or r.get('no_compiler', '')} "
                     f"| {lite_cells[r['family']]} | {reason} |")
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text("\n".join(lines) + "\n")
    print(f"wrote {doc}: {_count_text(counts)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--families", nargs="*", help="families to run (default: all)")
    parser.add_argument("--timeout", type=int, default=180, help="seconds per family")
    parser.add_argument("--iterations", type=int, default=2, help="training iterations per family")
    parser.add_argument("--jobs", type=int, default=1, help="families run at the same time (CPU threads are shared)")
    parser.add_argument("--work-dir", default=str(REPO / "work_dirs" / "model_zoo"))
    parser.add_argument("--results", default=str(REPO / "work_dirs" / "model_zoo" / "results.jsonl"))
    parser.add_argument("--doc", default=str(REPO / "docs" / "model_zoo.md"))
    parser.add_argument("--resume", action="store_true", help="skip the families already in --results")
    parser.add_argument("--table-only", action="store_true", help="only rewrite --doc from --results")
    parser.add_argument("--lite-results", help="results file of the same sweep without compiled ops (mmcv-lite): "
                                               "fills the doc's mmcv-lite sweep column")
    parser.add_argument("--ops", action="store_true",
                        help="list each family's mmcv ops (builds the models, no training) for the no-compiler column")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--data-root", help=argparse.SUPPRESS)
    parser.add_argument("--panoptic-root", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        run_one(args.one, args.data_root, args.work_dir, args.iterations, args.panoptic_root)
        return
    from mmdet_lightning.model_zoo import REPRESENTATIVES

    if args.ops:
        ops_sweep(args.families or sorted(REPRESENTATIVES), args)
    elif not args.table_only:
        families = args.families or sorted(REPRESENTATIVES)
        unknown = sorted(set(families) - set(REPRESENTATIVES))
        if unknown:
            parser.error(f"unknown families {unknown}; expected some of {sorted(REPRESENTATIVES)}")
        if args.resume:
            done = read_results(Path(args.results))
            families = [f for f in families if f not in done]
        sweep(families, args)
    # the doc's rows, updated by the families run since: a sweep of a few families keeps the others' rows
    records = read_doc_table(Path(args.doc))
    for family, record in read_results(Path(args.results)).items():
        records[family] = {**records.get(family, {}), **record}
    lite = read_results(Path(args.lite_results)) if args.lite_results else None
    write_table(records, Path(args.doc), args.iterations, read_results(Path(args.results).with_name("ops.jsonl")),
                lite)


if __name__ == "__main__":
    main()
