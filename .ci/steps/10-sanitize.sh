#!/usr/bin/env bash
# The whole test suite again under AddressSanitizer + UndefinedBehaviorSanitizer
# (benchmarks and examples are left out: the main build already compiled them).
# Budget: 15 minutes on 2 cores.
set -euo pipefail
b=build-asan
cmake -S . -B $b -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DISM_WERROR=ON \
  -DISM_BUILD_BENCHMARKS=OFF -DISM_BUILD_EXAMPLES=OFF \
  -DCMAKE_CXX_FLAGS="-O1 -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer" \
  -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined"
cmake --build $b -j "$(nproc)"
# The packaging test builds outside projects without sanitizers: the main run covers it.
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --test-dir $b --output-on-failure -j "$(nproc)" -E '^packaging_test$'
