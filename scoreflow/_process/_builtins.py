"""The built-in processes: VP, sub-VP, VE, cosine, rectified flow and EDM.

Every built-in is declared through exactly the same machinery a user gets
(`build_symbolic`), so each one is an instance of the generic derivation.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import sympy
from sympy.codegen.cfunctions import expm1

from .._symbols import t, x
from ._build import build_symbolic
from ._declared import AbstractDeclaredScalarProcess
from ._ladder import level_index


def _fmt(v) -> str:
    return f"{float(v)!r}"


def _positive(call, **kw):
    for k, v in kw.items():
        if not (np.isfinite(v) and v > 0):
            raise ValueError(f"`{call}`: {k} must be > 0, got {k}={v!r}.")


_b0, _b1 = sympy.symbols("beta_min beta_max", positive=True)
_beta = _b0 + (_b1 - _b0) * t
_int_beta = _b0 * t + (_b1 - _b0) * t**2 / 2


class VP(AbstractDeclaredScalarProcess):
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
        self._set(fields)
        self.prior = None

    def discretize(self, t, n: int):
        r"""score_sde's DDPM table (`VPSDE.discretize`): $n$ levels
        $\beta_i = \beta(\tau_i)\,t_1/n$ at $\tau_i = i\,t_1/(n - 1)$ (with $t_1 = 1$,
        `linspace(beta_min/n, beta_max/n, n)`), $i = \lfloor t(n - 1)/t_1\rfloor$;
        $m_i = \sqrt{1 - \beta_i}$, $G_i^2 = \beta_i$ and the ancestral variance is
        DDPM's "fixed large" $v_i = \beta_i$. See
        [`scoreflow.AbstractScalarProcess.discretize`][]."""
        _, tau = level_index(t, n, self.t1)
        beta = self.g2(tau) * (self.t1 / n)
        return jnp.sqrt(1 - beta), beta, beta


class SubVP(AbstractDeclaredScalarProcess):
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
        self._set(fields)
        self.prior = None


def _check_betas(call, beta_min, beta_max):
    _positive(call, beta_min=beta_min, beta_max=beta_max)
    if beta_max < beta_min:
        raise ValueError(
            f"`{call}`: need beta_min <= beta_max, got beta_min={beta_min!r} > "
            f"beta_max={beta_max!r}."
        )


_smin, _smax = sympy.symbols("sigma_min sigma_max", positive=True)
_log_ratio = sympy.log(_smax / _smin)


class VE(AbstractDeclaredScalarProcess):
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
        self._set(fields)
        self.prior = None

    def discretize(self, t, n: int):
        r"""score_sde's SMLD ladder (`VESDE.discretize`): $n$ levels
        $\sigma_i = \sigma_{VE}(\tau_i)$ at $\tau_i = i\,t_1/(n - 1)$ (with $t_1 = 1$,
        `exp(linspace(log sigma_min, log sigma_max, n))`),
        $i = \lfloor t(n - 1)/t_1\rfloor$; $m_i = 1$,
        $G_i^2 = \sigma_i^2 - \sigma_{i-1}^2$ ($\sigma_{-1} = 0$, so $G_0 = \sigma_\min$)
        and the ancestral variance is the SMLD posterior
        $v_i = \sigma_{i-1}^2 G_i^2/\sigma_i^2$. The differences
        $\sigma_i^2 - \sigma_{i-1}^2$ ($i \ge 1$) are those of the exact kernel std
        $\sigma(t)$. See [`scoreflow.AbstractScalarProcess.discretize`][]."""
        i, tau = level_index(t, n, self.t1)
        lo = jnp.log(self.params["sigma_min"])
        hi = jnp.log(self.params["sigma_max"])
        ladder = lambda u: jnp.exp(lo + (hi - lo) * u / self.t1)  # noqa: E731
        s2 = ladder(tau) ** 2
        prev2 = jnp.where(i == 0, 0.0, ladder(tau - self.t1 / (n - 1)) ** 2)
        g2 = s2 - prev2
        return jnp.ones_like(s2), g2, prev2 * g2 / s2


_s = sympy.Symbol("s", positive=True)
_ang = sympy.pi / 2 * (t + _s) / (1 + _s)
_ang0 = sympy.pi / 2 * _s / (1 + _s)


class CosineVP(AbstractDeclaredScalarProcess):
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
        self._set(fields)
        self.prior = None


class RectifiedFlow(AbstractDeclaredScalarProcess):
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
        self._set(fields)
        self.prior = None


class EDM(AbstractDeclaredScalarProcess):
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
        self._set(fields)
        self.prior = None
        self.sigma_min = float(sigma_min)
        self.sigma_data = float(sigma_data)
