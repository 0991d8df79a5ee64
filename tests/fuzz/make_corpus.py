#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets: for every top-level case of a
target (its first byte selects the case) a few inputs of small, mostly valid
values, from a fixed seed so the files are reproducible. Files named regress-*
are inputs that once found a bug; they are committed as they were found and
this script leaves them alone.

Usage: tests/fuzz/make_corpus.py   (from anywhere; rewrites seed-* files)
"""
import os
import random

HERE = os.path.dirname(os.path.abspath(__file__))
# target -> number of top-level cases its first byte selects from
TARGETS = {"fuzz_masks": 5, "fuzz_attention": 4, "fuzz_backward": 4}
PER_CASE = 3


def main():
    rng = random.Random(20240801)
    for target, cases in TARGETS.items():
        folder = os.path.join(HERE, "corpus", target)
        os.makedirs(folder, exist_ok=True)
        for name in os.listdir(folder):
            if name.startswith("seed-"):
                os.remove(os.path.join(folder, name))
        for case in range(cases):
            for k in range(PER_CASE):
                # Bytes below 224 decode to in-range sizes (fuzz_input.hpp), so
                # seeds are valid inputs the fuzzer then mutates into hostile ones.
                body = bytes(rng.randrange(0, 224) for _ in range(24 + 40 * k))
                with open(os.path.join(folder, f"seed-{case}-{k}"), "wb") as f:
                    f.write(bytes([case]) + body)


if __name__ == "__main__":
    main()
