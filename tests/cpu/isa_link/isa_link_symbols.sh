#!/usr/bin/env bash
# isa_link_symbols.sh AVX512_OBJECT AVX2_OBJECT
# The functions both objects of the link test define (inline functions and
# templates compiled once per translation unit) are the ones the linker may
# take from either: if the AVX-512 object's copy of one holds an EVEX
# instruction (zmm, ymm16-31, mask registers, embedded broadcast) and the
# linker keeps it, the AVX2 path runs it on an AVX2 machine: SIGILL. Lists
# every shared function of ism or Eigen, and fails on any such copy.
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
  case "$name" in
    *ism::* | *Eigen::*) ;;
    *) continue ;;
  esac
  n_shared=$((n_shared + 1))
  # (Captured first: with pipefail, grep -q closing the pipe early would make
  # objdump's SIGPIPE fail the test of the match.)
  code=$(objdump -d --no-show-raw-insn --disassemble="$sym" "$avx512")
  if grep -Eq '%zmm|%[xy]mm(1[6-9]|2[0-9]|3[01])\b|%k[0-7]|\{1to[0-9]+\}' <<< "$code"; then
    echo "EVEX in the AVX-512 copy of a function both paths define: $name"
    bad=$((bad + 1))
  fi
done <<< "$shared"
echo "functions of ism or Eigen defined by both objects: $n_shared; with EVEX instructions in the AVX-512 copy: $bad"
[ "$bad" -eq 0 ]
