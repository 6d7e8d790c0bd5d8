"""Declared processes: `sf.SDE(drift, diffusion)` and `sf.Interpolant(alpha, sigma)`,
with sympy expressions or Python callables, and the classes they return.

A declaration is derived and built once (`_build`); what the derivation supports
decides the class: an affine drift $f(t)\\,x$ with diffusion $g(t)$ (every
interpolant) gives a [`DeclaredProcess`][scoreflow.DeclaredProcess] on the scalar
rung of the ladder, anything else (a non-affine drift, a diffusion $g(t, x)$) a
[`DeclaredSDE`][scoreflow.DeclaredSDE] on the SDE rung.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import sympy

from . import _derive, _describe
from ._build import (
    Built,
    Info,
    build_numeric,
    build_symbolic,
    declared_symbolically,
    ito_correction,
    numeric_interpolant,
    numeric_sde,
    params_dict,
)
from ._endpoints import Endpoints
from ._expr import as_time, fn_name
from ._ladder import (
    AbstractGaussianProcess,
    AbstractProcess,
    AbstractScalarProcess,
)
from ._log_snr import as_number, bisect_time, closed_form_time, inverse_for
from ._stationary import StationaryDensity


class AbstractDeclaredProcess(AbstractProcess):
    """What every declared process shares: its parameters (trainable array leaves),
    its derivation (`symbolic`, `equations`, `describe`, `latex`), how its endpoints
    were chosen, and the conversions between declarations."""

    params: dict[str, jax.Array]
    prior: Any
    _g2: eqx.Module
    _info: Info = eqx.field(static=True)
    t0: float = eqx.field(static=True)
    t1: float = eqx.field(static=True)

    def _set(self, built: Built):
        for k, v in built.fields.items():
            setattr(self, k, v)

    @property
    def call(self) -> str:
        """The declaration, as a call (e.g. `"sf.VP(beta_min=0.1, beta_max=20.0)"`)."""
        return self._info.call

    @property
    def derivation(self) -> _derive.Derivation | None:
        """The sympy derivation (unsubstituted parameters), `None` for a process
        declared with callables."""
        return self._info.derivation

    def exact_params(self) -> dict:
        """`{sympy symbol: exact rational}` of the parameters' current values (the
        shortest decimal of each, so float32 0.1 is 1/10)."""
        return {s: as_number(self.params[s.name]) for s in self._info.param_symbols}

    @property
    def endpoints(self) -> Endpoints:
        """How `t0`/`t1` were chosen, and the endpoint limits found by sympy."""
        return self._info.endpoints

    @property
    def symbolic(self) -> _describe.SymbolicView:
        """The sympy expressions `f` (drift), `g`, `g2`, `alpha`, `sigma`, `log_snr`,
        with the current parameter values substituted."""
        return _describe.symbolic(self)

    def equations(self) -> dict[str, sympy.Eq]:
        """The forward SDE, the Gaussian kernel, the reverse SDE and the
        probability-flow ODE as sympy equations (for printing)."""
        return _describe.equations(self)

    def describe(self) -> str:
        """A readable multi-line summary: declaration, derived equations, endpoints."""
        return _describe.describe(self)

    def latex(self) -> str:
        r"""The derived equations as a LaTeX `aligned` block."""
        return _describe.latex(self)

    def _repr_latex_(self):
        return "$" + self.latex() + "$"

    def __repr__(self):
        return _describe.call_repr(self)

    def dg2_dx(self, t, x):
        r"""$\partial_x g(t, x)^2$ elementwise: the divergence of $g g^\top$ for
        diagonal noise (same as `diffusion_divergence`)."""
        return self.diffusion_divergence(t, x)

    @property
    def has_gaussian_kernel(self) -> bool:
        """Deprecated: use `isinstance(p, sf.AbstractGaussianProcess)`."""
        warnings.warn(
            "`process.has_gaussian_kernel` is deprecated; use "
            "`isinstance(process, sf.AbstractGaussianProcess)`.",
            DeprecationWarning,
            stacklevel=2,
        )
        return isinstance(self, AbstractGaussianProcess)

    @property
    def state_dependent_diffusion(self) -> bool:
        """Deprecated: use `process.symbolic.dg2_dx != 0`."""
        warnings.warn(
            "`process.state_dependent_diffusion` is deprecated; use "
            "`process.symbolic.dg2_dx != 0` (sympy declarations).",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(self, "_dg2", None) is not None

    # ---- conversions --------------------------------------------------------

    def _param_map(self):
        return {s: self.params[s.name] for s in self._info.param_symbols}

    def as_sde(self) -> AbstractProcess:
        """This process declared by its drift and diffusion (`sf.SDE`)."""
        d = self._info.derivation
        if d is None:
            return SDE(
                lambda t, x: self.drift(t, x),
                lambda t: self.diffusion(t),
                t0=self.t0,
                t1=self.t1,
            )
        return SDE(
            d.drift,
            sympy.sqrt(d.g2),
            t0=self.t0,
            t1=self.t1,
            params=self._param_map(),
            prior=self.prior,
        )

    def as_stratonovich(self) -> AbstractProcess:
        r"""The same process declared in Stratonovich form: `sf.SDE(drift=f_S,
        diffusion=g, stratonovich=True)` with $f_S = f - \tfrac12 g\,\partial_x g$
        (sympy, exact). Same law, same derived quantities; only the declaration (and
        `describe()`) differ. Inverse: `as_ito`."""
        return self._redeclare("stratonovich")

    def as_ito(self) -> AbstractProcess:
        """The same process declared in Itô form (`stratonovich=False`)."""
        return self._redeclare("ito")

    def _redeclare(self, convention):
        d = self._info.derivation
        if not declared_symbolically(d):
            raise ValueError(
                f"`{self._info.call}` was declared with Python callables; Itô <-> "
                "Stratonovich conversion needs a sympy declaration."
            )
        f = d.drift
        if convention == "stratonovich":
            f = _derive._simplify(f - ito_correction(d.g2))
        return SDE(
            f,
            _derive._simplify(sympy.sqrt(d.g2)),
            t0=self.t0,
            t1=self.t1,
            params=self._param_map(),
            prior=self.prior,
            stratonovich=convention == "stratonovich",
        )


class AbstractDeclaredScalarProcess(AbstractDeclaredProcess, AbstractScalarProcess):
    r"""A declared process with the scalar Gaussian kernel: the built-ins and every
    `sf.SDE` with affine drift or `sf.Interpolant`. Its coefficients are compiled
    expressions; the kernel is a strategy ([`ClosedFormKernel`][scoreflow._process._kernel.ClosedFormKernel]
    or [`MomentKernel`][scoreflow._process._kernel.MomentKernel])."""

    _f: eqx.Module
    kernel: eqx.Module

    def alpha(self, t):
        return self.kernel.alpha(as_time(t), self.params)

    def sigma(self, t):
        return self.kernel.sigma(as_time(t), self.params)

    def alpha_dot(self, t):
        return self.kernel.alpha_dot(as_time(t), self.params)

    def sigma_dot(self, t):
        return self.kernel.sigma_dot(as_time(t), self.params)

    def log_snr(self, t):
        return self.kernel.log_snr(as_time(t), self.params)

    def f(self, t):
        return self._f(as_time(t), self.params)

    def g2(self, t):
        r"""Squared diffusion $g(t)^2$."""
        return self._g2(as_time(t), self.params)

    def drift(self, t, x):
        return self.f(t) * jnp.asarray(x)

    def t_from_log_snr(self, lam):
        r"""The time $t \in [t_0, t_1]$ with $\lambda(t) = $ `lam` (log-SNR is
        decreasing in t): sympy's closed-form inverse where it finds one, else a
        checked bisection on $[t_0, t_1]$; a log-SNR outside
        $[\lambda(t_1), \lambda(t_0)]$ raises."""
        inv = self._inverse()
        if type(self).log_snr is not AbstractDeclaredScalarProcess.log_snr:
            # A subclass's own log-SNR: evaluated as it is defined.
            if inv is not None:
                return closed_form_time(
                    inv, self.params, self.log_snr, lam, self.t0, self.t1
                )
            return bisect_time(self.log_snr, lam, self.t0, self.t1)
        # One compiled program (per kernel, range and shape), not one per operation:
        # the first log-SNR grid of a session in milliseconds (issue 14).
        log_snr = _KernelLogSNR(self.kernel, self.params)
        lam = jnp.asarray(lam)
        if inv is not None:
            return _closed_form_jit(inv, log_snr, lam, self.t0, self.t1)
        return _bisect_jit(log_snr, lam, self.t0, self.t1)

    def _inverse(self):
        # the compiled closed-form inverse log-SNR, or None (then bisection)
        d = self._info.derivation
        if d is None or d.log_snr is None:
            return None
        return inverse_for(
            d.log_snr, self.params, self._info.param_symbols, (self.t0, self.t1)
        )

    def prepare_inverse(self) -> None:
        self._inverse()

    def as_interpolant(self) -> AbstractScalarProcess:
        """This process declared by its kernel (`sf.Interpolant`)."""
        d = self._info.derivation
        if d is None or not d.closed_form:
            return Interpolant(self.alpha, self.sigma, t0=self.t0, t1=self.t1)
        return Interpolant(
            d.alpha, d.sigma, t0=self.t0, t1=self.t1, params=self._param_map()
        )


class _KernelLogSNR(eqx.Module):
    """`process.log_snr` of a declared scalar process, as a pytree of its kernel and
    parameters (so a compiled inverse is shared by equal processes)."""

    kernel: eqx.Module
    params: dict

    def __call__(self, t):
        return self.kernel.log_snr(as_time(t), self.params)


@eqx.filter_jit
def _closed_form_jit(inverse, log_snr, lam, t0, t1):
    params = log_snr.params
    return closed_form_time(inverse, params, log_snr, lam, t0, t1)


@eqx.filter_jit
def _bisect_jit(log_snr, lam, t0, t1):
    return bisect_time(log_snr, lam, t0, t1)


class DeclaredProcess(AbstractDeclaredScalarProcess):
    r"""A process declared with [`scoreflow.SDE`][] (affine drift $f(t)\,x$, diffusion
    $g(t)$) or [`scoreflow.Interpolant`][]: the scalar Gaussian kernel
    $x_t = \alpha(t)x_0 + \sigma(t)\varepsilon$ is derived and every method of
    [`scoreflow.AbstractScalarProcess`][] is available. Built by those two calls."""

    def __init__(self, built: Built):
        self._set(built)
        self.prior = None


def _kernelless(name: str):
    """A method of the Gaussian/scalar rungs that a `DeclaredSDE` does not have:
    calling it raises the reason (instead of an AttributeError)."""

    def method(self, *args, **kwargs):
        self._no_kernel(name)

    method.__name__ = name
    method.__doc__ = "Undefined without a Gaussian kernel: raises `ValueError`."
    return method


class DeclaredSDE(AbstractDeclaredProcess):
    r"""A process declared with [`scoreflow.SDE`][] whose derivation gives no Gaussian
    kernel: a non-affine drift $f(t, x)$ or an elementwise diffusion $g(t, x)$. It
    offers the drift, the diffusion (with the divergence term of $g g^\top$ derived
    by sympy), score-driven dynamics, and a prior (its stationary density when
    derivable, or the one passed as `prior=`). Built by `sf.SDE`."""

    _drift: eqx.Module
    _dg2: eqx.Module | None

    def __init__(self, built: Built, prior=None):
        self._set(built)
        self.prior = None
        self.prior = _resolve_prior(self, prior)

    def _why_not(self, rung):
        return (
            f"`{self._info.call}` has no Gaussian transition kernel: "
            f"{self._info.gaussian_reason}. Only the drift, the diffusion and dynamics "
            "driven by a learned score are available"
        )

    def _no_kernel(self, what):
        raise ValueError(
            f"`{self._info.call}` has no Gaussian transition kernel, so `{what}` is "
            f"undefined: {self._info.gaussian_reason}. Only the drift, the diffusion "
            "and dynamics driven by a learned score are available."
        )

    def drift(self, t, x):
        x = jnp.asarray(x)
        return self._drift(as_time(t), self.params, x)

    def g2(self, t, x=None):
        r"""Squared diffusion $g(t)^2$, or $g(t, x)^2$ elementwise (then `x` is
        required) for a state-dependent diffusion."""
        if self._dg2 is not None:
            if x is None:
                raise ValueError(
                    f"`{self._info.call}`: the diffusion depends on x, so g2(t, x) and "
                    "diffusion(t, x) need the state x."
                )
            x = jnp.asarray(x)
            return self._g2(as_time(t).astype(x.dtype), self.params, x)
        return self._g2(as_time(t), self.params)

    def diffusion(self, t, x=None):
        r"""Diffusion coefficient $g(t)$ (elementwise $g(t, x)$ for a state-dependent
        diffusion, which needs `x`)."""
        return jnp.sqrt(self.g2(t, x))

    def diffusion_operator(self, t, x):
        x = jnp.asarray(x)
        t = jnp.asarray(t, x.dtype)
        g = jnp.broadcast_to(
            self.diffusion(t, x if self._dg2 is not None else None), x.shape
        )
        return lx.DiagonalLinearOperator(g.astype(x.dtype))

    def diffusion_cov_apply(self, t, x, v):
        return self.g2(t, x if self._dg2 is not None else None) * v

    def diffusion_divergence(self, t, x):
        r"""$\partial_x g(t, x)^2$ elementwise (derived with sympy); zeros when the
        diffusion does not depend on $x$. This is the divergence of $g g^\top$ for
        diagonal noise, the extra drift of the reverse SDE (Anderson 1982)."""
        x = jnp.asarray(x)
        if self._dg2 is None:
            return jnp.zeros_like(x)
        out = self._dg2(as_time(t).astype(x.dtype), self.params, x)
        return jnp.broadcast_to(out, jnp.broadcast_shapes(jnp.shape(out), x.shape))

    def sde_reading(self, convention, *, call, noisy=True):
        if convention is None and noisy and self._dg2 is not None:
            raise ValueError(
                f"`{call}`: the diffusion of {self!r} depends on x, so the drift "
                "differs between the Itô and Stratonovich readings; pass "
                "convention='ito' or 'stratonovich' to match your diffrax solver, "
                "e.g. convention=sf.sde_convention(solver) (Euler: 'ito'; Heun, "
                "Midpoint: 'stratonovich')."
            )
        return super().sde_reading(convention, call=call, noisy=noisy)

    def check_sde_solver(self, solver, *, call):
        if self._dg2 is None:
            return
        inner = solver
        while isinstance(inner, diffrax.AbstractWrappedSolver):
            inner = inner.solver
        if isinstance(inner, diffrax.AbstractSRK) and inner.tableau.is_additive_noise():
            raise ValueError(
                f"`{call}(solver={type(inner).__name__}())`: this solver is valid for "
                f"additive noise only, but the diffusion of {self!r} depends on x. "
                "Use diffrax.Euler() (Itô), diffrax.Heun() or diffrax.SPaRK() "
                "(Stratonovich)."
            )

    def prior_sample(self, key, shape, dtype=None):
        self._need_prior("prior_sample")
        return self.prior.sample(key, shape, dtype)

    def prior_log_prob(self, x):
        self._need_prior("prior_log_prob")
        return self.prior.log_prob(x)

    def _need_prior(self, what):
        if self.prior is None:
            raise ValueError(
                f"`{self._info.call}` has no Gaussian kernel and no prior, so `{what}` "
                "is undefined. Pass prior= (an object with sample(key, shape, dtype) and "
                "log_prob(x), e.g. sf.StationaryDensity) to sf.SDE; a time-homogeneous "
                "SDE with a normalisable stationary density gets it automatically."
            )

    # The kernel does not exist: the scalar rung's names explain why, clearly.
    alpha = _kernelless("alpha")
    sigma = _kernelless("sigma")
    alpha_dot = _kernelless("alpha_dot")
    sigma_dot = _kernelless("sigma_dot")
    f = _kernelless("f")
    log_snr = _kernelless("log_snr")
    t_from_log_snr = _kernelless("t_from_log_snr")
    sample_marginal = _kernelless("sample_marginal")
    as_interpolant = _kernelless("as_interpolant")


def _resolve_prior(process: DeclaredSDE, prior):
    """`None`: the stationary density when one is derivable, else no prior.
    `"stationary"`: that density (or a ValueError). Anything else must offer
    `sample(key, shape, dtype)` and `log_prob(x)`."""
    call = process._info.call
    symbolic = declared_symbolically(process._info.derivation)
    if prior is None:
        if not symbolic:
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


# --------------------------------------------------------------------------- #
# The two declarations
# --------------------------------------------------------------------------- #


def _is_symbolic(v) -> bool:
    return isinstance(v, (sympy.Basic, str, int, float)) and not callable(v)


def SDE(
    drift,
    diffusion,
    *,
    t0: float | None = None,
    t1: float | None = None,
    params: Mapping | None = None,
    stratonovich: bool = False,
    prior=None,
) -> DeclaredProcess | DeclaredSDE:
    r"""A forward process declared by its drift and diffusion,
    $dx = f(t, x)\,dt + g(t)\,dW$ (or $g(t, x)\,dW$, elementwise).

    When the drift is affine, $f(t, x) = f(t)\,x$, scoreflow derives the Gaussian
    kernel $x_t = \alpha(t) x_0 + \sigma(t)\varepsilon$ with sympy:

    $$\alpha(t) = \exp\int_0^t f, \qquad
      \sigma(t)^2 = \alpha(t)^2 \int_0^t \frac{g(s)^2}{\alpha(s)^2}\,ds,$$

    falling back to diffrax integration of the moment ODEs where sympy finds no
    closed form, and returns a [`scoreflow.DeclaredProcess`][] (scalar rung of the
    ladder). Otherwise it returns a [`scoreflow.DeclaredSDE`][] (SDE rung: drift,
    diffusion, score-driven dynamics and a prior).

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
    if _is_symbolic(drift) and _is_symbolic(diffusion):
        syms, vals = params_dict(params, "sf.SDE")
        call0 = f"sf.SDE(drift={drift}, diffusion={diffusion})"
        f_expr = _derive.to_expr(
            drift, call=call0, argname="drift", allowed=("t", "x"), params=syms
        )
        g_expr = _derive.to_expr(
            diffusion, call=call0, argname="diffusion", allowed=("t", "x"), params=syms
        )
        call = f"sf.SDE(drift={f_expr}, diffusion={g_expr})"
        f_ito = f_expr
        if stratonovich:
            call = call[:-1] + ", stratonovich=True)"
            # Itô drift = Stratonovich drift + (1/2) g dg/dx = + (1/4) d(g^2)/dx.
            f_ito = _derive._simplify(f_expr + ito_correction(g_expr**2))
        built = build_symbolic(
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
        call = f"sf.SDE(drift={fn_name(drift)}, diffusion={fn_name(diffusion)})"
        built = build_numeric(
            call=call, t0=t0, t1=t1, **numeric_sde(call, drift, diffusion, t1)
        )
    else:
        raise TypeError(
            "`sf.SDE(drift, diffusion)`: declare both as sympy expressions in sf.t "
            "(and sf.x), or both as Python callables drift(t, x) and diffusion(t); "
            f"got {type(drift).__name__} and {type(diffusion).__name__}."
        )
    if stratonovich:
        built.fields["_info"] = dataclasses.replace(
            built.fields["_info"], convention="stratonovich"
        )
    if built.gaussian:
        if prior is not None:
            raise ValueError(
                f"`{built.fields['_info'].call}` has a Gaussian kernel, whose prior is "
                "N(0, sigma(t1)^2 I); prior= is for processes without one (non-affine "
                "drift or g(t, x))."
            )
        return DeclaredProcess(built)
    return DeclaredSDE(built, prior)


def Interpolant(
    alpha,
    sigma,
    *,
    t0: float | None = None,
    t1: float | None = None,
    params: Mapping | None = None,
) -> DeclaredProcess:
    r"""A forward process declared by its kernel,
    $x_t = \alpha(t)\,x_0 + \sigma(t)\,\varepsilon$.

    The SDE follows as $f = \dot\alpha/\alpha$ and
    $g^2 = \tfrac{d}{dt}\sigma^2 - 2 f \sigma^2$, which must be $\ge 0$ on
    $[t_0, t_1]$ (else a `ValueError` shows the offending $g^2$). Returns a
    [`scoreflow.DeclaredProcess`][].

    **Arguments:**

    - `alpha`, `sigma`: sympy expressions in `sf.t` (or strings, or callables of t).
    - `t0`, `t1`, `params`: as for [`scoreflow.SDE`][].

    ```python
    import scoreflow as sf
    rf = sf.Interpolant(alpha=1 - sf.t, sigma=sf.t)   # rectified flow
    rf.symbolic.g2                                     # 2*t/(1 - t)
    ```
    """
    if _is_symbolic(alpha) and _is_symbolic(sigma):
        syms, vals = params_dict(params, "sf.Interpolant")
        call0 = f"sf.Interpolant(alpha={alpha}, sigma={sigma})"
        a = _derive.to_expr(
            alpha, call=call0, argname="alpha", allowed=("t",), params=syms
        )
        s = _derive.to_expr(
            sigma, call=call0, argname="sigma", allowed=("t",), params=syms
        )
        built = build_symbolic(
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
        built = build_numeric(
            call=f"sf.Interpolant(alpha={fn_name(alpha)}, sigma={fn_name(sigma)})",
            fns=numeric_interpolant(alpha, sigma),
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
    return DeclaredProcess(built)
