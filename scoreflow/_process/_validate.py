"""Declaration-time validation of a declared process: every coefficient finite in
float32 on a dense grid of [t0, t1], and g^2 >= 0 (proved with 30-digit arithmetic
where the declaration is symbolic)."""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import mpmath
import numpy as np
import sympy

from . import _derive
from ._endpoints import to_float
from ._log_snr import as_number


def interior(horizon):
    """A grid strictly inside (0, horizon), where every coefficient of a declaration
    is meant to be regular."""
    return _grid(0.0, horizon)[1:-1]


def _grid(t0, t1):
    span = t1 - t0
    near = np.geomspace(1e-6, 1e-1, 21) * span
    return np.unique(
        np.clip(
            np.concatenate([np.linspace(t0, t1, 513), t0 + near, t1 - near]), t0, t1
        )
    )


def _evaluate(fns32, params32, ts32, names, g2, params, ts):
    """The float32 values of the named coefficients on `ts32`, and g^2 in the
    default dtype on `ts` (elementwise in t: one call on the whole grid each)."""
    vals = {name: fns32[name](ts32, params32) for name in names}
    return vals, jax.vmap(lambda s: g2(s, params))(ts)


_evaluate_jit = eqx.filter_jit(_evaluate)


def validate(call, d, fns, params, t0, t1, gaussian, mp):
    """Every coefficient finite in float32 on a dense grid; g^2 >= 0."""
    grid = _grid(t0, t1)
    if getattr(fns["g2"], "uses_x", False):
        _validate_state_dependent(call, fns, params, grid)
        return
    if mp is not None and "g2" in mp:
        check_g2(call, d, mp["g2"], grid)
    to32 = lambda leaf: leaf.astype(jnp.float32) if eqx.is_inexact_array(leaf) else leaf
    fns32, params32 = jtu.tree_map(to32, (fns, params))
    grid32 = grid.astype(np.float32)
    ts = jnp.asarray(grid32)
    names = ["g2"] + (
        ["f", "alpha", "sigma", "alpha_dot", "sigma_dot", "log_snr"] if gaussian else []
    )
    names = tuple(name for name in names if name in fns)
    args = (fns32, params32, ts, names, fns["g2"], params)
    with jax.numpy_dtype_promotion("standard"):
        # One compiled program for the whole check, not one per operation (the
        # first-minute cost of a new process, issue 14); a callable declaration that
        # cannot be traced is evaluated eagerly, as before.
        grid_d = jnp.asarray(grid, jnp.result_type(float))
        try:
            vals, g2v = _evaluate_jit(*args, grid_d)
        except Exception:
            vals, g2v = _evaluate(*args, grid_d)
        for name in names:
            v = np.asarray(vals[name])
            bad = ~np.isfinite(v)
            if bad.any():
                i = int(np.argmax(bad))
                raise ValueError(
                    f"`{call}`: the schedule gives a non-finite {name}(t={grid[i]:.6g}) = "
                    f"{v[i]} in float32 inside [t0, t1] = [{t0:g}, {t1:g}]. Shrink the "
                    "time range or rewrite the schedule so it stays finite."
                )
        if "moments" in fns:
            # One solve per time, as `process.alpha(t)` runs it: one compiled
            # program for all (a vmap of the adaptive solver compiles a second,
            # larger one, for the same values).
            a, s2 = np.asarray([fns32["moments"](s, params32) for s in grid32[::8]]).T
            if not (np.isfinite(a).all() and np.isfinite(s2).all()):
                raise ValueError(
                    f"`{call}`: the numerically integrated kernel is not finite on [t0, t1]."
                )
    g2v = np.asarray(g2v)
    neg = g2v < -1e-6 * max(1.0, float(np.max(np.abs(g2v))))
    if neg.any():
        i = int(np.argmax(neg))
        expr = "" if d is None else f" g^2(t) = {d.g2}"
        raise ValueError(
            f"`{call}`: the implied squared diffusion is negative at t={grid[i]:.6g}"
            f" (g^2 = {g2v[i]:.4g}).{expr} For an interpolant, g^2 = (sigma^2)' - "
            "2 (alpha'/alpha) sigma^2 must be >= 0: sigma must grow at least as fast "
            "as alpha shrinks."
        )


_X_PROBE = np.concatenate(
    [-np.geomspace(1e-3, 10.0, 9)[::-1], [0.0], np.geomspace(1e-3, 10.0, 9)]
)


def _validate_state_dependent(call, fns, params, grid):
    """g(t, x)^2 and its x-derivative finite (float32) and g^2 >= 0 on a grid of
    times and probe states |x| <= 10."""
    tt, xx = np.meshgrid(grid[::8], _X_PROBE, indexing="ij")
    ts, xs = jnp.asarray(tt, jnp.float32), jnp.asarray(xx, jnp.float32)
    to32 = lambda leaf: leaf.astype(jnp.float32) if eqx.is_inexact_array(leaf) else leaf
    fns32, params32 = jtu.tree_map(to32, (fns, params))
    with jax.numpy_dtype_promotion("standard"):
        for name in ("g2", "dg2"):
            vals = np.asarray(fns32[name](ts, params32, xs))
            bad = ~np.isfinite(vals)
            if bad.any():
                i = np.unravel_index(int(np.argmax(bad)), bad.shape)
                raise ValueError(
                    f"`{call}`: {name}(t={tt[i]:.4g}, x={xx[i]:.4g}) = {vals[i]} is not "
                    "finite in float32; the diffusion must stay finite on [t0, t1]."
                )
            if name == "g2" and (vals < 0).any():
                i = np.unravel_index(int(np.argmax(vals < 0)), vals.shape)
                raise ValueError(
                    f"`{call}`: g(t, x)^2 = {vals[i]:.4g} < 0 at t={tt[i]:.4g}, "
                    f"x={xx[i]:.4g}."
                )


def check_g2(call, d, g2_expr, grid):
    """Exact (30-digit) evaluation: a negative value is a proof that g^2 < 0."""
    fn = sympy.lambdify(_derive.t, g2_expr, modules="mpmath")
    with mpmath.workdps(30):
        for tv in grid[:: max(1, len(grid) // 64)]:
            try:
                c = complex(fn(mpmath.mpf(float(tv))))
            except (ZeroDivisionError, ValueError, TypeError, OverflowError):
                continue
            v = c.real if abs(c.imag) <= 1e-20 * max(1.0, abs(c.real)) else math.nan
            if v < 0 and abs(v) > 1e-20:
                raise ValueError(
                    f"`{call}`: the implied squared diffusion g^2(t) = {d.g2} is negative "
                    f"at t = {tv:.6g} (g^2 = {v:.4g}). For an interpolant g^2 = (sigma^2)' - "
                    "2 (alpha'/alpha) sigma^2 must be >= 0: sigma must grow at least as fast "
                    "as alpha shrinks (e.g. sigma^2 = 1 - alpha^2 for a variance-preserving "
                    "path)."
                )


def check_nonneg(g, param_symbols, params, call, what, t1):
    horizon = 1.0 if t1 is None else float(t1)
    sub = {s: as_number(params[s.name]) for s in param_symbols}
    ge = g.subs(sub)
    for tv in np.linspace(0, horizon, 33):
        with mpmath.workdps(30):
            v = to_float(ge.subs(_derive.t, sympy.Rational(repr(float(tv)))))
        if v < 0:
            raise ValueError(
                f"`{call}`: the {what} = {g} is negative at t = {tv:.4g} ({v:.4g}). "
                "g must be >= 0 (only g^2 enters the dynamics): declare abs(g), or "
                "sqrt of the intended g^2."
            )
