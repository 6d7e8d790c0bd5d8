r"""The log-SNR $\lambda(t) = \log(\alpha^2/\sigma^2)$: where automatic endpoints are
placed, and its one inverse $t(\lambda)$ on $[t_0, t_1]$ (a closed form where sympy
finds one, else a checked bisection; both refuse a log-SNR outside the process's
range)."""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
import sympy

from . import _derive
from ._expr import Expr

LOG_SNR_MAX = 2 * math.log(1e3)
r"""Where an automatic `t0` is placed when $\sigma(t) \to 0$ at $t = 0$: the
log-SNR at which $\sigma/\alpha = 10^{-3}$, i.e. the score scale $1/\sigma$ of
unit-scale data is $10^3$ (for VP this is Song et al.'s $t_0 = 10^{-5}$)."""

LOG_SNR_MIN = -2 * math.log(1e3)
r"""Where an automatic `t1` is placed when $\alpha(t) \to 0$ at the horizon: the
log-SNR at which $\alpha/\sigma = 10^{-3}$; the prior then differs from the
terminal marginal of unit-variance data by a KL of about $2.5\times10^{-13}$ per
dimension, while the drift $\dot\alpha/\alpha$ stays finite."""


def _range_check(lam, lo_lam, hi_lam, t0, t1):
    slack = 16 * jnp.finfo(lam.dtype).eps * jnp.maximum(1.0, jnp.abs(hi_lam - lo_lam))
    return eqx.error_if(
        lam,
        jnp.any((lam < lo_lam - slack) | (lam > hi_lam + slack) | jnp.isnan(lam)),
        f"t_from_log_snr: a log-SNR outside the process's range on [t0, t1] = "
        f"[{t0:g}, {t1:g}] was asked for (the process never reaches that noise level "
        "there); clip the log-SNR to [process.log_snr(t1), process.log_snr(t0)].",
    )


def bisect_time(log_snr, lam, t0: float, t1: float):
    r"""The $t \in [t_0, t_1]$ with `log_snr(t) = lam` (decreasing), by a bracketed
    bisection (optimistix) whose result is checked; values at (or within rounding of)
    the ends of the range return the ends. Works inside jit with traced parameters.
    """
    lam = jnp.asarray(lam)
    if not jnp.issubdtype(lam.dtype, jnp.floating):
        lam = lam.astype(jnp.result_type(float))
    dtype = lam.dtype
    lower, upper = jnp.asarray(t0, dtype), jnp.asarray(t1, dtype)
    lo_lam, hi_lam = log_snr(upper), log_snr(lower)
    flat = _range_check(jnp.ravel(lam), lo_lam, hi_lam, t0, t1)
    at_upper, at_lower = flat <= lo_lam, flat >= hi_lam
    inner = jnp.where(at_upper | at_lower, 0.5 * (lo_lam + hi_lam), flat)
    solver = optx.Bisection(rtol=1e-7 if dtype == jnp.float32 else 1e-14, atol=0.0)

    def one(target):
        # optimistix's Bisection stops on |f| < atol as well, so with atol = 0 it
        # always runs to max_steps: the bracket is then exhausted to round-off.
        sol = optx.root_find(
            lambda tt, args: log_snr(tt) - args,
            solver,
            0.5 * (lower + upper),
            args=target,
            options=dict(lower=lower, upper=upper),
            max_steps=256,
            throw=False,
        )
        return sol.value

    out = jax.vmap(one)(inner)
    # Check the root: the log-SNR there matches to round-off (relative to its scale).
    tol = (1e-3 if dtype == jnp.float32 else 1e-8) * jnp.maximum(1.0, jnp.abs(inner))
    bad = (jnp.abs(log_snr(out) - inner) > tol) & ~(at_upper | at_lower)
    out = eqx.error_if(
        out,
        jnp.any(bad),
        "t_from_log_snr: the bisection found no time with the requested log-SNR "
        "on [t0, t1]; the process's log-SNR may not be monotone there.",
    )
    out = jnp.where(at_upper, upper, jnp.where(at_lower, lower, out))
    return out.reshape(lam.shape)


def closed_form_time(inverse, params, log_snr, lam, t0: float, t1: float):
    """The closed-form inverse `inverse(lam, params)`, range-checked like
    `bisect_time` and clipped to $[t_0, t_1]$ (it is exact up to rounding)."""
    lam = jnp.asarray(lam)
    if not jnp.issubdtype(lam.dtype, jnp.floating):
        lam = lam.astype(jnp.result_type(float))
    lower, upper = jnp.asarray(t0, lam.dtype), jnp.asarray(t1, lam.dtype)
    lam = _range_check(lam, log_snr(upper), log_snr(lower), t0, t1)
    return jnp.clip(inverse(lam, params), lower, upper)


# --------------------------------------------------------------------------- #
# Closed-form inverse (sympy)
# --------------------------------------------------------------------------- #

_INVERSES: dict = {}


def inverse_for(lam, params, param_symbols, t_range):
    """The compiled closed-form inverse of this log-SNR expression, or None. Derived
    by `_derive.inverse_log_snr` (the most accurate float32 form on the log-SNR range
    of `t_range`, cached on disk; the built-ins' ship with scoreflow). The compiled
    inverse keeps the parameters symbolic; concrete parameter values only pick the
    branch and the form, so it also works with traced parameters once found."""
    key = (lam, tuple(float(v) for v in t_range))
    if key in _INVERSES:
        return _INVERSES[key]
    try:
        subs = tuple((s, as_number(params[s.name])) for s in param_symbols)
    except Exception:  # traced parameters (inside jit): no branch check possible
        return None
    inv = _derive.inverse_log_snr(lam, subs, key[1])
    _INVERSES[key] = (
        None if inv is None else Expr(inv.xreplace({_derive.LAM: _derive.t}))
    )
    return _INVERSES[key]


def as_number(v):
    """The exact rational with the shortest decimal repr of a parameter value (so a
    float32 0.1 becomes 1/10, keeping symbolic checks exact)."""
    v = np.asarray(v)[()]
    return sympy.Rational(np.format_float_positional(v, unique=True, trim="0"))
