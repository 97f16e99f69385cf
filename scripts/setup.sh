#!/usr/bin/env bash
# Set up (or check) the project's virtual environment: torch, mmcv with its compiled ops, mmdet and
# mmdet-lightning with its dev extra. Idempotent; a second run with nothing changed takes seconds.
#   VENV=.venv           where the environment lives
#   PYTHON=python3       interpreter that creates it
#   TORCH_SPEC=torch==2.13.0   torch to install when the environment has none (a CUDA build already
#                              installed is kept)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
MMCV_SPEC=${MMCV_SPEC:-mmcv==2.1.0}

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PY="$VENV/bin/python"
stamp="$VENV/.mmdet-lightning-setup"
fingerprint=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$fingerprint" ] \
    && "$PY" -c "import mmcv.ops, mmdet, mmdet_lightning" 2>/dev/null; then
  echo "setup: $VENV is up to date"
  exit 0
fi

pip() { "$PY" -m pip --disable-pip-version-check "$@"; }
if ! "$PY" -c "import torch" 2>/dev/null; then
  echo "setup: installing $TORCH_SPEC"
  pip install -q "$TORCH_SPEC"
fi
if ! "$PY" -c "import mmcv.ops" 2>/dev/null; then
  # mmcv 2.1 has no wheel for recent torch: build it with its C++/CUDA ops against the installed torch.
  # The first build takes about 10 minutes on 2 cores; pip caches the wheel for later set-ups.
  echo "setup: building $MMCV_SPEC with compiled ops"
  pip install -q "numpy<2" ninja wheel "setuptools<70"
  MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} pip install -q --no-build-isolation "$MMCV_SPEC" \
    "numpy<2" "opencv-python>=4.8,<4.12"
fi
# mmdet without its dependencies (they are in pyproject.toml) so pip never touches the built mmcv;
# then the package, which also pins a setuptools that still has pkg_resources (needed by mmengine).
pip install -q --no-deps "mmdet==3.3.0"
pip install -q -e ".[dev]"
"$PY" -c "import mmcv.ops, mmdet, mmdet_lightning; print('setup: ok, torch', __import__('torch').__version__, \
'mmcv', mmcv.__version__, 'mmdet', mmdet.__version__)"
echo "$fingerprint" > "$stamp"
