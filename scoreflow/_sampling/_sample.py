r"""`sf.sample`: draw samples by integrating the reverse-time dynamics.

Design (see the module docstring of `_dynamics` for the flipped time):

- Every sample is computed by one unbatched function of its own key, `vmap`-ed
  over the batch, so a batch of $n$ equals the same $n$ samples drawn one at a time.
  With a single `key`, sample $i$ uses `jax.random.fold_in(key, i)`; its initial
  noise comes from the first half of that key only (whatever the method, solver or
  grid) and its Brownian path from the second.
- Fixed grids run `solver.step` of the *same diffrax solver object* inside one
  `lax.scan` (no `diffeqsolve` while-loop, no per-step saving or error checks), which
  costs what a hand-written scan costs. Adaptive solves, and fixed grids with a
  progress meter, go through `diffrax.diffeqsolve`.
- Everything numeric (grid values, tolerances, guidance scale, `eta`, solver
  parameters) is traced; one compilation per shape, step count and static option.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from .._chunk import chunked
from .._count import counted, runge_kutta_evaluations, traced_calls
from .._distributed import put_global
from .._predictor import AbstractPredictor
from .._process import AbstractScalarProcess, require
from ._dynamics import _as_eta, _is_static_zero, reverse_dynamics, sde_convention
from ._grids import _check_steps, check_time_grid, uniform_grid
from ._paths import on_path, path_grid, straight_path
from ._solvers import (
    SAMPLE_AXIS,
    AbstractDiffusionSolver,
    _reaches_data_end,
    _split_terms,
)
from ._step import (
    GivenNormals,
    check_normals_solver,
    check_solver,
    normals_per_step,
    shape_normals,
)

# Number of times the jitted sampler has been traced (read by the trace-count test).
_TRACES = [0]


def _per_step(solver, terms, span, s0, s1, y, args, calls_per_vf):
    """(model calls per step, extra calls on the first step, calls in init, calls
    saved on a step that reaches the data end)."""
    rk = runge_kutta_evaluations(solver)
    if rk is not None:
        return rk[0] * calls_per_vf, rk[1] * calls_per_vf, 0, 0
    state = solver.init(terms, s0, s1, y, args)
    n_init = traced_calls(lambda: solver.init(terms, s0, s1, y, args))

    def n_step(final: bool) -> int:
        # scoreflow's samplers branch on whether a step reaches the data end t0 (the
        # end `span` of the flipped time): a step traced at concrete times takes one
        # branch, so tracing an interior step and a final one counts what each
        # really evaluates.
        a, b = (0.5 * span, span) if final else (0.0, 0.5 * span)
        return traced_calls(lambda: solver.step(terms, a, b, y, args, state, False))

    n = n_step(False)
    return n, 0, n_init, n - n_step(True)


# --------------------------------------------------------------------------- #
# Options and validation
# --------------------------------------------------------------------------- #


@dataclasses.dataclass(frozen=True)
class _Options:
    method: str
    fixed: bool
    use_diffeqsolve: bool
    denoise: bool
    trajectory: bool
    tree: bool
    batched_key: bool
    has_noise: bool
    has_normals: bool
    max_steps: int
    dt0: Any
    progress_meter: Any
    throw: bool = True
    batch_system: bool = False


def _levy_area(solver):
    minimal = getattr(solver, "minimal_levy_area", None)
    if minimal is None:
        return diffrax.BrownianIncrement
    if issubclass(diffrax.SpaceTimeTimeLevyArea, minimal) and not issubclass(
        diffrax.SpaceTimeLevyArea, minimal
    ):
        return diffrax.SpaceTimeTimeLevyArea
    if issubclass(diffrax.SpaceTimeLevyArea, minimal):
        return diffrax.SpaceTimeLevyArea
    return diffrax.BrownianIncrement


def _is_key_batch(key, num):
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape == ():
            return False
        if key.shape == (num,):
            return True
    else:
        if key.shape == (2,):
            return False
        if key.shape == (num, 2):
            return True
    raise ValueError(
        "`sf.sample(key, ...)`: key must be one PRNG key or a batch of `num` keys (one "
        f"per sample), got shape {key.shape} with num={num}."
    )


def _traced_controller(c):
    """Tolerances as arrays, so changing them does not recompile."""
    for name in ("rtol", "atol", "dtmin", "dtmax"):
        v = getattr(c, name, None)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            c = eqx.tree_at(lambda x, n=name: getattr(x, n), c, jnp.asarray(float(v)))
    return c


# --------------------------------------------------------------------------- #
# The jitted implementation
# --------------------------------------------------------------------------- #


def _diffeqsolve(terms, solver, s0, s1, dt0, y0, args, saveat, controller, opts,
                 adjoint=diffrax.RecursiveCheckpointAdjoint()):  # fmt: skip
    """`diffrax.diffeqsolve` with `sf.sample`'s options, and its step statistics."""
    sol = diffrax.diffeqsolve(
        terms,
        solver,
        s0,
        s1,
        dt0,
        y0,
        args=args,
        saveat=saveat,
        adjoint=adjoint,
        stepsize_controller=controller,
        max_steps=opts.max_steps,
        progress_meter=opts.progress_meter or diffrax.NoProgressMeter(),
        throw=opts.throw,
    )
    keys = ("num_steps", "num_accepted_steps", "num_rejected_steps")
    return sol, {k: sol.stats[k] for k in keys}


def _finite_or_raise(y):
    return eqx.error_if(
        y,
        ~jnp.all(jnp.isfinite(y)),
        "sf.sample: some samples are not finite (NaN or inf). The usual causes: the "
        "model returns NaN or inf, a guidance scale is NaN, or the solver diverged "
        "(too few steps for a stiff process near t0). Pass throw=False to get the "
        "samples anyway.",
    )


@eqx.filter_jit
def _sample_impl(
    key,
    noise,
    normals,
    cond,
    process,
    predictor,
    solver,
    controller,
    grid,
    eta,
    num,
    opts,
):
    _TRACES[0] += 1
    pred = counted(predictor)
    shape_dtype = noise
    shape, dtype = shape_dtype.shape, shape_dtype.dtype
    if opts.has_noise:
        shape = shape[1:]
    s_grid = (process.t1 - grid).astype(dtype)
    s_start, s_end = s_grid[0], s_grid[-1]
    ode = opts.method == "ode"
    levy = _levy_area(solver)

    if opts.batched_key:
        keys = key
    else:
        keys = jax.vmap(lambda i: jr.fold_in(key, i))(jnp.arange(num))

    if opts.batch_system:
        return _solve_as_one_system(
            keys, noise, cond, process, pred, solver, controller, grid, s_grid, opts
        )

    def terms_for(bkey, z):
        if ode:
            return reverse_dynamics(process, pred, eta=0)
        if opts.has_normals:
            bm = GivenNormals(s_grid, z)
        elif opts.tree:
            span = process.t1 - process.t0
            lo = jnp.minimum(0.0, s_start)
            hi = jnp.maximum(span, s_end)
            if opts.fixed:
                tol = jnp.min(jnp.diff(s_grid)) / 4
            else:
                tol = (s_end - s_start) / 2**12
            bm = diffrax.VirtualBrownianTree(lo, hi, tol, shape, bkey, levy_area=levy)
        else:
            bm = diffrax.UnsafeBrownianPath(shape, bkey, levy_area=levy)
        return reverse_dynamics(
            process,
            pred,
            eta=eta,
            brownian_motion=bm,
            convention=sde_convention(solver),
        )

    def one(k, x_given, z, c):
        nkey, bkey = jr.split(k)
        if opts.has_noise:
            x = x_given
        else:  # the kernel's noise at grid[0] (without a kernel: the prior)
            x = process.initial_noise(nkey, grid[0], shape, dtype)
        terms = terms_for(bkey, z)
        calls_vf = traced_calls(
            lambda: terms.vf(s_start, x, c) if ode else terms.terms[0].vf(s_start, x, c)
        )
        per_step, first, n_init, saved = _per_step(
            solver, terms, process.t1 - process.t0, s_start, s_grid[1], x, c, calls_vf
        )
        if opts.fixed and not opts.use_diffeqsolve:
            state = solver.init(terms, s_start, s_grid[1], x, c)

            def body(carry, ss):
                y, st = carry
                y, _, _, st, _ = solver.step(terms, ss[0], ss[1], y, c, st, False)
                return (y, st), (y if opts.trajectory else None)

            (y, _), traj = jax.lax.scan(body, (x, state), (s_grid[:-1], s_grid[1:]))
            steps = jnp.asarray(len(grid) - 1)
            stats = dict(
                num_steps=steps,
                num_accepted_steps=steps,
                num_rejected_steps=jnp.asarray(0),
            )
            if opts.trajectory:
                traj = jnp.concatenate([x[None], traj])
                ts = grid
        else:
            if opts.fixed:
                ctrl, dt0 = diffrax.StepTo(ts=s_grid), None
                saveat = (
                    diffrax.SaveAt(ts=s_grid)
                    if opts.trajectory
                    else diffrax.SaveAt(t1=True)
                )
            else:
                ctrl, dt0 = controller, opts.dt0
                saveat = (
                    diffrax.SaveAt(t0=True, steps=True)
                    if opts.trajectory
                    else diffrax.SaveAt(t1=True)
                )
            adjoint = (
                diffrax.ForwardMode()
                if (not ode and not opts.tree)
                else diffrax.RecursiveCheckpointAdjoint()
            )
            sol, stats = _diffeqsolve(
                terms, solver, s_start, s_end, dt0, x, c, saveat, ctrl, opts, adjoint
            )
            if opts.trajectory:
                traj, ts = sol.ys, process.t1 - sol.ts
                last = jnp.sum(jnp.isfinite(sol.ts)) - 1
                y = sol.ys[last] if not opts.fixed else sol.ys[-1]
            else:
                y = sol.ys[-1]
            steps = stats["num_steps"]
        # diffrax's initial step-size selection (dt0=None) evaluates nothing here:
        # it only applies to bare ODETerms, and diffeqsolve wraps terms first (checked
        # against a runtime counter in tests/test_sampling.py).
        nfe = n_init + first + per_step * steps
        if saved:
            # Steps that reach the data end t0 take a lower-order branch (the
            # solvers' `lower_order_final`); fixed grids only (adaptive solves refuse
            # scoreflow's samplers).
            drift, _ = _split_terms(terms, type(solver).__name__)
            nfe = nfe - saved * jnp.sum(_reaches_data_end(drift, s_grid[1:]))
        if opts.denoise:
            n_den = traced_calls(lambda: pred.x0(grid[-1], y, c))
            y = pred.x0(grid[-1], y, c)
            nfe = nfe + n_den
        stats["nfe"] = jnp.asarray(nfe)
        if opts.throw:  # per sample, so a sharded batch stays sharded
            y = _finite_or_raise(y)
        if opts.trajectory:
            stats["trajectory"], stats["ts"] = traj, ts
        return y, stats

    xs = noise if opts.has_noise else None
    return jax.vmap(one, axis_name=SAMPLE_AXIS)(keys, xs, normals, cond)


def _solve_as_one_system(
    keys, noise, cond, process, pred, solver, controller, grid, s_grid, opts
):
    """`adaptive="batch"`: the PF-ODE of the whole batch as one system, one
    `diffeqsolve` on the `(num, *shape)` array with one step-size controller (the
    model vmapped inside the vector field), as torchdiffeq solves a batch. The
    statistics are the system's: one count each."""
    s_start, s_end = s_grid[0], s_grid[-1]
    if opts.has_noise:
        shape, dtype = noise.shape[1:], noise.dtype
        x = noise
    else:
        shape, dtype = noise.shape, noise.dtype
        # the same initial noise as the per-sample mode: the first half of each key
        x = jax.vmap(
            lambda k: process.initial_noise(jr.split(k)[0], grid[0], shape, dtype)
        )(keys)
    drift = reverse_dynamics(process, pred, eta=0).vector_field

    def batched(s, y, c):
        return jax.vmap(lambda yi, ci: drift(s, yi, ci))(y, c)

    terms = diffrax.ODETerm(batched)
    c0 = None if cond is None else jax.tree_util.tree_map(lambda a: a[0], cond)
    calls_vf = traced_calls(lambda: drift(s_start, x[0], c0))
    per_step, first, n_init, _ = _per_step(
        solver, terms, process.t1 - process.t0, s_start, s_grid[1], x, cond, calls_vf
    )
    saveat = (
        diffrax.SaveAt(t0=True, steps=True)
        if opts.trajectory
        else diffrax.SaveAt(t1=True)
    )
    sol, stats = _diffeqsolve(
        terms, solver, s_start, s_end, opts.dt0, x, cond, saveat, controller, opts
    )
    if opts.trajectory:
        last = jnp.sum(jnp.isfinite(sol.ts)) - 1
        y = sol.ys[last]
        stats["trajectory"] = jnp.moveaxis(sol.ys, 0, 1)
        stats["ts"] = process.t1 - sol.ts
    else:
        y = sol.ys[-1]
    nfe = n_init + first + per_step * stats["num_steps"]
    if opts.denoise:
        nfe = nfe + traced_calls(lambda: pred.x0(grid[-1], x[0], c0))
        y = jax.vmap(lambda yi, ci: pred.x0(grid[-1], yi, ci))(y, cond)
    stats["nfe"] = jnp.asarray(nfe)
    if opts.throw:
        y = _finite_or_raise(y)
    return y, stats


# --------------------------------------------------------------------------- #
# Public entry point
# --------------------------------------------------------------------------- #


# --------------------------------------------------------------------------- #
# The default configuration (issue 13)
# --------------------------------------------------------------------------- #
# The measured default sampler for a process and an NFE budget (issue 13).
#
# `default_sampler(process, steps)` is pure: it returns a [`scoreflow.internal.SamplerConfig`][]
# naming the path, solver, grid and final denoise that `benchmarks/bench_fewstep.py`
# measured best with a fixed grid (table in `docs/concepts/samplers.md`):
#
# - every process with a scalar Gaussian kernel: its equivalent straight path
#   ([`scoreflow.straight_path`][], exact), `diffrax.Midpoint()`, a grid uniform in the
#   path time $u$, $\lfloor n/2\rfloor$ steps, no final denoise (on problem A a final
#   Tweedie denoise at NFE 5 lowers FD from 0.035 to 0.002, but on the 32-D problem B
#   it makes the samples 10 nats too concentrated, FD 0.39; see the benchmark);
# - anything else (matrix linear SDEs, processes without a kernel): `diffrax.Heun()`
#   on the uniform grid, as before.
#
# `steps` is the budget of model evaluations (NFE); the configuration never uses more.
#
# `sf.sample(..., steps=N)` without `solver=` runs `default_sampler(process, 2 N)`
# (`N` Midpoint steps on the straight path, the `2 N` evaluations the old `Heun`
# default made) when it can, and says what it ran in `info["sampler"]`
# (`pick_for_sample` below decides).


class SamplerConfig(eqx.Module):
    r"""A named sampling configuration (what [`scoreflow.default_sampler`][] returns):
    the path to integrate along, the solver, the time grid (data: in the path's time)
    and the final denoise.

    **Fields:** `path` (`"straight"` or `"native"`), `process` (the process integrated:
    the straight path or the original), `solver`, `time_grid` (strictly decreasing),
    `denoise` (bool), `nfe` (evaluations it makes), `label` (one line for `info`),
    `method` (`"ode"` or `"sde"`), `options` (further keyword arguments of
    `sf.sample`, as `(name, value)` pairs: a peer recipe of [`scoreflow.peers`][]
    may need e.g. a step-size controller).
    """

    path: str = eqx.field(static=True)
    process: Any
    solver: Any
    time_grid: Any
    denoise: bool = eqx.field(static=True)
    nfe: int = eqx.field(static=True)
    label: str = eqx.field(static=True)
    method: str = eqx.field(static=True, default="ode")
    options: tuple = ()

    def predictor_for(self, predictor):
        """The predictor to integrate with: `predictor` read along the path."""
        return (
            on_path(predictor, self.process) if self.path == "straight" else predictor
        )

    def kwargs(self) -> dict:
        """The keyword arguments of `sf.sample` for this configuration."""
        out = dict(
            solver=self.solver,
            time_grid=self.time_grid,
            denoise=self.denoise,
            method=self.method,
        )
        out.update(dict(self.options))
        return out

    def sample(self, key, predictor, shape, *, num: int, **kwargs):
        r"""`sf.sample` with this configuration; the samples are returned in the
        predictor's own coordinates (for the straight path, mapped back exactly from
        the path's end point, unless the final denoise already gives $\hat x_0$).
        `kwargs` go to `sf.sample` (e.g. `return_info=True`)."""
        pred = self.predictor_for(predictor)
        out = sample(key, self.process, pred, shape, num=num, **self.kwargs(), **kwargs)
        xs, info = out if isinstance(out, tuple) else (out, None)
        if self.path == "straight" and not self.denoise:
            xs = xs / pred.scale(self.time_grid[-1]).astype(xs.dtype)
        return xs if info is None else (xs, info)


def default_sampler(process, steps: int) -> SamplerConfig:
    r"""The default sampling configuration for `process` with a budget of `steps`
    model evaluations (see the module docstring and `docs/concepts/samplers.md`).

    **Arguments:** `process`; `steps`, the NFE budget (a Python int $\ge 1$).

    **Returns:** a [`scoreflow.internal.SamplerConfig`][].

    ```python
    cfg = sf.default_sampler(sf.VP(), 5)   # straight path, 2 Midpoint steps (4 NFE)
    xs = cfg.sample(key, pred, (2,), num=1000)
    ```
    """
    n = _check_steps("sf.default_sampler", steps)
    return _default_for(process, n)


def _native(process, n: int) -> SamplerConfig:
    k = max(n // 2, 1)
    return SamplerConfig(
        path="native",
        process=process,
        solver=diffrax.Heun() if n >= 2 else diffrax.Euler(),
        time_grid=uniform_grid(process, k),
        denoise=False,
        nfe=2 * k if n >= 2 else 1,
        label=f"native path, {'Heun' if n >= 2 else 'Euler'}, uniform t, {k} steps",
    )


@functools.singledispatch
def _default_for(process, n: int) -> SamplerConfig:
    """Without a scalar kernel (CLD, non-Gaussian SDEs): the native path, Heun."""
    return _native(process, n)


@_default_for.register
def _(process: AbstractScalarProcess, n: int) -> SamplerConfig:
    """With a scalar kernel: the straight path with the same log-SNR range."""
    if n < 2:
        return _native(process, n)
    rf = straight_path(process)
    k = n // 2
    return SamplerConfig(
        path="straight",
        process=rf,
        solver=diffrax.Midpoint(),
        time_grid=uniform_grid(rf, k),
        denoise=False,
        nfe=2 * k,
        label=f"straight path, Midpoint, uniform u, {k} steps",
    )


def _same_kernel(p, q) -> bool:
    r"""Whether two processes have the same $t_0, t_1, \alpha(t), \sigma(t)$ (checked
    at 7 times; `False` when their parameters are traced)."""
    if p is q:
        return True
    try:
        if float(p.t0) != float(q.t0) or float(p.t1) != float(q.t1):
            return False
        ts = np.linspace(float(p.t0), float(p.t1), 7)
        for f, g in ((p.alpha, q.alpha), (p.sigma, q.sigma)):
            a = np.asarray([float(f(t)) for t in ts])
            b = np.asarray([float(g(t)) for t in ts])
            if not np.allclose(a, b, rtol=1e-6, atol=0.0):
                return False
        return True
    except (jax.errors.ConcretizationTypeError, AttributeError):  # traced; no kernel
        return False


def pick_for_sample(
    process, predictor, *, method, steps, time_grid, stepsize_controller
) -> tuple[SamplerConfig | None, str]:
    r"""What `sf.sample` runs when no `solver=` is given: `(config, label)` with the
    straight-path configuration of `default_sampler(process, 2 * steps)`, or
    `(None, label)` for the native path with `diffrax.Heun()` (the default before
    issue 13), the label saying why."""
    if stepsize_controller is not None:
        where, why = "adaptive steps", "an adaptive stepsize_controller"
    elif time_grid is not None:
        where, why = "the given time_grid", "a given time_grid"
    elif isinstance(steps, bool) or not isinstance(steps, (int, np.integer)):
        return None, "native path, Heun"  # sf.sample reports the bad steps=
    else:
        where, why = f"uniform t, {int(steps)} steps", None
        if steps < 1:
            return None, "native path, Heun"
        if method != "ode":
            why = "method='sde'"
        elif not isinstance(predictor, AbstractPredictor):
            why = "a predictor without a process"
        else:
            try:
                cfg = _default_for(process, 2 * int(steps))
            except jax.errors.ConcretizationTypeError:
                cfg, why = None, "traced process parameters (inside jit)"
            if cfg is not None and cfg.path != "straight":
                why = "no scalar Gaussian kernel"
            elif cfg is not None and not _same_kernel(process, predictor.process):
                why = "the predictor's process differs from `process`"
            elif cfg is not None:
                return cfg, cfg.label
    return None, f"native path, Heun, {where} ({why})"


def sample(
    key,
    process,
    predictor,
    shape: tuple[int, ...],
    *,
    num: int,
    method: str = "ode",
    solver: diffrax.AbstractSolver | None = None,
    steps: int | None = None,
    time_grid=None,
    stepsize_controller: diffrax.AbstractStepSizeController | None = None,
    adaptive: str = "per_sample",
    eta: float | Callable | None = None,
    cond: Any = None,
    noise=None,
    normals=None,
    denoise: bool = False,
    return_trajectory: bool = False,
    return_info: bool = False,
    brownian: str = "increments",
    progress_meter: diffrax.AbstractProgressMeter | None = None,
    dt0: float | None = None,
    max_steps: int = 4096,
    throw: bool = True,
    batch_size: int | None = None,
):
    r"""Draw `num` samples by integrating the reverse-time dynamics from noise to data.

    The dynamics are the family
    $dx = [f - \tfrac{1+\eta^2}{2}g^2\nabla\log p_t]\,dt + \eta\,g\,d\bar W$ run from
    `time_grid[0]` (default $t_1$) to `time_grid[-1]` (default $t_0$), integrated in
    flipped time $s = t_1 - t$ ([`scoreflow.reverse_dynamics`][]): `method="ode"` is
    the probability-flow ODE ($\eta = 0$), `method="sde"` the reverse SDE ($\eta = 1$,
    or any `eta`).

    **Arguments:**

    - `key`: one PRNG key (sample $i$ uses `jax.random.fold_in(key, i)`, so the first
      $m$ samples of a batch do not depend on `num`), or a batch of `num` keys, one
      per sample. A batch of keys gives exactly the samples drawn one key at a time
      (one exception: [`scoreflow.PredictorCorrector`][]'s default corrector, which
      is score_sde's and averages its norms over the batch).
      `None` for a run that draws nothing: given `noise=` and either
      `method="ode"` or given `normals=`.
    - `process`, `predictor`: the forward process and an [`scoreflow.Predictor`][]
      (or a guided one, [`scoreflow.cfg`][]).
    - `shape`: the shape of one sample.
    - `num`: the number of samples.
    - `method`: `"ode"` or `"sde"`.
    - `solver`: `None` (default; see **Default sampler** below), any diffrax solver
      (ODE: Euler, Heun, Midpoint, Tsit5, Dopri5...; SDE: Euler (Euler--Maruyama), Heun, ShARK, SRA1, SEA...; for a diffusion
      $g(t, x)$ the terms are built in the solver's Itô or Stratonovich reading,
      [`scoreflow.sde_convention`][], and the additive-noise solvers ShARK, SRA1, SEA
      do not apply) or a scoreflow sampler
      ([`scoreflow.DDIM`][], [`scoreflow.DPMSolverPP2M`][], [`scoreflow.DDPM`][],
      [`scoreflow.PredictorCorrector`][], [`scoreflow.EDMHeun`][]).
    - `steps` or `time_grid` (exactly one, for fixed steps): `steps` is the number
      of steps, on [`scoreflow.uniform_grid`][]`(process, steps)` (for the default
      sampler, on the grid uniform in the straight path's time); `time_grid` is any
      strictly decreasing array of times (e.g. [`scoreflow.log_snr_grid`][],
      [`scoreflow.edm_grid`][]).
    - `stepsize_controller`: e.g. `diffrax.PIDController(rtol=..., atol=...)` for an
      adaptive solve (then neither `steps` nor `time_grid`; the solve runs over
      $[t_0, t_1]$). Tolerances are traced.
    - `adaptive`: how an adaptive ODE solve treats the batch.
      `"per_sample"` (default): each sample is its own ODE with its own controller
      (vmapped), so its result and step count do not depend on the other samples, on
      `num` or on `batch_size`; but a vmapped loop runs until the slowest sample is
      done, so a batch costs its slowest sample's NFE in wall-clock time.
      `"batch"`: the whole `(num, *shape)` array is one ODE with one controller (the
      model vmapped inside the vector field), as torchdiffeq / Meta's
      `flow_matching` solve a batch: the error norm is the RMS over every element of
      the batch (diffrax's default `rms_norm`, torchdiffeq's too), so all samples
      share one step sequence and the call costs one NFE count, usually well below
      the per-sample maximum (easy samples no longer pay for hard ones, nor hard
      ones for a tolerance met on average; `docs/benchmarks.md`). Use it for
      throughput and to reproduce those libraries; use `"per_sample"` when each
      sample must meet the tolerance on its own or must not depend on its batch
      (reproducibility across `num`, chunking and sharding). Only for
      `method="ode"` with a `stepsize_controller`.
    - `eta`: the noise level for `method="sde"` (number or callable `eta(t)`;
      default 1).
    - `cond`: a pytree of per-sample conditions with leading axis `num` (passed to
      the predictor as `cond`).
    - `noise`: the initial points, shape `(num, *shape)`; default
      $\sigma(t_\text{start})\,z$ with $z \sim N(0, I)$ from the sample's key only
      (for a process without a Gaussian kernel: `process.prior_sample`, e.g. the
      stationary density, meant for $t_\text{start} = t_1$).
    - `normals`: the standard normal draws of every step of a stochastic fixed-grid
      run (`method="sde"`), instead of a Brownian path from the key: shape
      `(num, steps, k, *shape)`, `k` the draws one step reads
      (`solver.normals_per_step()`: 1 for diffrax's Euler/Heun and most samplers,
      `corrector_steps + 1` for [`scoreflow.PredictorCorrector`][]); with `k = 1`
      also `(num, steps, *shape)`. This replays another library's
      `variance_noise`/generator draws ([`scoreflow.internal.GivenNormals`][]);
      solvers that need a Lévy area (ShARK, SRA1, SEA) refuse it.
    - `denoise`: finish with one Tweedie step $\hat x_0(t_\text{end}, x)$.
    - `return_trajectory`: store the states at every grid time (adaptive: at every
      step, padded with `inf`) in `info["trajectory"]`, times in `info["ts"]`.
    - `return_info`: also return statistics.
    - `brownian`: `"increments"` (default; independent per-step noise, the fastest)
      or `"tree"` (a `diffrax.VirtualBrownianTree` with tolerance a quarter of the
      smallest step: the same Brownian path whatever the number of steps; needed and
      chosen automatically for adaptive SDE solves).
    - `progress_meter`: a diffrax progress meter (then the solve runs through
      `diffeqsolve`).
    - `dt0`, `max_steps`: for adaptive solves.
    - `throw`: raise (`EqxRuntimeError`, also inside jit) when a solve fails or a
      sample is not finite, as diffrax's `throw=`; `False` returns them as they are.
    - `batch_size`: compute at most this many samples at a time (bounded peak
      memory, [`scoreflow.chunked`][]); the result equals the one-call result for
      the same key. One compilation for all chunks (the last is padded).

    **Default sampler** (`solver=None`). With `method="ode"`, `steps=N` (no
    `time_grid`, no `stepsize_controller`), a process with a scalar Gaussian kernel
    and a predictor of that same process, `sf.sample` runs
    [`scoreflow.default_sampler`][]`(process, 2 * N)`: `N` steps of
    `diffrax.Midpoint()` along the equivalent straight path
    ([`scoreflow.on_path`][], exact) on a grid uniform in the path time
    $u = \sigma/(\alpha + \sigma)$, so `2 N` model evaluations, as many as the
    `diffrax.Heun()` default before it (Fréchet distance 1.1--70 times lower at
    equal NFE 10--50 on the problems of `benchmarks/bench_fewstep.py`; table in
    `docs/concepts/samplers.md`).
    Everything else is in the process's own coordinates, exactly as with any
    solver: the same key gives the same initial noise, `noise=` is given at
    $t_1$, the samples are mapped back exactly ($x = y/k$, `sf.on_path`), the
    `denoise=` step gives $\hat x_0$, and the trajectory holds $x(t)$ at the
    source times $t(u)$ of the path grid (`info["ts"]`); `cond=`, guided predictors
    (`sf.cfg`), `batch_size=`, `key=None` work unchanged. In every other case
    (`method="sde"`, an adaptive controller, a given `time_grid`, a process without
    a scalar kernel (CLD, nonlinear SDEs), a predictor built on a different process,
    or process parameters traced by an enclosing `jit`, where the path's range cannot
    be computed) the default is `diffrax.Heun()` on the native path, as before.
    `info["sampler"]` names what ran (e.g. `"straight path, Midpoint, uniform u, 8
    steps"`, or `"native path, Heun, ... (method='sde')"` with the reason). Pass
    `solver=diffrax.Heun()` for the former default's exact result.

    **Returns:** an array `(num, *shape)`; with `return_info=True` the pair
    `(samples, info)`, `info` a dict of per-sample arrays: `nfe` (network evaluations
    actually made; guidance counts twice), `num_steps`, `num_accepted_steps`,
    `num_rejected_steps` (and `trajectory`, `ts` if asked), and, when `solver=None`,
    `sampler` (a string, the configuration the default picked). With `adaptive="batch"`
    these counts (and `ts`) belong to the one system: shape `()` (with `batch_size`,
    one per chunk, each chunk being its own system), `nfe` counting batched
    evaluations of the model; `trajectory` is `(num, max_steps + 1, *shape)`.

    **Raises:** `ValueError` for conflicting or missing arguments (e.g. both `steps`
    and `time_grid`), an invalid grid, or `eta` with `method="ode"`.

    ```python
    import diffrax, scoreflow as sf
    xs = sf.sample(key, p, pred, (2,), num=1000, steps=5)   # the default: 10 NFE
    xs = sf.sample(key, p, pred, (2,), num=1000, solver=diffrax.Heun(), steps=50)
    xs = sf.sample(key, p, pred, (2,), num=1000, method="sde", solver=diffrax.Euler(),
                   steps=500)                                               # Euler-Maruyama
    xs, info = sf.sample(key, p, pred, (2,), num=1000, solver=diffrax.Tsit5(),
                         stepsize_controller=diffrax.PIDController(rtol=1e-5, atol=1e-5),
                         return_info=True)
    xs, info = sf.sample(key, p, pred, (2,), num=1000, solver=diffrax.Dopri5(),
                         stepsize_controller=diffrax.PIDController(rtol=1e-5, atol=1e-5),
                         adaptive="batch", return_info=True)   # info["nfe"]: one count
    xs = sf.sample(key, p, pred, (2,), num=1000, solver=sf.DPMSolverPP2M(),
                   time_grid=sf.log_snr_grid(p, 10))
    ```
    """
    if solver is None:  # first, while locals() holds exactly the arguments
        return _sample_default(dict(locals()))
    call = "sf.sample"
    if method not in ("ode", "sde"):
        raise ValueError(
            f"`{call}(method=...)` must be 'ode' or 'sde', got {method!r}."
        )
    if isinstance(num, bool) or not isinstance(num, (int, np.integer)) or num < 1:
        raise ValueError(
            f"`{call}(num=...)` must be a Python int >= 1, got num={num!r}."
        )
    num = int(num)
    shape = tuple(int(s) for s in shape)
    if denoise:
        require(
            process,
            AbstractScalarProcess,
            f"{call}(denoise=True)",
            hint=" (The Tweedie step goes through alpha, sigma.)",
        )
    if brownian not in ("increments", "tree"):
        raise ValueError(
            f"`{call}(brownian=...)` must be 'increments' or 'tree', got {brownian!r}."
        )
    check_solver(call, solver, process)
    if method == "sde":
        process.check_sde_solver(solver, call=call)
    if method == "ode":
        if eta is not None and not _is_static_zero(eta):
            raise ValueError(
                f"`{call}`: eta={eta!r} adds noise, which needs method='sde' (method='ode' "
                "is the probability-flow ODE, eta = 0)."
            )
        eta_ = 0
    else:
        eta_ = _as_eta(1.0 if eta is None else eta)
    is_adaptive = stepsize_controller is not None and not isinstance(
        stepsize_controller, (diffrax.ConstantStepSize, diffrax.StepTo)
    )
    if adaptive not in ("per_sample", "batch"):
        raise ValueError(
            f"`{call}(adaptive=...)` must be 'per_sample' or 'batch', got {adaptive!r}."
        )
    batch_system = adaptive == "batch"
    if batch_system and not is_adaptive:
        raise ValueError(
            f"`{call}(adaptive='batch')` solves the batch as one system with one "
            "step-size controller: it needs an adaptive stepsize_controller= (e.g. "
            "diffrax.PIDController(rtol=1e-5, atol=1e-5)). Fixed grids (steps= or "
            "time_grid=) already step every sample together; drop adaptive=."
        )
    if batch_system and method != "ode":
        raise ValueError(
            f"`{call}(adaptive='batch')` is for method='ode' only (one ODE for the "
            "whole batch); adaptive SDE solves keep one Brownian path and one "
            "controller per sample: use adaptive='per_sample'."
        )
    if isinstance(stepsize_controller, diffrax.StepTo):
        raise ValueError(
            f"`{call}`: pass the grid as time_grid= (in process time), not StepTo."
        )
    if steps is not None and time_grid is not None:
        raise ValueError(
            f"`{call}`: pass either steps= or time_grid=, not both (got steps={steps!r} "
            "and a time grid); the grid already fixes the number of steps."
        )
    if is_adaptive:
        if steps is not None or time_grid is not None:
            raise ValueError(
                f"`{call}`: an adaptive stepsize_controller chooses its own steps; do not "
                "also pass steps= or time_grid= (use dt0= for the first step)."
            )
        if isinstance(solver, AbstractDiffusionSolver):
            raise ValueError(
                f"`{call}`: {type(solver).__name__} is a fixed-step sampler (no error "
                "estimate); pass steps= or time_grid= instead of a stepsize_controller."
            )
        grid = jnp.asarray([process.t1, process.t0], jnp.result_type(float))
        controller = _traced_controller(stepsize_controller)
    else:
        if dt0 is not None:
            raise ValueError(
                f"`{call}`: dt0= is for adaptive solves; use steps= or time_grid=."
            )
        if steps is None and time_grid is None:
            raise ValueError(
                f"`{call}`: pass steps= (a uniform grid), time_grid= (e.g. "
                "sf.log_snr_grid(process, n)) or an adaptive stepsize_controller=."
            )
        grid = (
            uniform_grid(process, steps)
            if time_grid is None
            else check_time_grid(time_grid, process, call=f"{call}(time_grid=...)")
        )
        controller = None
    tree = brownian == "tree" or (is_adaptive and method == "sde")
    dtype = jnp.result_type(float)
    grid = jnp.asarray(grid, dtype)
    if normals is not None:
        if method != "sde":
            raise ValueError(
                f"`{call}(normals=...)` are the draws of a stochastic run; pass "
                "method='sde' (method='ode' draws nothing)."
            )
        if is_adaptive or brownian == "tree":
            raise ValueError(
                f"`{call}(normals=...)` gives the draws of each step of a fixed grid: "
                "pass steps= or time_grid= (no adaptive stepsize_controller) and the "
                "default brownian='increments'."
            )
        check_normals_solver(solver, call)
        normals = shape_normals(
            normals,
            (num, int(grid.shape[0]) - 1),
            normals_per_step(solver),
            shape,
            dtype,
            call,
        )
    if key is None:
        if noise is None or (method == "sde" and normals is None):
            raise ValueError(
                f"`{call}(key=None)` is for runs that draw nothing: pass the initial "
                "points as noise= and use method='ode' (or give the stochastic draws "
                "as normals=); otherwise pass a PRNG key, e.g. jax.random.key(0)."
            )
        key = jr.PRNGKey(0)  # never drawn from
    if noise is not None:
        noise = jnp.asarray(noise)
        if noise.shape != (num, *shape):
            raise ValueError(
                f"`{call}(noise=...)` must have shape (num, *shape) = {(num, *shape)}, got "
                f"{noise.shape}."
            )
        template = noise
    else:
        template = jax.ShapeDtypeStruct(shape, dtype)
    if cond is not None:
        bad = [
            leaf.shape
            for leaf in jax.tree_util.tree_leaves(cond)
            if jnp.shape(leaf)[:1] != (num,)
        ]
        if bad:
            raise ValueError(
                f"`{call}(cond=...)`: every leaf needs a leading axis of size num={num} "
                f"(one condition per sample), got shapes {bad}."
            )
    batched = _is_key_batch(key, num)
    if batch_size is not None and batch_size < num:
        return _sample_chunked(
            key,
            batched,
            process,
            predictor,
            shape,
            num=num,
            batch_size=batch_size,
            noise=noise,
            normals=normals,
            cond=cond,
            grid=grid,
            adaptive=is_adaptive,
            batch_system=batch_system,
            return_info=return_info,
            return_trajectory=return_trajectory,
            kwargs=dict(
                method=method,
                solver=solver,
                stepsize_controller=stepsize_controller,
                adaptive=adaptive,
                eta=eta,
                denoise=denoise,
                brownian=brownian,
                progress_meter=progress_meter,
                dt0=dt0,
                max_steps=max_steps,
                throw=throw,
            ),
        )
    has_noise = noise is not None
    if noise is None:
        noise = _Template(template)
    key, noise, normals, cond, batched = _shard(key, noise, normals, cond, num, batched)
    opts = _Options(
        method=method,
        fixed=not is_adaptive,
        use_diffeqsolve=progress_meter is not None,
        denoise=bool(denoise),
        trajectory=bool(return_trajectory),
        tree=tree,
        batched_key=batched,
        has_noise=has_noise,
        has_normals=normals is not None,
        max_steps=int(max_steps),
        dt0=dt0,
        progress_meter=progress_meter,
        throw=bool(throw),
        batch_system=batch_system,
    )
    process.prepare_inverse()  # a closed-form t_from_log_snr inside the sampler
    xs, info = _sample_impl(
        key,
        noise,
        normals,
        cond,
        process,
        predictor,
        solver,
        controller,
        grid,
        eta_,
        num,
        opts,
    )
    if not return_info:
        return xs
    if not return_trajectory:
        info["ts"] = grid
    return xs, info


def _sample_default(args: dict):
    """`sf.sample` without `solver=`: the straight path where `pick_for_sample`
    allows it, else the native path with `diffrax.Heun()`; `info["sampler"]` says
    which."""
    cfg, label = pick_for_sample(
        args["process"],
        args["predictor"],
        method=args["method"],
        steps=args["steps"],
        time_grid=args["time_grid"],
        stepsize_controller=args["stepsize_controller"],
    )
    if cfg is None:
        out = sample(**{**args, "solver": diffrax.Heun()})
    else:
        out = _sample_on_path(cfg, args)
    if not args["return_info"]:
        return out
    xs, info = out
    info["sampler"] = label
    return xs, info


def _sample_on_path(cfg, args: dict):
    r"""Integrate `cfg` (a straight-path configuration) and map back exactly: the
    samples by $x = y/k(u_\text{end})$ (unless denoised: $\hat x_0$ is the same on
    every path), `noise=` in by $y = k(u_\text{start})\,x$, the trajectory by
    $x = y/k(u)$ at the source times $t(u)$ (`info["ts"]`)."""
    pp = on_path(args["predictor"], cfg.process)
    grid = jnp.asarray(cfg.time_grid, jnp.result_type(float))
    # k(u) = y / x and the source time t(u) at each grid time, one program
    scale, ts = path_grid(pp.predictor.process, pp.path, grid)
    noise = args["noise"]
    if noise is not None:
        noise = jnp.asarray(noise)
        noise = noise * scale[0].astype(noise.dtype)
    xs, info = sample(
        **{
            **args,
            "process": cfg.process,
            "predictor": pp,
            "solver": cfg.solver,
            "steps": None,
            "time_grid": grid,
            "noise": noise,
            "return_info": True,
        }
    )
    if not args["denoise"]:
        xs = _unscale_end(xs, scale)
    info["ts"] = jnp.broadcast_to(ts.astype(info["ts"].dtype), info["ts"].shape)
    if args["return_trajectory"]:
        traj = info["trajectory"]  # (num, steps + 1, *shape)
        k = scale.reshape((1, -1) + (1,) * (traj.ndim - 2)).astype(traj.dtype)
        info["trajectory"] = traj / k
    return (xs, info) if args["return_info"] else xs


@jax.jit
def _unscale_end(xs, scale):
    # x = y / k(u_end), one program (not an indexing, a cast and a division)
    return xs / scale[-1].astype(xs.dtype)


def _sample_chunked(
    key,
    batched,
    process,
    predictor,
    shape,
    *,
    num,
    batch_size,
    noise,
    normals,
    cond,
    grid,
    adaptive,
    batch_system,
    return_info,
    return_trajectory,
    kwargs,
):
    """`sf.sample` in chunks of `batch_size` (sample i keeps its key, so the result
    is the one-call result)."""

    def run(idx, keys=None):
        k = key[idx] if keys is None else keys
        out = sample(
            k,
            process,
            predictor,
            shape,
            num=int(idx.shape[0]),
            time_grid=None if adaptive else grid,
            noise=None if noise is None else noise[idx],
            normals=None if normals is None else normals[idx],
            cond=None
            if cond is None
            else jax.tree_util.tree_map(lambda c: c[idx], cond),
            return_info=True,
            return_trajectory=return_trajectory,
            **kwargs,
        )
        xs, info = out
        info = {
            k: v for k, v in info.items() if not (k == "ts" and not return_trajectory)
        }
        if batch_system:  # the chunk's one count, repeated per sample for `chunked`
            n = int(idx.shape[0])
            info = {
                k: v if k == "trajectory" else jnp.broadcast_to(v, (n, *jnp.shape(v)))
                for k, v in info.items()
            }
        return xs, info

    xs, info = chunked(run, num, int(batch_size), key=None if batched else key)
    xs = jnp.asarray(xs)
    if not return_info:
        return xs
    info = {k: jnp.asarray(v) for k, v in info.items()}
    if batch_system:  # one value per chunk (each chunk is one system)
        info = {
            k: v if k == "trajectory" else v[:: int(batch_size)]
            for k, v in info.items()
        }
    if not return_trajectory:
        info["ts"] = grid
    return xs, info


class _Template(eqx.Module):
    """Shape and dtype of one sample (static)."""

    shape: tuple = eqx.field(static=True)
    dtype: Any = eqx.field(static=True)

    def __init__(self, sds):
        self.shape, self.dtype = tuple(sds.shape), sds.dtype


def _shard(key, noise, normals, cond, num, batched):
    """Shard the batch across devices when several exist (and `num` divides)."""
    devices = jax.devices()
    if len(devices) < 2 or num % len(devices):
        return key, noise, normals, cond, batched
    mesh = Mesh(np.array(devices), ("batch",))
    sh = NamedSharding(mesh, PartitionSpec("batch"))
    if not batched:
        key = jax.vmap(lambda i: jr.fold_in(key, i))(jnp.arange(num))
        key = put_global(key, sh)
    else:
        key = put_global(key, sh)
    if isinstance(noise, jax.Array):
        noise = put_global(noise, sh)
    if normals is not None:
        normals = put_global(normals, sh)
    if cond is not None:
        cond = put_global(cond, sh)
    return key, noise, normals, cond, True
