"""Public process classes: `SDE`, `Interpolant` and the built-ins.

Every built-in is declared through exactly the same machinery a user gets
(`build_symbolic`), so each one is an instance of the generic derivation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import sympy
from sympy.codegen.cfunctions import expm1

from .._symbols import t, x
from . import _derive
from ._declared import (
    AbstractDeclaredProcess,
    _Call,
    _declared_symbolically,
    _MomentODE,
    _params_dict,
    build_numeric,
    build_symbolic,
)
from ._stationary import StationaryDensity


def _is_symbolic(v) -> bool:
    return isinstance(v, (sympy.Basic, str, int, float)) and not callable(v)


def _fmt(v) -> str:
    return f"{float(v)!r}"


# --------------------------------------------------------------------------- #
# Generic declarations
# --------------------------------------------------------------------------- #


class SDE(AbstractDeclaredProcess):
    r"""A forward process declared by its drift and diffusion,
    $dx = f(t, x)\,dt + g(t)\,dW$ (or $g(t, x)\,dW$, elementwise).

    When the drift is affine, $f(t, x) = f(t)\,x$, scoreflow derives the Gaussian
    kernel $x_t = \alpha(t) x_0 + \sigma(t)\varepsilon$ with sympy:

    $$\alpha(t) = \exp\int_0^t f, \qquad
      \sigma(t)^2 = \alpha(t)^2 \int_0^t \frac{g(s)^2}{\alpha(s)^2}\,ds,$$

    falling back to diffrax integration of the moment ODEs where sympy finds no
    closed form within `scoreflow._process._derive.SYMPY_TIMEOUT` seconds.

    **Arguments:**

    - `drift`: a sympy expression in `sf.t` and `sf.x` (or a string, or a Python
      callable `drift(t, x)`).
    - `diffusion`: $g(t) \ge 0$, a sympy expression in `sf.t` (or a callable `g(t)`);
      it may depend on `sf.x` (diagonal state-dependent noise, sympy only; only
      $g^2$ enters). The reverse SDE then gains $-\partial_x g^2$ (Anderson 1982),
      see [Non-affine drifts and g(t, x)](../concepts/nonlinear.md).
    - `t0`, `t1`: the time range. `None` (default) chooses them by endpoint analysis
      (`process.endpoints` says why); explicit values are validated.
    - `params`: `{symbol or name: value}` for named constants in the expressions;
      they become trainable array leaves (`process.params`).
    - `stratonovich`: read `drift` as the Stratonovich drift $f_S$; the Itô drift
      $f = f_S + \tfrac12 g\,\partial_x g$ is derived with sympy (it is what the
      process stores; see `as_stratonovich()` / `as_ito()`).
    - `prior`: only for processes without a Gaussian kernel (non-affine drift or
      $g(t, x)$): `None` (the stationary density
      [`scoreflow.StationaryDensity`][] of a time-homogeneous SDE when derivable,
      else no prior), `"stationary"`, or an object with `sample(key, shape, dtype)`
      and `log_prob(x)`. Gaussian processes keep $N(0, \sigma(t_1)^2 I)$.

    **Raises:** `ValueError` for free symbols other than `t`/`x` (and `params`),
    a negative diffusion, `t0 >= t1`, non-finite coefficients in float32 on
    `[t0, t1]`, or a terminal endpoint that is singular.

    ```python
    import scoreflow as sf
    p = sf.SDE(drift=-sf.t * sf.x, diffusion=sf.sympy.sqrt(2 * sf.t))
    p.symbolic.alpha   # exp(-t**2/2)
    ```
    """

    def __init__(
        self,
        drift,
        diffusion,
        *,
        t0: float | None = None,
        t1: float | None = None,
        params: Mapping | None = None,
        stratonovich: bool = False,
        prior=None,
    ):
        if _is_symbolic(drift) and _is_symbolic(diffusion):
            syms, vals = _params_dict(params, "sf.SDE")
            call0 = f"sf.SDE(drift={drift}, diffusion={diffusion})"
            f_expr = _derive.to_expr(
                drift, call=call0, argname="drift", allowed=("t", "x"), params=syms
            )
            g_expr = _derive.to_expr(
                diffusion,
                call=call0,
                argname="diffusion",
                allowed=("t", "x"),
                params=syms,
            )
            call = f"sf.SDE(drift={f_expr}, diffusion={g_expr})"
            f_ito = f_expr
            if stratonovich:
                call = call[:-1] + ", stratonovich=True)"
                # Itô drift = Stratonovich drift + (1/2) g dg/dx = + (1/4) d(g^2)/dx.
                f_ito = _derive._simplify(f_expr + sympy.diff(g_expr**2, x) / 4)
            fields = build_symbolic(
                call=call,
                source="sde",
                exprs=(f_ito, g_expr),
                param_symbols=syms,
                params=vals,
                t0=t0,
                t1=t1,
            )
        elif callable(drift) and callable(diffusion):
            if params:
                raise ValueError(
                    "`sf.SDE(...)`: params= is only for sympy declarations; a callable "
                    "closes over its own constants."
                )
            if stratonovich:
                raise ValueError(
                    "`sf.SDE(..., stratonovich=True)`: the Stratonovich correction is "
                    "derived with sympy; declare drift and diffusion as expressions."
                )
            call = f"sf.SDE(drift={_name(drift)}, diffusion={_name(diffusion)})"
            fields = _numeric_sde(call, drift, diffusion, t1)
            fields = build_numeric(call=call, t0=t0, t1=t1, **fields)
        else:
            raise TypeError(
                "`sf.SDE(drift, diffusion)`: declare both as sympy expressions in sf.t "
                "(and sf.x), or both as Python callables drift(t, x) and diffusion(t); "
                f"got {type(drift).__name__} and {type(diffusion).__name__}."
            )
        if stratonovich:
            fields["_info"] = dataclasses.replace(
                fields["_info"], convention="stratonovich"
            )
        for k, v in fields.items():
            setattr(self, k, v)
        self.prior = _resolve_prior(self, prior)


def _resolve_prior(process, prior):
    """`None`: the kernel's N(0, sigma(t1)^2) when Gaussian, else the stationary
    density when one is derivable, else no prior. `"stationary"`: that density (or a
    ValueError). Anything else must offer `sample(key, shape, dtype)` and
    `log_prob(x)`."""
    call = process._info.call
    d = process._info.derivation
    symbolic = _declared_symbolically(d)
    if prior is not None and process.has_gaussian_kernel:
        raise ValueError(
            f"`{call}` has a Gaussian kernel, whose prior is N(0, sigma(t1)^2 I); "
            "prior= is for processes without one (non-affine drift or g(t, x))."
        )
    if prior is None:
        if process.has_gaussian_kernel or not symbolic:
            return None
        try:
            return StationaryDensity.of(process)
        except ValueError:
            return None
    if isinstance(prior, str):
        if prior != "stationary":
            raise ValueError(
                f"`{call}`: prior must be None, 'stationary' or an object with "
                f"sample(key, shape, dtype) and log_prob(x), got {prior!r}."
            )
        if not symbolic:
            raise ValueError(f"`{call}`: prior='stationary' needs a sympy declaration.")
        return StationaryDensity.of(process)
    if not (
        callable(getattr(prior, "sample", None))
        and callable(getattr(prior, "log_prob", None))
    ):
        raise TypeError(
            f"`{call}`: prior= must offer sample(key, shape, dtype) and log_prob(x); "
            f"got {type(prior).__name__}."
        )
    return prior


class Interpolant(AbstractDeclaredProcess):
    r"""A forward process declared by its kernel,
    $x_t = \alpha(t)\,x_0 + \sigma(t)\,\varepsilon$.

    The SDE follows as $f = \dot\alpha/\alpha$ and
    $g^2 = \tfrac{d}{dt}\sigma^2 - 2 f \sigma^2$, which must be $\ge 0$ on
    $[t_0, t_1]$ (else a `ValueError` shows the offending $g^2$).

    **Arguments:**

    - `alpha`, `sigma`: sympy expressions in `sf.t` (or strings, or callables of t).
    - `t0`, `t1`, `params`: as for [`scoreflow.SDE`][].

    ```python
    import scoreflow as sf
    rf = sf.Interpolant(alpha=1 - sf.t, sigma=sf.t)   # rectified flow
    rf.symbolic.g2                                     # 2*t/(1 - t)
    ```
    """

    def __init__(
        self,
        alpha,
        sigma,
        *,
        t0: float | None = None,
        t1: float | None = None,
        params: Mapping | None = None,
    ):
        if _is_symbolic(alpha) and _is_symbolic(sigma):
            syms, vals = _params_dict(params, "sf.Interpolant")
            call0 = f"sf.Interpolant(alpha={alpha}, sigma={sigma})"
            a = _derive.to_expr(
                alpha, call=call0, argname="alpha", allowed=("t",), params=syms
            )
            s = _derive.to_expr(
                sigma, call=call0, argname="sigma", allowed=("t",), params=syms
            )
            fields = build_symbolic(
                call=f"sf.Interpolant(alpha={a}, sigma={s})",
                source="interpolant",
                exprs=(a, s),
                param_symbols=syms,
                params=vals,
                t0=t0,
                t1=t1,
            )
        elif callable(alpha) and callable(sigma):
            if params:
                raise ValueError(
                    "`sf.Interpolant(...)`: params= is only for sympy declarations."
                )
            call = f"sf.Interpolant(alpha={_name(alpha)}, sigma={_name(sigma)})"
            fields = build_numeric(
                call=call,
                fns=_numeric_interpolant(alpha, sigma),
                gaussian_reason="",
                t0=t0,
                t1=t1,
            )
        else:
            raise TypeError(
                "`sf.Interpolant(alpha, sigma)`: declare both as sympy expressions in "
                "sf.t or both as callables of t; got "
                f"{type(alpha).__name__} and {type(sigma).__name__}."
            )
        for k, v in fields.items():
            setattr(self, k, v)


# --------------------------------------------------------------------------- #
# Numeric (callable) declarations
# --------------------------------------------------------------------------- #


def _name(fn) -> str:
    return getattr(fn, "__qualname__", None) or type(fn).__name__


class _Deriv(eqx.Module):
    fn: eqx.Module

    def __call__(self, t, params):
        t = jnp.asarray(t)
        return jax.jvp(lambda s: self.fn(s, params), (t,), (jnp.ones_like(t),))[1]


class _Ratio(eqx.Module):
    num: eqx.Module
    den: eqx.Module

    def __call__(self, t, params):
        return self.num(t, params) / self.den(t, params)


class _InterpG2(eqx.Module):
    alpha: eqx.Module
    sigma: eqx.Module

    def __call__(self, t, params):
        t = jnp.asarray(t)
        a, da = jax.jvp(lambda s: self.alpha(s, params), (t,), (jnp.ones_like(t),))
        s, ds = jax.jvp(lambda u: self.sigma(u, params), (t,), (jnp.ones_like(t),))
        return 2 * s * ds - 2 * (da / a) * s**2


class _Unit(eqx.Module):
    """f(t) of a linear callable drift: drift(t, 1)."""

    drift: Callable

    def __call__(self, t, params):
        t = jnp.asarray(t)
        return jnp.asarray(self.drift(t, jnp.ones_like(t)))


class _Square(eqx.Module):
    fn: Callable

    def __call__(self, t, params):
        return jnp.asarray(self.fn(t)) ** 2


def _numeric_sde(call, drift, diffusion, t1):
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
                f"the drift {_name(drift)} is not of the form f(t) * x (checked at "
                f"t={tv:.3g}: drift(t, 0)={d0:.4g}, drift(t, 1)={d1:.4g}, "
                f"drift(t, 2)={d2:.4g})"
            )
            break
    fns = {"g2": _Square(diffusion), "drift": _Call(drift)}
    if not reason:
        fns["f"] = _Unit(drift)
        fns["moments"] = _MomentODE(fns["f"], fns["g2"])
    return dict(fns=fns, gaussian_reason=reason)


def _numeric_interpolant(alpha, sigma):
    a, s = _Call(alpha), _Call(sigma)
    da, ds = _Deriv(a), _Deriv(s)
    return {
        "alpha": a,
        "sigma": s,
        "alpha_dot": da,
        "sigma_dot": ds,
        "f": _Ratio(da, a),
        "g2": _InterpG2(a, s),
    }


# --------------------------------------------------------------------------- #
# Built-ins
# --------------------------------------------------------------------------- #


def _positive(call, **kw):
    for k, v in kw.items():
        if not (np.isfinite(v) and v > 0):
            raise ValueError(f"`{call}`: {k} must be > 0, got {k}={v!r}.")


_b0, _b1 = sympy.symbols("beta_min beta_max", positive=True)
_beta = _b0 + (_b1 - _b0) * t
_int_beta = _b0 * t + (_b1 - _b0) * t**2 / 2


class VP(AbstractDeclaredProcess):
    r"""Variance-preserving SDE (Song et al. 2021, eq. 32; DDPM in continuous time):
    $dx = -\tfrac12\beta(t)\,x\,dt + \sqrt{\beta(t)}\,dW$ with
    $\beta(t) = \beta_\min + t(\beta_\max - \beta_\min)$, so
    $\alpha(t) = e^{-\frac12\int_0^t\beta}$ and $\sigma(t)^2 = 1 - \alpha(t)^2$.

    [arXiv:2011.13456](https://arxiv.org/abs/2011.13456). `t0` defaults to the
    log-SNR rule (about $10^{-5}$ for the default betas), `t1 = 1`.
    """

    def __init__(
        self, beta_min: float = 0.1, beta_max: float = 20.0, *, t0=None, t1=None
    ):
        call = f"sf.VP(beta_min={_fmt(beta_min)}, beta_max={_fmt(beta_max)})"
        _check_betas(call, beta_min, beta_max)
        fields = build_symbolic(
            call=call,
            source="sde",
            exprs=(-_beta / 2 * x, sympy.sqrt(_beta)),
            param_symbols=(_b0, _b1),
            params={
                "beta_min": jnp.asarray(float(beta_min)),
                "beta_max": jnp.asarray(float(beta_max)),
            },
            t0=t0,
            t1=t1,
            hints={
                "sigma": (sympy.sqrt(-expm1(-_int_beta)),),
                "log_snr": (-_int_beta - sympy.log(-expm1(-_int_beta)),),
            },
        )
        for k, v in fields.items():
            setattr(self, k, v)


class SubVP(AbstractDeclaredProcess):
    r"""Sub-VP SDE (Song et al. 2021, eq. 34):
    $dx = -\tfrac12\beta(t)\,x\,dt + \sqrt{\beta(t)(1 - e^{-2\int_0^t\beta})}\,dW$,
    whose kernel has $\alpha = e^{-\frac12\int\beta}$ and
    $\sigma = 1 - e^{-\int_0^t\beta}$.
    [arXiv:2011.13456](https://arxiv.org/abs/2011.13456)
    """

    def __init__(
        self, beta_min: float = 0.1, beta_max: float = 20.0, *, t0=None, t1=None
    ):
        call = f"sf.SubVP(beta_min={_fmt(beta_min)}, beta_max={_fmt(beta_max)})"
        _check_betas(call, beta_min, beta_max)
        g = sympy.sqrt(_beta * (1 - sympy.exp(-2 * _int_beta)))
        fields = build_symbolic(
            call=call,
            source="sde",
            exprs=(-_beta / 2 * x, g),
            param_symbols=(_b0, _b1),
            params={
                "beta_min": jnp.asarray(float(beta_min)),
                "beta_max": jnp.asarray(float(beta_max)),
            },
            t0=t0,
            t1=t1,
            hints={
                "sigma": (-expm1(-_int_beta),),
                "log_snr": (-_int_beta - 2 * sympy.log(-expm1(-_int_beta)),),
                "sigma_dot": (_beta * sympy.exp(-_int_beta),),
            },
        )
        for k, v in fields.items():
            setattr(self, k, v)


def _check_betas(call, beta_min, beta_max):
    _positive(call, beta_min=beta_min, beta_max=beta_max)
    if beta_max < beta_min:
        raise ValueError(
            f"`{call}`: need beta_min <= beta_max, got beta_min={beta_min!r} > "
            f"beta_max={beta_max!r}."
        )


_smin, _smax = sympy.symbols("sigma_min sigma_max", positive=True)
_log_ratio = sympy.log(_smax / _smin)


class VE(AbstractDeclaredProcess):
    r"""Variance-exploding SDE (Song et al. 2021, eq. 30), declared by its SDE:
    $f = 0$, $g(t)^2 = \tfrac{d}{dt}\sigma_{VE}(t)^2$ with
    $\sigma_{VE}(t) = \sigma_\min(\sigma_\max/\sigma_\min)^t$, so the exact kernel
    std is $\sigma(t) = \sqrt{\sigma_{VE}(t)^2 - \sigma_\min^2}$ and $\alpha = 1$.
    [arXiv:2011.13456](https://arxiv.org/abs/2011.13456)
    """

    def __init__(
        self, sigma_min: float = 0.01, sigma_max: float = 50.0, *, t0=None, t1=None
    ):
        call = f"sf.VE(sigma_min={_fmt(sigma_min)}, sigma_max={_fmt(sigma_max)})"
        _positive(call, sigma_min=sigma_min, sigma_max=sigma_max)
        if not sigma_max > sigma_min:
            raise ValueError(
                f"`{call}`: need sigma_min < sigma_max, got {sigma_min!r} >= {sigma_max!r}."
            )
        g = _smin * sympy.exp(t * _log_ratio) * sympy.sqrt(2 * _log_ratio)
        fields = build_symbolic(
            call=call,
            source="sde",
            exprs=(sympy.Integer(0) * x, g),
            param_symbols=(_smin, _smax),
            params={
                "sigma_min": jnp.asarray(float(sigma_min)),
                "sigma_max": jnp.asarray(float(sigma_max)),
            },
            t0=t0,
            t1=t1,
            hints={
                "sigma": (_smin * sympy.sqrt(expm1(2 * t * _log_ratio)),),
                "log_snr": (
                    -2 * sympy.log(_smin) - sympy.log(expm1(2 * t * _log_ratio)),
                ),
            },
        )
        for k, v in fields.items():
            setattr(self, k, v)


_s = sympy.Symbol("s", positive=True)
_ang = sympy.pi / 2 * (t + _s) / (1 + _s)
_ang0 = sympy.pi / 2 * _s / (1 + _s)


class CosineVP(AbstractDeclaredProcess):
    r"""Cosine schedule (Nichol & Dhariwal 2021, eq. 17) in continuous time:
    $\alpha(t) = \cos\!\big(\tfrac{\pi}{2}\tfrac{t + s}{1 + s}\big) /
    \cos\!\big(\tfrac{\pi}{2}\tfrac{s}{1 + s}\big)$ ($=\sqrt{\bar\alpha_t}$) and
    $\sigma = \sqrt{1 - \alpha^2}$, declared in the cancellation-free form
    $\sigma = \sqrt{\sin(a - a_0)\sin(a + a_0)}/\cos a_0$.
    $\alpha(1) = 0$, so `t1` is placed by the log-SNR rule.
    [arXiv:2102.09672](https://arxiv.org/abs/2102.09672)
    """

    def __init__(self, s: float = 0.008, *, t0=None, t1=None):
        call = f"sf.CosineVP(s={_fmt(s)})"
        _positive(call, s=s)
        alpha = sympy.cos(_ang) / sympy.cos(_ang0)
        sigma = sympy.sqrt(
            sympy.sin(_ang - _ang0) * sympy.sin(_ang + _ang0)
        ) / sympy.cos(_ang0)
        fields = build_symbolic(
            call=call,
            source="interpolant",
            exprs=(alpha, sigma),
            param_symbols=(_s,),
            params={"s": jnp.asarray(float(s))},
            t0=t0,
            t1=t1,
        )
        for k, v in fields.items():
            setattr(self, k, v)


class RectifiedFlow(AbstractDeclaredProcess):
    r"""Rectified flow / linear interpolant (Liu et al. 2022):
    $x_t = (1 - t)\,x_0 + t\,\varepsilon$. The SDE view has $f = -1/(1 - t)$ and
    $g^2 = 2t/(1 - t)$, singular at $t = 1$, so `t1` is placed by the log-SNR rule.
    [arXiv:2209.03003](https://arxiv.org/abs/2209.03003)
    """

    def __init__(self, *, t0=None, t1=None):
        fields = build_symbolic(
            call="sf.RectifiedFlow()",
            source="interpolant",
            exprs=(1 - t, t),
            param_symbols=(),
            params={},
            t0=t0,
            t1=t1,
        )
        for k, v in fields.items():
            setattr(self, k, v)


class EDM(AbstractDeclaredProcess):
    r"""EDM (Karras et al. 2022): $x_t = x_0 + \sigma(t)\varepsilon$ with
    $\sigma(t) = \sigma_\max t$ (their $\sigma(t) = t$, rescaled to $t \in [0, 1]$),
    so $f = 0$, $g^2 = 2\sigma_\max^2 t$, and $t_0 = \sigma_\min/\sigma_\max$.
    `sigma_data` is the data std used by EDM preconditioning and weighting.
    [arXiv:2206.00364](https://arxiv.org/abs/2206.00364)
    """

    sigma_min: float = eqx.field(static=True)
    sigma_data: float = eqx.field(static=True)

    def __init__(
        self,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        sigma_data: float = 0.5,
        *,
        t0=None,
        t1=None,
    ):
        call = (
            f"sf.EDM(sigma_min={_fmt(sigma_min)}, sigma_max={_fmt(sigma_max)}, "
            f"sigma_data={_fmt(sigma_data)})"
        )
        _positive(call, sigma_min=sigma_min, sigma_max=sigma_max, sigma_data=sigma_data)
        if not sigma_max > sigma_min:
            raise ValueError(
                f"`{call}`: need sigma_min < sigma_max, got {sigma_min!r} >= {sigma_max!r}."
            )
        fields = build_symbolic(
            call=call,
            source="interpolant",
            exprs=(sympy.Integer(1), _smax * t),
            param_symbols=(_smax,),
            params={"sigma_max": jnp.asarray(float(sigma_max))},
            t0=float(sigma_min) / float(sigma_max) if t0 is None else t0,
            t1=t1,
        )
        for k, v in fields.items():
            setattr(self, k, v)
        self.sigma_min = float(sigma_min)
        self.sigma_data = float(sigma_data)
