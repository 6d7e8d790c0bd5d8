r"""Meta's `flow_matching` (and the torchdiffeq solves behind its `ODESolver`), exactly.

`flow_matching` writes its affine path with data at $u = 1$ and noise at $u = 0$,
$X_u = \alpha_u X_1 + \sigma_u X_0$ ($X_1$ data, $X_0 \sim N(0, I)$), and a network
$v(x, u) \approx dX_u/du$. In scoreflow's time $t = 1 - u$ (data at $t = 0$) the same
path is $x_t = \alpha(t)\,x_0 + \sigma(t)\,\varepsilon$ with

$$\alpha(t) = \alpha_{1 - t}, \qquad \sigma(t) = \sigma_{1 - t}, \qquad
  \frac{dx}{dt} = -\frac{dX}{du}\Big|_{u = 1 - t},$$

so the network is a scoreflow `"velocity"` predictor after the time flip *and* the
sign flip (`flow_matching_velocity`); its five schedulers become scoreflow processes
(`flow_matching_process`) and `ODESolver.sample` a sampling configuration
(`flow_matching_ode`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import diffrax
import equinox as eqx
import numpy as np

from .._predictor import Predictor
from .._process import VP, Interpolant, RectifiedFlow
from .._sampling import SamplerConfig
from .._time import FlowMatchingTime

# --------------------------------------------------------------------------- #
# Schedulers -> processes
# --------------------------------------------------------------------------- #

# name -> (their class name, the parameters it takes with their defaults)
_SCHEDULERS = {
    "cond_ot": ("CondOTScheduler", {}),
    "polynomial": ("PolynomialConvexScheduler", {"n": None}),
    "vp": ("VPScheduler", {"beta_min": 0.1, "beta_max": 20.0}),
    "linear_vp": ("LinearVPScheduler", {}),
    "cosine": ("CosineScheduler", {}),
}
_BY_CLASS = {cls: name for name, (cls, _) in _SCHEDULERS.items()}


def _resolve(call: str, scheduler, params: dict) -> tuple[str, tuple]:
    """(name, ((param, value), ...)) from a name, their class name, or one of their
    scheduler objects (read by class name and attributes: no torch import)."""
    if isinstance(scheduler, str):
        name = _BY_CLASS.get(scheduler, scheduler)
        given = dict(params)
    else:
        name = _BY_CLASS.get(type(scheduler).__name__)
        if name is None:
            raise TypeError(
                f"`{call}`: scheduler must be one of {sorted(_SCHEDULERS)} (or "
                "flow_matching's class name, or one of its scheduler objects: "
                f"{', '.join(sorted(_BY_CLASS))}), got {scheduler!r}."
            )
        if params:
            raise ValueError(
                f"`{call}`: the scheduler object {type(scheduler).__name__} already "
                f"carries its parameters; do not also pass {sorted(params)}."
            )
        given = {k: getattr(scheduler, k) for k in _SCHEDULERS[name][1]}
    if name not in _SCHEDULERS:
        raise ValueError(
            f"`{call}`: unknown scheduler {scheduler!r}; expected one of "
            f"{sorted(_SCHEDULERS)} or flow_matching's class names "
            f"{sorted(_BY_CLASS)}."
        )
    defaults = _SCHEDULERS[name][1]
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(
            f"`{call}`: scheduler {name!r} takes "
            f"{sorted(defaults) if defaults else 'no parameters'}, got {unknown}."
        )
    values = {**defaults, **given}
    if name == "polynomial":
        n = values["n"]
        if isinstance(n, bool) or not isinstance(n, (int, float)) or not n > 0:
            raise ValueError(
                f"`{call}`: scheduler 'polynomial' needs its exponent n > 0 "
                f"(PolynomialConvexScheduler(n)), got n={n!r}; pass e.g. n=2."
            )
    return name, tuple(sorted((k, float(v)) for k, v in values.items()))


def _process(name: str, params: tuple, t0, t1):
    kw = dict(params)
    if name == "cond_ot":
        return RectifiedFlow(t0=t0, t1=t1)
    if name == "vp":
        return VP(kw["beta_min"], kw["beta_max"], t0=t0, t1=t1)
    if name == "polynomial":
        return Interpolant(
            "(1 - t)**n", "1 - (1 - t)**n", params={"n": kw["n"]}, t0=t0, t1=t1
        )
    if name == "linear_vp":
        return Interpolant("1 - t", "sqrt(1 - (1 - t)**2)", t0=t0, t1=t1)
    return Interpolant("cos(pi*t/2)", "sin(pi*t/2)", t0=t0, t1=t1)  # cosine


def flow_matching_process(
    scheduler: Any = "cond_ot",
    *,
    t0: float | None = None,
    t1: float | None = None,
    **params,
):
    r"""The scoreflow process of a `flow_matching` scheduler's affine path
    $X_u = \alpha_u X_1 + \sigma_u X_0$ ($X_1$ data): $\alpha(t) = \alpha_{1-t}$,
    $\sigma(t) = \sigma_{1-t}$ with their $\alpha_u, \sigma_u$ (data at $u = 1$).

    | flow_matching | $\alpha_u$, $\sigma_u$ | scoreflow process |
    | --- | --- | --- |
    | `CondOTScheduler()` | $u$, $1 - u$ | `sf.RectifiedFlow()` |
    | `PolynomialConvexScheduler(n)` | $u^n$, $1 - u^n$ | `Interpolant((1-t)**n, 1-(1-t)**n)` |
    | `VPScheduler(b, B)` | $e^{-T/2}$, $\sqrt{1 - e^{-T}}$ | `sf.VP(b, B)` |
    | `LinearVPScheduler()` | $u$, $\sqrt{1 - u^2}$ | `Interpolant(1-t, sqrt(1-(1-t)**2))` |
    | `CosineScheduler()` | $\sin\frac{\pi u}{2}$, $\cos\frac{\pi u}{2}$ | `Interpolant(cos(pi t/2), sin(pi t/2))` |

    `VPScheduler`'s $T = \tfrac12(1-u)^2(B - b) + (1-u)b$ is exactly VP's
    $\int_0^t\beta$ at $t = 1 - u$.

    **Arguments:**

    - `scheduler`: `"cond_ot"`, `"polynomial"`, `"vp"`, `"linear_vp"`, `"cosine"`,
      their class names (`"CondOTScheduler"`, ...) or one of their scheduler
      objects (read by class name and attributes; torch is not imported).
    - `t0`, `t1`: the process's time range in scoreflow time (default: the
      process's own, chosen by the log-SNR rule for float32; flow_matching's
      $u \in [0, 1]$ is $[1 - t_1, 1 - t_0]$).
    - `**params`: the scheduler's parameters when given by name: `n` for
      `"polynomial"`, `beta_min`, `beta_max` for `"vp"` (defaults 0.1, 20).

    **Returns:** `sf.RectifiedFlow`, `sf.VP` or an `sf.Interpolant`.

    **Raises:** `ValueError`/`TypeError` for an unknown scheduler or parameter.

    ```python
    p = sf.peers.flow_matching_process("polynomial", n=2)
    ```
    """
    name, values = _resolve("sf.peers.flow_matching_process", scheduler, params)
    return _process(name, values, t0, t1)


# --------------------------------------------------------------------------- #
# The velocity network
# --------------------------------------------------------------------------- #


class _FlowMatchingVelocity(eqx.Module):
    r"""A `flow_matching` velocity network read in scoreflow's time: $dx/dt =
    -v(x, u)$ at $u = 1 - t$."""

    vf: Callable
    time: FlowMatchingTime

    def __call__(self, t, x, *cond):
        return -self.vf(self.time.from_t(t), x, *cond)


def flow_matching_velocity(
    vf: Callable,
    scheduler: Any = "cond_ot",
    *,
    null_cond=None,
    t0: float | None = None,
    t1: float | None = None,
    **params,
) -> Predictor:
    r"""A `flow_matching` velocity network as a scoreflow predictor, in one call:
    the time flip $u = 1 - t$ *and* the sign flip $dx/dt = -dX/du$, on the process
    of its scheduler ([`scoreflow.peers.flow_matching_process`][]).

    $$\text{model}(t, x) = -v(1 - t,\ x), \qquad
      \text{Predictor}(\text{model},\ \text{process},\ \text{prediction}=
      \text{"velocity"}).$$

    Every view is then exact: `pred.velocity(t, x)` $= -v(1 - t, x)$, and `pred.x0`,
    `pred.eps` are flow_matching's `velocity_to_target`, `velocity_to_epsilon` of
    `AffineProbPath(scheduler)` at $u = 1 - t$ (tested to 1e-6 in float64).

    **Arguments:**

    - `vf`: the velocity network in *their* time, as an unbatched, time-first
      callable `vf(u, x)` (or `vf(u, x, cond)`): $u \in [0, 1]$ with noise at
      $u = 0$, `x` one example, returning $dX/du$ shaped like `x`. (flow_matching's
      `ModelWrapper.forward(x, t)` takes `x` first and a batch: wrap a JAX port as
      `lambda u, x: net(x[None], u)[0]`.)
    - `scheduler`, `t0`, `t1`, `**params`: as for
      [`scoreflow.peers.flow_matching_process`][].
    - `null_cond`: as for [`scoreflow.Predictor`][] (classifier-free guidance).

    **Returns:** `sf.Predictor(model, process, prediction="velocity")`.

    ```python
    pred = sf.peers.flow_matching_velocity(vf, "cond_ot")     # on sf.RectifiedFlow()
    cfg = sf.peers.flow_matching_ode("cond_ot", method="midpoint", step_size=0.05)
    xs = cfg.sample(key, pred, (2,), num=1000, noise=x_init)  # ODESolver.sample
    ```

    [Lipman et al. 2024, *Flow Matching Guide and Code*](https://arxiv.org/abs/2412.06264)
    """
    process = flow_matching_process(scheduler, t0=t0, t1=t1, **params)
    model = _FlowMatchingVelocity(vf, FlowMatchingTime())
    return Predictor(model, process, prediction="velocity", null_cond=null_cond)


# --------------------------------------------------------------------------- #
# ODESolver.sample
# --------------------------------------------------------------------------- #

_KUTTA38 = diffrax.ButcherTableau(
    c=np.array([1 / 3, 2 / 3, 1.0]),
    b_sol=np.array([1 / 8, 3 / 8, 3 / 8, 1 / 8]),
    b_error=np.zeros(4),
    a_lower=(
        np.array([1 / 3]),
        np.array([-1 / 3, 1.0]),
        np.array([1.0, -1.0, 1.0]),
    ),
)


class _Kutta38(diffrax.AbstractERK):
    r"""Kutta's 3/8-rule fourth-order Runge--Kutta method, the one torchdiffeq's
    `method="rk4"` runs (`rk4_alt_step_func`); fixed steps only (no error
    estimate)."""

    tableau: ClassVar[diffrax.ButcherTableau] = _KUTTA38
    interpolation_cls: ClassVar[Callable] = (
        diffrax.ThirdOrderHermitePolynomialInterpolation.from_k
    )

    def order(self, terms):
        del terms
        return 4

    def error_order(self, terms):
        del terms
        return None  # no embedded method: refuse adaptive controllers


# torchdiffeq method -> (diffrax solver, evaluations per step)
_FIXED = {
    "euler": (diffrax.Euler, 1),
    "midpoint": (diffrax.Midpoint, 2),
    "heun2": (diffrax.Heun, 2),
    "rk4": (_Kutta38, 4),
}
# torchdiffeq method -> (diffrax solver, torchdiffeq's `order`, its step-size exponent
# 1/order and initial-step rule use it)
_ADAPTIVE = {
    "dopri5": (diffrax.Dopri5, 5),
    "dopri8": (diffrax.Dopri8, 8),
    "bosh3": (diffrax.Bosh3, 3),
    "adaptive_heun": (diffrax.Heun, 2),
}


def _torchdiffeq_grid(us: np.ndarray, step_size: float) -> np.ndarray:
    """torchdiffeq's fixed grid from `step_size` over [us[0], us[-1]]:
    `arange(ceil((end - start)/h + 1)) * h + start`, the last point set to `end`."""
    start, end = float(us[0]), float(us[-1])
    niters = int(np.ceil((end - start) / step_size + 1))
    grid = np.arange(niters, dtype=np.float64) * step_size + start
    grid[-1] = end
    # a rounding-size last step can repeat `end`: a zero step changes nothing
    return np.concatenate([grid[:-1][grid[:-1] < end], grid[-1:]])


def flow_matching_ode(
    scheduler: Any = "cond_ot",
    *,
    method: str = "euler",
    step_size: float | None = None,
    atol: float = 1e-5,
    rtol: float = 1e-5,
    time_grid=None,
    adaptive: str = "batch",
    **params,
) -> SamplerConfig:
    r"""`flow_matching`'s `ODESolver(velocity_model).sample(x_init, step_size,
    method, atol, rtol, time_grid)` as a scoreflow sampling configuration, for a
    predictor from [`scoreflow.peers.flow_matching_velocity`][] with the same
    scheduler.

    - Fixed-step methods run torchdiffeq's grid: with `step_size` $h$, the points
      $u_k = u_\text{start} + k h$ for $k < \lceil (u_\text{end} - u_\text{start})/h +
      1\rceil - 1$ and last $u_\text{end}$ (so the last step may be shorter); without
      `step_size`, the points of `time_grid`. `"euler"` → `diffrax.Euler()`,
      `"midpoint"` → `diffrax.Midpoint()`, `"heun2"` → `diffrax.Heun()`, `"rk4"` →
      Kutta's 3/8 rule (torchdiffeq's `rk4` is the 3/8 rule, not the classical
      one), each the same arithmetic step for step.
    - Adaptive methods (`"dopri5"`, `"dopri8"`, `"bosh3"`, `"adaptive_heun"`) solve
      the batch as one system (`adaptive="batch"`, see [`scoreflow.sample`][]) with
      `diffrax.PIDController(rtol, atol, error_order=order)`: torchdiffeq's error
      norm (RMS over the whole batch), acceptance rule, step-size update
      ($h\cdot\min(10, \max(0.9\,r^{-1/\text{order}}, 0.2))$, never shrinking after
      an accepted step) and initial-step rule. Kept different: diffrax clips the
      last step to land on $u_\text{end}$, torchdiffeq steps past it and
      interpolates, so step counts may differ by one and results agree to the
      tolerance, not to rounding.

    Kept different by design: flow_matching integrates the closed $u \in [0, 1]$;
    scoreflow evaluates the ODE through the score, which is singular where
    $\sigma = 0$ ($u = 1$) or $\alpha = 0$ ($u = 0$ for every scheduler but VP), so
    the default interval is the process's $[1 - t_1, 1 - t_0]$ (for `"cond_ot"`
    $[10^{-3}, 0.999]$), and the recipe is exact for flow_matching's
    `time_grid=torch.tensor([1 - t1, 1 - t0])`. Pass `time_grid=(1e-5, 1 - 1e-5)`
    (float64) to come within $10^{-5}$ of theirs. Also, without `noise=`,
    scoreflow starts from $\sigma(t_1)\,z$ (the kernel's noise there), flow_matching
    from the `x_init` you give it: pass your `x_init` as `noise=`.

    **Arguments:**

    - `scheduler`, `**params`: as for [`scoreflow.peers.flow_matching_process`][].
    - `method`: a torchdiffeq method name (above).
    - `step_size`: the fixed step in $u$ (fixed-step methods; must be `None` for
      adaptive ones, as in flow_matching).
    - `atol`, `rtol`: tolerances of the adaptive methods (flow_matching's defaults).
    - `time_grid`: increasing times $u$ (noise to data), as theirs; its first and
      last point set the interval (default: the process's range above).
    - `adaptive`: `"batch"` (default, torchdiffeq's way) or `"per_sample"`, passed
      to [`scoreflow.sample`][] for the adaptive methods.

    **Returns:** a [`scoreflow.internal.SamplerConfig`][] (`path="native"`; the
    process spans exactly the interval; `nfe` is 0 for adaptive methods: read
    `info["nfe"]`).

    **Raises:** `ValueError` for an unknown method, a missing or superfluous
    `step_size`, or a `time_grid` that is not increasing or leaves the range where
    the process is defined.

    ```python
    pred = sf.peers.flow_matching_velocity(vf, "cond_ot")
    cfg = sf.peers.flow_matching_ode("cond_ot", method="dopri5", atol=1e-5, rtol=1e-5)
    xs, info = cfg.sample(key, pred, (2,), num=1000, noise=x_init, return_info=True)
    ```
    """
    call = "sf.peers.flow_matching_ode"
    name, values = _resolve(call, scheduler, params)
    if method not in _FIXED and method not in _ADAPTIVE:
        raise ValueError(
            f"`{call}(method=...)`: expected one of {sorted(_FIXED)} (fixed steps) or "
            f"{sorted(_ADAPTIVE)} (adaptive), got {method!r}."
        )
    fixed = method in _FIXED
    if not fixed and step_size is not None:
        raise ValueError(
            f"`{call}`: step_size={step_size!r} is for fixed-step methods; "
            f"method={method!r} chooses its own steps from atol, rtol (flow_matching: "
            "'Must be None for adaptive step solvers')."
        )
    if step_size is not None and not float(step_size) > 0:
        raise ValueError(f"`{call}`: step_size must be > 0, got {step_size!r}.")
    if time_grid is None:
        default = _process(name, values, None, None)
        t0, t1 = default.t0, default.t1
        us = np.array([1.0 - t1, 1.0 - t0])
    else:
        us = np.asarray(time_grid, dtype=np.float64).reshape(-1)
        if us.size < 2 or not np.all(np.diff(us) > 0):
            raise ValueError(
                f"`{call}(time_grid=...)` must be at least two increasing times u "
                "(noise at u = 0 to data at u = 1; sampling only), got "
                f"{us.tolist()}."
            )
        t0, t1 = 1.0 - float(us[-1]), 1.0 - float(us[0])
    try:
        process = _process(name, values, t0, t1)
    except ValueError as e:
        raise ValueError(
            f"`{call}(time_grid=...)`: u in [{us[0]!r}, {us[-1]!r}] is scoreflow time "
            f"t in [{t0!r}, {t1!r}], where the {name!r} process is not defined: "
            f"{e} scoreflow's ODE goes through the score, singular where sigma = 0 "
            "(u = 1) or alpha = 0 (u = 0); keep u inside (0, 1), e.g. "
            "time_grid=(1e-5, 1 - 1e-5) in float64."
        ) from None
    label = f"flow_matching ODESolver.sample(method={method!r}"
    if fixed:
        solver_cls, per_step = _FIXED[method]
        u_grid = us if step_size is None else _torchdiffeq_grid(us, float(step_size))
        t_grid = 1.0 - u_grid
        t_grid[0], t_grid[-1] = process.t1, process.t0
        steps = len(t_grid) - 1
        return SamplerConfig(
            path="native",
            process=process,
            solver=solver_cls(),
            time_grid=t_grid,
            denoise=False,
            nfe=per_step * steps,
            label=f"{label}, step_size={step_size!r}), {steps} steps",
            method="ode",
        )
    if adaptive not in ("batch", "per_sample"):
        raise ValueError(
            f"`{call}(adaptive=...)` must be 'batch' or 'per_sample', got {adaptive!r}."
        )
    solver_cls, order = _ADAPTIVE[method]
    controller = diffrax.PIDController(rtol=rtol, atol=atol, error_order=order)
    return SamplerConfig(
        path="native",
        process=process,
        solver=solver_cls(),
        time_grid=None,
        denoise=False,
        nfe=0,
        label=f"{label}, atol={atol!r}, rtol={rtol!r}), adaptive={adaptive!r}",
        method="ode",
        options=(("stepsize_controller", controller), ("adaptive", adaptive)),
    )
