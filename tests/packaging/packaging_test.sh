#!/usr/bin/env bash
# packaging_test.sh SOURCE_DIR WORK_DIR CXX
set -euo pipefail
src=$1 work=$2 cxx=$3
rm -rf "$work" && mkdir -p "$work"
gen=(); command -v ninja >/dev/null && gen=(-G Ninja)

# The README's usage example, verbatim, between its markers.
awk '/<!-- readme-example:begin -->/{on=1; next} /<!-- readme-example:end -->/{on=0} on' "$src/README.md" \
  | sed '/^```/d' > "$work/readme_example.cpp"
[ -s "$work/readme_example.cpp" ] || { echo "README usage example not found"; exit 1; }

echo "== install into a temporary prefix"
cmake -S "$src" -B "$work/ism-build" "${gen[@]}" -DCMAKE_CXX_COMPILER="$cxx" -DISM_BUILD_TESTS=OFF \
  -DISM_BUILD_BENCHMARKS=OFF -DISM_BUILD_EXAMPLES=OFF -DCMAKE_INSTALL_PREFIX="$work/prefix" >/dev/null
cmake --install "$work/ism-build" >/dev/null
test -f "$work/prefix/include/ism/ism.hpp"

for mode in find_package subdirectory; do
  echo "== consumer through $mode"
  cmake -S "$src/tests/packaging/consumer" -B "$work/consumer-$mode" "${gen[@]}" -DCMAKE_CXX_COMPILER="$cxx" \
    --no-warn-unused-cli \
    -DCMAKE_BUILD_TYPE=Release -DISM_CONSUMER_MODE=$mode -DISM_SOURCE_DIR="$src" \
    -DCMAKE_PREFIX_PATH="$work/prefix" -DISM_EXAMPLE_SOURCE="$work/readme_example.cpp" >/dev/null
  cmake --build "$work/consumer-$mode" > "$work/build-$mode.log" 2>&1 || { cat "$work/build-$mode.log"; exit 1; }
  "$work/consumer-$mode/consumer"
  if [ $mode = subdirectory ]; then
    # As a subproject, ism must not build its tests, benchmarks or examples.
    if cmake --build "$work/consumer-$mode" --target help | grep -qE 'mask_rule_test|mask_gallery'; then
      echo "ism built its own tests/examples when added as a subdirectory"; exit 1
    fi
  fi
done
echo "packaging: OK"
