#!/usr/bin/env bash
# Fuzzing: builds the libFuzzer targets of tests/fuzz with clang (AddressSanitizer
# + UndefinedBehaviorSanitizer) and runs each for ISM_FUZZ_SECONDS (default 60),
# all at once on the 2 cores, starting from the committed corpora. Any crash,
# sanitizer report, property violation, leak, timeout or out-of-memory fails CI;
# the failing input is printed in hex, to be committed as
# tests/fuzz/corpus/<target>/regress-<what-it-found> with the fix.
# Budget: 3 minutes (about 2 to build, 1 to run), shared with 45-tsan.sh (7 in all).
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${ISM_FUZZ_SECONDS:-60}
b=build-fuzz
targets=(fuzz_masks fuzz_attention fuzz_backward)

cmake -S . -B $b -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_COMPILER=clang++ \
  -DISM_BUILD_BENCHMARKS=OFF -DISM_BUILD_EXAMPLES=OFF -DISM_FUZZ_LIBFUZZER=ON >/dev/null
cmake --build $b -j "$(nproc)" --target "${targets[@]/%/_fuzzer}"

pids=()
for t in "${targets[@]}"; do
  # Work on a copy: the committed corpus only changes by hand, with a reason.
  rm -rf "$b/run/$t" && mkdir -p "$b/run/$t/corpus" "$b/run/$t/artifacts"
  cp tests/fuzz/corpus/$t/* "$b/run/$t/corpus/"
  ASAN_OPTIONS=abort_on_error=1:detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
    "$b/tests/fuzz/${t}_fuzzer" "$b/run/$t/corpus" -max_total_time="$secs" -max_len=512 -timeout=20 \
    -rss_limit_mb=2048 -malloc_limit_mb=1024 -print_final_stats=1 \
    -artifact_prefix="$b/run/$t/artifacts/" >"$b/run/$t/log.txt" 2>&1 &
  pids+=($!)
done

status=0
for i in "${!targets[@]}"; do
  t=${targets[$i]}
  if wait "${pids[$i]}"; then
    echo "$t: $(grep -E '^stat::number_of_executed_units' "$b/run/$t/log.txt" | awk '{print $2}') inputs in ${secs} s, no failure"
  else
    status=1
    echo "$t: FAILED; last lines of its log:"
    tail -n 40 "$b/run/$t/log.txt"
    for f in "$b/run/$t/artifacts/"*; do
      [ -e "$f" ] || continue
      echo "failing input $f (replay: $b/tests/fuzz/${t}_fuzzer $f):"
      od -An -tx1 -v "$f"
    done
  fi
done
exit $status
