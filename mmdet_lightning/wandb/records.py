"""Read the records of a W&B offline run back from its transaction log (``run-<id>.wandb``).

The file is a LevelDB-style log: a 7-byte header (``:W&B``, magic, version), then 32 KiB blocks of
chunks, each with a 7-byte header (checksum, length, type FULL/FIRST/MIDDLE/LAST) that together carry
one serialized ``wandb.proto.wandb_internal_pb2.Record``. This is what ``wandb sync`` uploads, so
reading it shows exactly what an offline run will send.

Example::
    >>> records = read_records("wandb/offline-run-20260101_000000-abc/run-abc.wandb")  # doctest: +SKIP
    >>> history(records)[0]["trainer/global_step"]  # doctest: +SKIP
    0
"""

from __future__ import annotations

import json
import os
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wandb.proto.wandb_internal_pb2 import Record

__all__ = ["read_records", "history", "artifacts", "find_run_file", "summary", "logged_table"]

_FILE_HEADER = 7
_BLOCK = 32768
_CHUNK_HEADER = 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _payloads(data: bytes) -> Iterator[bytes]:
    if data[:4] != b":W&B":
        raise ValueError("not a W&B transaction log (missing ':W&B' header)")
    pos, parts = _FILE_HEADER, []
    while pos + _CHUNK_HEADER <= len(data):
        space = _BLOCK - pos % _BLOCK
        if space < _CHUNK_HEADER:  # block trailer padding
            pos += space
            continue
        _checksum, length, kind = struct.unpack("<IHB", data[pos:pos + _CHUNK_HEADER])
        pos += _CHUNK_HEADER
        chunk = data[pos:pos + length]
        pos += length
        if kind == 0 and length == 0:  # zero padding at the end of a block
            continue
        if kind in (_FULL, _FIRST):
            parts = [chunk]
        else:
            parts.append(chunk)
        if kind in (_FULL, _LAST):
            yield b"".join(parts)
            parts = []


def read_records(path: str | os.PathLike, finished_within: float = 30.0) -> list[Record]:
    """All records of a ``.wandb`` transaction log, in order.

    wandb's service writes the log behind the run, so right after ``wandb.finish()`` its end may not be on
    disk yet: the log is read again until it holds the run's ``exit`` record or ``finished_within`` seconds
    have passed (pass 0 for a run that was killed and will never finish).
    """
    from wandb.proto import wandb_internal_pb2

    deadline = time.monotonic() + finished_within
    while True:
        records = []
        for payload in _payloads(Path(path).read_bytes()):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(payload)
            records.append(record)
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() >= deadline:
            return records
        time.sleep(0.2)


def find_run_file(wandb_dir: str | os.PathLike) -> Path:
    """The single ``offline-run-*/run-*.wandb`` file under a ``wandb`` folder (or its parent)."""
    files = sorted(Path(wandb_dir).rglob("offline-run-*/run-*.wandb"))
    if len(files) != 1:
        raise FileNotFoundError(f"expected one offline run under {wandb_dir}, found {[str(f) for f in files]}")
    return files[0]


def history(records: list[Record]) -> list[dict[str, Any]]:
    """Each ``history`` record as a dict of its decoded values (``_step`` included)."""
    rows = []
    for record in records:
        if record.WhichOneof("record_type") == "history":
            row = {}
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                row[key] = json.loads(item.value_json)
            rows.append(row)
    return rows


def artifacts(records: list[Record]) -> list[Any]:
    """The ``artifact`` records (name, type, aliases, metadata JSON, manifest) in logging order."""
    return [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"]


def summary(records: list[Record]) -> dict[str, Any]:
    """The run summary as the last ``summary`` records left it (top-level keys only)."""
    found: dict[str, Any] = {}
    for record in records:
        if record.WhichOneof("record_type") == "summary":
            for item in record.summary.update:
                key = item.key or "/".join(item.nested_key)
                found[key] = json.loads(item.value_json)
    return found


def logged_table(run_file: str | os.PathLike, row: dict[str, Any], key: str) -> dict[str, Any]:
    """The JSON of table ``key`` logged with ``run.log({key: wandb.Table(...)})`` in history ``row``
    (a W&B chart's table is ``<key>_table``): ``{"columns": [...], "data": [[...], ...]}``.

    Example::
        >>> rows = [r for r in history(records) if "eval/per_class_ap/path" in r]  # doctest: +SKIP
        >>> logged_table(run_file, rows[-1], "eval/per_class_ap")["columns"][0]  # doctest: +SKIP
        'class'
    """
    path = row.get(f"{key}/path") or (row.get(key) or {}).get("path")
    if path is None:
        raise KeyError(f"no table {key!r} in this history row (keys: {sorted(row)})")
    return json.loads((Path(run_file).parent / "files" / path).read_text())
