"""Which compiled backends exist here, and registering their FFI targets with JAX.

This is the only module that knows about the compiled extension modules.  Each module
(``_jax_hetero_cpu``, ``_jax_hetero_cuda``, ``_jax_hetero_fpga``) exposes
``registrations()`` -> {op name: PyCapsule}; the FFI target of op ``topk`` on backend
``cpu`` is called ``jax_hetero_topk_cpu``.
"""
from __future__ import annotations

import contextlib
import contextvars
import glob
import importlib
import os
from functools import lru_cache

import jax

from jax_hetero._compat import COMMAND_BUFFER_COMPATIBLE

BACKENDS = ("auto", "xla", "cpu", "cuda", "fpga")

# Backend name -> (extension module, XLA platforms its handlers are registered for).
_MODULES = {
    "cpu": ("_jax_hetero_cpu", ("cpu",)),
    "cuda": ("_jax_hetero_cuda", ("CUDA",)),
    "fpga": ("_jax_hetero_fpga", ("cpu", "CUDA")),
}

_BUILD_HINT = {
    "cpu": "reinstall with `pip install .` (the CPU backend is always built)",
    "cuda": "install on a machine with nvcc (CUDA toolkit) so `pip install .` builds it, "
            "or force it with `JAX_HETERO_CUDA=ON pip install .`",
    "fpga": "reinstall with `pip install .` (the FPGA bridge is built unless "
            "JAX_HETERO_FPGA=OFF; install Debian's libxrt-dev first for real cards)",
}

_current = contextvars.ContextVar("jax_hetero_backend", default="auto")


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend was not compiled into this installation."""


@lru_cache(maxsize=None)
def _load(backend: str):
    """The extension module of `backend`, or None (with the import error) if absent."""
    module_name, platforms = _MODULES[backend]
    try:
        module = importlib.import_module(f"jax_hetero.backends.{module_name}")
    except ImportError as err:
        return None, _explain_import_error(err)
    _register(module, backend, platforms)
    return module, None


def _register(module, backend: str, platforms) -> None:
    """Registers the module's FFI types and handlers.  The CUDA module's handlers come with an
    instantiate-stage handler that gives each call site its own scratch memory, and its
    ``graph_safe()`` targets carry XLA's command-buffer trait, so XLA may trace them into the
    CUDA graphs of a jitted program."""
    instantiate = module.instantiate() if hasattr(module, "instantiate") else None
    graph_safe = set(module.graph_safe()) if hasattr(module, "graph_safe") else set()
    types = module.ffi_types() if hasattr(module, "ffi_types") else {}
    for platform in platforms:
        for name, registration in types.items():
            jax.ffi.register_ffi_type(name, registration, platform=platform)
        for op, capsule in module.registrations().items():
            handler = capsule if instantiate is None else {"instantiate": instantiate, "execute": capsule}
            traits = {"traits": COMMAND_BUFFER_COMPATIBLE} if op in graph_safe else {}
            jax.ffi.register_ffi_target(target_name(op, backend), handler, platform=platform, **traits)


def _explain_import_error(err: ImportError) -> str:
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    built = glob.glob(os.path.join(here, "backends", "_jax_hetero_*"))
    if not built and os.path.exists(os.path.join(here, os.pardir, "pyproject.toml")):
        return (f"{err}; jax_hetero was imported from the source tree {here}, which holds no "
                f"compiled modules: run from another directory to use the installed package, "
                f"or build in place with .ci/dev_build.sh")
    return str(err)


def target_name(op: str, backend: str) -> str:
    return f"jax_hetero_{op}_{backend}"


def module(backend: str):
    return _load(backend)[0]


def ops_on(backend: str) -> frozenset[str]:
    """The ops with a compiled handler on `backend` (empty if the backend is absent)."""
    mod = module(backend)
    return frozenset(mod.registrations()) if mod is not None else frozenset()


def has(op: str, backend: str) -> bool:
    return op in ops_on(backend)


def unchecked_target(op: str, backend: str, check_indices: bool) -> str:
    """The target of an op with a run-time index check: ``<op>_unchecked`` where the backend
    registers one and the call skips the check (the same handler, registered so that XLA may
    trace it into CUDA graphs, which a call that synchronises to read the check cannot be)."""
    unchecked = f"{op}_unchecked"
    return unchecked if not check_indices and has(unchecked, backend) else op


def require(op: str, backend: str, target: str | None = None) -> None:
    """Raise a clear error unless `op` (handler `target`) is compiled for `backend`."""
    mod, err = _load(backend)
    if mod is None:
        raise BackendUnavailableError(
            f"{op}: backend={backend!r} was requested but jax_hetero was not compiled with "
            f"{backend} support ({err}). To build it, {_BUILD_HINT[backend]}.")
    if (target or op) not in mod.registrations():
        raise BackendUnavailableError(
            f"{op}: backend={backend!r} has no handler for this op; available there: "
            f"{sorted(mod.registrations())}. Use backend='xla' or 'auto'.")
    if backend == "cuda" and not _has_gpu():
        raise BackendUnavailableError(
            f"{op}: backend='cuda' was requested but JAX sees no CUDA device here "
            f"(jax.devices() = {jax.devices()}); use backend='auto' or 'cpu', or install "
            f"jax with its CUDA plugin on a GPU machine.")


@lru_cache(maxsize=None)
def _has_gpu() -> bool:
    try:
        return bool(jax.devices("gpu"))
    except RuntimeError:
        return False


def resolve(op: str, backend: str, target: str | None = None) -> str:
    """Validate a backend argument and apply the `use_backend` context to 'auto'."""
    if backend not in BACKENDS:
        raise ValueError(f"{op}: backend={backend!r} is not one of {BACKENDS}")
    if backend == "auto":
        backend = _current.get()
    if backend not in ("auto", "xla"):
        require(op, backend, target)
    return backend


@contextlib.contextmanager
def use_backend(backend: str):
    """Make `backend` the default for every op called with backend='auto' in this block.

    The choice is static: it applies when a function is traced, so wrap the *tracing*
    (the first call of a jitted function), not only its execution.
    """
    if backend not in BACKENDS:
        raise ValueError(f"use_backend: backend={backend!r} is not one of {BACKENDS}")
    token = _current.set(backend)
    try:
        yield
    finally:
        _current.reset(token)


def build_info() -> dict:
    """Which compiled backends are present, their ops and the XLA FFI API they were built for."""
    info = {"jax": jax.__version__, "backends": {}}
    for backend in _MODULES:
        mod, err = _load(backend)
        if mod is None:
            info["backends"][backend] = {"available": False, "reason": err, "how_to_build": _BUILD_HINT[backend]}
            continue
        entry = {"available": True, "ops": sorted(mod.registrations()),
                 "ffi_api_version": ".".join(map(str, mod.ffi_api_version))}
        if hasattr(mod, "details"):
            entry.update(mod.details())
        info["backends"][backend] = entry
    return info
