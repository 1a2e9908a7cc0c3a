"""Child process of tests/test_cuda.py (and of bench/gpu_check.sh's backtrace step): CUDA gather
with out-of-range indices must raise a runtime error naming the op, then keep working."""
import jax.numpy as jnp
import jax

import jax_hetero as jh
from jax_hetero._compat import RUNTIME_ERRORS

table = jnp.ones((10, 4))
run = jax.jit(lambda i: jh.gather(table, i, backend="cuda"))
for bad in ([1, 10], [-2, 0]):
    try:
        run(jnp.array(bad, jnp.int32)).block_until_ready()
        raise SystemExit("no error for " + str(bad))
    except RUNTIME_ERRORS as err:
        assert "gather" in str(err), err
assert (run(jnp.array([-1, 9], jnp.int32)) == jnp.array([[0] * 4, [1] * 4])).all()
print("ok")
