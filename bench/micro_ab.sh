#!/usr/bin/env bash
# Builds bench/short_select_micro.cu from several source trees (NAME=DIR[=NVCCFLAGS]) in
# parallel and runs them one after another, twice in alternating order, so that variants of
# short_select_kernel are compared in one device call (the first run of each build checks it
# against the host reference; builds with -DJH_SELECT_TRACE print block 0's phase cycles):
#   bench/micro_ab.sh A=.ab/main C=.ab/<candidate> TC=.ab/<candidate>=-DJH_SELECT_TRACE
set -uo pipefail
inc=$(python3 -c "import jax; print(jax.ffi.include_dir())")
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader
names=()
for spec in "$@"; do
  IFS='=' read -r name dir flags <<<"$spec"
  names+=("$name")
  nvcc -std=c++17 -O3 -arch=sm_90a -I"$dir/csrc" -I"$inc" $flags "$dir/bench/short_select_micro.cu" \
    -o "/tmp/micro_$name" >"/tmp/micro_$name.build" 2>&1 &
done
wait
for name in "${names[@]}"; do
  [ -x "/tmp/micro_$name" ] || { echo "== $name: BUILD FAILED"; tail -20 "/tmp/micro_$name.build"; }
done
for round in 1 2; do
  order=("${names[@]}")
  [ $round = 2 ] && order=($(printf '%s\n' "${names[@]}" | tac))
  for name in "${order[@]}"; do
    [ -x "/tmp/micro_$name" ] || continue
    echo "== $name (round $round)"
    args=(); [ $round = 2 ] && args=(--time-only)
    timeout 120 "/tmp/micro_$name" "${args[@]}" | grep -v " ok (0 of "
  done
done
