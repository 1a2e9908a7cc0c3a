"""Which error path of a CUDA FFI handler ends the process?  Builds probe.cc (nvcc, static
and shared cudart), then calls each handler in its own child process and prints one line
per case: exit code and the error text JAX raised.   python bench/ffi_error_probe/run_probe.py [backtrace.txt]"""
import ctypes
import os
import subprocess
import sys

import jax

HERE = os.path.dirname(os.path.abspath(__file__))
CASES = ["ok", "ok_scratch", "fail_plain", "fail_out_of_range", "fail_after_sync", "fail_scratch"]


def build(cudart):
    lib = f"/tmp/probe_{cudart}.so"
    cmd = ["nvcc", "-std=c++17", "-shared", "-Xcompiler", "-fPIC", f"--cudart={cudart}",
           "-I", jax.ffi.include_dir(), os.path.join(HERE, "probe.cc"), "-o", lib]
    subprocess.run(cmd, check=True)
    return lib


CHILD = r"""
import ctypes, sys, jax, jax.numpy as jnp
lib, case, twice = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
jax.ffi.register_ffi_target("probe_" + case, jax.ffi.pycapsule(getattr(ctypes.cdll.LoadLibrary(lib), "probe_" + case)), platform="CUDA")
x = jnp.ones(4)
f = jax.jit(lambda x: jax.ffi.ffi_call("probe_" + case, jax.ShapeDtypeStruct(x.shape, x.dtype))(x))
for i in range(2 if twice else 1):
    try:
        f(x).block_until_ready(); print("returned")
    except Exception as e:
        print(type(e).__name__, str(e).splitlines()[0][:120])
"""

def backtrace(lib, case, path):
    # Where the first crashing case dies, from gdb (or cuda-gdb) when the machine has one.
    for gdb in ("gdb", "cuda-gdb"):
        try:
            r = subprocess.run([gdb, "-batch", "-ex", "run", "-ex", "bt 40", "--args", sys.executable,
                                "-c", CHILD, lib, case, "1"], capture_output=True, text=True, timeout=300)
        except (FileNotFoundError, subprocess.TimeoutExpired):
            continue
        with open(path, "w") as f:
            f.write(r.stdout + r.stderr)
        print(f"{gdb} backtrace of {case} in {path}")
        return


if __name__ == "__main__":
    crashed = None
    for cudart in ("static", "shared"):
        lib = build(cudart)
        for case in CASES:
            r = subprocess.run([sys.executable, "-X", "faulthandler", "-c", CHILD, lib, case, "1"],
                               capture_output=True, text=True, timeout=120)
            lines = (r.stdout.strip() or r.stderr.strip()[-300:]).replace("\n", " | ")
            print(f"{cudart:6s} {case:18s} rc={r.returncode:4d} {lines}")
            if r.returncode < 0 and crashed is None:
                crashed = (lib, case)
    if crashed and len(sys.argv) > 1:
        backtrace(*crashed, sys.argv[1])
