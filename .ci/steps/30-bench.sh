#!/usr/bin/env bash
# Keeps every benchmark alive: builds each bench/*.cpp binary (Release, reusing
# build/ that scripts/test.sh configured with benchmarks ON, else its own
# build-ci-bench) and runs each one briefly on a filter of small cases, so none
# rots. CI never judges speed: it fails only when a binary fails to build, exits
# non-zero, reports a benchmark error, or drops the counters the report reads.
# Budget: 5 minutes on 2 cores (about 1 minute when build/ is already built).
set -euo pipefail
cd "$(dirname "$0")/../.."

build=${ISM_BENCH_BUILD:-build}  # override to test the step outside CI
if [ ! -f "$build/CMakeCache.txt" ] || ! grep -q '^ISM_BUILD_BENCHMARKS:BOOL=ON' "$build/CMakeCache.txt"; then
  [ "$build" = build ] && build=build-ci-bench
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DISM_WERROR=ON \
    -DISM_BUILD_TESTS=OFF -DISM_BUILD_EXAMPLES=OFF >/dev/null
fi

names=()
for src in bench/*.cpp; do names+=("$(basename "$src" .cpp)"); done
cmake --build "$build" -j "$(nproc)" --target "${names[@]}"

# Small cases per binary; a binary not listed here runs its first 3 cases.
declare -A filters=(
  [prefill_bench]='/N:512/dim:64/|^sgemm/'
  [decode_bench]='/cache:1024/|membw/read/bytes:4194304/'
  [mask_bench]='/N:1024/'
  [dialogue_bench]='/round:(1|2)/'
)

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for name in "${names[@]}"; do
  bin="$build/bench/$name"
  filter=${filters[$name]:-}
  if [ -z "$filter" ]; then
    # Exact names of the first three cases, regex metacharacters escaped.
    filter=$("$bin" --benchmark_list_tests | head -n 3 | sed 's/[][\\.^$*+?(){}|]/\\&/g; s/^/^/; s/$/$/' |
      paste -sd '|')
  fi
  echo "-- $name  filter: $filter"
  t0=$SECONDS
  # --benchmark_min_time takes plain seconds in Google Benchmark 1.7 ("0.01s"
  # is the 1.8 spelling and 1.7 rejects it).
  if ! timeout 150 "$bin" --benchmark_filter="$filter" --benchmark_min_time=0.01 \
    --benchmark_out="$out/$name.json" --benchmark_out_format=json >"$out/$name.txt" 2>&1; then
    cat "$out/$name.txt"
    echo "FAILED: $name"
    exit 1
  fi
  echo "   $(grep -c '' "$out/$name.txt") lines of output in $((SECONDS - t0)) s"
done

python3 - "$out"/*.json <<'EOF'
import json, math, sys
bad = []
for path in sys.argv[1:]:
    runs = json.load(open(path))["benchmarks"]
    if not runs:
        bad.append(f"{path}: no benchmark ran")
    for r in runs:
        name = r["name"]
        if r.get("error_occurred"):
            bad.append(f"{name}: {r.get('error_message')}")
        if not (r.get("real_time", 0) > 0 and math.isfinite(r["real_time"])):
            bad.append(f"{name}: real_time {r.get('real_time')}")
        # The counters bench/report.py reads.
        needed = []
        if name.startswith(("prefill/", "decode/")) or name.startswith("mask/attention"):
            needed = ["flops"]
        if name.startswith(("decode/", "membw/")):
            needed.append("bytes_per_second")
        if name.startswith("dialogue/"):
            needed = ["prefill_ms", "decode_ms"]
        for c in needed:
            v = r.get(c)
            if v is None or not math.isfinite(v) or v <= 0:
                bad.append(f"{name}: counter {c} = {v}")
print(f"checked {len(sys.argv) - 1} result files")
if bad:
    print("\n".join(bad))
    sys.exit(1)
EOF
