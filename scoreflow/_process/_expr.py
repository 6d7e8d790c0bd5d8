"""Compiled coefficients: the ground floor of every process.

Each is a small equinox Module (a pytree, so constants and parameters are array
leaves) called as `fn(t, params)` or, for a coefficient that depends on the state,
`fn(t, params, x)`: sympy expressions compiled by sympy2jax, a user's Python callable,
and the few numeric derivations of a callable declaration (a derivative by `jax.jvp`,
a ratio, a square). Matrix coefficients (`MatrixExpr`, `MatrixCall`) are called as
`fn(t)`.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import sympy
import sympy2jax

from .._symbols import x as X_SYM
from . import _derive


def _compile(expr) -> sympy2jax.SymbolicModule:
    extra = {k: getattr(jnp, v) for k, v in _derive.EXTRA_FUNCS.items()}
    return sympy2jax.SymbolicModule(expr, extra_funcs=extra)


class Expr(eqx.Module):
    """A sympy expression in `t` (and parameter symbols, and maybe `x`)."""

    module: sympy2jax.SymbolicModule
    uses_x: bool = eqx.field(static=True)

    def __init__(self, expr: sympy.Expr):
        self.module = _compile(expr)
        self.uses_x = X_SYM in expr.free_symbols

    def __call__(self, t, params, x=None):
        if not _traced((t, params, x)):
            # Called eagerly: one compiled program per expression and shape, not one
            # small program per operation (a new process's first evaluations were
            # most of its first second, issue 14).
            t = t if isinstance(t, jax.Array) else jnp.asarray(t)
            x = x if x is None or isinstance(x, jax.Array) else jnp.asarray(x)
            return _expr_jit(self, t, params, x)
        return self._eval(t, params, x)

    def _eval(self, t, params, x=None):
        kwargs = dict(params)
        kwargs["t"] = t
        if self.uses_x:
            kwargs["x"] = x
        out = jnp.asarray(self.module(**kwargs))
        if not jnp.issubdtype(out.dtype, jnp.inexact):  # constant coefficients
            out = out.astype(jnp.result_type(jnp.asarray(t).dtype, float))
        shape = jnp.shape(x) if self.uses_x else jnp.shape(t)
        return jnp.broadcast_to(out, shape) if jnp.shape(out) != shape else out


def _traced(tree) -> bool:
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(tree))


@eqx.filter_jit
def _expr_jit(expr, t, params, x):
    return expr._eval(t, params, x)


class Call(eqx.Module):
    """A user-supplied Python callable `fn(t)` or `fn(t, x)` (numeric derivation)."""

    fn: Callable

    def __call__(self, t, params, x=None):
        return self.fn(t) if x is None else self.fn(t, x)


class Deriv(eqx.Module):
    """$d/dt$ of a coefficient, by forward-mode autodiff."""

    fn: eqx.Module

    def __call__(self, t, params):
        t = jnp.asarray(t)
        return jax.jvp(lambda s: self.fn(s, params), (t,), (jnp.ones_like(t),))[1]


class Ratio(eqx.Module):
    num: eqx.Module
    den: eqx.Module

    def __call__(self, t, params):
        return self.num(t, params) / self.den(t, params)


class InterpolantG2(eqx.Module):
    r"""$g^2 = (\sigma^2)' - 2(\alpha'/\alpha)\sigma^2$ of callables alpha, sigma."""

    alpha: eqx.Module
    sigma: eqx.Module

    def __call__(self, t, params):
        t = jnp.asarray(t)
        a, da = jax.jvp(lambda s: self.alpha(s, params), (t,), (jnp.ones_like(t),))
        s, ds = jax.jvp(lambda u: self.sigma(u, params), (t,), (jnp.ones_like(t),))
        return 2 * s * ds - 2 * (da / a) * s**2


class UnitDrift(eqx.Module):
    """f(t) of a linear callable drift: drift(t, 1)."""

    drift: Callable

    def __call__(self, t, params):
        t = jnp.asarray(t)
        return jnp.asarray(self.drift(t, jnp.ones_like(t)))


class Square(eqx.Module):
    fn: Callable

    def __call__(self, t, params):
        return jnp.asarray(self.fn(t)) ** 2


class MatrixExpr(eqx.Module):
    """A `(k, k)` matrix of sympy expressions in `t`, compiled with sympy2jax."""

    module: sympy2jax.SymbolicModule
    shape: tuple[int, int] = eqx.field(static=True)

    def __init__(self, m: sympy.Matrix):
        self.module = _compile(list(m))
        self.shape = tuple(m.shape)

    def __call__(self, t):
        t = jnp.asarray(t)
        dtype = jnp.result_type(t.dtype, float)
        t = t.astype(dtype)
        vals = self.module(t=t)
        return jnp.stack([jnp.asarray(v, dtype) for v in vals]).reshape(self.shape)


class MatrixCall(eqx.Module):
    """A user callable `t -> (k, k)` array."""

    fn: Callable

    def __call__(self, t):
        t = jnp.asarray(t)
        return jnp.asarray(self.fn(t), jnp.result_type(t.dtype, float))


def as_time(t):
    """`t` as a floating array (integers become the default float)."""
    t = jnp.asarray(t)
    if not jnp.issubdtype(t.dtype, jnp.floating):
        t = t.astype(jnp.result_type(float))
    return t


def fn_name(fn) -> str:
    """A readable name of a user callable (for the declaration's call string)."""
    return getattr(fn, "__qualname__", None) or type(fn).__name__
