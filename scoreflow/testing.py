r"""Hypothesis strategies and assertions for property-testing processes.

Requires [hypothesis](https://hypothesis.readthedocs.io) (a development
dependency: `pip install scoreflow[dev]`).

Strategies:

- [`scoreflow.testing.processes`][]: random valid processes — built-ins with random
  parameters, and custom `sf.SDE`s / `sf.Interpolant`s from a few fixed symbolic
  families with random parameters (a new parameter value reuses the cached sympy
  derivation, so each draw costs about 0.3 s; the first draw of a family a few
  seconds).
- [`scoreflow.testing.gaussian_mixtures`][]: random `sf.toy.GaussianMixture`s with
  full covariances (fixed dimension and number of components: shapes are not drawn,
  so nothing recompiles per example).
- [`scoreflow.testing.times`][] and [`scoreflow.testing.time_points`][]: random
  times in $[t_0, t_1]$ and points $x = \alpha(t) a + \sigma(t) b$ typical of the
  marginals.

**Recipe: property-test your own process in a few lines.**

```python
import hypothesis.strategies as st
from hypothesis import given, settings
import scoreflow as sf
import scoreflow.testing as sft

my = sf.Interpolant(alpha=sf.sympy.cos(sf.sympy.pi * sf.t / 2),
                    sigma=sf.sympy.sin(sf.sympy.pi * sf.t / 2))

def test_symbolic():
    assert sf.checks.symbolic_fokker_planck(my).ok   # exact, with sympy

@settings(max_examples=10, deadline=None)
@given(gm=sft.gaussian_mixtures(dim=2), tx=sft.time_points(my, dim=2))
def test_marginals(gm, tx):
    t, x = tx
    # forward FP, PF-ODE continuity and reverse-SDE FP for the exact mixture marginals
    sft.assert_marginals_consistent(my, gm, t, x)
```

Keep `max_examples` small and `deadline=None` (the first call of a test compiles).
The default tolerance follows the dtype (float32 or float64, `jax_enable_x64`), and
the residuals are compiled once per process, so a failing property shrinks in
seconds.
"""

from __future__ import annotations

import functools
import math
import warnings

import equinox as eqx
import hypothesis.strategies as st
import jax.numpy as jnp
import numpy as np
import sympy

from . import checks
from ._process import (
    EDM,
    SDE,
    VE,
    VP,
    CosineVP,
    Interpolant,
    PriorMismatchWarning,
    RectifiedFlow,
    SubVP,
)
from ._symbols import t as T, x as X
from .toy import GaussianMixture

__all__ = [
    "BUILTIN_FAMILIES",
    "CUSTOM_FAMILIES",
    "assert_marginals_consistent",
    "build_process",
    "default_tolerance",
    "gaussian_mixtures",
    "marginal_residuals",
    "processes",
    "time_points",
    "times",
]


# --------------------------------------------------------------------------- #
# Process families: fixed symbolic structure, random parameters
# --------------------------------------------------------------------------- #

_a, _b, _c = sympy.symbols("a b c", positive=True)

BUILTIN_FAMILIES = {
    "VP": (VP, {"beta_min": (0.05, 0.5), "beta_max": (5.0, 25.0)}),
    "SubVP": (SubVP, {"beta_min": (0.05, 0.5), "beta_max": (5.0, 25.0)}),
    "VE": (VE, {"sigma_min": (0.005, 0.05), "sigma_max": (10.0, 100.0)}),
    "CosineVP": (CosineVP, {"s": (0.002, 0.02)}),
    "RectifiedFlow": (RectifiedFlow, {}),
    "EDM": (EDM, {"sigma_min": (0.001, 0.01), "sigma_max": (20.0, 100.0)}),
}
"""Built-ins and the ranges their parameters are drawn from."""

CUSTOM_FAMILIES = {
    # Ornstein–Uhlenbeck: alpha = e^{-a t}, sigma^2 = c^2 (1 - e^{-2 a t}) / (2 a).
    "sde_ou": ("sde", (-_a * X, _c), {"a": (0.5, 4.0), "c": (0.5, 3.0)}),
    # Time-dependent: alpha = e^{-b t^2/2}, sigma^2 = c^2 (1 - e^{-b t^2}) / (2 b).
    "sde_quadratic": (
        "sde",
        (-_b * T * X, _c * sympy.sqrt(T)),
        {"b": (0.5, 5.0), "c": (0.5, 3.0)},
    ),
    # Linear interpolant with a noise scale (rectified flow for c = 1).
    "interp_linear": ("interpolant", (1 - T, _c * T), {"c": (0.5, 2.0)}),
    # Trigonometric interpolant (alpha(1) = 0: t1 is placed by the log-SNR rule).
    "interp_trig": (
        "interpolant",
        (sympy.cos(sympy.pi * T / 2), _c * sympy.sin(sympy.pi * T / 2)),
        {"c": (0.5, 2.0)},
    ),
    # Variance-preserving with constant rate.
    "interp_exp": (
        "interpolant",
        (sympy.exp(-_a * T), sympy.sqrt(1 - sympy.exp(-2 * _a * T))),
        {"a": (2.0, 8.0)},
    ),
}
"""Custom `sf.SDE` / `sf.Interpolant` families: (kind, expressions, parameter ranges).
The symbolic structure is fixed per family; only the parameters are drawn."""


def _round(v: float) -> float:
    """Three significant digits: short exact rationals for sympy, readable failures."""
    return float(f"{v:.3g}")


@functools.lru_cache(maxsize=512)
def build_process(family: str, params: tuple = ()):
    """Build (and cache) a process of a family by name with parameters
    `((name, value), ...)`. Prior-mismatch warnings are silenced: the processes are
    valid; only their priors may not match unit-scale data."""
    kw = dict(params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PriorMismatchWarning)
        if family in BUILTIN_FAMILIES:
            return BUILTIN_FAMILIES[family][0](**kw)
        kind, exprs, _ = CUSTOM_FAMILIES[family]
        sym_params = {s: kw[s.name] for e in exprs for s in e.free_symbols - {T, X}}
        if kind == "sde":
            return SDE(exprs[0], exprs[1], params=sym_params)
        return Interpolant(exprs[0], exprs[1], params=sym_params)


def _param_ranges(family):
    if family in BUILTIN_FAMILIES:
        return BUILTIN_FAMILIES[family][1]
    return CUSTOM_FAMILIES[family][2]


@st.composite
def processes(draw, families=None):
    """A strategy for valid processes: a family (built-in or custom, see
    `BUILTIN_FAMILIES`, `CUSTOM_FAMILIES`), then its parameters (log-uniform in
    their ranges, three significant digits).

    **Arguments:**

    - `families`: names to draw from (default: all); e.g. `["VP", "sde_ou"]`, or
      `list(sft.CUSTOM_FAMILIES)` for custom processes only.

    **Returns:** a hypothesis strategy of processes.
    """
    names = sorted(BUILTIN_FAMILIES) + sorted(CUSTOM_FAMILIES)
    if families is not None:
        unknown = set(families) - set(names)
        if unknown:
            raise ValueError(
                f"`sf.testing.processes(families=...)`: unknown {sorted(unknown)}; "
                f"known: {names}."
            )
        names = list(families)
    family = draw(st.sampled_from(names))
    params = []
    for name, (lo, hi) in sorted(_param_ranges(family).items()):
        u = draw(st.floats(0.0, 1.0))
        params.append((name, _round(math.exp(math.log(lo) + u * math.log(hi / lo)))))
    return build_process(family, tuple(params))


# --------------------------------------------------------------------------- #
# Gaussian mixtures, times and points
# --------------------------------------------------------------------------- #


def _vector(n, lo, hi):
    return st.lists(
        st.floats(lo, hi, allow_nan=False, allow_infinity=False), min_size=n, max_size=n
    )


@st.composite
def gaussian_mixtures(
    draw,
    dim: int = 2,
    num_components: int = 2,
    *,
    mean_scale: float = 2.0,
    min_std: float = 0.2,
    max_std: float = 1.5,
    max_correlation: float = 0.5,
):
    r"""A strategy for `sf.toy.GaussianMixture`s in `dim` dimensions with
    `num_components` components (both fixed: only values are drawn).

    Weights are drawn in $[0.1, 1]$ and normalised; means uniform in
    $[-\text{mean\_scale}, \text{mean\_scale}]^d$; covariances $C = L L^\top$ with
    $L$ lower triangular, diagonal in $[\text{min\_std}, \text{max\_std}]$ and
    off-diagonal entries in $\pm\text{max\_correlation}\cdot\text{min\_std}$ (so
    $C$ is symmetric positive definite and well conditioned).
    """
    K, d = num_components, dim
    w = np.asarray(draw(_vector(K, 0.1, 1.0)))
    w = w / w.sum()
    means = np.asarray(draw(_vector(K * d, -mean_scale, mean_scale))).reshape(K, d)
    diag = np.asarray(draw(_vector(K * d, min_std, max_std))).reshape(K, d)
    off = max_correlation * min_std
    n_off = K * d * (d - 1) // 2
    offd = np.asarray(draw(_vector(n_off, -off, off))) if n_off else np.zeros(0)
    L = np.zeros((K, d, d))
    L[:, np.arange(d), np.arange(d)] = diag
    rows, cols = np.tril_indices(d, -1)
    if n_off:
        L[:, rows, cols] = offd.reshape(K, -1)
    covs = L @ np.swapaxes(L, -1, -2)
    return GaussianMixture(jnp.asarray(w), jnp.asarray(means), jnp.asarray(covs))


def times(process, *, margin: float = 0.0):
    r"""A strategy for times in $[t_0 + m, t_1 - m]$ ($m$ = `margin` times the
    length of the range), uniform, with log-uniform draws near $t_0$ mixed in (the
    score is largest there)."""
    t0, t1 = float(process.t0), float(process.t1)
    lo, hi = t0 + margin * (t1 - t0), t1 - margin * (t1 - t0)
    uniform = st.floats(lo, hi)
    near = st.floats(-6.0, -1.0).map(lambda e: min(hi, lo + (hi - lo) * 10.0**e))
    return st.one_of(uniform, near)


@st.composite
def time_points(draw, process, dim: int = 2, *, scale: float = 3.0, margin=0.0):
    r"""A strategy for `(t, x)`: `t` from [`scoreflow.testing.times`][] and
    $x = \alpha(t)\,a + \sigma(t)\,b$ with $a, b \in [-\text{scale},
    \text{scale}]^d$ — where the marginals of data of that scale have mass."""
    t = draw(times(process, margin=margin))
    a = jnp.asarray(draw(_vector(dim, -scale, scale)))
    b = jnp.asarray(draw(_vector(dim, -scale, scale)))
    tt = jnp.asarray(t)
    x = process.alpha(tt) * a + process.sigma(tt) * b
    return tt, x


# --------------------------------------------------------------------------- #
# Assertions
# --------------------------------------------------------------------------- #


def marginal_residuals(process, mixture: GaussianMixture, t, x) -> dict:
    r"""The residuals at `(t, x)` of the exact marginals $p_t$ of `mixture` under
    `process`:

    - `"fokker_planck"`: the forward SDE's FP equation;
    - `"continuity"`: the continuity equation of the probability-flow velocity
      $f x - \tfrac12 g^2\nabla\log p_t$ built from the process's own drift and
      $g^2$ (so a process whose SDE and kernel disagree fails here too);
    - `"reverse_sde"`: the FP equation of the reverse-time SDE with drift
      $f - g^2\nabla\log p_t$ in flipped time.

    All three are divided by one reference scale, the sum of the absolute values of
    the forward FP equation's terms (see [`scoreflow.checks`][]). Each equation's
    own terms would not do: where the mixture is stationary (a standard normal
    under a variance-preserving process) the probability-flow velocity vanishes by
    cancellation, every term of the continuity equation is rounding noise, and the
    ratio of two rounding errors is of order 1. The forward FP terms do not cancel
    term by term ($\nabla\cdot f$ and $\tfrac12 g^2\Delta\ell$ are each of
    order $g^2 d$). Compiled once per process and mixture shape.
    """
    return _residuals(process, mixture, jnp.asarray(t), jnp.asarray(x))


@eqx.filter_jit
def _residuals(process, mixture, t, x):
    score = mixture.score(process)

    def log_prob(s, y):
        return mixture.marginal(process, s).log_prob(y)

    def pf_velocity(s, y):
        return process.reverse_drift(s, y, score(s, y))

    fp, scale = checks.fokker_planck_residual(process, log_prob, t, x, relative="parts")
    cont = checks.continuity_residual(pf_velocity, log_prob, t, x, relative=False)
    rev = checks.reverse_fokker_planck_residual(
        process, score, log_prob, t, x, relative=False
    )
    scale = scale + jnp.finfo(scale.dtype).tiny
    return {
        "fokker_planck": fp / scale,
        "continuity": cont / scale,
        "reverse_sde": rev / scale,
    }


def default_tolerance(dtype=None) -> float:
    """The tolerance [`scoreflow.testing.assert_marginals_consistent`][] uses by
    default: `1e-10` for float64 and `1e-4` for float32. Measured over random
    mixtures and points for the seven built-in families (`tests/test_testing.py`),
    correct processes stay below 3e-15 and 1.4e-6; a wrong noise scale gives
    1e-2 to 1."""
    dtype = jnp.result_type(float) if dtype is None else jnp.dtype(dtype)
    return 1e-10 if jnp.finfo(dtype).bits == 64 else 1e-4


def assert_marginals_consistent(process, mixture, t, x, *, tol: float | None = None):
    """Assert every residual of [`scoreflow.testing.marginal_residuals`][] is below
    `tol` in absolute value (default: [`scoreflow.testing.default_tolerance`][] of
    `x`'s dtype); the message names the failing equation and the point."""
    res = marginal_residuals(process, mixture, t, x)
    if tol is None:
        tol = default_tolerance(jnp.result_type(jnp.asarray(x)))
    bad = {k: float(v) for k, v in res.items() if not abs(float(v)) <= tol}
    if bad:
        raise AssertionError(
            f"{process!r}: residuals above tol={tol:g} at t={float(t):.6g}, "
            f"x={np.asarray(x).tolist()}: {bad}"
        )
    return res
