#!/usr/bin/env bash
# One device call: build and install with the CUDA backend, then the steps named in STEPS
# (default: tests bench placement profile) -- probe (FFI error paths of minimal handlers),
# backtrace (gdb at the CUDA gather's error path), tests (tests/test_cuda.py), suite (the
# whole test suite with JAX_PLATFORMS=cuda, 8 workers), bench
# (bench/gpu_bench.py), profile (decode-step profile) and placement (planner reproduction with
# measured GPU steps).  profile/placement need Flax: the device image has it; otherwise carry
# wheels/ (bench/fetch_device_wheels.sh).  Logs go to $OUT (or ./out; at most 8 files return).
#   STEPS="tests bench" BENCH_ARGS="--quick" bench/gpu_check.sh [pytest args ...]
set -uo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
out=${OUT:-out}
mkdir -p "$out"
steps=" ${STEPS:-tests bench placement profile} "
want() { [[ "$steps" == *" $1 "* ]]; }
export PYTHONUNBUFFERED=1 JAX_PLATFORMS=cuda XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
echo "== build"
start=$(date +%s)
if ! JAX_HETERO_CUDA=ON python3 -m pip install -q --no-build-isolation --no-deps . >/tmp/build.log 2>&1; then
  cp /tmp/build.log "$out/"; tail -40 /tmp/build.log; echo "BUILD FAILED"; exit 1
fi
echo "built in $(( $(date +%s) - start )) s"
cd /tmp  # import the installed package, not the source tree
python3 -c "import jax, jax_hetero as jh, json; print(jax.__version__, json.dumps(jh.build_info()['backends']['cuda']))"
if want probe; then
  echo "== FFI error-path probe"
  timeout 200 python3 "$repo/bench/ffi_error_probe/run_probe.py" "$out/probe_backtrace.txt"
fi
if want backtrace; then  # where the CUDA gather's out-of-range error path crashes
  echo "== gather error path under gdb"
  gdb=$(command -v gdb || command -v cuda-gdb)
  timeout 90 "$gdb" -batch -ex run -ex "bt 40" --args python3 "$repo/tests/cuda_gather_error.py" >"$out/gather_bt.txt" 2>&1
  grep -A25 "SIGSEGV" "$out/gather_bt.txt" | head -30
fi
if want tests; then
  echo "== tests"
  timeout ${TESTS_TIMEOUT:-300} python3 -m pytest "$repo/tests/test_cuda.py" "$repo/tests/test_cuda_topk.py" -q -p no:cacheprovider -n 4 "$@" 2>&1 | tee "$out/tests.log" | tail -25
fi
if want suite; then
  echo "== whole test suite, JAX_PLATFORMS=cuda"
  timeout 420 python3 -m pytest "$repo/tests" -q -p no:cacheprovider -n 8 -rfE "$@" 2>&1 | tee "$out/suite.log" | tail -45
fi
if want bench; then
  echo "== benchmark"
  timeout ${BENCH_TIMEOUT:-400} python3 "$repo/bench/gpu_bench.py" ${BENCH_ARGS:-} --json "$out/bench.json" 2>&1 | tee "$out/bench.log" | grep -v "^  "
fi
if want profile || want placement; then
  if ! python3 -c "import flax.nnx" 2>/dev/null && [ -d "$repo/wheels" ]; then
    python3 -m pip install -q --no-index --no-deps "$repo"/wheels/*.whl >/tmp/wheels.log 2>&1 \
      || { tail -5 /tmp/wheels.log; echo "WHEELS FAILED"; }
  fi
  python3 -c "import flax; print('flax', flax.__version__)"
fi
if want profile; then
  echo "== decode-step profile on the GPU"
  timeout 240 python3 -m jax_hetero profile --contexts 8K,32K,128K --reps 5 --out "$out/profile_gpu" 2>&1 | tail -14
fi
if want placement; then
  echo "== placement reproduction with measured GPU steps"
  JAX_PLATFORMS=cuda,cpu timeout ${PLACEMENT_TIMEOUT:-240} python3 "$repo/bench/placement_repro.py" ${PLACEMENT_ARGS:-} \
    --markdown "$out/placement_repro_gpu.md" --json "$out/placement_repro_gpu.json" 2>&1 | tail -16
fi
