#!/usr/bin/env bash
# ThreadSanitizer over the threaded tests: concurrent callers of ism::attention
# (tests/reliability/concurrency_test), the CPU kernel's thread-count and
# batch tests (tests/cpu), the plan tests (tests/attention), whose runs come
# from the pool, a caller's parallel-for, a caller's own (ith, nth) workers
# and task indices, and the backward pass's thread-count and no-leak tests
# (tests/backward), built for the best instruction set this machine runs.
# Any data race report fails CI.
# Budget: 4 minutes (about 3 to build, under 1 to run), shared with 40-fuzz.sh (7 in all).
set -euo pipefail
cd "$(dirname "$0")/../.."
b=build-tsan
cmake -S . -B $b -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DISM_BUILD_BENCHMARKS=OFF -DISM_BUILD_EXAMPLES=OFF \
  -DCMAKE_CXX_FLAGS="-O1 -g -fsanitize=thread -fno-omit-frame-pointer" \
  -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=thread" >/dev/null

# The CPU kernel's test binary for the best ISA CMake found runnable here.
available=$(ninja -C $b -t targets all | grep -oE '^cpu_kernel_[a-z0-9]+' | sort -u)
kernel=""
for isa in avx512 avx2 neon scalar; do
  if grep -qx "cpu_kernel_$isa" <<<"$available"; then kernel=cpu_kernel_$isa; break; fi
done
[ -n "$kernel" ] || { echo "no cpu_kernel_* test target found"; exit 1; }
cmake --build $b -j "$(nproc)" --target concurrency_test plan_test $kernel ${kernel/cpu_kernel/backward}

export TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1"
"$b/tests/reliability/concurrency_test"
"$b/tests/attention/plan_test" --gtest_filter='AttentionPlan.Fp32RunsEqualSingleCallsInEveryMode'
"$b/tests/cpu/$kernel" --gtest_filter='CpuKernel.ThreadCountsAgree:CpuKernel.BatchMatchesPerSequenceReference:CpuKernel.DecodeAgreesWithPrefill'
"$b/tests/backward/${kernel/cpu_kernel/backward}" --gtest_filter='Backward.ThreadCountsAgreeBitForBit:Backward.LaterRoundsDoNotChangeEarlierGradients'
