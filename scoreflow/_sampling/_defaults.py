r"""The measured default sampler for a process and an NFE budget (issue 13).

`default_sampler(process, steps)` is pure: it returns a [`scoreflow.internal.SamplerConfig`][]
naming the path, solver, grid and final denoise that `benchmarks/bench_fewstep.py`
measured best with a fixed grid (table in `docs/concepts/samplers.md`):

- every process with a scalar Gaussian kernel: its equivalent straight path
  ([`scoreflow.straight_path`][], exact), `diffrax.Midpoint()`, a grid uniform in the
  path time $u$, $\lfloor n/2\rfloor$ steps, no final denoise (on problem A a final
  Tweedie denoise at NFE 5 lowers FD from 0.035 to 0.002, but on the 32-D problem B
  it makes the samples 10 nats too concentrated, FD 0.39; see the benchmark);
- anything else (matrix linear SDEs, processes without a kernel): `diffrax.Heun()`
  on the uniform grid, as before.

`steps` is the budget of model evaluations (NFE); the configuration never uses more.

`sf.sample(..., steps=N)` without `solver=` runs `default_sampler(process, 2 N)`
(`N` Midpoint steps on the straight path, the `2 N` evaluations the old `Heun`
default made) when it can, and says what it ran in `info["sampler"]`
(`pick_for_sample` below decides).
"""

from __future__ import annotations

import functools
from typing import Any

import diffrax
import equinox as eqx
import jax
import numpy as np

from .._predictor import AbstractPredictor
from .._process import AbstractScalarProcess
from ._grids import _check_steps, uniform_grid
from ._paths import on_path, straight_path


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
        from ._sample import sample

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
