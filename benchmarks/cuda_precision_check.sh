#!/usr/bin/env bash
# The CUDA mixed-precision check of docs/benchmarks.md, as run on a lent GPU machine with no network access:
# it installs mmdet's stack from carried wheels (Python 3.12), builds mmcv 2.1.0's CUDA ops for sm_90 (about
# 3.5 minutes on 16 cores), then runs benchmarks/precision.py for fp32, 16-mixed and bf16-mixed.
# Prepare the wheels on a machine with a package index, in the repository root (.whl/ is not committed):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl \
#       mmengine==0.10.7 mmdet==3.3.0 addict yapf termcolor platformdirs pycocotools shapely terminaltables setuptools==69.5.1
#   pip download --no-deps --no-binary=:all: --no-build-isolation -d .whl mmcv==2.1.0
# Output goes to $OUT (default: work_dirs/cuda_check).
set -u
OUT=${OUT:-work_dirs/cuda_check}; mkdir -p "$OUT"
T0=$(date +%s)
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, numpy, cv2; print('torch', torch.__version__, 'numpy', numpy.__version__, 'cv2', cv2.__version__, torch.cuda.get_device_name())"
mkdir -p /tmp/mmcv && tar xzf .whl/mmcv-2.1.0.tar.gz -C /tmp/mmcv
cd /tmp/mmcv/mmcv-2.1.0
MMCV_WITH_OPS=1 FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 timeout 400 python3 setup.py build_ext --inplace > $OUT/mmcv_build.log 2>&1
echo "mmcv build rc=$? after $(( $(date +%s) - T0 )) s"; tail -5 $OUT/mmcv_build.log
cd - > /dev/null
export PYTHONPATH=/tmp/mmcv/mmcv-2.1.0:/tmp/site:$PWD
python3 - <<'PY' || exit 1
import torch
from mmcv.ops import nms, RoIAlign
boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [50, 50, 60, 60]], dtype=torch.float32, device="cuda")
print("cuda nms", nms(boxes, torch.tensor([0.9, 0.8, 0.7], device="cuda"), 0.5)[1].tolist())
PY
LEFT=$(( 560 - ($(date +%s) - T0) ))
echo "benchmark gets $LEFT s"
timeout $LEFT python3 benchmarks/precision.py --accelerator gpu --precisions 32-true,16-mixed,bf16-mixed --repeats 1 --iters 40 --epochs 3 --map-configs all --data-root /tmp/bench 2>$OUT/bench_err.log | tee $OUT/precision_gpu.md
echo "done after $(( $(date +%s) - T0 )) s"; tail -c 3000 $OUT/bench_err.log
