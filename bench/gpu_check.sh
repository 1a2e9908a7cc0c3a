#!/usr/bin/env bash
# One device call: build and install with the CUDA backend, then the steps named in STEPS
# (default: suite bench ncu placement profile) -- probe (FFI error paths of minimal handlers),
# tests (tests/test_cuda*.py), suite (the whole test suite with JAX_PLATFORMS=cuda),
# bench (bench/gpu_bench.py), ncu (Nsight Compute over bench/ncu_cases.py), sass (per-instruction
# samples of select_kernel over the NCU_CASES of bench/ncu_cases.py, as CSV), profile
# (decode-step profile) and placement (planner reproduction with measured GPU steps and NVML
# power).  On a machine with two or more GPUs, tests/suite/profile run on GPU 0 while
# probe/bench/ncu/placement run on GPU 1; the suite waits for the benchmark to finish.  profile/placement need Flax: the device image has it; otherwise
# carry wheels/ (bench/fetch_device_wheels.sh).  Logs go to $OUT/logs.tgz ($OUT defaults to
# ./out); a summary is printed last.
#   STEPS="tests bench" BENCH_ARGS="--quick" bench/gpu_check.sh [pytest args ...]
set -uo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
out=${OUT:-out}
logs=$out/logs  # tarred into $out/logs.tgz at the end: a device call returns at most 8 files
mkdir -p "$logs"
steps=" ${STEPS:-suite bench ncu placement profile} "
want() { [[ "$steps" == *" $1 "* ]]; }
export PYTHONUNBUFFERED=1 JAX_PLATFORMS=cuda XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=index,name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.draw --format=csv
gpus=$(nvidia-smi -L | wc -l)
echo "== build"
start=$(date +%s)
if ! JAX_HETERO_CUDA=ON python3 -m pip install -q --no-build-isolation --no-deps . >/tmp/build.log 2>&1; then
  cp /tmp/build.log "$logs/"; tail -40 /tmp/build.log; echo "BUILD FAILED"; exit 1
fi
echo "built in $(( $(date +%s) - start )) s"
cd /tmp  # import the installed package, not the source tree
python3 -c "import jax, jax_hetero as jh, json; print(jax.__version__, json.dumps(jh.build_info()['backends']['cuda']))"

need_flax() {  # profile/placement: the device image has Flax; otherwise carried wheels/
  if ! python3 -c "import flax.nnx" 2>/dev/null && [ -d "$repo/wheels" ]; then
    python3 -m pip install -q --no-index --no-deps "$repo"/wheels/*.whl >/tmp/wheels.log 2>&1 \
      || { tail -5 /tmp/wheels.log; echo "WHEELS FAILED"; }
  fi
}
step() { echo "== $1 ($(date -u +%T))"; }
# A killed pytest prints no count: say so in its log, where the summary looks.
note_timeout() {  # note_timeout RC VAR DEFAULT LOG
  [ "$1" -eq 124 ] && echo "TIMED OUT: the run was stopped after ${!2:-$3} s (raise $2)" >>"$4"
  return 0
}

lane0() {  # tests, then the decode-step profile (GPU 0 when there are two)
  if want tests; then
    step "tests"
    timeout ${TESTS_TIMEOUT:-300} python3 -m pytest "$repo/tests/test_cuda.py" "$repo/tests/test_cuda_topk.py" \
      -q -p no:cacheprovider -n 4 -rfE --durations=15 "$@" >"$logs/tests.log" 2>&1
    note_timeout $? TESTS_TIMEOUT 300 "$logs/tests.log"
    tail -40 "$logs/tests.log"
  fi
  if want suite; then
    # Not beside the benchmark: the suite's compiles load every core, and short kernels timed
    # meanwhile came out slow (64x8192 top-256: 33.1 against 16.3 us, H200, session 10).
    while want bench && [ ! -f "$logs/.bench_done" ]; do sleep 2; done
    step "whole test suite, JAX_PLATFORMS=cuda"
    timeout ${SUITE_TIMEOUT:-420} python3 -m pytest "$repo/tests" -q -p no:cacheprovider -n ${SUITE_WORKERS:-8} \
      -rfE --durations=15 "$@" >"$logs/suite.log" 2>&1
    note_timeout $? SUITE_TIMEOUT 420 "$logs/suite.log"
    tail -60 "$logs/suite.log"
  fi
  if want profile; then
    need_flax
    step "decode-step profile on the GPU"
    timeout ${PROFILE_TIMEOUT:-240} python3 -m jax_hetero profile --contexts 8K,32K,128K --reps 5 \
      --out "$logs/profile_gpu" >"$logs/profile.log" 2>&1
    tail -16 "$logs/profile.log"
  fi
}

lane1() {  # benchmark, ncu, placement (GPU 1 when there are two)
  if want probe; then
    step "FFI error-path probe"
    timeout 200 python3 "$repo/bench/ffi_error_probe/run_probe.py" "$logs/probe_backtrace.txt"
  fi
  if want bench; then
    step "benchmark"
    timeout ${BENCH_TIMEOUT:-400} python3 "$repo/bench/gpu_bench.py" ${BENCH_ARGS:-} --json "$logs/bench.json" \
      >"$logs/bench.log" 2>&1
    grep -v "^  " "$logs/bench.log" | tail -45
  fi
  touch "$logs/.bench_done"
  if want ncu; then
    step "Nsight Compute"
    timeout ${NCU_TIMEOUT:-200} ncu --clock-control none -k regex:'select_kernel|filter_kernel|scores_kernel|attention_mma' \
      --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats --section Occupancy \
      --section LaunchStats python3 "$repo/bench/ncu_cases.py" >"$logs/ncu.txt" 2>&1
    grep -E "^case:|^  void|Duration|Memory Throughput|DRAM Throughput|Compute \(SM\)|Registers Per|Achieved Occupancy|Grid Size" "$logs/ncu.txt" | head -120
  fi
  if want sass; then
    step "select_kernel per-instruction samples (${NCU_CASES:-all cases})"
    # NCU_SAMPLING=0 samples every 32 cycles (2^(5+n)): enough for the 16-CTA kernels too.
    timeout ${NCU_TIMEOUT:-200} ncu --clock-control none -k regex:select_kernel --section SourceCounters \
      --warp-sampling-interval ${NCU_SAMPLING:-auto} \
      --section WarpStateStats --import-source no -o "$logs/sass" python3 "$repo/bench/ncu_cases.py" \
      >"$logs/sass_run.txt" 2>&1
    tail -3 "$logs/sass_run.txt"
    ncu -i "$logs/sass.ncu-rep" --page source --print-source sass --csv >"$logs/sass.csv" 2>&1
    ncu -i "$logs/sass.ncu-rep" --page details >"$logs/sass_details.txt" 2>&1
    rm -f "$logs/sass.ncu-rep"
    wc -l "$logs/sass.csv"
  fi
  if want placement; then
    need_flax
    step "placement reproduction with measured GPU steps"
    JAX_PLATFORMS=cuda,cpu timeout ${PLACEMENT_TIMEOUT:-300} python3 "$repo/bench/placement_repro.py" \
      ${PLACEMENT_ARGS:-} --markdown "$logs/placement_repro_gpu.md" --json "$logs/placement_repro_gpu.json" \
      >"$logs/placement.log" 2>&1
    tail -30 "$logs/placement.log"
  fi
}

if [ "$gpus" -ge 2 ]; then
  CUDA_VISIBLE_DEVICES=0 lane0 "$@" >"$logs/lane0.txt" 2>&1 &
  CUDA_VISIBLE_DEVICES=1 lane1 >"$logs/lane1.txt" 2>&1
  wait
  cat "$logs/lane1.txt" "$logs/lane0.txt"
  if want tests || want suite; then  # with both GPUs visible: handlers follow XLA's stream
    step "ops on the second GPU"
    timeout 120 python3 -m pytest "$repo/tests/test_cuda.py" -k second_gpu -q -p no:cacheprovider 2>&1 | tail -3
  fi
else
  lane1
  lane0 "$@"
fi
echo "== summary ($(date -u +%FT%TZ), $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1) x $gpus)"
grep -h -E "^(=+ )?[0-9]+ (passed|failed)|passed|failed|^TIMED OUT" "$logs"/tests.log "$logs"/suite.log 2>/dev/null | tail -2
[ -f "$logs/bench.log" ] && grep -A40 "^| " "$logs/bench.log" | tail -30
[ -f "$logs/placement_repro_gpu.md" ] && tail -12 "$logs/placement_repro_gpu.md"
tar czf "$out/logs.tgz" -C "$out" logs && rm -rf "$logs"
