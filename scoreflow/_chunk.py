r"""Memory-bounded batches: run a batched computation over `num` items in chunks.

`chunked(fn, num, batch_size)` calls `fn` on index chunks of `batch_size` items
(and, with `key=`, the per-item keys `jax.random.fold_in(key, i)`, the convention of
`sf.sample`), copies each chunk's result to the host and returns the concatenation.
Device memory holds one chunk's working set at a time; host memory holds the
output. With per-item keys, the result equals the unchunked call item by item:

```python
xs = sf.sample(key, p, pred, (2,), num=10**6, steps=20, batch_size=10**4)
# the same as
keys_fn = lambda idx, keys: sf.sample(keys, p, pred, (2,), num=len(idx), steps=20)
xs = sf.chunked(keys_fn, 10**6, 10**4, key=key)   # == sf.sample(key, ..., num=10**6)

# many likelihoods (sf.log_likelihood takes one example: vmap it, chunk the vmap)
ll = jax.jit(jax.vmap(lambda x, k: sf.log_likelihood(k, p, pred, x)))
lls = sf.chunked(lambda idx, keys: ll(data[idx], keys), len(data), 256, key=key)
```
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np


def chunked(
    fn: Callable,
    num: int,
    batch_size: int,
    *,
    key=None,
    pad: bool = True,
):
    r"""Evaluate a batched `fn` over `num` items, `batch_size` at a time.

    **Arguments:**

    - `fn`: `fn(idx) -> pytree` or, with `key`, `fn(idx, keys) -> pytree`, where
      `idx` is an int32 array of item indices (length `batch_size`) and `keys` the
      batch of PRNG keys `jax.random.fold_in(key, i)` for `i` in `idx`; every leaf of
      the result has leading axis `len(idx)`. Pass a jitted `fn` (or one that jits
      inside, as `sf.sample` does): with `pad=True` every call has the same shape,
      so it compiles once.
    - `num`: the number of items; `batch_size`: items per call (>= 1).
    - `key`: a PRNG key; item `i` gets `fold_in(key, i)`, as with `sf.sample(key,
      ..., num=num)`, so the chunked result equals the unchunked one.
    - `pad`: pad the last chunk to `batch_size` by repeating its last item (the
      extra rows are dropped), instead of a smaller last call.

    **Returns:** the concatenated pytree of NumPy arrays, leading axis `num`.

    **Raises:** `ValueError` if `num` or `batch_size` is not a positive int, or if a
    result leaf lacks the leading axis `len(idx)`.
    """
    for name, v in (("num", num), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(
                f"`chunked({name}=...)` must be a Python int >= 1, got {name}={v!r}."
            )
    num, batch_size = int(num), int(batch_size)
    out = None
    for start in range(0, num, batch_size):
        stop = min(start + batch_size, num)
        size = batch_size if pad else stop - start
        idx = jnp.minimum(jnp.arange(start, start + size, dtype=jnp.int32), num - 1)
        if key is None:
            res = fn(idx)
        else:
            res = fn(idx, jax.vmap(lambda i: jr.fold_in(key, i))(idx))
        leaves, treedef = jax.tree_util.tree_flatten(res)
        if out is None:
            out_def = treedef
            out = []
            for leaf in leaves:
                shape = np.shape(leaf)
                if not shape or shape[0] != size:
                    raise ValueError(
                        f"`chunked`: every leaf of fn's result needs the leading axis "
                        f"len(idx) = {size}, got shape {shape}."
                    )
                out.append(np.empty((num, *shape[1:]), np.asarray(leaf).dtype))
        for buf, leaf in zip(out, leaves):
            buf[start:stop] = np.asarray(leaf)[: stop - start]
        del res, leaves
    return jax.tree_util.tree_unflatten(out_def, out)
