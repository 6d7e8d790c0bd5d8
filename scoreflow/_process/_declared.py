"""The machinery shared by every declared process: compile derived sympy expressions
with sympy2jax, fall back to numerics, analyse the endpoints, validate the schedule."""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import mpmath
import numpy as np
import optimistix as optx
import sympy
import sympy2jax

from .._custom_types import Scalar, ScalarLike
from .._symbols import t as T_SYM, x as X_SYM
from .._warnings import user_stacklevel
from . import _derive, _stationary
from ._base import AbstractProcess

LOG_SNR_MAX = 2 * math.log(1e3)
r"""Where an automatic `t0` is placed when $\sigma(t) \to 0$ at $t = 0$: the
log-SNR at which $\sigma/\alpha = 10^{-3}$, i.e. the score scale $1/\sigma$ of
unit-scale data is $10^3$ (for VP this is Song et al.'s $t_0 = 10^{-5}$)."""

LOG_SNR_MIN = -2 * math.log(1e3)
r"""Where an automatic `t1` is placed when $\alpha(t) \to 0$ at the horizon: the
log-SNR at which $\alpha/\sigma = 10^{-3}$; the prior then differs from the
terminal marginal of unit-variance data by a KL of about $2.5\times10^{-13}$ per
dimension, while the drift $\dot\alpha/\alpha$ stays finite."""

PRIOR_KL_WARN = 1e-3
"""Per-dimension KL (unit-variance data) above which a terminal-marginal/prior
mismatch warns."""


CALLABLE_DRIFT = sympy.Symbol("drift")
"""Placeholder drift of a process declared with Python callables."""


def _declared_symbolically(d) -> bool:
    """A sympy declaration (not callables). Note `sf.x` itself is a valid drift."""
    return d is not None and d.drift != CALLABLE_DRIFT


class PriorMismatchWarning(UserWarning):
    """The terminal marginal of the process is far from its declared prior."""


# --------------------------------------------------------------------------- #
# Small JAX callables (each a pytree, so constants and parameters are leaves)
# --------------------------------------------------------------------------- #


def _compile(expr: sympy.Expr) -> sympy2jax.SymbolicModule:
    extra = {k: getattr(jnp, v) for k, v in _derive.EXTRA_FUNCS.items()}
    return sympy2jax.SymbolicModule(expr, extra_funcs=extra)


class _Sym(eqx.Module):
    """A sympy expression in `t` (and parameter symbols, and maybe `x`)."""

    module: sympy2jax.SymbolicModule
    uses_x: bool = eqx.field(static=True)

    def __init__(self, expr: sympy.Expr):
        self.module = _compile(expr)
        self.uses_x = X_SYM in expr.free_symbols

    def __call__(self, t, params, x=None):
        kwargs = dict(params)
        kwargs["t"] = t
        if self.uses_x:
            kwargs["x"] = x
        out = jnp.asarray(self.module(**kwargs))
        if not jnp.issubdtype(out.dtype, jnp.inexact):  # constant coefficients
            out = out.astype(jnp.result_type(jnp.asarray(t).dtype, float))
        shape = jnp.shape(x) if self.uses_x else jnp.shape(t)
        return jnp.broadcast_to(out, shape) if jnp.shape(out) != shape else out


class _Call(eqx.Module):
    """A user-supplied Python callable (numeric derivation)."""

    fn: Callable

    def __call__(self, t, params, x=None):
        return self.fn(t) if x is None else self.fn(t, x)


@eqx.filter_jit
def _moments_jit(ode, t, params):
    return ode._eval(t, params)


class _MomentODE(eqx.Module):
    r"""alpha(t), sigma(t)² from the moment ODEs $d\log\alpha = f\,dt$,
    $d(\sigma^2/\alpha^2) = g^2/\alpha^2\,dt$, integrated by diffrax from 0 to t."""

    f: eqx.Module
    g2: eqx.Module

    def __call__(self, t, params):
        return _moments_jit(self, jnp.asarray(t), params)

    def _eval(self, t, params):
        dtype = jnp.result_type(t.dtype, float)
        t = t.astype(dtype)
        tight = dtype == jnp.float64

        def vf(s, y, args):
            log_a, _ = y
            return self.f(s, params), self.g2(s, params) * jnp.exp(-2 * log_a)

        def solve(tt):
            sol = diffrax.diffeqsolve(
                diffrax.ODETerm(vf),
                diffrax.Tsit5(),
                t0=jnp.zeros((), dtype),
                t1=tt,
                dt0=None,
                y0=(jnp.zeros((), dtype), jnp.zeros((), dtype)),
                stepsize_controller=diffrax.PIDController(
                    rtol=1e-10 if tight else 1e-6, atol=1e-12 if tight else 1e-8
                ),
                max_steps=4096,
                saveat=diffrax.SaveAt(t1=True),
            )
            log_a, s = sol.ys
            return jnp.exp(log_a[0]), jnp.exp(2 * log_a[0]) * s[0]

        # diffeqsolve needs t1 > t0: evaluate at max(t, tiny) and fix up t = 0.
        tiny = jnp.asarray(1e-30 if tight else 1e-20, dtype)
        flat = jnp.ravel(t)
        a, s2 = jax.vmap(lambda tt: solve(jnp.maximum(tt, tiny)))(flat)
        a = jnp.where(flat > 0, a, 1.0).reshape(t.shape)
        s2 = jnp.where(flat > 0, s2, 0.0).reshape(t.shape)
        return a, s2


# --------------------------------------------------------------------------- #
# Endpoint report
# --------------------------------------------------------------------------- #


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


@dataclasses.dataclass(frozen=True, eq=False)
class _Info:
    """Static (non-array) description of a declared process."""

    call: str  # e.g. "sf.VP(beta_min=0.1, beta_max=20.0)"
    derivation: _derive.Derivation | None  # None for callables
    param_symbols: tuple  # sympy Symbols, in the order of `params`
    endpoints: Endpoints
    numeric: bool  # kernel computed numerically (no closed form or callables)
    horizon: float
    convention: str = "ito"  # how the drift was declared: "ito" or "stratonovich"


# --------------------------------------------------------------------------- #
# The shared base class
# --------------------------------------------------------------------------- #


class AbstractDeclaredProcess(AbstractProcess):
    """A process declared by sympy expressions or callables. Subclasses only say what
    they declare; everything else (derivation, compilation, endpoint analysis,
    validation) happens here, once for all built-ins and user processes."""

    params: dict[str, jax.Array]
    _fns: dict[str, eqx.Module]
    prior: Any
    _info: _Info = eqx.field(static=True)
    t0: float = eqx.field(static=True)
    t1: float = eqx.field(static=True)

    # ---- coefficients -------------------------------------------------------

    def _need_kernel(self, what: str):
        if "alpha" not in self._fns and "moments" not in self._fns:
            raise ValueError(
                f"`{self._info.call}` has no Gaussian transition kernel, so `{what}` is "
                f"undefined: {self._info.derivation.gaussian_reason}. Only the drift, "
                "the diffusion and dynamics driven by a learned score are available."
            )

    def _moments(self, t):
        return self._fns["moments"](t, self.params)

    def alpha(self, t):
        self._need_kernel("alpha")
        t = _as_time(t)
        if "alpha" in self._fns:
            return self._fns["alpha"](t, self.params)
        return self._moments(t)[0]

    def sigma(self, t):
        self._need_kernel("sigma")
        t = _as_time(t)
        if "sigma" in self._fns:
            return self._fns["sigma"](t, self.params)
        return jnp.sqrt(self._moments(t)[1])

    def alpha_dot(self, t):
        self._need_kernel("alpha_dot")
        t = _as_time(t)
        if "alpha_dot" in self._fns:
            return self._fns["alpha_dot"](t, self.params)
        return self.f(t) * self.alpha(t)

    def sigma_dot(self, t):
        self._need_kernel("sigma_dot")
        t = _as_time(t)
        if "sigma_dot" in self._fns:
            return self._fns["sigma_dot"](t, self.params)
        # (sigma^2)' = 2 f sigma^2 + g^2
        s = self.sigma(t)
        return (2 * self.f(t) * s**2 + self.g2(t)) / (2 * s)

    def f(self, t):
        self._need_kernel("f")
        return self._fns["f"](_as_time(t), self.params)

    @property
    def has_gaussian_kernel(self) -> bool:
        """Whether the transition kernel is Gaussian (drift $f(t)x$, diffusion $g(t)$);
        static, so code branches on it at trace time."""
        return "alpha" in self._fns or "moments" in self._fns

    @property
    def state_dependent_diffusion(self) -> bool:
        """Whether the diffusion $g(t, x)$ depends on $x$ (static)."""
        return bool(getattr(self._fns["g2"], "uses_x", False))

    def g2(self, t, x=None):
        r"""Squared diffusion $g(t)^2$, or $g(t, x)^2$ elementwise (then `x` is
        required) for a state-dependent diffusion."""
        if self.state_dependent_diffusion:
            if x is None:
                raise ValueError(
                    f"`{self._info.call}`: the diffusion depends on x, so g2(t, x) and "
                    "diffusion(t, x) need the state x."
                )
            x = jnp.asarray(x)
            return self._fns["g2"](_as_time(t).astype(x.dtype), self.params, x)
        return self._fns["g2"](_as_time(t), self.params)

    def dg2_dx(self, t, x):
        r"""$\partial_x g(t, x)^2$ elementwise (derived with sympy); zeros when the
        diffusion does not depend on $x$. This is the divergence of $g g^\top$ for
        diagonal noise, the extra drift of the reverse SDE (Anderson 1982)."""
        x = jnp.asarray(x)
        if not self.state_dependent_diffusion:
            return jnp.zeros_like(x)
        out = self._fns["dg2"](_as_time(t).astype(x.dtype), self.params, x)
        return jnp.broadcast_to(out, jnp.broadcast_shapes(jnp.shape(out), x.shape))

    def stratonovich_drift(self, t, x):
        r"""The drift of the same process read in Stratonovich form,
        $f_S = f - \tfrac12 g\,\partial_x g = f - \tfrac14\partial_x g^2$
        (elementwise; equal to `drift` for x-independent noise)."""
        f = self.drift(t, x)
        if not self.state_dependent_diffusion:
            return f
        return f - 0.25 * self.dg2_dx(t, x)

    def prior_sample(self, key, shape, dtype=None):
        if self.prior is None:
            self._need_prior("prior_sample")
            return super().prior_sample(key, shape, dtype)
        return self.prior.sample(key, shape, dtype)

    def prior_log_prob(self, x):
        if self.prior is None:
            self._need_prior("prior_log_prob")
            return super().prior_log_prob(x)
        return self.prior.log_prob(x)

    def _need_prior(self, what):
        if not self.has_gaussian_kernel:
            raise ValueError(
                f"`{self._info.call}` has no Gaussian kernel and no prior, so `{what}` "
                "is undefined. Pass prior= (an object with sample(key, shape, dtype) and "
                "log_prob(x), e.g. sf.StationaryDensity) to sf.SDE; a time-homogeneous "
                "SDE with a normalisable stationary density gets it automatically."
            )

    def log_snr(self, t):
        self._need_kernel("log_snr")
        t = _as_time(t)
        if "log_snr" in self._fns:
            return self._fns["log_snr"](t, self.params)
        return super().log_snr(t)

    def drift(self, t, x):
        x = jnp.asarray(x)
        t = _as_time(t)
        if "drift" in self._fns:
            return self._fns["drift"](t, self.params, x)
        return self.f(t) * x

    # ---- inverse log-SNR and time conventions -------------------------------

    def t_from_log_snr(self, lam: ScalarLike) -> Scalar:
        r"""The time $t \in [t_0, t_1]$ with $\lambda(t) = $ `lam` (log-SNR is
        decreasing in t). Closed form where sympy finds one, else a bracketed
        bisection (optimistix) on $[0, \text{horizon}]$."""
        self._need_kernel("t_from_log_snr")
        lam = jnp.asarray(lam, dtype=jnp.result_type(float))
        d = self._info.derivation
        if d is not None and d.log_snr is not None:
            inv = _inverse_for(d.log_snr, self.params, self._info.param_symbols)
            if inv is not None:
                return inv(lam, self.params)
        return _bisect_time(self.log_snr, lam, self._info.horizon)

    @property
    def endpoints(self) -> Endpoints:
        """How `t0`/`t1` were chosen, and the endpoint limits found by sympy."""
        return self._info.endpoints

    # ---- symbolic view ------------------------------------------------------

    @property
    def symbolic(self) -> SymbolicView:
        """The sympy expressions `f` (drift), `g`, `g2`, `alpha`, `sigma`, `log_snr`,
        with the current parameter values substituted."""
        d = self._info.derivation
        if d is None:
            raise ValueError(
                f"`{self._info.call}` was declared with Python callables, so it has no "
                "symbolic form. Declare it with sympy expressions in sf.t (and sf.x) "
                "for symbolic derivations."
            )
        sub = {s: _as_number(self.params[s.name]) for s in self._info.param_symbols}

        def S(e):
            return None if e is None else _derive._simplify(e.subs(sub))

        g2 = S(d.g2)
        f = S(d.drift)
        dg2 = _derive._simplify(sympy.diff(g2, X_SYM))
        stationary = None
        if isinstance(self.prior, _stationary.StationaryDensity):
            stationary = self.prior.expr
        return SymbolicView(
            f=f,
            g=_derive._simplify(sympy.sqrt(g2)),
            g2=g2,
            alpha=S(d.alpha),
            sigma=S(d.sigma),
            log_snr=S(d.log_snr),
            closed_form=d.closed_form,
            dg2_dx=dg2,
            f_stratonovich=_derive._simplify(f - dg2 / 4),
            stationary_log_density=stationary,
        )

    def equations(self) -> dict[str, sympy.Eq]:
        """The forward SDE, the Gaussian kernel, the reverse SDE and the
        probability-flow ODE as sympy equations (for printing)."""
        s = self.symbolic
        dx, dt, dW, dWbar = sympy.symbols("dx dt dW dWbar")
        score = sympy.Function("s")(T_SYM, X_SYM)
        eqs = {
            "forward SDE": sympy.Eq(dx, s.f * dt + s.g * dW),
            "reverse SDE": sympy.Eq(
                dx, (s.f - s.dg2_dx - s.g2 * score) * dt + s.g * dWbar
            ),
            "probability-flow ODE": sympy.Eq(
                sympy.Derivative(sympy.Function("x")(T_SYM), T_SYM),
                s.f - s.dg2_dx / 2 - s.g2 / 2 * score,
            ),
        }
        if s.dg2_dx != 0:
            circ = sympy.Symbol("circ")
            eqs["forward SDE (Stratonovich)"] = sympy.Eq(
                dx, s.f_stratonovich * dt + s.g * circ * dW
            )
        if s.stationary_log_density is not None:
            eqs["stationary density"] = sympy.Eq(
                sympy.Function("p_inf")(X_SYM),
                sympy.exp(s.stationary_log_density) / sympy.Symbol("Z"),
            )
        if s.alpha is not None:
            x0, eps, xt = sympy.symbols("x_0 epsilon x_t")
            eqs["kernel"] = sympy.Eq(xt, s.alpha * x0 + s.sigma * eps)
        return eqs

    def _equation_rows(self, fmt, wrap, score, sub) -> list[tuple[str, str]]:
        s = self.symbolic
        rows = [
            ("forward SDE", f"dx = {wrap(fmt(s.f))} dt + {wrap(fmt(s.g))} dW"),
        ]
        state_dep = s.dg2_dx != 0
        if state_dep:
            rows.append(
                (
                    "Strat. form",
                    f"dx = {wrap(fmt(s.f_stratonovich))} dt + {wrap(fmt(s.g))} {sub['circ']} dW",
                )
            )
        if s.alpha is not None:
            rows.append(
                (
                    "kernel",
                    f"x_t = {wrap(fmt(s.alpha))} x_0 + {wrap(fmt(s.sigma))} {sub['eps']}",
                )
            )
        div = f" - {wrap(fmt(s.dg2_dx))}" if state_dep else ""
        half_div = f" - {wrap(fmt(s.dg2_dx / 2))}" if state_dep else ""
        rows.append(
            (
                "reverse SDE",
                f"dx = [{fmt(s.f)}{div} - {wrap(fmt(s.g2))} {score}] dt + {wrap(fmt(s.g))} {sub['dWbar']}",
            )
        )
        rows.append(
            ("PF-ODE", f"dx/dt = {fmt(s.f)}{half_div} - {wrap(fmt(s.g2 / 2))} {score}")
        )
        if s.stationary_log_density is not None:
            rows.append(
                (
                    "stationary",
                    f"p_inf(x) = {wrap(fmt(_derive._simplify(sympy.exp(s.stationary_log_density))))} / Z",
                )
            )
        return rows

    def describe(self) -> str:
        """A readable multi-line summary: declaration, derived equations, endpoints."""
        lines = [self._info.call]
        if (
            self._info.derivation is not None
            and self._info.derivation.source in ("sde", "interpolant")
            and _declared_symbolically(self._info.derivation)
        ):
            rows = self._equation_rows(
                sympy.sstr,
                lambda e: f"({e})",
                "s(t, x)",
                {"eps": "eps", "dWbar": "dW_bar", "circ": "o"},
            )
            for name, text in rows:
                lines.append(f"  {name + ':':13s}{text}")
            lines.append(
                "  where s(t, x) = grad_x log p_t(x); the reverse SDE and the PF-ODE run "
                "from t1 down to t0 (dW_bar: reverse-time Brownian motion)"
            )
            if self.state_dependent_diffusion:
                lines.append(
                    "  (Itô form; the extra term is the divergence d/dx g^2 of g g^T, "
                    "Anderson 1982; 'o dW' marks the Stratonovich reading)"
                )
        if not self.has_gaussian_kernel:
            lines.append("  prior: " + _prior_text(self.prior))
        if self._info.numeric:
            lines.append(
                "  kernel integrals: no closed form; computed numerically (diffrax moment ODEs)"
            )
        for line in str(self.endpoints).splitlines()[:3]:
            lines.append("  " + line)
        return "\n".join(lines)

    def latex(self) -> str:
        r"""The derived equations as a LaTeX `aligned` block."""
        rows = self._equation_rows(
            sympy.latex,
            lambda e: rf"\left({e}\right)",
            r"\nabla_x \log p_t(x)",
            {"eps": r"\varepsilon", "dWbar": r"d\bar W", "circ": r"\circ"},
        )
        body = " \\\\\n".join(rf"\text{{{name}}}:&\quad {text}" for name, text in rows)
        return "\\begin{aligned}\n" + body + "\n\\end{aligned}"

    def _repr_latex_(self):
        return "$" + self.latex() + "$"

    def __repr__(self):
        call = self._info.call
        head, inner = call[: call.index("(")], call[call.index("(") + 1 : -1]
        parts = ([inner] if inner else []) + [f"t0={self.t0:.6g}", f"t1={self.t1:.6g}"]
        return f"{head}({', '.join(parts)})"

    # ---- conversions --------------------------------------------------------

    def as_sde(self):
        from ._public import SDE

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
            params={s: self.params[s.name] for s in self._info.param_symbols},
            prior=self.prior,
        )

    def as_stratonovich(self):
        r"""The same process declared in Stratonovich form: `sf.SDE(drift=f_S,
        diffusion=g, stratonovich=True)` with $f_S = f - \tfrac12 g\,\partial_x g$
        (sympy, exact). Same law, same derived quantities; only the declaration (and
        `describe()`) differ. Inverse: [`as_ito`][scoreflow.SDE.as_ito]."""
        return self._redeclare("stratonovich")

    def as_ito(self):
        """The same process declared in Itô form (`stratonovich=False`)."""
        return self._redeclare("ito")

    def _redeclare(self, convention):
        from ._public import SDE

        d = self._info.derivation
        if not _declared_symbolically(d):
            raise ValueError(
                f"`{self._info.call}` was declared with Python callables; Itô <-> "
                "Stratonovich conversion needs a sympy declaration."
            )
        f = d.drift
        if convention == "stratonovich":
            f = _derive._simplify(f - sympy.diff(d.g2, X_SYM) / 4)
        return SDE(
            f,
            _derive._simplify(sympy.sqrt(d.g2)),
            t0=self.t0,
            t1=self.t1,
            params={s: self.params[s.name] for s in self._info.param_symbols},
            prior=self.prior,
            stratonovich=convention == "stratonovich",
        )

    def as_interpolant(self):
        from ._public import Interpolant

        self._need_kernel("as_interpolant")
        d = self._info.derivation
        if d is None or not d.closed_form:
            return Interpolant(self.alpha, self.sigma, t0=self.t0, t1=self.t1)
        return Interpolant(
            d.alpha,
            d.sigma,
            t0=self.t0,
            t1=self.t1,
            params={s: self.params[s.name] for s in self._info.param_symbols},
        )


@dataclasses.dataclass(frozen=True)
class SymbolicView:
    """Sympy expressions of a process (parameters substituted)."""

    f: sympy.Expr
    g: sympy.Expr
    g2: sympy.Expr
    alpha: sympy.Expr | None
    sigma: sympy.Expr | None
    log_snr: sympy.Expr | None
    closed_form: bool
    dg2_dx: sympy.Expr = sympy.Integer(0)
    r"""$\partial_x g^2$ (the divergence of $g g^\top$ for diagonal noise)."""
    f_stratonovich: sympy.Expr | None = None
    r"""The drift read in Stratonovich form, $f - \tfrac14\partial_x g^2$."""
    stationary_log_density: sympy.Expr | None = None
    r"""Unnormalised $\log p_\infty(x)$ when the prior is the stationary density."""


def _prior_text(prior) -> str:
    if prior is None:
        return "none (pass prior= to sample from the reverse dynamics)"
    if isinstance(prior, _stationary.StationaryDensity):
        return (
            f"stationary density p_inf(x) ∝ exp({prior.expr}) (per coordinate); the "
            "terminal marginal p_t1 approaches it as t1 grows"
        )
    return f"user-supplied {type(prior).__name__}"


def _as_time(t):
    t = jnp.asarray(t)
    if not jnp.issubdtype(t.dtype, jnp.floating):
        t = t.astype(jnp.result_type(float))
    return t


def _as_number(v):
    """The exact rational with the shortest decimal repr of a parameter value (so a
    float32 0.1 becomes 1/10, keeping symbolic checks exact)."""
    v = np.asarray(v)[()]
    return sympy.Rational(np.format_float_positional(v, unique=True, trim="0"))


def _bisect_time(log_snr, lam, horizon):
    dtype = lam.dtype

    def fn(tt, args):
        return log_snr(tt) - args

    solver = optx.Bisection(rtol=1e-7 if dtype == jnp.float32 else 1e-14, atol=0.0)
    flat = jnp.ravel(lam)
    upper = jnp.asarray(horizon, dtype)
    lo_lam, hi_lam = log_snr(upper), log_snr(jnp.zeros((), dtype))
    flat = eqx.error_if(
        flat,
        jnp.any((flat < lo_lam) | (flat > hi_lam)),
        f"t_from_log_snr: a log-SNR outside the process's range on [0, {horizon}] was "
        "asked for (the process never reaches that noise level); clip the log-SNR to "
        "[process.log_snr(horizon), process.log_snr(0)].",
    )
    # Values at the bracket ends are returned directly (bisection needs a sign change).
    at_upper, at_lower = flat <= lo_lam, flat >= hi_lam
    inner = jnp.where(
        at_upper | at_lower, 0.5 * (lo_lam + jnp.minimum(hi_lam, lo_lam + 60)), flat
    )

    def one(l):
        sol = optx.root_find(
            fn,
            solver,
            jnp.asarray(horizon / 2, dtype),
            args=l,
            options=dict(
                lower=jnp.asarray(0.0, dtype), upper=jnp.asarray(horizon, dtype)
            ),
            max_steps=256,
            throw=False,
        )
        return sol.value

    out = jax.vmap(one)(inner)
    out = jnp.where(at_upper, upper, jnp.where(at_lower, 0.0, out))
    return out.reshape(lam.shape)


# --------------------------------------------------------------------------- #
# Building a declared process
# --------------------------------------------------------------------------- #


def _params_dict(params: Mapping | None, call: str):
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
):
    """Derive, compile, analyse and validate. Returns the field values of an
    `AbstractDeclaredProcess` as a dict."""
    if source == "sde":
        drift, g = exprs
        _check_nonneg(g, param_symbols, params, call, "diffusion g(t)", t1)
        d = _derive.derive_from_sde(drift, g)
    else:
        alpha, sigma = exprs
        d = _derive.derive_from_interpolant(alpha, sigma)
    subs = tuple((s, _as_number(params[s.name])) for s in param_symbols)
    horizon = 1.0 if t1 is None else float(t1)

    hints = {} if hints is None else dict(hints)

    def stable(e, name=None):
        h = tuple(hints.get(name, ()))
        return _derive.stable_form(e, subs, horizon, h)

    fns: dict[str, eqx.Module] = {"g2": _Sym(stable(d.g2, "g2"))}
    if not d.gaussian:
        fns["drift"] = _Sym(d.drift)
        if d.g2.has(X_SYM):
            # The plain derivative of the expanded g^2: simplify() tends to factor
            # e.g. exp(-x^2) into 1/exp(x^2), which overflows in float32.
            fns["dg2"] = _Sym(sympy.expand(sympy.diff(d.g2, X_SYM)))
    else:
        fns["f"] = _Sym(stable(d.f))
        if d.closed_form:
            for name in ("alpha", "sigma", "alpha_dot", "sigma_dot", "log_snr"):
                fns[name] = _Sym(stable(getattr(d, name), name))
        else:
            fns["moments"] = _MomentODE(fns["f"], fns["g2"])
    if d.gaussian and not d.closed_form:
        numeric_eval = None
    else:
        numeric_eval = _mp_evaluators(d, subs)
    return _finish(call, d, param_symbols, params, fns, t0, t1, horizon, numeric_eval)


def build_numeric(*, call: str, fns: dict, gaussian_reason: str, t0, t1):
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
    return _finish(call, d, (), {}, fns, t0, t1, horizon, None)


_INVERSES: dict = {}


def _inverse_for(lam, params, param_symbols):
    """The closed-form inverse for this log-SNR expression, or None. The compiled
    inverse keeps the parameters symbolic; concrete parameter values are only used
    (once) to pick sympy's branch, so this also works with traced parameters."""
    if lam in _INVERSES:
        return _INVERSES[lam]
    try:
        subs = tuple((s, _as_number(params[s.name])) for s in param_symbols)
    except Exception:  # traced parameters (inside jit): no branch check possible
        return None
    _INVERSES[lam] = _inverse_log_snr(lam, subs)
    return _INVERSES[lam]


@functools.lru_cache(maxsize=128)
def _inverse_log_snr(lam, subs):
    """Closed-form inverse of the log-SNR (computed on first use, cached), or None."""
    L = sympy.Symbol("lam", real=True)
    sols = _derive.try_sympy(lambda: sympy.solve(sympy.Eq(lam, L), _derive.t), 3.0)
    if not sols:
        return None
    sub = dict(subs)
    lam_fn = sympy.lambdify(_derive.t, lam.subs(sub), modules="mpmath")
    for sol in sols:
        sol = _derive._simplify(sol)  # e.g. removes 0/0 at lam = 0
        # Keep the branch that inverts lam at a few interior times (incl. the middle).
        fn = sympy.lambdify(L, sol.subs(sub), modules="mpmath")
        try:
            ok = all(
                abs(complex(fn(lam_fn(mpmath.mpf(tv)))) - tv) < 1e-9
                for tv in (0.1, 0.37, 0.5, 0.8)
            )
        except (TypeError, ValueError, ZeroDivisionError):
            ok = False
        if ok:
            # The inverse is an expression in lam; compile it with lam named "t".
            return _Sym(sol.xreplace({L: _derive.t}))
    return None


def _mp_evaluators(d: _derive.Derivation, subs):
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
        num = _to_float(v)
        if math.isfinite(num) and (num != 0 or v.is_zero):
            return v
    lim = _derive.try_sympy(lambda: sympy.limit(expr, _derive.t, point, direction))
    return lim


def _to_float(v):
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


def _finish(call, d, param_symbols, params, fns, t0, t1, horizon, mp):
    gaussian = "alpha" in fns or "moments" in fns

    def jnum(name, tv):
        """Evaluate a compiled coefficient at a Python float (float64 if enabled)."""
        fn = fns[name]
        return float(np.asarray(fn(jnp.asarray(tv, jnp.result_type(float)), params)))

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
                out = _to_float(v)
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

    ep = Endpoints(t0v, t1v, reason0, reason1, tuple(limits), prior_kl)
    _validate_grid(call, d, fns, params, t0v, t1v, gaussian, mp)
    info = _Info(
        call=call,
        derivation=d,
        param_symbols=param_symbols,
        endpoints=ep,
        numeric=gaussian and mp is None,
        horizon=horizon,
    )
    return dict(params=params, _fns=fns, prior=None, _info=info, t0=t0v, t1=t1v)


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


def _grid(t0, t1):
    span = t1 - t0
    near = np.geomspace(1e-6, 1e-1, 21) * span
    return np.unique(
        np.clip(
            np.concatenate([np.linspace(t0, t1, 513), t0 + near, t1 - near]), t0, t1
        )
    )


def _validate_grid(call, d, fns, params, t0, t1, gaussian, mp):
    """Every coefficient finite in float32 on a dense grid; g^2 >= 0."""
    grid = _grid(t0, t1)
    if getattr(fns["g2"], "uses_x", False):
        _validate_state_dependent(call, fns, params, grid)
        return
    if mp is not None and "g2" in mp:
        _check_g2(call, d, mp["g2"], grid)
    to32 = lambda leaf: leaf.astype(jnp.float32) if eqx.is_inexact_array(leaf) else leaf
    fns32, params32 = jtu.tree_map(to32, (fns, params))
    ts = jnp.asarray(grid, jnp.float32)
    names = ["g2"] + (
        ["f", "alpha", "sigma", "alpha_dot", "sigma_dot", "log_snr"] if gaussian else []
    )
    with jax.numpy_dtype_promotion("standard"):
        for name in names:
            if name not in fns:
                continue
            # Coefficients are elementwise in t: one eager call on the whole grid.
            vals = np.asarray(fns32[name](ts, params32))
            bad = ~np.isfinite(vals)
            if bad.any():
                i = int(np.argmax(bad))
                raise ValueError(
                    f"`{call}`: the schedule gives a non-finite {name}(t={grid[i]:.6g}) = "
                    f"{vals[i]} in float32 inside [t0, t1] = [{t0:g}, {t1:g}]. Shrink the "
                    "time range or rewrite the schedule so it stays finite."
                )
        if "moments" in fns:
            a, s2 = jax.vmap(lambda s: fns32["moments"](s, params32))(ts[::8])
            if not (
                np.isfinite(np.asarray(a)).all() and np.isfinite(np.asarray(s2)).all()
            ):
                raise ValueError(
                    f"`{call}`: the numerically integrated kernel is not finite on [t0, t1]."
                )
    g2v = np.asarray(
        jax.vmap(lambda s: fns["g2"](s, params))(
            jnp.asarray(grid, jnp.result_type(float))
        )
    )
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


def _check_g2(call, d, g2_expr, grid):
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


def _check_nonneg(g, param_symbols, params, call, what, t1):
    horizon = 1.0 if t1 is None else float(t1)
    sub = {s: _as_number(params[s.name]) for s in param_symbols}
    ge = g.subs(sub)
    for tv in np.linspace(0, horizon, 33):
        with mpmath.workdps(30):
            v = _to_float(ge.subs(_derive.t, sympy.Rational(repr(float(tv)))))
        if v < 0:
            raise ValueError(
                f"`{call}`: the {what} = {g} is negative at t = {tv:.4g} ({v:.4g}). "
                "g must be >= 0 (only g^2 enters the dynamics): declare abs(g), or "
                "sqrt of the intended g^2."
            )
