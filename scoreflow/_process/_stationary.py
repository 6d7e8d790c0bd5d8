r"""The stationary density of a time-homogeneous scalar (elementwise) SDE.

For $dx = f(x)\,dt + g(x)\,dW$ (Itô) the stationary Fokker--Planck equation
$0 = -\partial_x(f p) + \tfrac12\partial_x^2(g^2 p)$ with zero probability flux gives

$$p_\infty(x) = \frac{1}{Z}\,\frac{1}{g(x)^2}\exp\!\int^x \frac{2 f(y)}{g(y)^2}\,dy,$$

derived here with sympy; the normaliser $Z$ and the CDF are tabulated numerically
(float64 NumPy, once at declaration), so sampling is an exact inverse-CDF lookup up to
the table's interpolation error.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import sympy
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .._custom_types import Scalar
from .._symbols import t, x
from . import _derive
from ._expr import Expr

TABLE_SIZE = 16385
"""Points of the CDF table (uniform in $\\operatorname{asinh} x$)."""

LOG_DENSITY_RANGE = 60.0
"""The table covers where $\\log p_\\infty$ is within this of its maximum."""


@_derive.disk_cached
def stationary_log_density(drift: sympy.Expr, g2: sympy.Expr):
    r"""Unnormalised $\log p_\infty = \int 2f/g^2\,dx - \log g^2$ as a sympy
    expression in `x`, or a string saying why there is none (time-dependent
    coefficients, or no closed-form antiderivative)."""
    if drift.has(t) or g2.has(t):
        return "the drift or diffusion depends on t (no stationary density)"
    if g2.has(x):
        zeros = _derive.try_sympy(lambda: sympy.solve(sympy.Eq(g2, 0), x))
        if zeros is None:
            return f"could not decide whether g^2 = {g2} vanishes for real x"
        real = [z for z in zeros if z.is_real is not False]
        if real:
            return (
                f"g^2 = {g2} vanishes at x = {real}, where 1/g^2 and 2 f / g^2 are "
                "singular, so no density on the whole real line is derived"
            )
    integrand = _derive._simplify(2 * drift / g2)
    anti = _derive.try_sympy(lambda: sympy.integrate(integrand, x))
    if anti is None or anti.has(sympy.Integral):
        return f"sympy found no antiderivative of 2 f / g^2 = {integrand}"
    # sympy's antiderivative of 1/u is log(u); on the real line it is log|u|.
    anti = anti.replace(sympy.log, lambda u: sympy.log(sympy.Abs(u)))
    expr = anti - sympy.log(g2) if g2.has(x) else anti
    return _derive._simplify(expr)


def _table(expr: sympy.Expr, call: str):
    fn = sympy.lambdify(x, expr, modules="numpy")

    def ell(v):
        with np.errstate(all="ignore"):
            out = np.broadcast_to(np.asarray(fn(v), dtype=np.float64), v.shape)
        bad = np.isnan(out) | (out == np.inf)
        if np.any(bad):
            raise ValueError(
                f"`{call}`: the stationary log-density {expr} is NaN or +inf at "
                f"x = {float(v[np.argmax(bad)]):.4g}; it is not a density on the real "
                "line. Pass an explicit prior=."
            )
        return out

    wide = np.sinh(np.linspace(-math.asinh(1e8), math.asinh(1e8), 40001))
    lw = ell(wide)
    top = float(np.max(lw))
    if not math.isfinite(top):
        raise ValueError(f"`{call}`: the stationary log-density {expr} is not finite.")
    inside = np.nonzero(lw >= top - LOG_DENSITY_RANGE)[0]
    if inside[0] == 0 or inside[-1] == len(wide) - 1:
        raise ValueError(
            f"`{call}`: the stationary density exp({expr}) is not normalisable (it does "
            "not decay for |x| up to 1e8); pass an explicit prior=."
        )
    lo, hi = wide[max(inside[0] - 1, 0)], wide[inside[-1] + 1]
    grid = np.sinh(np.linspace(math.asinh(lo), math.asinh(hi), TABLE_SIZE))
    lg = ell(grid)
    top = max(top, float(np.max(lg)))
    dens = np.exp(lg - top)
    cum = np.concatenate(
        [[0.0], np.cumsum(0.5 * (dens[1:] + dens[:-1]) * np.diff(grid))]
    )
    z = cum[-1]
    return grid, cum / z, top + math.log(z)


class StationaryDensity(eqx.Module):
    r"""The stationary density $p_\infty$ of a time-homogeneous elementwise SDE,
    $p_\infty(x) \propto g(x)^{-2}\exp\int^x 2f/g^2$ per coordinate (coordinates
    independent), usable as the prior of [`scoreflow.SDE`][] (`prior=`).

    Build it with `StationaryDensity.of(process)` (or get it as `process.prior`, which
    is the default prior of a non-Gaussian time-homogeneous `sf.SDE`).

    - `log_prob(x)`: $\sum_i \log p_\infty(x_i)$ for one unbatched `x`.
    - `score(x)`: $\partial_x\log p_\infty$ elementwise (sympy-derived).
    - `sample(key, shape, dtype=None)`: exact inverse-CDF sampling (table lookup).
    - `cdf(x)`: the 1-D CDF, elementwise (e.g. for Kolmogorov--Smirnov tests).

    The table is built once with the parameter values at declaration time.
    """

    expr: sympy.Expr = eqx.field(static=True)
    log_norm: float = eqx.field(static=True)
    grid: Array
    cdf_table: Array
    _log_density: eqx.Module
    _score: eqx.Module

    def __init__(self, expr: sympy.Expr, *, call: str = "sf.StationaryDensity"):
        # Floats for the numerics: exact rationals of float parameters can have
        # 30-digit numerators, which do not fit JAX integers.
        numeric = sympy.nfloat(expr, n=17)
        grid, cdf, log_norm = _table(numeric, call)
        self.expr = expr
        self.log_norm = float(log_norm)
        dtype = jnp.result_type(float)
        self.grid = jnp.asarray(grid, dtype)
        self.cdf_table = jnp.asarray(cdf, dtype)
        self._log_density = Expr(numeric)
        self._score = Expr(sympy.nfloat(_derive._simplify(sympy.diff(expr, x)), n=17))

    @classmethod
    def of(cls, process) -> StationaryDensity:
        """The stationary density of a declared process (raises `ValueError` with
        the reason when there is none)."""
        s = process.symbolic
        out = stationary_log_density(s.f, s.g2)
        if isinstance(out, str):
            raise ValueError(
                f"`{process._info.call}` has no stationary density: {out}."
            )
        return cls(out, call=process._info.call)

    def _eval(self, fn, x):
        x = jnp.asarray(x)
        if not jnp.issubdtype(x.dtype, jnp.floating):
            x = x.astype(jnp.result_type(float))
        out = fn(jnp.zeros((), x.dtype), {}, x)
        return jnp.broadcast_to(out, x.shape).astype(x.dtype)

    def log_prob(self, x: Float[ArrayLike, "*shape"]) -> Scalar:
        r"""$\log p_\infty(x) = \sum_i \log p_\infty(x_i)$ for one unbatched `x`."""
        return jnp.sum(self._eval(self._log_density, x)) - self.log_norm * jnp.size(x)

    def score(self, x: Float[ArrayLike, "*shape"]) -> Float[Array, "*shape"]:
        r"""$\nabla_x\log p_\infty(x)$ (elementwise)."""
        return self._eval(self._score, x)

    def cdf(self, x: Float[ArrayLike, "*shape"]) -> Float[Array, "*shape"]:
        """The one-dimensional CDF, elementwise."""
        x = jnp.asarray(x)
        return jnp.interp(x, self.grid.astype(x.dtype), self.cdf_table.astype(x.dtype))

    def sample(
        self, key: PRNGKeyArray, shape: tuple[int, ...], dtype=None
    ) -> Float[Array, "*shape"]:
        """Independent draws of every coordinate by inverse-CDF lookup."""
        dtype = jnp.result_type(float) if dtype is None else dtype
        u = jr.uniform(key, shape, dtype)
        return jnp.interp(u, self.cdf_table.astype(dtype), self.grid.astype(dtype))
