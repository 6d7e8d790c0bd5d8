r"""Learned few-step samplers: a linear multistep method whose time grid and
per-step weights are fitted to a many-step reference on pilot samples
(`sf.optimised_sampler`).

At a handful of model evaluations no fixed method is near the ODE's solution
(problem B of `benchmarks/bench_fewstep.py`: 0.058 FD at 4 NFE for the best fixed
configuration, 0.043 for the best peer). With $N$ evaluations $v_0, \dots, v_{N-1}$
of the PF-ODE drift along the way, the most any explicit method can do is
$y_{i+1} = y_i + h_i \sum_{j \le i} w_{ij} v_j$: choosing the $N(N+1)/2$ weights
and the $N - 1$ inner times for the model at hand, on pilot noise, against a
reference solve of the same noise, is the idea of learned solvers such as S4S
(Frankel et al. 2025) and LD3 (Tong et al. 2025). Here the weights are Adams--
Bashforth-2's (variable step, Euler first) plus learned corrections
$c_{ij}$, so zero corrections are exactly AB2; the integration runs on the
equivalent straight path (`sf.straight_path`), where the drift is nearly constant
along each trajectory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import diffrax
import equinox as eqx
import jax.numpy as jnp
from diffrax import RESULTS, AbstractTerm, LocalLinearInterpolation
from jaxtyping import Array, Float

from .._predictor import AbstractPredictor
from ._grids import _check_steps, log_snr_grid, uniform_grid
from ._multistep import DPMSolverPP3M
from ._optimise import adam_minimise, grid_fractions
from ._paths import on_path, straight_path
from ._sample import SamplerConfig, sample


class LearnedAdams(diffrax.AbstractSolver):
    r"""A linear multistep method with per-step weights, for a fixed number of
    steps $N$: step $i$ (from 0) evaluates $v_i = f(t_i, y_i)$ once and takes

    $$y_{i+1} = y_i + h_i\Big(v_i + \frac{h_i}{2h_{i-1}}(v_i - v_{i-1})
      + \sum_{j \le i} c_{ij} v_j\Big),\qquad h_i = t_{i+1} - t_i,$$

    (the first step without the difference term): variable-step Adams--Bashforth-2
    plus the corrections `corrections[i, j]` (entries with $j > i$ are unused).
    With zero corrections it is AB2: order 2. Fitted corrections come from
    [`scoreflow.optimised_sampler`][]. One model evaluation per step; a run of more
    than $N$ steps is an error.

    **Arguments:** `corrections`, shape `(N, N)`.
    """

    corrections: Float[Array, "n n"]

    term_structure: ClassVar = AbstractTerm
    interpolation_cls: ClassVar[Callable[..., LocalLinearInterpolation]] = (
        LocalLinearInterpolation
    )

    def __init__(self, corrections):
        corrections = jnp.asarray(corrections)
        if corrections.ndim != 2 or corrections.shape[0] != corrections.shape[1]:
            raise ValueError(
                "`sf.internal.LearnedAdams(corrections)` needs a square (N, N) array "
                f"(N steps), got shape {corrections.shape}."
            )
        if not jnp.issubdtype(corrections.dtype, jnp.floating):
            corrections = corrections.astype(jnp.result_type(float))
        self.corrections = corrections

    @property
    def steps(self) -> int:
        return self.corrections.shape[0]

    def order(self, terms):
        return 2

    def init(self, terms, t0, t1, y0, args):
        n = self.steps
        vs = jnp.zeros((n, *jnp.shape(y0)), jnp.result_type(y0))
        return vs, jnp.zeros((), jnp.result_type(t0, t1, float)), jnp.zeros((), int)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        del made_jump
        vs, h_prev, i = solver_state
        n = self.steps
        v = terms.vf(t0, y0, args)
        vs = vs.at[jnp.minimum(i, n - 1)].set(v)
        h = jnp.asarray(t1 - t0, h_prev.dtype)
        ratio = jnp.where(i > 0, h / jnp.where(i > 0, h_prev, 1.0), 0.0)
        prev = vs[jnp.maximum(i - 1, 0)]
        row = jnp.where(jnp.arange(n) <= i, self.corrections[jnp.minimum(i, n - 1)], 0)
        corr = jnp.tensordot(row.astype(v.dtype), vs, axes=1)
        rate = v + (ratio / 2).astype(v.dtype) * (v - prev) + corr
        y1 = y0 + terms.prod(rate, terms.contr(t0, t1))
        y1 = eqx.error_if(
            y1,
            i >= n,
            f"sf.internal.LearnedAdams: fitted for {n} steps, run for more; sample on "
            "the grid it was fitted with (its SamplerConfig.time_grid).",
        )
        state = (vs, h, i + 1)
        return y1, None, dict(y0=y0, y1=y1), state, RESULTS.successful

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)


def _grid_from_logits(theta, t_start, t_end):
    """Strictly decreasing path times from logits (`grid_fractions` of the range in
    the path time), the endpoints exact."""
    inner = t_start + (t_end - t_start) * grid_fractions(theta)
    return jnp.concatenate([t_start[None], inner.astype(t_start.dtype), t_end[None]])


def optimised_sampler(
    key,
    predictor: AbstractPredictor,
    nfe: int,
    *,
    shape: tuple[int, ...],
    num: int = 512,
    iters: int = 400,
    learning_rate: float = 0.01,
    reference_steps: int = 200,
) -> SamplerConfig:
    r"""A few-step sampler fitted to `predictor`: `nfe` steps of
    [`scoreflow.internal.LearnedAdams`][] on the equivalent straight path, whose
    $N - 1$ inner times and $N(N+1)/2$ step weights minimise
    $\mathbb E\,\|\Phi(x_T) - \Phi_\text{ref}(x_T)\|^2$ on `num` pilot samples of
    the same noise, $\Phi_\text{ref}$ being DPM-Solver++(3M) on `reference_steps`
    steps uniform in log-SNR. Adam (optax) with gradients through the sampler,
    from AB2 on the uniform grid; the best iterate is kept. Deterministic: the
    same `key` gives the same sampler.

    Fitting costs about `iters` times `3 nfe` model evaluations on `num` samples
    (seconds for the toy models of the benchmarks; budget it for a large network),
    once: save the result with `eqx.tree_serialise_leaves` and reuse it.

    **Arguments:**

    - `key`: PRNG key of the pilot noise (use another key to sample).
    - `predictor`: an [`scoreflow.Predictor`][] whose process has a scalar
      Gaussian kernel.
    - `nfe`: model evaluations per sample ($N \ge 1$ steps, one evaluation each).
    - `shape`: the shape of one sample; `num`: pilot samples.
    - `iters`, `learning_rate`: Adam's iterations and step size.
    - `reference_steps`: steps of the reference solve.

    **Returns:** a [`scoreflow.internal.SamplerConfig`][]: `cfg.sample(key,
    predictor, shape, num=...)` samples in the predictor's own coordinates, and
    `cfg.time_grid`, `cfg.solver.corrections` are the fitted grid and weights.

    ```python
    cfg = sf.optimised_sampler(jr.key(7), pred, 5, shape=(2,))
    xs = cfg.sample(jr.key(0), pred, (2,), num=10_000)      # 5 NFE
    ```

    On problem B of `benchmarks/bench_fewstep.py` (32-D, 10 full-covariance
    Gaussians) it reaches FD 0.011 at 5 NFE, where the best fixed configuration
    has 0.058 at 4 and the best peer 0.043 (see `docs/benchmarks.md`).
    """
    n = _check_steps("sf.optimised_sampler", nfe)
    for name, value, low in (("num", num, 1), ("iters", iters, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(
                f"`sf.optimised_sampler({name}=...)` must be a Python int >= {low}, "
                f"got {value!r}."
            )
    rf = straight_path(predictor.process)
    return fit_learned_adams(
        key,
        rf,
        [(on_path(predictor, rf), shape, 1.0)],
        n,
        num=num,
        iters=iters,
        learning_rate=learning_rate,
        reference_steps=reference_steps,
        label=f"fitted on {num} pilot samples",
    )


def fit_learned_adams(
    key,
    rf,
    members,
    n: int,
    *,
    num: int,
    iters: int,
    learning_rate: float,
    reference_steps: int,
    label: str,
) -> SamplerConfig:
    r"""The fit behind `sf.optimised_sampler`, over one or more problems: `n` steps
    of `LearnedAdams` on the straight path `rf` minimising
    $\sum_k w_k\,\mathbb E\,\|\Phi(x_T) - \Phi_\text{ref}(x_T)\|^2$, where
    `members` lists `(path predictor on rf, sample shape, weight w_k)` and each
    reference is DPM-Solver++(3M) on `reference_steps` log-SNR steps from the same
    `num` pilot noises (`key`)."""
    init = uniform_grid(rf, n)
    t_start, t_end = init[0], init[-1]
    ref_grid = log_snr_grid(rf, reference_steps, t_start=t_start, t_end=t_end)
    refs = [
        sample(key, rf, pp, shape, num=num, solver=DPMSolverPP3M(), time_grid=ref_grid)
        for pp, shape, _ in members
    ]
    dtype = init.dtype

    def unpack(params):
        theta, c = params
        return _grid_from_logits(theta, t_start, t_end), LearnedAdams(jnp.tril(c))

    def loss(params):
        grid, solver = unpack(params)
        total = None
        for (pp, shape, weight), ref in zip(members, refs):
            xs = sample(key, rf, pp, shape, num=num, solver=solver, time_grid=grid)
            term = jnp.mean(jnp.sum((xs - ref).reshape(num, -1) ** 2, -1))
            term = term if weight == 1 else weight * term
            total = term if total is None else total + term
        return total

    params0 = (jnp.zeros((n,), dtype), jnp.zeros((n, n), dtype))
    params = adam_minimise(loss, params0, iters=iters, learning_rate=learning_rate)
    grid, solver = unpack(params)
    return SamplerConfig(
        path="straight",
        process=rf,
        solver=solver,
        time_grid=grid,
        denoise=False,
        nfe=n,
        label=f"straight path, learned Adams, {n} steps ({label})",
    )
