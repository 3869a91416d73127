#!/usr/bin/env bash
# Compile-check every csrc/cuda/*.cu with nvcc (-c only; nothing links or runs), for sm_80 and
# sm_90, against the installed torch's headers. Works on a machine without a GPU and with a CPU
# build of torch: the one generated header a CPU torch lacks (c10/cuda/impl/cuda_cmake_macros.h)
# is supplied from a scratch include dir. Usage: tools/check_cuda.sh [python]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
NVCC=${NVCC:-$(command -v nvcc || echo /usr/local/bin/nvcc)}
[ -x "$NVCC" ] || { echo "check_cuda: nvcc not found (set NVCC=...)" >&2; exit 1; }
TORCH_INC=$("$PY" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "include"))')
SCRATCH=.cuda-check
mkdir -p "$SCRATCH/include/c10/cuda/impl" "$SCRATCH/obj"
[ -f "$TORCH_INC/c10/cuda/impl/cuda_cmake_macros.h" ] ||
  echo '#define C10_CUDA_BUILD_SHARED_LIBS' > "$SCRATCH/include/c10/cuda/impl/cuda_cmake_macros.h"
ABI=$("$PY" -c 'import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))')
status=0
for cu in csrc/cuda/*.cu; do
  obj="$SCRATCH/obj/$(basename "${cu%.cu}").o"
  start=$(date +%s)
  if "$NVCC" -c "$cu" -o "$obj" -std=c++20 -O3 --expt-relaxed-constexpr -Xcompiler -fPIC \
      -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
      -DWITH_CUDA -D_GLIBCXX_USE_CXX11_ABI="$ABI" -DTORCH_EXTENSION_NAME=_C \
      -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__ \
      -D__CUDA_NO_HALF2_OPERATORS__ \
      -Icsrc -I"$SCRATCH/include" -I"$TORCH_INC" -I"$TORCH_INC/torch/csrc/api/include"; then
    echo "check_cuda: OK   $cu ($(( $(date +%s) - start )) s)"
  else
    echo "check_cuda: FAIL $cu" >&2
    status=1
  fi
done
exit $status
