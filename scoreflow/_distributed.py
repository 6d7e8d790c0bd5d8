"""Placing host values on a mesh that may span several processes.

`jax.device_put(x, sharding)` refuses a sharding with devices of other processes
("must represent addressable devices") when `x` is already a JAX array. In a
multi-process run every process computes the same host-side value (same key, same
arguments), so each process can build its own shards of the global array from it:
that is `put_global`. In a single process it is `jax.device_put`.
"""

import jax
import jax.random as jr
import numpy as np


def put_global(tree, sharding):
    """Place every array leaf of `tree` with `sharding`; in a multi-process run
    every process must pass the same values (PRNG key arrays included) and keeps
    only its devices' shards."""
    if sharding.is_fully_addressable:
        return jax.device_put(tree, sharding)

    def put(a):
        if isinstance(a, jax.Array) and jax.dtypes.issubdtype(
            a.dtype, jax.dtypes.prng_key
        ):
            return jr.wrap_key_data(put(jr.key_data(a)), impl=jr.key_impl(a))
        host = np.asarray(a)
        return jax.make_array_from_callback(host.shape, sharding, lambda i: host[i])

    return jax.tree_util.tree_map(put, tree)
