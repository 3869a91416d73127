#!/usr/bin/env bash
# The real CUDA build, on a machine without a GPU (make cuda-build-check; a developer command, not
# part of CI: it needs a CUDA build of torch, ~5 GB). With FORCE_CUDA=1 and neither CUDA_HOME nor
# TORCH_CUDA_ARCH_LIST set, as a user would run it, the extension must build and link its CUDA
# kernels for the default architectures, load, register a CUDA kernel for every op, and pass the
# test suite (whose CUDA tests skip without a GPU).
#
# Usage: tools/cuda_build_check.sh PYTHON
#   PYTHON: an interpreter with a CUDA torch and the test packages, e.g. a venv made with
#     python3.12 -m venv /work/cuda-venv
#     /work/cuda-venv/bin/pip install torch==2.13.0        # 2.13.0+cu130 on Linux x86-64
#     /work/cuda-venv/bin/pip install -r requirements-dev.txt
# The build goes in place next to the CPU one (seglosses/_C.cpython-3XY-*.so is per Python
# version, so use a Python other than the one of .venv, or `make build` again afterwards).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:?usage: tools/cuda_build_check.sh PYTHON (an interpreter with a CUDA build of torch)}
"$PY" -c 'import sys, torch; sys.exit(0 if torch.version.cuda else f"cuda_build_check: {sys.executable} has torch {torch.__version__}, a CPU-only build; see the usage in tools/cuda_build_check.sh")'
start=$(date +%s)
env -u CUDA_HOME -u CUDA_PATH -u TORCH_CUDA_ARCH_LIST FORCE_CUDA=1 "$PY" setup.py --quiet build_ext --inplace
echo "cuda_build_check: built in $(( $(date +%s) - start )) s"
"$PY" tools/gpu_check_probe.py kernels
"$PY" -m pytest tests -q -p no:cacheprovider
