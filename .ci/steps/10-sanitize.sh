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
# Left to the main (Release) run, which ships the code they check:
# - packaging_test builds outside projects without sanitizers;
# - cpu_isa_link_symbols scans the shared front end of a two-ISA program for
#   AVX-512 instructions; instrumented -O1 code is not what ships, and GCC
#   was seen to use AVX-512 moves in it (vector growth, SegmentMask::prepare),
#   see GUARANTEES.md section 1;
# - cpu_isa_link_haswell: qemu-user cannot host ASan's shadow memory.
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --test-dir $b --output-on-failure -j "$(nproc)" \
  -E '^(packaging_test|cpu_isa_link_symbols|cpu_isa_link_haswell)$'
