#!/usr/bin/env bash
# One device call comparing builds of the CUDA kernels.  Each argument is a variant
# NAME=SOURCE_DIR[=CUDAFLAGS]; every variant is built from its own copy of the tree into its own
# --target folder (all builds in parallel).  A variant whose flags hold -DJH_SELECT_TRACE runs
# bench/ncu_cases.py once and prints the select kernel's cycles per phase; every other variant
# times jax_hetero's kernels (bench/gpu_bench.py --no-baselines, sections BENCH_ONLY, default
# topk,indexer).  The last timed variant also runs the top-k and indexer GPU tests (pytest -k
# TESTS_K, default "topk or indexer"; the log keeps every failure's message); BENCH_ARGS go to
# gpu_bench.py (e.g. --topk-cases 256x8192:256).  Variants
# run round-robin over the GPUs.  Logs go to $OUT (default ./out).
#   bench/ab_check.sh A=.snap B=.new TB=.new=-DJH_SELECT_TRACE
set -uo pipefail
out=$(realpath -m "${OUT:-out}")
mkdir -p "$out"
export PYTHONUNBUFFERED=1 JAX_PLATFORMS=cuda XLA_PYTHON_CLIENT_PREALLOCATE=false
gpus=$(nvidia-smi -L | wc -l)
nvidia-smi --query-gpu=index,name --format=csv,noheader
names=() tested=""
declare -A flags_of
for spec in "$@"; do
  IFS='=' read -r name src flags <<<"$spec"
  names+=("$name")
  rm -rf "/tmp/src_$name" && cp -r "$src" "/tmp/src_$name"
  flags_of[$name]=${flags:-}
  [[ "${flags:-}" == *JH_SELECT_TRACE* ]] || tested=$name
done
echo "== build ${names[*]} ($(date -u +%T))"
for name in "${names[@]}"; do
  (cd "/tmp/src_$name" && CUDAFLAGS="${flags_of[$name]}" JAX_HETERO_CUDA=ON python3 -m pip install -q \
     --no-build-isolation --no-deps --target "/tmp/pkg_$name" . >"$out/build_$name.log" 2>&1 \
   || { tail -30 "$out/build_$name.log"; echo "BUILD FAILED: $name"; }) &
done
wait
echo "== run ($(date -u +%T))"
cd /tmp
run() {  # run NAME GPU
  local name=$1 src=/tmp/src_$1
  export CUDA_VISIBLE_DEVICES=$2 PYTHONPATH=/tmp/pkg_$1
  [ -d "/tmp/pkg_$name/jax_hetero" ] || return
  if [[ "${flags_of[$name]}" == *JH_SELECT_TRACE* ]]; then
    timeout 120 python3 "$src/bench/ncu_cases.py" 2>&1 | grep -v "^case: sparse" >"$out/trace_$name.txt"
  else
    timeout ${BENCH_TIMEOUT:-240} python3 "$src/bench/gpu_bench.py" --no-baselines \
      --only "${BENCH_ONLY:-topk,indexer}" ${BENCH_ARGS:-} >"$out/bench_$name.log" 2>&1
    if [ "$name" = "$tested" ]; then
      timeout ${TESTS_TIMEOUT:-240} python3 -m pytest "$src/tests/test_cuda_topk.py" "$src/tests/test_cuda.py" \
        -k "${TESTS_K:-topk or indexer}" -q -p no:cacheprovider -n 4 -rfE >"$out/tests_$name.log" 2>&1
    fi
  fi
}
for g in $(seq 0 $((gpus - 1))); do
  (for i in "${!names[@]}"; do (( i % gpus == g )) && run "${names[$i]}" "$g"; done) &
done
wait
for name in "${names[@]}"; do
  [ -f "$out/trace_$name.txt" ] && { echo "== trace $name"; cat "$out/trace_$name.txt"; }
done
[ -n "$tested" ] && { echo "== tests of $tested"; grep -E "^(FAILED|ERROR)" "$out/tests_$tested.log" | head -20; tail -2 "$out/tests_$tested.log"; }
echo "== timings ($(date -u +%FT%TZ), $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1))"
for name in "${names[@]}"; do
  [ -f "$out/bench_$name.log" ] && { echo "-- $name"; grep -E "^\| (topk|indexer)" "$out/bench_$name.log" | cut -d'|' -f3,5,8; }
done
