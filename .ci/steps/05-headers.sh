#!/usr/bin/env bash
# Every public header compiles alone as C++17, warning-free, with g++ and
# clang++ (the instruction-set files with their target flags; NEON with the
# aarch64 cross compiler). CUDA .cuh headers are checked by 50-cuda.sh.
# Budget: 3 minutes.
set -euo pipefail
bash scripts/deps.sh clang g++-aarch64-linux-gnu
tmp=$(mktemp -d)
fails=0
check() {  # compiler header extra-flags...
  local cxx=$1 h=$2; shift 2
  echo "#include \"${h#include/}\"" > "$tmp/one.cpp"
  if ! "$cxx" -std=c++17 -Wall -Wextra -Werror -fsyntax-only -Iinclude -isystem /usr/include/eigen3 "$@" "$tmp/one.cpp" \
       2> "$tmp/err"; then
    echo "FAIL: $h alone with $cxx $*"; cat "$tmp/err"; fails=$((fails + 1))
  fi
}
n=0
while IFS= read -r h; do
  flags=()
  case "$h" in
    include/ism/cuda.hpp) continue ;;  # nvcc only (its #error is checked by 50-cuda.sh)
    */simd/avx512*) flags=(-mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512bf16 -mfma -mf16c) ;;
    */simd/avx2*) flags=(-mavx2 -mfma -mf16c) ;;
    */simd/neon*)
      check aarch64-linux-gnu-g++ "$h"; n=$((n + 1)); continue ;;
  esac
  check g++ "$h" "${flags[@]}"
  check clang++ "$h" "${flags[@]}"
  n=$((n + 1))
done < <(find include/ism -name '*.hpp' | sort)
echo "headers checked: $n, failures: $fails"
[ "$fails" -eq 0 ]
