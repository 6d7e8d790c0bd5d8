"""Few-step sampling with a consistency or MeanFlow model (a sibling of `sf.sample`)."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

from .._sampling import check_time_grid
from ..metrics import frechet_distance
from ._models import AbstractFewStepModel


@eqx.filter_jit
def _run(keys, model, grid, noise):
    dtype = grid.dtype

    def one(key, x):
        _, jkey = jr.split(key)
        jkeys = jr.split(jkey, grid.shape[0] - 1)

        def body(x, inp):
            k, t, r = inp
            return model.jump(k, t, r, x).astype(dtype), None

        x, _ = jax.lax.scan(body, x.astype(dtype), (jkeys, grid[:-1], grid[1:]))
        return x

    return jax.vmap(one)(keys, noise)


def few_step_sample(
    key,
    process,
    model: AbstractFewStepModel,
    shape: tuple[int, ...],
    *,
    num: int,
    steps: int | None = None,
    time_grid=None,
    noise=None,
    return_info: bool = False,
):
    r"""Draw `num` samples with a one- or few-step generator
    ([`scoreflow.ConsistencyModel`][] or [`scoreflow.MeanFlowModel`][]): start from
    $\sigma(\tau_0)z$ at $\tau_0$ (default $t_1$) and apply `model.jump` from each
    grid time to the next, down to $t_0$ ($t = 0$ is data). A consistency model
    re-injects fresh kernel noise between its jumps (multistep consistency
    sampling); a MeanFlow model steps $x_r = x_t - (t - r)\,u(t, r, x_t)$. One
    network evaluation per step.

    **Arguments:**

    - `key`: one PRNG key; sample $i$ uses `jax.random.fold_in(key, i)` and draws its
      initial noise as [`scoreflow.sample`][] does, so the two compare path by path
      from the same `key`.
    - `process`: the process the model was built on (must equal `model.process`).
    - `model`: an `sf.ConsistencyModel` or `sf.MeanFlowModel`.
    - `shape`, `num`: the shape of one sample and the number of samples.
    - `steps` or `time_grid` (at most one; default `steps=1`): `steps` gives the
      model's `sampling_grid(steps)`: for an `sf.ConsistencyModel`
      [`scoreflow.edm_grid`][]`(process, steps)`, the $\rho = 7$ levels on which
      `sf.consistency_loss` trains it by default (for `steps` dividing its
      `steps=16`, every jump starts on a training level; see
      [`scoreflow.ConsistencyModel.sampling_grid`][]); for an `sf.MeanFlowModel`
      [`scoreflow.uniform_grid`][]`(process, steps)` (trained on continuous times;
      Geng et al.'s uniform steps). `time_grid` is any strictly decreasing array of
      times, e.g. `loss.sampling_grid(k)` (the training levels of a consistency
      loss) or `sf.uniform_grid(process, k)`.
    - `noise`: the initial points, shape `(num, *shape)` (default from `key`).
    - `return_info`: also return `info` with `nfe` and `num_steps` per sample and
      the grid `ts`, as `sf.sample(..., return_info=True)` does.

    **Returns:** an array `(num, *shape)`, or `(samples, info)`.

    ```python
    xs, info = sf.few_step_sample(key, p, f, (2,), num=1000, steps=2, return_info=True)
    ```
    """
    call = "sf.few_step_sample"
    if not isinstance(model, AbstractFewStepModel):
        raise TypeError(
            f"`{call}`: the model must be an `sf.ConsistencyModel` or "
            f"`sf.MeanFlowModel`, got {type(model).__name__}. For a diffusion or flow "
            "model (an `sf.Predictor`) use `sf.sample`."
        )
    if not eqx.tree_equal(process, model.process):
        raise ValueError(
            f"`{call}`: the process {process!r} differs from the model's "
            f"{model.process!r}; sample on the process the model was trained on."
        )
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise ValueError(f"`{call}(num=...)` must be a Python int >= 1, got {num!r}.")
    if steps is not None and time_grid is not None:
        raise ValueError(f"`{call}`: pass either steps= or time_grid=, not both.")
    dtype = jnp.result_type(float)
    if time_grid is None:
        if steps is not None and (
            isinstance(steps, bool) or not isinstance(steps, int) or steps < 1
        ):
            raise ValueError(
                f"`{call}(steps=...)` must be a Python int >= 1, got {steps!r}."
            )
        grid = model.sampling_grid(1 if steps is None else steps)
    else:
        grid = check_time_grid(time_grid, process, call=f"{call}(time_grid=...)")
    grid = jnp.asarray(grid, dtype)
    shape = tuple(int(s) for s in shape)
    keys = jax.vmap(lambda i: jr.fold_in(key, i))(jnp.arange(num))
    if noise is None:

        def initial(k):
            nkey, _ = jr.split(k)
            return process.sigma(grid[0]) * jr.normal(nkey, shape, dtype)

        noise = jax.vmap(initial)(keys)
    else:
        noise = jnp.asarray(noise, dtype)
        if noise.shape != (num, *shape):
            raise ValueError(
                f"`{call}(noise=...)` must have shape (num, *shape) = {(num, *shape)}, "
                f"got {noise.shape}."
            )
    xs = _run(keys, model, grid, noise)
    if not return_info:
        return xs
    n = grid.shape[0] - 1
    info = {
        "nfe": jnp.full((num,), n, jnp.int32),
        "num_steps": jnp.full((num,), n, jnp.int32),
        "ts": grid,
    }
    return xs, info


def few_step_grid(
    key,
    process,
    model: AbstractFewStepModel,
    data,
    steps: int,
    *,
    candidates=None,
    num: int = 4096,
):
    r"""The `steps`-step sampling grid of a few-step model chosen as Song et al.
    (2023, Consistency Models, Sec. 6) choose theirs: greedily, one intermediate
    time at a time, each the candidate whose `k`-step samples are closest to the
    data. Step $j$ fixes $\tau_j$ (below $\tau_{j-1}$) by trying every candidate and
    keeping the one whose grid $(\tau_0, \tau_1, \dots, \tau_j, t_0)$ gives the
    smallest Fréchet distance ([`scoreflow.metrics.frechet_distance`][]) between
    `num` samples from `key` (the same noise for every candidate) and `data`.
    The paper searches each time by ternary search on FID; here the search is over a
    finite set, by default the interior levels of the model's 16-step
    `sampling_grid` (for an `sf.ConsistencyModel`, the levels
    `sf.consistency_loss` trains on by default).

    Pass training (or held-out) data, never the samples you evaluate against: the
    grid is fitted to `data`.

    **Arguments:**

    - `key`: PRNG key of the samples drawn during the search (use another key to
      sample with the result).
    - `process`, `model`: as for [`scoreflow.few_step_sample`][].
    - `data`: data samples, shape `(n, *shape)`, in the model's coordinates.
    - `steps`: the number of jumps (a Python int $\ge 1$); `steps=1` returns the
      one-step grid $(\tau_0, t_0)$.
    - `candidates`: the times to choose from (default above); times outside
      $(t_0, \tau_0)$ are ignored.
    - `num`: samples per trial.

    **Returns:** a strictly decreasing array of `steps + 1` times, from the model's
    start time $\tau_0$ to $t_0$; pass it as `few_step_sample(..., time_grid=...)`.

    **Raises:** `ValueError` for `steps < 1`, fewer candidates than `steps - 1`, or
    data that is not `(n, *shape)` with `n >= 2`.

    ```python
    grid = sf.few_step_grid(jr.key(5), p, cm, x_train, 2)
    xs = sf.few_step_sample(jr.key(0), p, cm, (2,), num=10_000, time_grid=grid)
    ```
    """
    call = "sf.few_step_grid"
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(
            f"`{call}(steps=...)` must be a Python int >= 1, got {steps!r}."
        )
    if isinstance(num, bool) or not isinstance(num, int) or num < 2:
        raise ValueError(f"`{call}(num=...)` must be a Python int >= 2, got {num!r}.")
    data = jnp.asarray(data)
    if data.ndim < 2 or data.shape[0] < 2:
        raise ValueError(
            f"`{call}`: data must be an array of samples (n, *shape) with n >= 2, got "
            f"shape {data.shape}."
        )
    shape = tuple(data.shape[1:])
    dtype = jnp.result_type(float)
    base = jnp.asarray(model.sampling_grid(1), dtype)
    start, end = float(base[0]), float(base[-1])
    if candidates is None:
        candidates = jnp.asarray(model.sampling_grid(16), dtype)[1:-1]
    pool = sorted(
        {float(c) for c in jnp.ravel(jnp.asarray(candidates, dtype))}, reverse=True
    )
    pool = [c for c in pool if end < c < start]
    if len(pool) < steps - 1:
        raise ValueError(
            f"`{call}`: {steps} steps need {steps - 1} intermediate times inside "
            f"({end:g}, {start:g}); the candidates give {len(pool)}."
        )
    flat = data.reshape(data.shape[0], -1)

    def distance(times):
        grid = jnp.asarray([start, *times, end], dtype)
        xs = few_step_sample(key, process, model, shape, num=num, time_grid=grid)
        return float(frechet_distance(xs.reshape(num, -1), flat))

    chosen: list[float] = []
    for j in range(steps - 1):
        left = steps - 2 - j  # intermediate times still to place below this one
        options = [c for c in pool if (not chosen or c < chosen[-1])]
        options = options[: len(options) - left] if left else options
        scores = [distance([*chosen, c]) for c in options]
        chosen.append(options[min(range(len(options)), key=scores.__getitem__)])
    return jnp.asarray([start, *chosen, end], dtype)
