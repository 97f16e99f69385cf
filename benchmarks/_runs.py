"""What the benchmark scripts share: one measured run in a fresh process, reporting JSON on its last line."""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any, Sequence


def run_json(command: Sequence[str], **env: str) -> dict[str, Any]:
    """Run ``command`` in a fresh process (warnings silenced, ``env`` added) and parse its last stdout line."""
    out = subprocess.run(list(command), check=True, capture_output=True, text=True,
                         env={**os.environ, "PYTHONWARNINGS": "ignore", **env})
    return json.loads(out.stdout.strip().splitlines()[-1])
