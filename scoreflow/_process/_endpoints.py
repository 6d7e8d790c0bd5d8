"""Where a declared process's time range ends, and why: `t0` where the score scale
1/sigma would diverge, `t1` where alpha vanishes (both by the log-SNR rule), the
one-sided limits sympy finds at both ends, and the prior-mismatch check."""

from __future__ import annotations

import dataclasses
import math
import warnings

import equinox as eqx
import jax.numpy as jnp
import mpmath
import numpy as np
import sympy

from .._warnings import user_stacklevel
from . import _derive
from ._log_snr import LOG_SNR_MAX, LOG_SNR_MIN

PRIOR_KL_WARN = 1e-3
"""Per-dimension KL (unit-variance data) above which a terminal-marginal/prior
mismatch warns."""


class PriorMismatchWarning(UserWarning):
    """The terminal marginal of the process is far from its declared prior."""


@dataclasses.dataclass(frozen=True)
class Endpoints:
    """How `t0` and `t1` were set, and why (see `LOG_SNR_MAX` / `LOG_SNR_MIN`)."""

    t0: float
    t1: float
    reason_t0: str
    reason_t1: str
    limits: tuple  # ((name, at, value), ...)
    prior_kl: float  # per-dimension KL(terminal marginal of unit data || prior)

    def __str__(self):
        lines = [
            f"t0 = {self.t0:.6g}: {self.reason_t0}",
            f"t1 = {self.t1:.6g}: {self.reason_t1}",
        ]
        if math.isnan(self.prior_kl):
            lines.append(
                "prior mismatch: not applicable (no Gaussian kernel; see `process.prior`)"
            )
        else:
            lines.append(
                "prior mismatch (unit-variance data): KL = "
                f"{self.prior_kl:.3g} per dimension"
            )
        for name, at, value in self.limits:
            lines.append(f"  lim {name} as t -> {at}: {value}")
        return "\n".join(lines)


def mp_evaluators(d: _derive.Derivation, subs):
    """High-precision (mpmath) scalar evaluators of the derived expressions."""
    sub = dict(subs)
    out = {}
    for name in ("alpha", "sigma2", "f", "g2", "log_snr"):
        e = getattr(d, name)
        if e is not None:
            out[name] = e.subs(sub)
    return out


@_derive.disk_cached
def _endpoint_value(expr, point, direction):
    """The value of `expr` at `point`, or its one-sided limit where it is singular."""
    v = _derive.try_sympy(lambda: expr.subs(_derive.t, point), 2.0)
    if v is not None and v.is_number and v.is_finite is not False:
        num = to_float(v)
        if math.isfinite(num) and (num != 0 or v.is_zero):
            return v
    lim = _derive.try_sympy(lambda: sympy.limit(expr, _derive.t, point, direction))
    return lim


def to_float(v):
    if v is None:
        return math.nan
    try:
        c = complex(v.evalf(30)) if isinstance(v, sympy.Basic) else complex(v)
    except (TypeError, ValueError):
        if v in (sympy.oo, sympy.zoo):
            return math.inf
        if v == -sympy.oo:
            return -math.inf
        return math.nan
    return c.real if abs(c.imag) < 1e-14 * max(1.0, abs(c.real)) else math.nan


@eqx.filter_jit
def _at_jit(fn, t, params):
    """One compiled program per coefficient, not one per operation (issue 14)."""
    return fn(t, params)


def analyse(call, fns, params, t0, t1, horizon, mp, gaussian) -> Endpoints:
    """`t0`, `t1` chosen (where `None`) or validated, with the reasons; `fns` the
    compiled coefficients by name, `mp` their 30-digit evaluators (or None)."""

    def jnum(name, tv):
        """Evaluate a compiled coefficient at a Python float (float64 if enabled)."""
        t = jnp.asarray(tv, jnp.result_type(float))
        try:
            out = _at_jit(fns[name], t, params)
        except Exception:  # a callable that cannot be traced: eagerly, as before
            out = fns[name](t, params)
        return float(np.asarray(out))

    mp_fns = {}

    def value(name, tv):
        if mp is not None and name in mp:
            if name not in mp_fns:
                mp_fns[name] = sympy.lambdify(_derive.t, mp[name], modules="mpmath")
            with mpmath.workdps(30):
                try:
                    v = complex(mp_fns[name](mpmath.mpf(tv)))
                except (ZeroDivisionError, ValueError, TypeError, OverflowError):
                    return math.nan
            return v.real if abs(v.imag) <= 1e-20 * max(1.0, abs(v.real)) else math.nan
        if name in ("alpha", "sigma2") and "moments" in fns:
            a, s2 = fns["moments"](jnp.asarray(tv, jnp.result_type(float)), params)
            return float(a) if name == "alpha" else float(s2)
        if name == "log_snr":
            return 2 * math.log(value("alpha", tv)) - math.log(value("sigma2", tv))
        if name == "sigma2":
            return jnum("sigma", tv) ** 2
        return jnum(name, tv)

    limits = []
    reason0 = reason1 = "given"
    if not gaussian:
        t0v = 0.0 if t0 is None else float(t0)
        t1v = horizon
        reason0 = "no Gaussian kernel; defaults to 0" if t0 is None else "given"
        reason1 = "horizon" if t1 is None else "given"
        prior_kl = math.nan
    else:
        # -- limits at both ends --------------------------------------------
        def at(name, point, direction):
            if mp is not None and name in mp:
                v = _endpoint_value(mp[name], point, direction)
                out = to_float(v)
                limits.append((name, point, v))
                return out
            try:
                return value(name, point)
            except (ValueError, ZeroDivisionError, OverflowError):
                return math.nan

        s2_0 = at("sigma2", 0, "+")
        f_0, g2_0 = at("f", 0, "+"), at("g2", 0, "+")
        a_T = at("alpha", horizon, "-")
        f_T, g2_T = at("f", horizon, "-"), at("g2", horizon, "-")

        def lam(tv):
            try:
                return value("log_snr", tv)
            except (ValueError, ZeroDivisionError, OverflowError):
                return math.nan

        if t0 is None:
            if s2_0 == 0 or not (math.isfinite(f_0) and math.isfinite(g2_0)):
                target = LOG_SNR_MAX
                t0v = _solve_time(lam, target, 0.0, horizon, call, "t0")
                why = "sigma(t) -> 0" if s2_0 == 0 else "f or g^2 is singular"
                reason0 = (
                    f"{why} as t -> 0 (the score scale 1/sigma diverges); t0 is where "
                    f"log-SNR = {target:.4g}, i.e. sigma/alpha = 1e-3"
                )
            else:
                t0v = 0.0
                reason0 = "all coefficients are finite and sigma(0) > 0"
        else:
            t0v = float(t0)
        if t1 is None:
            if a_T == 0 or not (math.isfinite(f_T) and math.isfinite(g2_T)):
                if a_T != 0:
                    raise ValueError(
                        f"`{call}`: the drift or diffusion is singular at t = {horizon} "
                        f"(f -> {f_T}, g^2 -> {g2_T}) although alpha does not vanish "
                        "there; pass an explicit t1 below the singularity."
                    )
                target = LOG_SNR_MIN
                t1v = _solve_time(lam, target, t0v, horizon, call, "t1")
                reason1 = (
                    f"alpha(t) -> 0 as t -> {horizon:g} (log-SNR -> -inf, the drift "
                    f"alpha'/alpha diverges); t1 is where log-SNR = {target:.4g}, i.e. "
                    "alpha/sigma = 1e-3"
                )
            else:
                t1v = horizon
                reason1 = "all coefficients are finite at the horizon"
        else:
            t1v = float(t1)
        if not t0v < t1v:
            raise ValueError(f"`{call}`: need t0 < t1, got t0={t0v}, t1={t1v}.")
        # -- explicit endpoints must be regular --------------------------------
        for name_, tv in (("t0", t0v), ("t1", t1v)):
            s2 = value("sigma2", tv)
            a = value("alpha", tv)
            if not (s2 > 0 and math.isfinite(s2)):
                raise ValueError(
                    f"`{call}`: sigma({name_}={tv:g})^2 = {s2:g}; the noise scale must be "
                    f"positive and finite at {name_} (the score scale 1/sigma diverges "
                    f"otherwise). Pass {name_} inside the range, or leave {name_}=None to "
                    "have it chosen (see `process.endpoints`)."
                )
            if not (a > 0 and math.isfinite(a)):
                raise ValueError(
                    f"`{call}`: alpha({name_}={tv:g}) = {a:g}; the signal scale must be "
                    f"positive and finite on [t0, t1] (the drift alpha'/alpha is singular "
                    f"otherwise). Pass {name_} inside the range, or leave it None."
                )
        snr1 = math.exp(lam(t1v))
        r = 1.0 + snr1
        prior_kl = 0.5 * (r - 1.0 - math.log(r))
        if prior_kl > PRIOR_KL_WARN:
            warnings.warn(
                f"`{call}`: the terminal marginal does not match the prior "
                f"N(0, sigma(t1)^2 I): at t1={t1v:g}, alpha={value('alpha', t1v):.3g}, "
                f"sigma={math.sqrt(value('sigma2', t1v)):.3g}, so for unit-variance data "
                f"KL(p_t1 || prior) = {prior_kl:.3g} per dimension. Samplers started from "
                "the prior will be biased; increase the noise at t1 (or t1 itself).",
                PriorMismatchWarning,
                stacklevel=user_stacklevel(),
            )

    if t0v < 0:
        raise ValueError(f"`{call}`: t0 must be >= 0 (t = 0 is data), got t0={t0v}.")
    if not t0v < t1v:
        raise ValueError(f"`{call}`: need t0 < t1, got t0={t0v}, t1={t1v}.")

    return Endpoints(t0v, t1v, reason0, reason1, tuple(limits), prior_kl)


def _solve_time(lam, target, lo, hi, call, which):
    """Bisection for lam(t) = target on (lo, hi), lam decreasing."""
    a, b = lo, hi
    la, lb = lam(a), lam(b)
    if not math.isfinite(la):
        la = math.inf
    if not math.isfinite(lb):
        lb = -math.inf
    if not (la > target > lb):
        raise ValueError(
            f"`{call}`: cannot place {which} automatically: log-SNR does not cross "
            f"{target:.4g} on ({lo:g}, {hi:g}) (log-SNR goes from {la:.4g} to {lb:.4g}). "
            f"Pass {which} explicitly."
        )
    for _ in range(200):
        m = 0.5 * (a + b)
        lm = lam(m)
        if not math.isfinite(lm):
            lm = math.inf if m - lo < hi - m else -math.inf
        if lm > target:
            a = m
        else:
            b = m
        if b - a <= 1e-15 * max(1.0, b):
            break
    # Round to 3 significant digits of the distance to the singular end, so the value
    # is readable and reproducible; stay on the regular side.
    dist = a - lo if which == "t0" else hi - b
    unit = 10 ** (math.floor(math.log10(dist)) - 2)
    dist = float(f"{math.ceil(dist / unit) * unit:.3g}")
    return float(f"{lo + dist:.12g}") if which == "t0" else float(f"{hi - dist:.12g}")
