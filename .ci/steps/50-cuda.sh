#!/usr/bin/env bash
# CUDA: wherever nvcc exists (on PATH or in /usr/local/cuda/bin), build the
# CUDA tests and benchmark for sm_80 and sm_90 with warnings as errors, run the
# tests (the GPU ones skip, saying why, on a machine without a GPU; the kernel's
# source still runs, on the CPU emulator of tests/cuda/emulator.hpp), compile
# every CUDA header alone under nvcc, and check that ism/cuda.hpp refuses a
# non-CUDA compiler with its message.
# Budget: 10 minutes on 2 cores. Measured 6m50s wall (2m42s user CPU) on a
# 2-core box shared with other builds: mostly nvcc on tests/cuda/runner.cu
# (24 kernels x 2 architectures), then ~45 s for the emulated kernel test.
set -euo pipefail
nvcc=$(command -v nvcc || true)
if [ -z "$nvcc" ] && [ -x /usr/local/cuda/bin/nvcc ]; then nvcc=/usr/local/cuda/bin/nvcc; fi
if [ -z "$nvcc" ]; then
  echo "nvcc not found (PATH, /usr/local/cuda/bin): CUDA step skipped"
  exit 0
fi
"$nvcc" --version | tail -1
b=build-ci-cuda
cmake -S . -B $b -G Ninja -DCMAKE_BUILD_TYPE=Release -DISM_WERROR=ON -DISM_ENABLE_CUDA=ON \
  -DCMAKE_CUDA_COMPILER="$nvcc" -DCMAKE_CUDA_ARCHITECTURES="80;90" -DISM_BUILD_EXAMPLES=OFF
cmake --build $b -j2 --target cuda_attention_test cuda_emulated_kernel_test cuda_block_plan_test cuda_fragment_test \
  cuda_attention_bench
ctest --test-dir $b -R '^cuda_' --output-on-failure

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fails=0
for h in include/ism/cuda.hpp include/ism/cuda/*.cuh; do
  echo "#include \"${h#include/}\"" > "$tmp/one.cu"
  if ! "$nvcc" -std=c++17 -arch=sm_80 -Iinclude -isystem /usr/include/eigen3 --expt-relaxed-constexpr \
       -diag-suppress=20012 -Werror=all-warnings -Xcompiler=-Wall,-Wextra -c "$tmp/one.cu" -o "$tmp/one.o" \
       2> "$tmp/err"; then
    echo "FAIL: $h alone under nvcc"; cat "$tmp/err"; fails=$((fails + 1))
  fi
done
echo '#include "ism/cuda.hpp"' > "$tmp/host.cpp"
if g++ -std=c++17 -Iinclude -isystem /usr/include/eigen3 -fsyntax-only "$tmp/host.cpp" 2> "$tmp/err" ||
   ! grep -q "needs nvcc" "$tmp/err"; then
  echo "FAIL: ism/cuda.hpp under g++ must stop with its 'needs nvcc' #error"; cat "$tmp/err"; fails=$((fails + 1))
fi
echo "CUDA headers checked, failures: $fails"
[ "$fails" -eq 0 ]
