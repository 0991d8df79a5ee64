#!/usr/bin/env bash
# isa_link_symbols.sh AVX512_OBJECT AVX2_OBJECT
# The functions both objects of the link test define (inline functions and
# templates compiled once per translation unit) are the ones the linker may
# take from either: if the AVX-512 object's copy of one holds an EVEX
# instruction and the linker keeps it, the AVX2 path runs it on an AVX2
# machine: SIGILL. EVEX is found by its encoding, the 0x62 byte that starts
# every EVEX instruction in 64-bit mode (after any segment or address-size
# prefix), so an AVX-512 instruction on xmm0-15 (vmovdqu8 %xmm0, ...) counts
# as much as one on zmm registers. Lists every shared function (local clones
# too: a shared function's AVX-512 copy calls its own object's clones), and
# fails on any such copy.
set -euo pipefail
avx512=$1
avx2=$2
defined() { nm --defined-only "$1" | awk '$2 ~ /^[TtWw]$/ {print $3}' | sort -u; }
shared=$(comm -12 <(defined "$avx512") <(defined "$avx2"))
n_shared=0
bad=0
while IFS= read -r sym; do
  [ -n "$sym" ] || continue
  name=$(echo "$sym" | c++filt)
  n_shared=$((n_shared + 1))
  # (Captured first: with pipefail, an early exit of the reader would make
  # objdump's SIGPIPE fail the test of the match.)
  code=$(objdump -d --disassemble="$sym" "$avx512")
  evex=$(awk -F'\t' 'NF >= 3 {
      n = split($2, b, " "); i = 1
      while (i <= n && b[i] ~ /^(26|2e|36|3e|64|65|67)$/) i++
      if (b[i] == "62") c++
    } END { print c + 0 }' <<< "$code")
  if [ "$evex" -gt 0 ]; then
    echo "EVEX in the AVX-512 copy of a function both paths define: $name"
    bad=$((bad + 1))
  fi
done <<< "$shared"
echo "functions defined by both objects: $n_shared; with EVEX instructions in the AVX-512 copy: $bad"
[ "$bad" -eq 0 ]
