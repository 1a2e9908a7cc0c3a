#!/usr/bin/env bash
# The device machine has jax + CUDA but no network and no Flax: fetch Flax and its
# dependencies here, as wheels for the device's Python, into wheels/ (git-ignored), then
# name `wheels` in the device call's `carry`; bench/gpu_check.sh installs them from there.
#   bench/fetch_device_wheels.sh [python version, default 3.12]
set -euo pipefail
cd "$(dirname "$0")/.."
py=${1:-3.12}
mkdir -p wheels
pip download -q --no-deps --only-binary=:all: --python-version "$py" \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
  -d wheels flax==0.12.8 msgpack optax orbax-checkpoint PyYAML rich markdown-it-py mdurl pygments \
  tensorstore treescope typing_extensions absl-py aiofiles etils humanize prometheus-client protobuf \
  psutil simplejson uvloop importlib_resources zipp fsspec nest_asyncio
du -sh wheels
