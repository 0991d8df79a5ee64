#!/usr/bin/env bash
# The CPU kernel's instruction-set paths that the main build cannot run here.
# scripts/test.sh already built and ran cpu_kernel_{scalar,avx2,avx512} for the
# x86 paths this machine runs (tests/cpu/CMakeLists.txt); this step
# cross-compiles the NEON path with Debian's aarch64 toolchain (GoogleTest
# built for aarch64 from /usr/src/googletest) and runs under qemu-user the
# forward kernel's tests and the backward pass's (tests/backward); and runs
# the two-instruction-set link test (tests/cpu/CMakeLists.txt: cpu_isa_link,
# built by scripts/test.sh) on an emulated Haswell, an AVX2 CPU without
# AVX-512, where an AVX-512 instruction reached from the AVX2 path is a SIGILL
# (scripts/test.sh ran it natively and scanned its objects).
# Budget: 15 minutes on 2 cores (about 6 minutes measured: gtest 1 min, the
# two NEON test binaries 3-4 min, their runs under qemu 1 min; Haswell 2 s).
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/deps.sh g++-aarch64-linux-gnu qemu-user

link_test=${ISM_BUILD:-build}/tests/cpu/cpu_isa_link
if [ "$(uname -m)" = x86_64 ]; then
  [ -x "$link_test" ] || { echo "missing $link_test: run scripts/test.sh first"; exit 1; }
  # (qemu warns that TCG lacks a few system features of Haswell: harmless here.)
  ISM_ISA_LINK_REQUIRE=avx2 qemu-x86_64 -cpu Haswell "$link_test"
fi
root=${ISM_SIMD_BUILD:-build-simd}
mkdir -p "$root"
root=$(cd "$root" && pwd)
jobs=$(nproc)

cat > "$root/aarch64.cmake" <<'TOOLCHAIN'
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64;-L;/usr/aarch64-linux-gnu)
# Target libraries from the sysroot and our own prefix; arch-independent
# packages (Eigen's CMake config) from the host.
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE BOTH)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE BOTH)
TOOLCHAIN

# GoogleTest for aarch64, built once from the Debian source package.
if [ ! -f "$root/gtest/lib/cmake/GTest/GTestConfig.cmake" ]; then
  cmake -S /usr/src/googletest -B "$root/gtest-build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_TOOLCHAIN_FILE="$root/aarch64.cmake" -DBUILD_GMOCK=OFF -DINSTALL_GTEST=ON \
    -DCMAKE_INSTALL_PREFIX="$root/gtest" > /dev/null
  cmake --build "$root/gtest-build" -j "$jobs"
  cmake --install "$root/gtest-build" > /dev/null
fi

cmake -S . -B "$root/neon" -G Ninja -DCMAKE_BUILD_TYPE=Release -DISM_WERROR=ON \
  -DCMAKE_TOOLCHAIN_FILE="$root/aarch64.cmake" -DGTest_DIR="$root/gtest/lib/cmake/GTest" \
  -DEigen3_DIR=/usr/share/eigen3/cmake -DISM_BUILD_BENCHMARKS=OFF -DISM_BUILD_EXAMPLES=OFF > /dev/null
cmake --build "$root/neon" -j "$jobs" --target cpu_kernel_neon backward_neon
ctest --test-dir "$root/neon" --output-on-failure -R '^(cpu_kernel|backward)_neon$'
