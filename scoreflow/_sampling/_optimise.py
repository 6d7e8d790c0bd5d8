"""Optimised time grids: the grid for a given process, predictor, solver and
number of steps that minimises the measured discretisation error against a
many-step reference on pilot samples (`sf.optimised_grid`)."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from .._process import AbstractProcess
from ._grids import _check_steps, check_time_grid, log_snr_grid
from ._multistep import DPMSolverPP3M
from ._sample import sample


def grid_fractions(theta):
    """The inner points of a grid as fractions of its range, from unconstrained
    logits: cumulative softmax increments, each at least 1%/N of the range, so no
    two times collide in float32 (a collision would fail `sf.sample`'s grid check
    inside the gradient)."""
    k = theta.shape[0]
    return jnp.cumsum(0.99 * jax.nn.softmax(theta) + 0.01 / k)[:-1]


def _grid_from_logits(process, theta, lam_start, lam_end, t_start, t_end):
    """Strictly decreasing times from unconstrained logits: increments of the
    log-SNR are a softmax (all > 0), endpoints exact."""
    lam = lam_start + (lam_end - lam_start) * grid_fractions(theta)
    inner = process.t_from_log_snr(lam).astype(t_start.dtype)
    return jnp.concatenate([t_start[None], inner, t_end[None]])


def optimised_grid(
    key,
    process: AbstractProcess,
    predictor,
    steps: int,
    *,
    solver,
    shape: tuple[int, ...],
    num: int = 256,
    iters: int = 150,
    learning_rate: float = 0.05,
    init: Float[ArrayLike, " steps+1"] | None = None,
    denoise: bool = False,
    reference_steps: int = 400,
) -> Float[Array, " steps+1"]:
    r"""A time grid of `steps` steps optimised for one solver, process and predictor:
    it minimises the measured discretisation error
    $\mathbb E\,\|\Phi_\text{grid}(x_T) - \Phi_\text{ref}(x_T)\|^2$ on `num` pilot
    samples from the same initial noise, where $\Phi_\text{grid}$ is `sf.sample` with
    `solver` on the grid and $\Phi_\text{ref}$ a many-step reference
    (DPM-Solver++(3M) on `reference_steps` steps uniform in log-SNR; same end
    time). The grid is parametrised by its log-SNR increments (a softmax, so every
    iterate is strictly decreasing with exact endpoints) and optimised by Adam
    (optax) with gradients through the sampler. Deterministic: the same `key` gives
    the same grid.

    **Arguments:**

    - `key`: PRNG key of the pilot noise.
    - `process`, `predictor`: as for [`scoreflow.sample`][].
    - `steps`: the number of steps $N \ge 1$.
    - `solver`: the solver the grid is for (any fixed-step one).
    - `shape`: the shape of one sample; `num`: pilot samples.
    - `iters`, `learning_rate`: Adam's iterations and step size.
    - `init`: the starting grid (default [`scoreflow.log_snr_grid`][]); its endpoints
      are kept.
    - `denoise`: optimise for `sf.sample(..., denoise=True)` (compared with the
      reference's point at the process's data end).
    - `reference_steps`: steps of the reference solve.

    **Returns:** a strictly decreasing array of times, shape `(steps + 1,)`, to pass
    as `sf.sample(..., time_grid=...)` (save it with `numpy.save` and reuse it).

    Align Your Steps (Sabour et al. 2024) optimises a KL bound instead; this is the
    direct measured-error criterion they compare with.
    [arXiv:2404.14507](https://arxiv.org/abs/2404.14507)
    """

    steps = _check_steps("sf.optimised_grid", steps)
    init = log_snr_grid(process, steps) if init is None else init
    init = check_time_grid(init, process, call="sf.optimised_grid(init=...)")
    if init.shape[0] != steps + 1:
        raise ValueError(
            f"`sf.optimised_grid(init=...)` must have steps + 1 = {steps + 1} points, "
            f"got {init.shape[0]}."
        )
    t_start, t_end = init[0], init[-1]
    lam_start, lam_end = process.log_snr(t_start), process.log_snr(t_end)
    dlam = jnp.diff(process.log_snr(init))
    w = (dlam / jnp.sum(dlam) - 0.01 / steps) / 0.99
    theta0 = jnp.log(jnp.clip(w, 1e-6))
    # the reference ends where the grid does, or at the data end for a final
    # Tweedie step (whose target is the sample at t0)
    ref_end = None if denoise else t_end
    ref_grid = log_snr_grid(process, reference_steps, t_start=t_start, t_end=ref_end)
    ref = sample(
        key,
        process,
        predictor,
        shape,
        num=num,
        solver=DPMSolverPP3M(),
        time_grid=ref_grid,
    )

    def loss(theta):
        grid = _grid_from_logits(process, theta, lam_start, lam_end, t_start, t_end)
        xs = sample(
            key,
            process,
            predictor,
            shape,
            num=num,
            solver=solver,
            time_grid=grid,
            denoise=denoise,
        )
        return jnp.mean(jnp.sum((xs - ref).reshape(num, -1) ** 2, -1))

    theta = adam_minimise(loss, theta0, iters=iters, learning_rate=learning_rate)
    return _grid_from_logits(process, theta, lam_start, lam_end, t_start, t_end)


def adam_minimise(loss, params0, *, iters: int, learning_rate: float):
    """Adam (optax) on `loss(params)` for `iters` iterations in one compiled scan,
    non-finite gradient entries zeroed; returns the best iterate seen (the final one
    included). `params0` is a pytree of arrays."""
    import optax  # here: it costs 50 ms at `import scoreflow`

    opt = optax.adam(learning_rate)

    def finite(g):
        return jnp.where(jnp.isfinite(g), g, 0.0)

    @eqx.filter_jit
    def run(params):
        def body(carry, _):
            p, st, best, best_val = carry
            val, g = jax.value_and_grad(loss)(p)
            g = jax.tree_util.tree_map(finite, g)
            better = val < best_val
            best = jax.tree_util.tree_map(lambda a, b: jnp.where(better, a, b), p, best)
            best_val = jnp.where(better, val, best_val)
            # optax mixes its int32 step count with float hyperparameters (Adam's
            # bias correction): standard promotion whatever the caller's setting,
            # as in `sf.train.fit`
            with jax.numpy_dtype_promotion("standard"):
                upd, st = opt.update(g, st, p)
            return (optax.apply_updates(p, upd), st, best, best_val), val

        inf = jnp.asarray(jnp.inf, jax.tree_util.tree_leaves(params)[0].dtype)
        carry = (params, opt.init(params), params, inf)
        (p, _, best, best_val), _ = jax.lax.scan(body, carry, None, length=iters)
        last = loss(p)
        return jax.tree_util.tree_map(
            lambda a, b: jnp.where(last < best_val, a, b), p, best
        )

    return run(params0)
