#!/usr/bin/env bash
# Set up (or check) the project's virtual environment: torch, mmcv, mmdet and mmdet-lightning with its dev and zoo
# extras (zoo: the packages some model zoo families need, wheels only).
# Idempotent; a second run with nothing changed takes seconds.
#   VENV=.venv           where the environment lives
#   PYTHON=python3       interpreter that creates it
#   TORCH_SPEC=torch==2.13.0   torch to install when the environment has none (a CUDA build already
#                              installed is kept)
#   MMCV_OPS=lite        lite (default): mmcv-lite, mmcv's pure-python distribution, wheels only, no compiler;
#                        mmcv's compiled ops are then served in PyTorch by mmdet_lightning.mmcv_ext. An mmcv with
#                        compiled ops already installed is kept.
#                        compiled: mmcv built from source with its C++ (and CUDA, with nvcc) ops; about 10 minutes
#                        on 2 cores the first time, pip caches the wheel. Replaces an installed mmcv-lite.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
MMCV_OPS=${MMCV_OPS:-lite}
MMCV_SPEC=${MMCV_SPEC:-mmcv==2.1.0}
MMCV_LITE_SPEC=${MMCV_LITE_SPEC:-mmcv-lite==2.1.0}
case "$MMCV_OPS" in
  lite|compiled) ;;
  *) echo "setup: MMCV_OPS=$MMCV_OPS: expected 'lite' or 'compiled'" >&2; exit 2 ;;
esac

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PY="$VENV/bin/python"
stamp="$VENV/.mmdet-lightning-setup"
fingerprint=$( (cat pyproject.toml scripts/setup.sh; echo "MMCV_OPS=$MMCV_OPS") | sha256sum | cut -c1-16)
# mmdet_lightning first: where mmcv has no compiled ops it serves mmcv._ext before mmcv.ops needs it
check="import mmdet_lightning, mmcv.ops, mmdet"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$fingerprint" ] && "$PY" -c "$check" 2>/dev/null; then
  echo "setup: $VENV is up to date"
  exit 0
fi

pip() { "$PY" -m pip --disable-pip-version-check "$@"; }
has_compiled_ops() { "$PY" -c "import mmcv._ext" 2>/dev/null; }  # without mmdet_lightning: only a compiled one
has_dist() { "$PY" -c "import importlib.metadata as m, sys; m.distribution(sys.argv[1])" "$1" 2>/dev/null; }

if ! "$PY" -c "import torch" 2>/dev/null; then
  echo "setup: installing $TORCH_SPEC"
  pip install -q "$TORCH_SPEC"
fi
extras="dev,zoo"
if has_compiled_ops; then
  echo "setup: keeping the installed mmcv with compiled ops"
elif [ "$MMCV_OPS" = compiled ]; then
  # mmcv 2.1 has no wheel for recent torch: build it with its C++/CUDA ops against the installed torch.
  # The first build takes about 10 minutes on 2 cores; pip caches the wheel for later set-ups.
  if has_dist mmcv-lite; then
    echo "setup: removing mmcv-lite (the compiled mmcv replaces it: both install the mmcv package)"
    pip uninstall -q -y mmcv-lite
  fi
  echo "setup: building $MMCV_SPEC with compiled ops"
  pip install -q "numpy<2" ninja wheel "setuptools<70"
  MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} pip install -q --no-build-isolation "$MMCV_SPEC" \
    "numpy<2" "opencv-python>=4.8,<4.12"
elif has_dist mmcv; then
  echo "setup: keeping the installed mmcv (without compiled ops: mmdet_lightning serves them in PyTorch)"
else
  # no compiler: mmcv's pure-python distribution, installed with the package in one resolver pass
  extras="dev,zoo,mmcv-lite"
fi
pip install -q -e ".[$extras,grounding]" $([ "$extras" = "dev,zoo,mmcv-lite" ] && echo "$MMCV_LITE_SPEC")
"$PY" -c "$check; from mmdet_lightning.mmcv_ext import ops_backend; print('setup: ok, torch', \
__import__('torch').__version__, 'mmcv', mmcv.__version__, '(ops: ' + ops_backend() + ')', 'mmdet', mmdet.__version__)"
echo "$fingerprint" > "$stamp"
