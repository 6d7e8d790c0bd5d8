"""Building a declared process: derive (sympy) or wrap (callables), compile, choose
and check the endpoints, validate, and hand the fields to the process class."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import sympy

from .._symbols import x as X_SYM
from .._warnings import user_stacklevel
from . import _derive, _endpoints, _validate
from ._expr import (
    Call,
    Deriv,
    Expr,
    InterpolantG2,
    Ratio,
    Square,
    UnitDrift,
    fn_name,
)
from ._kernel import ClosedFormKernel, MomentKernel, MomentODE
from ._log_snr import as_number

CALLABLE_DRIFT = sympy.Symbol("drift")
"""Placeholder drift of a process declared with Python callables."""


def ito_correction(g2: sympy.Expr) -> sympy.Expr:
    r"""$\tfrac12 g\,\partial_x g = \tfrac14\partial_x g^2$: Itô drift minus
    Stratonovich drift, for diagonal noise (zero unless $g$ depends on $x$)."""
    return sympy.diff(g2, X_SYM) / 4


def declared_symbolically(d) -> bool:
    """A sympy declaration (not callables). Note `sf.x` itself is a valid drift."""
    return d is not None and d.drift != CALLABLE_DRIFT


@dataclasses.dataclass(frozen=True, eq=False)
class Info:
    """Static (non-array) description of a declared process."""

    call: str  # e.g. "sf.VP(beta_min=0.1, beta_max=20.0)"
    derivation: _derive.Derivation | None  # None for callables
    param_symbols: tuple  # sympy Symbols, in the order of `params`
    endpoints: _endpoints.Endpoints
    numeric: bool  # kernel computed numerically (no closed form or callables)
    horizon: float
    convention: str = "ito"  # how the drift was declared: "ito" or "stratonovich"

    @property
    def gaussian_reason(self) -> str:
        d = self.derivation
        return "" if d is None else d.gaussian_reason


@dataclasses.dataclass(frozen=True, eq=False)
class Built:
    """What a declaration built: `gaussian` says which class holds it; `fields` are
    that class's field values."""

    gaussian: bool
    fields: dict


def params_dict(params: Mapping | None, call: str):
    params = {} if params is None else dict(params)
    out_syms, out_vals = [], {}
    for k, v in params.items():
        sym = sympy.Symbol(k, real=True) if isinstance(k, str) else k
        if not isinstance(sym, sympy.Symbol):
            raise TypeError(
                f"`{call}`: params keys must be sympy Symbols or names, got {k!r}."
            )
        if sym.name in ("t", "x"):
            raise ValueError(f"`{call}`: a parameter may not be called {sym.name!r}.")
        arr = jnp.asarray(v, dtype=jnp.result_type(float))
        if arr.shape != ():
            raise ValueError(
                f"`{call}`: parameter {sym.name} must be a scalar, got shape {arr.shape}."
            )
        out_syms.append(sym)
        out_vals[sym.name] = arr
    return tuple(out_syms), out_vals


def build_symbolic(
    *,
    call: str,
    source: str,
    exprs: tuple[sympy.Expr, sympy.Expr],
    param_symbols: tuple,
    params: dict,
    t0: float | None,
    t1: float | None,
    hints: Mapping | None = None,
) -> Built:
    """Derive, compile, analyse and validate a sympy declaration."""
    subs = tuple((s, as_number(params[s.name])) for s in param_symbols)
    hints = {} if hints is None else dict(hints)
    key = _checked_key(call, source, exprs, subs, t0, t1, hints)
    checked = _derive.cache_get("_checked", key)
    if source == "sde":
        drift, g = exprs
        if checked is _derive._MISSING:
            _validate.check_nonneg(g, param_symbols, params, call, "diffusion g(t)", t1)
        d = _derive.derive_from_sde(drift, g)
    else:
        alpha, sigma = exprs
        d = _derive.derive_from_interpolant(alpha, sigma)
    horizon = 1.0 if t1 is None else float(t1)

    def stable(e, name=None):
        h = tuple(hints.get(name, ()))
        return _derive.stable_form(e, subs, horizon, h)

    used: dict[str, sympy.Expr] = {"g2": stable(d.g2, "g2")}
    if not d.gaussian:
        used["drift"] = d.drift
        if d.g2.has(X_SYM):
            # The plain derivative of the expanded g^2: simplify() tends to factor
            # e.g. exp(-x^2) into 1/exp(x^2), which overflows in float32.
            used["dg2"] = sympy.expand(sympy.diff(d.g2, X_SYM))
    else:
        used["f"] = stable(d.f)
        if d.closed_form:
            for name in ("alpha", "sigma", "alpha_dot", "sigma_dot", "log_snr"):
                used[name] = stable(getattr(d, name), name)
    fns: dict[str, eqx.Module] = {name: Expr(e) for name, e in used.items()}
    numeric = d.gaussian and not d.closed_form
    if numeric:
        fns["moments"] = MomentODE(fns["f"], fns["g2"])
    # What the checks evaluate: every compiled coefficient's expression.
    compiled = sympy.srepr(tuple(sorted(used.items())))
    if checked is not _derive._MISSING and checked[0] == compiled:
        # This declaration, compiled to these expressions, passed every check below
        # before (same parameters, range, jax and sympy): the recorded outcome.
        ep, caught = checked[1], checked[2]
        _rewarn(caught)
        return _fields(call, d, param_symbols, params, fns, ep, horizon, numeric)
    mp = None if numeric else _endpoints.mp_evaluators(d, subs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ep = _check(call, d, params, fns, t0, t1, horizon, mp)
    caught = tuple((w.category, str(w.message)) for w in caught)
    _rewarn(caught)
    _derive.cache_put("_checked", key, (compiled, ep, caught))
    return _fields(call, d, param_symbols, params, fns, ep, horizon, numeric)


CHECKED_VERSION = 1
"""Bump when a declaration-time check changes (invalidates recorded outcomes)."""


def _checked_key(call, source, exprs, subs, t0, t1, hints) -> str:
    """The key of a declaration's recorded check outcome: the declaration (its call,
    expressions, exact parameter values, given endpoints and stable-form hints), the
    dtype setting and the jax, jaxlib, sympy and scoreflow check versions."""
    import jax
    import jaxlib

    hint_items = tuple((k, tuple(v)) for k, v in sorted(hints.items()))
    return _derive.cache_key(
        "_checked",
        (
            call,
            source,
            *exprs,
            sympy.srepr(subs),
            repr((t0, t1)),
            sympy.srepr(hint_items),
            CHECKED_VERSION,
            jax.__version__,
            jaxlib.__version__,
            bool(jax.config.jax_enable_x64),
        ),
    )


def _rewarn(caught):
    for category, message in caught:
        warnings.warn(message, category, stacklevel=user_stacklevel())


def build_numeric(*, call: str, fns: dict, gaussian_reason: str, t0, t1) -> Built:
    """The same for processes declared with Python callables."""
    horizon = 1.0 if t1 is None else float(t1)
    d = None
    if gaussian_reason:
        d = _derive.Derivation(
            "sde",
            CALLABLE_DRIFT,
            sympy.Symbol("g2"),
            None,
            None,
            None,
            False,
            gaussian_reason,
        )
    ep = _check(call, d, {}, fns, t0, t1, horizon, None)
    gaussian = "alpha" in fns or "moments" in fns
    return _fields(call, d, (), {}, fns, ep, horizon, gaussian)


def _check(call, d, params, fns, t0, t1, horizon, mp) -> _endpoints.Endpoints:
    """Choose or check the endpoints and validate the coefficients on [t0, t1]."""
    gaussian = "alpha" in fns or "moments" in fns
    try:
        ep = _endpoints.analyse(call, fns, params, t0, t1, horizon, mp, gaussian)
    except ValueError as e:
        # Name the root cause first: an endpoint that cannot be placed is often a
        # schedule whose implied g^2 is negative (e.g. sigma shrinking too fast).
        if mp is not None and "g2" in mp:
            _validate.check_g2(call, d, mp["g2"], _validate.interior(horizon))
        raise e
    _validate.validate(call, d, fns, params, ep.t0, ep.t1, gaussian, mp)
    return ep


def _fields(call, d, param_symbols, params, fns, ep, horizon, numeric) -> Built:
    gaussian = "alpha" in fns or "moments" in fns
    info = Info(
        call=call,
        derivation=d,
        param_symbols=param_symbols,
        endpoints=ep,
        numeric=numeric,
        horizon=horizon,
    )
    fields = dict(params=params, _info=info, t0=ep.t0, t1=ep.t1, _g2=fns["g2"])
    if gaussian:
        fields["_f"] = fns["f"]
        if "moments" in fns:
            fields["kernel"] = MomentKernel(fns["moments"])
        else:
            fields["kernel"] = ClosedFormKernel(
                fns["alpha"],
                fns["sigma"],
                fns["alpha_dot"],
                fns["sigma_dot"],
                fns.get("log_snr"),
            )
    else:
        fields["_drift"] = fns["drift"]
        fields["_dg2"] = fns.get("dg2")
    return Built(gaussian, fields)


# --------------------------------------------------------------------------- #
# Callable declarations
# --------------------------------------------------------------------------- #


def numeric_sde(call, drift, diffusion, t1):
    """The compiled coefficients of `sf.SDE(drift, diffusion)` with callables: a
    kernel by moment ODEs when the drift is linear in x (probed), else none."""
    horizon = 1.0 if t1 is None else float(t1)
    reason = ""
    for tv in np.linspace(0.1, 0.9, 3) * horizon:
        tt = jnp.asarray(tv)
        d0, d1, d2, dm = (
            float(jnp.asarray(drift(tt, jnp.asarray(v, tt.dtype))))
            for v in (0.0, 1.0, 2.0, -3.0)
        )
        scale = max(1.0, abs(d1))
        if (
            abs(d0) > 1e-6 * scale
            or abs(d2 - 2 * d1) > 1e-5 * scale
            or abs(dm + 3 * d1) > 1e-5 * scale
        ):
            reason = (
                f"the drift {fn_name(drift)} is not of the form f(t) * x (checked at "
                f"t={tv:.3g}: drift(t, 0)={d0:.4g}, drift(t, 1)={d1:.4g}, "
                f"drift(t, 2)={d2:.4g})"
            )
            break
    fns = {"g2": Square(diffusion), "drift": Call(drift)}
    if not reason:
        fns["f"] = UnitDrift(drift)
        fns["moments"] = MomentODE(fns["f"], fns["g2"])
    return dict(fns=fns, gaussian_reason=reason)


def numeric_interpolant(alpha, sigma):
    """The compiled coefficients of `sf.Interpolant(alpha, sigma)` with callables
    (derivatives by autodiff)."""
    a, s = Call(alpha), Call(sigma)
    da, ds = Deriv(a), Deriv(s)
    return {
        "alpha": a,
        "sigma": s,
        "alpha_dot": da,
        "sigma_dot": ds,
        "f": Ratio(da, a),
        "g2": InterpolantG2(a, s),
    }
