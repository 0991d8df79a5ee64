#!/usr/bin/env bash
# Builds and runs the main demo: a multi-round chat at the attention level.
# Extra arguments go to the demo (try --help).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$(nproc)" --target chat_session
./build/examples/chat_session "$@"
