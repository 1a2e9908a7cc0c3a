"""The FPGA bridge's own C++ tests (csrc/fpga/tests/bridge_test.cc), built with g++ under
AddressSanitizer (LeakSanitizer on) and run in three modes: the emulated device, XrtDevice
against the real XRT runtime with XCL_EMULATION_MODE=noop, and XRT without a card."""
import ctypes.util
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BRIDGE = ROOT / "csrc" / "fpga"
SOURCES = ["tests/bridge_test.cc", "bridge.cc", "memory_mirror.cc", "device.cc", "emulated_device.cc",
           "xrt_device.cc", "gpu_copy_none.cc"]
XRT_INCLUDE = Path("/usr/include/xrt")  # Debian's libxrt-dev


def _xrt_lib_dir():
    """The folder holding libxrt_core.so.2 (XRT loads it from $XILINX_XRT/lib)."""
    for folder in ("/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/opt/xilinx/xrt/lib"):
        if (Path(folder) / "libxrt_core.so.2").exists():
            return Path(folder)
    return None


HAVE_XRT = (XRT_INCLUDE / "xrt" / "xrt_device.h").exists() and ctypes.util.find_library("xrt_coreutil") is not None


@pytest.fixture(scope="module")
def bridge_test(tmp_path_factory):
    cxx = shutil.which("g++")
    kernels = sorted((ROOT / "hls" / "src").glob("*.cpp"))
    if cxx is None or not BRIDGE.exists() or not kernels:
        pytest.skip("needs g++ and the source tree (csrc/fpga, hls/src)")
    exe = tmp_path_factory.mktemp("bridge") / "bridge_test"
    cmd = [cxx, "-std=c++17", "-g", "-O1", "-fsanitize=address", "-fno-omit-frame-pointer",
           "-ffp-contract=off", "-Wno-unknown-pragmas", f"-I{ROOT / 'csrc'}", f"-I{ROOT / 'hls' / 'include'}",
           f"-I{ROOT / 'hls' / 'compat'}", *[str(BRIDGE / s) for s in SOURCES], *map(str, kernels),
           "-o", str(exe), "-lpthread"]
    if HAVE_XRT:
        cmd[1:1] = ["-DJAX_HETERO_WITH_XRT", f"-I{XRT_INCLUDE}"]
        cmd.append("-lxrt_coreutil")
    build = subprocess.run(cmd, capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-4000:]
    return exe


def _run(exe, mode, **env):
    full_env = {k: v for k, v in os.environ.items()
                if k not in ("JAX_HETERO_FPGA_DEVICE", "XCL_EMULATION_MODE", "XILINX_XRT")}
    full_env.update(ASAN_OPTIONS="detect_leaks=1", **env)
    out = subprocess.run([str(exe), mode], capture_output=True, text=True, env=full_env, timeout=120)
    text = out.stdout + out.stderr
    assert "Sanitizer" not in text, text[-4000:]
    assert out.returncode == 0 and f"{mode}:" in out.stdout and "ok" in out.stdout, text[-4000:]
    return out.stdout


def test_emulated_under_asan(bridge_test):
    _run(bridge_test, "emulated")


@pytest.fixture
def xilinx_xrt(tmp_path):
    if not HAVE_XRT or _xrt_lib_dir() is None:
        pytest.skip("needs Debian's libxrt-dev (XRT headers and libxrt_core.so.2)")
    (tmp_path / "lib").symlink_to(_xrt_lib_dir())
    return str(tmp_path)


def test_xrt_noop_buffers_under_asan(bridge_test, xilinx_xrt):
    _run(bridge_test, "xrt-noop", XILINX_XRT=xilinx_xrt, XCL_EMULATION_MODE="noop")


def test_xrt_no_card_error_under_asan(bridge_test, xilinx_xrt):
    _run(bridge_test, "xrt-nocard", XILINX_XRT=xilinx_xrt)
