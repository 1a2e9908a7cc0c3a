#!/usr/bin/env bash
# One device call: build and install with the CUDA backend, run the GPU tests, run the
# benchmark, and -- when Flax wheels are carried in wheels/ (bench/fetch_device_wheels.sh) --
# the decode-step profile and the placement reproduction on the GPU.  Logs go to $OUT (or ./out).
#   bench/gpu_check.sh [pytest args ...]     BENCH_ARGS="--quick" to shorten the benchmark
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 JAX_PLATFORMS=cuda XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
echo "== build"
start=$(date +%s)
if ! JAX_HETERO_CUDA=ON python3 -m pip install -q --no-build-isolation --no-deps . >"$out/build.log" 2>&1; then
  tail -40 "$out/build.log"; echo "BUILD FAILED"; exit 1
fi
echo "built in $(( $(date +%s) - start )) s"
cd /tmp  # import the installed package, not the source tree
python3 -c "import jax_hetero as jh, json; print(json.dumps(jh.build_info()['backends']['cuda']))"
echo "== tests"
timeout 270 python3 -m pytest "$OLDPWD/tests/test_cuda.py" -q -p no:cacheprovider "$@" 2>&1 | tee "$out/tests.log" | tail -25
echo "== benchmark"
python3 "$OLDPWD/bench/gpu_bench.py" ${BENCH_ARGS:-} --json "$out/bench.json" 2>&1 | tee "$out/bench.log" | grep -v "^  "
if [ -d "$OLDPWD/wheels" ]; then  # carried Flax wheels (bench/fetch_device_wheels.sh)
  echo "== decode-step profile and placement on the GPU"
  python3 -m pip install -q --no-index --no-deps "$OLDPWD"/wheels/*.whl >/tmp/wheels.log 2>&1 \
    || { tail -5 /tmp/wheels.log; echo "WHEELS FAILED"; }
  JAX_PLATFORMS=cuda timeout 240 python3 -m jax_hetero profile --contexts 8K,32K,128K --reps 5 \
    --out "$out/profile_gpu" 2>&1 | tail -12
  JAX_PLATFORMS=cuda,cpu timeout 240 python3 "$OLDPWD/bench/placement_repro.py" \
    --markdown "$out/placement_repro_gpu.md" 2>&1 | tail -16  # $OUT returns at most 8 files
fi
