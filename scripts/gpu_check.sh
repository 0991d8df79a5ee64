#!/usr/bin/env bash
# The GPU check of ism::cuda (issue 16), in two halves so that the slow part,
# nvcc, runs where nvcc is and the GPU's minutes go to running only.
#
#   scripts/gpu_check.sh build [--arch 90] [--build-dir build-gpu] [--bundle DIR]
#       On a machine with nvcc (no GPU needed): configures and builds the CUDA
#       tests, the sanitizer cases and the benchmark for one architecture
#       (90: H100/H200; 80: A100), then gathers them into a bundle (default
#       BUILD_DIR/bundle): the binaries, the shared libraries a GPU machine
#       may lack (Google Benchmark's, the CUDA runtime), compare_torch.py and
#       this script. Copy the bundle to the GPU machine.
#   scripts/gpu_check.sh bundle [--build-dir build-gpu] [--bundle DIR]
#       Only the gathering, from binaries already built in BUILD_DIR.
#   scripts/gpu_check.sh run [--bundle build-gpu/bundle] [--out DIR] [--budget SECONDS]
#                            [--skip-sanitizer] [--skip-tests] [--skip-bench] [--quick]
#       On the GPU machine: compute-sanitizer (memcheck, racecheck, synccheck)
#       on the sanitizer cases (a prefill and a long split decode, paged and
#       batched calls), the CUDA tests, and the benchmark beside PyTorch's SDPA
#       (flash, causal) and FlexAttention (ISM block mask) at bf16, N = 1k..32k,
#       D = 64 and 128, plus decode bandwidth. Writes one report, OUT/gpu_report.md
#       (default OUT: $OUT if set, else ./gpu-check-out), each stage with its
#       status, time and output tail, beside each stage's full log and the
#       benchmark's tables (bench.md): 7 files at most. Every stage has a time limit so that the
#       whole run stays inside --budget (default 560 s, for a 10-minute slot).
#       Without a GPU it says so, writes a report saying so, and exits 0.
#       Exit status: 0 when every stage that ran passed, 1 otherwise.
#
# With the device tool of this workplace (nothing is built on the GPU machine):
#   scripts/gpu_check.sh build            # here, ~10 minutes on 2 cores
#   run(command="bash scripts/gpu_check.sh run --out $OUT", carry=["build-gpu/bundle"], timeout_s=600)
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
die() { echo "gpu_check: $*" >&2; echo "(scripts/gpu_check.sh --help for usage)" >&2; exit 2; }

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
[ $# -ge 1 ] || { usage; exit 2; }
mode=$1
shift
case "$mode" in
  -h|--help|help) usage; exit 0 ;;
  build|bundle|run) ;;
  *) die "unknown mode '$mode' (build, bundle or run)" ;;
esac

arch=90 build_dir=build-gpu bundle="" out="${OUT:-gpu-check-out}" budget=560
skip_sanitizer=0 skip_tests=0 skip_bench=0 quick=0
while [ $# -gt 0 ]; do
  case "$1" in
    --arch) [ $# -ge 2 ] || die "--arch needs a value"; arch=$2; shift 2 ;;
    --build-dir) [ $# -ge 2 ] || die "--build-dir needs a value"; build_dir=$2; shift 2 ;;
    --bundle) [ $# -ge 2 ] || die "--bundle needs a value"; bundle=$2; shift 2 ;;
    --out) [ $# -ge 2 ] || die "--out needs a value"; out=$2; shift 2 ;;
    --budget) [ $# -ge 2 ] || die "--budget needs a value"; budget=$2; shift 2 ;;
    --skip-sanitizer) skip_sanitizer=1; shift ;;
    --skip-tests) skip_tests=1; shift ;;
    --skip-bench) skip_bench=1; shift ;;
    --quick) quick=1; shift ;;
    *) die "unknown argument '$1'" ;;
  esac
done
[[ "$arch" =~ ^[0-9]+$ ]] || die "--arch must be a number such as 90 or 80, not '$arch'"
[[ "$budget" =~ ^[0-9]+$ ]] || die "--budget must be a number of seconds, not '$budget'"
[ -n "$bundle" ] || bundle="$build_dir/bundle"

binaries="tests/cuda/cuda_attention_test tests/cuda/cuda_sanitizer_cases bench/cuda/cuda_attention_bench"

gather() {
  for b in $binaries; do
    [ -x "$build_dir/$b" ] || die "$build_dir/$b is missing: run 'scripts/gpu_check.sh build' first"
  done
  rm -rf "$bundle"
  mkdir -p "$bundle/lib"
  for b in $binaries; do cp "$build_dir/$b" "$bundle/"; done
  cp "$here/gpu_check.sh" "$here/../bench/cuda/compare_torch.py" "$bundle/"
  # Libraries a GPU machine's image may not have (it has CUDA and PyTorch,
  # not Debian's Google Benchmark): every non-system library the binaries use.
  for b in $binaries; do
    ldd "$bundle/$(basename "$b")" | awk '/=> \// {print $3}' | grep -E 'benchmark|cudart|gtest' || true
  done | sort -u | while read -r lib; do cp -L "$lib" "$bundle/lib/"; done
  git -C "$here/.." describe --always --dirty --abbrev=12 > "$bundle/COMMIT" 2>/dev/null || echo unknown > "$bundle/COMMIT"
  echo "$arch" > "$bundle/ARCH"
  echo "gpu_check: bundle in $bundle ($(du -sh "$bundle" | cut -f1)), commit $(cat "$bundle/COMMIT"):"
  ls -l "$bundle" "$bundle/lib"
}

if [ "$mode" = build ]; then
  nvcc=$(command -v nvcc || true)
  if [ -z "$nvcc" ] && [ -x /usr/local/cuda/bin/nvcc ]; then nvcc=/usr/local/cuda/bin/nvcc; fi
  [ -n "$nvcc" ] || die "nvcc not found (PATH, /usr/local/cuda/bin): the build half needs it"
  cd "$here/.."
  cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DISM_ENABLE_CUDA=ON \
    -DCMAKE_CUDA_COMPILER="$nvcc" -DCMAKE_CUDA_ARCHITECTURES="$arch" -DISM_BUILD_EXAMPLES=OFF > /dev/null
  nice -n 10 cmake --build "$build_dir" -j2 --target cuda_attention_test cuda_sanitizer_cases cuda_attention_bench
  gather
  exit 0
fi
if [ "$mode" = bundle ]; then
  cd "$here/.."
  gather
  exit 0
fi

# --- run ---------------------------------------------------------------------
start=$(date +%s)
mkdir -p "$out"
report="$out/gpu_report.md"
{
  echo "# ism GPU check"
  echo
  echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "- host: $(hostname)"
  echo "- bundle: $bundle (commit $(cat "$bundle/COMMIT" 2>/dev/null || echo unknown), sm_$(cat "$bundle/ARCH" 2>/dev/null || echo '?'))"
} > "$report"

gpu_line=""
if command -v nvidia-smi > /dev/null 2>&1; then
  gpu_line=$(nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader 2>/dev/null | head -1 || true)
fi
if [ -z "$gpu_line" ]; then
  why="no NVIDIA GPU on this machine (nvidia-smi missing or it lists no GPU)"
  echo "gpu_check: $why: nothing to check, skipped"
  { echo "- GPU: none"; echo; echo "Skipped: $why."; } >> "$report"
  exit 0
fi
echo "- GPU: $gpu_line" >> "$report"
for b in cuda_attention_test cuda_sanitizer_cases cuda_attention_bench compare_torch.py; do
  [ -e "$bundle/$b" ] || { echo "gpu_check: $bundle/$b is missing (make the bundle with 'scripts/gpu_check.sh build')" >&2; exit 2; }
done
export LD_LIBRARY_PATH="$(cd "$bundle" && pwd)/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHONUNBUFFERED=1
failures=0

# stage NAME LIMIT_SECONDS COMMAND...: runs it under a time limit inside the
# budget, appends its status, time and output tail to the report.
stage() {
  local name=$1 limit=$2
  shift 2
  local left=$(( budget - ($(date +%s) - start) ))
  [ "$limit" -le "$left" ] || limit=$left
  if [ "$limit" -lt 10 ]; then
    echo "gpu_check: $name skipped (budget spent)"
    printf '\n## %s\n\nskipped: the %s s budget was spent\n' "$name" "$budget" >> "$report"
    failures=$((failures + 1))
    return 0
  fi
  echo "gpu_check: $name (limit ${limit}s)"
  # Log names in letters, digits, '.', '_' and '-' only (what a device run's $OUT gives back).
  local log="$out/$(printf '%s' "$name" | tr -c 'A-Za-z0-9._-' '_' | cut -c1-40).log" t0 rc=0
  t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" > "$log" 2>&1 || rc=$?
  local status=passed
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then status="TIMED OUT after ${limit}s"; fi
  if [ $rc -ne 0 ] && [ "$status" = passed ]; then status="FAILED (exit $rc)"; fi
  [ "$status" = passed ] || failures=$((failures + 1))
  echo "gpu_check: $name: $status ($(( $(date +%s) - t0 ))s)"
  { printf '\n## %s\n\n%s in %ss: `%s`\n\n```\n' "$name" "$status" "$(( $(date +%s) - t0 ))" "$*"
    tail -n 40 "$log"; printf '```\n'; } >> "$report"
}

if [ $skip_sanitizer -eq 0 ]; then
  sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)
  if [ -z "$sanitizer" ]; then
    printf '\n## compute-sanitizer\n\nnot found on this machine: not run\n' >> "$report"
    failures=$((failures + 1))
  else
    for tool in memcheck racecheck synccheck; do
      stage "sanitizer $tool" 100 "$sanitizer" --tool "$tool" --error-exitcode 3 "$bundle/cuda_sanitizer_cases"
    done
  fi
fi
if [ $skip_tests -eq 0 ]; then
  stage "CUDA tests" 150 "$bundle/cuda_attention_test" --gtest_brief=1
fi
if [ $skip_bench -eq 0 ]; then
  if python3 -c "import torch; assert torch.cuda.is_available()" > /dev/null 2>&1; then
    if [ $quick -eq 1 ]; then
      stage "benchmark" 400 python3 "$bundle/compare_torch.py" --bench "$bundle/cuda_attention_bench" \
        --ns 1024 8192 --dims 128 --masks causal ism --report "$out/bench.md"
    else
      stage "benchmark" 400 python3 "$bundle/compare_torch.py" --bench "$bundle/cuda_attention_bench" \
        --masks causal ism --report "$out/bench.md"
    fi
    [ -f "$out/bench.md" ] && { printf '\n## benchmark tables\n\n'; cat "$out/bench.md"; } >> "$report"
  else
    stage "benchmark (ism only: no PyTorch with CUDA here)" 300 "$bundle/cuda_attention_bench" \
      --benchmark_min_time=0.2
  fi
fi

printf '\n---\n%s stage(s) failed; %ss in all.\n' "$failures" "$(( $(date +%s) - start ))" >> "$report"
echo "gpu_check: report in $report ($failures stage(s) failed)"
[ $failures -eq 0 ]
