"""What the benchmark scripts share: one measured run in a fresh process, reporting JSON on its last line."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def run_json(command: Sequence[str], **env: str) -> dict[str, Any]:
    """Run ``command`` in a fresh process (warnings silenced, ``env`` added) and parse its last stdout line."""
    out = subprocess.run(list(command), capture_output=True, text=True,
                         env={**os.environ, "PYTHONWARNINGS": "ignore", **env})
    if out.returncode != 0:  # the child's own error, not only its exit code
        raise RuntimeError(f"{' '.join(command)} exited with {out.returncode}:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def package_of(repo: Path, ref: str, folder: str) -> str:
    """Extract the ``mmdet_lightning`` package of git revision ``ref`` of ``repo`` into ``folder`` (for PYTHONPATH)."""
    archive = subprocess.run(["git", "-C", str(repo), "archive", ref, "mmdet_lightning"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", folder], input=archive, check=True)
    return folder
