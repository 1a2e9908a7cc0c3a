#!/usr/bin/env bash
# Developer build: compiles the extension modules with CMake and copies them into the
# source tree, so `PYTHONPATH=$PWD pytest` uses the working copy.  Not used by CI, which
# installs the package with pip.
#   BUILD_DIR   CMake build folder (default build/dev); use one per concurrent builder
#   JAX_HETERO_CUDA / JAX_HETERO_FPGA  AUTO | ON | OFF (default OFF / AUTO here)
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${BUILD_DIR:-build/dev}
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DPython_EXECUTABLE="$(command -v python)" -Dpybind11_DIR="$(python -m pybind11 --cmakedir)" \
  -DJAX_HETERO_CUDA="${JAX_HETERO_CUDA:-OFF}" -DJAX_HETERO_FPGA="${JAX_HETERO_FPGA:-AUTO}" >/dev/null
cmake --build "$build_dir"
for so in "$build_dir"/_jax_hetero_*.so "$build_dir"/csrc/*/_jax_hetero_*.so; do
  [ -e "$so" ] || continue
  tmp=jax_hetero/backends/.$(basename "$so").tmp
  cp "$so" "$tmp" && mv "$tmp" jax_hetero/backends/"$(basename "$so")"
done
echo "built into jax_hetero/backends: $(cd jax_hetero/backends && ls _jax_hetero_*.so | tr '\n' ' ')"
