"""Choosing between the jnp reference and a compiled FFI handler for one op call."""
from __future__ import annotations

from typing import Callable

from .. import backends
from .._compat import ffi_call, platform_dependent

# JAX platform name -> our backend of that platform, for backend="auto".
_AUTO_PLATFORMS = {"cpu": "cpu", "cuda": "cuda"}


# Backends whose handlers of an op broadcast size-1 batch dims of its operands themselves, so
# vmap passes an unbatched operand (a memory shared by a batch of queries) without copying it.
_BROADCASTING = {("cpu", "relevancy"), ("cpu", "indexer")}


def ffi(op: str, backend: str, result_shapes, **attrs) -> Callable:
    """A function calling the FFI target of `op` on `backend`.

    Handlers treat every leading dimension beyond the op's own as batch, so the call is
    batched by broadcasting (vmap and nested vmap just add leading dimensions): the operands
    are broadcast to the batch first, unless the handlers broadcast themselves.
    """
    family = op.split("_")[0]
    method = "expand_dims" if (backend, family) in _BROADCASTING else "broadcast_all"
    call = ffi_call(backends.target_name(op, backend), result_shapes, vmap_method=method)
    return lambda *args: call(*args, **attrs)


def run(op: str, backend: str, reference: Callable, compiled: Callable[[str], Callable], *args,
        target: str | None = None):
    """Run `op` on the resolved backend; `target` names its handlers (default: `op`).

    reference(*args) is the jnp specification; compiled(name)(*args) calls the FFI handler
    of backend `name`.  backend="auto" lowers, per platform, to the compiled handler of that
    platform when one exists and to the reference otherwise.
    """
    target = target or op
    backend = backends.resolve(op, backend, target)
    if backend == "xla":
        return reference(*args)
    if backend != "auto":
        return compiled(backend)(*args)
    branches = {platform: compiled(name) for platform, name in _AUTO_PLATFORMS.items()
                if backends.has(target, name)}
    if not branches:
        return reference(*args)
    return platform_dependent(*args, default=reference, **branches)
