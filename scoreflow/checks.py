r"""Fokker–Planck and continuity checks: numerical (by autodiff) and symbolic.

A forward SDE $dx = f(t, x)\,dt + g(t)\,dW$ moves its marginal densities by the
Fokker–Planck equation
$\partial_t p = -\nabla\cdot(f p) + \tfrac12 g^2 \Delta p$. Divided by $p$, in terms
of $\ell = \log p$ (finite and well scaled where $p$ underflows):

$$r_{\text{FP}} = \partial_t \ell + \nabla\cdot f + f\cdot\nabla \ell
  - \tfrac12 g^2\big(\Delta \ell + |\nabla \ell|^2\big) = 0.$$

A velocity field $v$ (the probability-flow ODE) moves them by the continuity
equation $\partial_t p + \nabla\cdot(p v) = 0$, i.e.

$$r_{\text{C}} = \partial_t \ell + \nabla\cdot v + v\cdot\nabla \ell = 0.$$

**Scaling.** The residuals returned are *relative*: the residual divided by the sum
of the absolute values of its terms,
$r / (|\partial_t\ell| + |\nabla\cdot f| + |f\cdot\nabla\ell| +
\tfrac12 g^2(|\Delta\ell| + |\nabla\ell|^2))$ (and
$r / (|\partial_t\ell| + |\nabla\cdot v| + |v\cdot\nabla\ell|)$ for continuity).
It lies in $[-1, 1]$, is invariant to rescaling time, space or the density, and
measures the fraction of the terms that fails to cancel — so one tolerance (say
$10^{-8}$ in float64, $10^{-4}$ in float32) means the same at every $t$, although
the individual terms grow like $1/\sigma(t)^2$ as $t \to t_0$. A wrong density
gives values of order $10^{-2}$ to $1$. Pass `relative=False` for the raw residual
(units of 1/time).

All functions take ONE unbatched point `x` (`jax.vmap` for batches) and a scalar
time `t` in scoreflow's convention ($t = 0$ data, $t = t_1$ prior); callables are
time first: `log_prob(t, x)`, `velocity(t, x)`, `score(t, x)`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp
import mpmath
import sympy
from jaxtyping import Array, ArrayLike, Float

from ._custom_types import Scalar, ScalarLike
from ._process import (
    AbstractDeclaredProcess,
    AbstractScalarProcess,
    DeclaredSDE,
    require,
    try_sympy,
)
from ._symbols import t as T, x as X

__all__ = [
    "FokkerPlanckResult",
    "continuity_residual",
    "fokker_planck_residual",
    "reverse_fokker_planck_residual",
    "symbolic_fokker_planck",
]


# --------------------------------------------------------------------------- #
# Numerical residuals by autodiff
# --------------------------------------------------------------------------- #


def _prepare(t, x):
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    t = jnp.asarray(t, dtype=x.dtype)
    return t, x


def _derivatives(log_prob, t, x):
    """d/dt log p, grad log p, laplacian log p at (t, x) (x flattened inside)."""
    shape = x.shape
    flat = x.reshape(-1)

    def lp(tt, z):
        return jnp.asarray(log_prob(tt, z.reshape(shape))).astype(flat.dtype)

    dt = jax.jvp(lambda tt: lp(tt, flat), (t,), (jnp.ones_like(t),))[1]
    grad_fn = jax.grad(lp, argnums=1)
    grad, hvp = jax.linearize(lambda z: grad_fn(t, z), flat)
    lap = jnp.trace(jax.vmap(hvp)(jnp.eye(flat.size, dtype=flat.dtype)))
    return dt, grad, lap


def _field_and_divergence(fn, t, x):
    shape = x.shape
    flat = x.reshape(-1)
    out, jvp = jax.linearize(
        lambda z: jnp.asarray(fn(t, z.reshape(shape))).astype(flat.dtype).reshape(-1),
        flat,
    )
    div = jnp.trace(jax.vmap(jvp)(jnp.eye(flat.size, dtype=flat.dtype)))
    return out, div


def _tiny(dtype):
    return jnp.finfo(dtype).tiny


def _scaled(r, scale, relative):
    """`r / scale`, or, for `relative="parts"` (used by `scoreflow.testing`, which
    scales several residuals by one reference), the pair `(r, scale)`."""
    if relative == "parts":
        return r, scale
    return r / (scale + _tiny(r.dtype))


def _fp(drift, g2, log_prob, t, x, relative):
    t, x = _prepare(t, x)
    dt, grad, lap = _derivatives(log_prob, t, x)
    f, div_f = _field_and_divergence(drift, t, x)
    g2 = jnp.asarray(g2(t)).astype(x.dtype)
    transport = jnp.sum(f * grad)
    sq = jnp.sum(grad**2)
    r = dt + div_f + transport - 0.5 * g2 * (lap + sq)
    if not relative:
        return r
    scale = (
        jnp.abs(dt)
        + jnp.abs(div_f)
        + jnp.abs(transport)
        + 0.5 * jnp.abs(g2) * (jnp.abs(lap) + sq)
    )
    return _scaled(r, scale, relative)


def _fp_state(drift, g2, log_prob, t, x, relative):
    """FP residual for a diagonal state-dependent diffusion D(x) = g(t, x)^2:
    r = d_t l + div f + f.grad l
        - 1/2 sum_i [d_i^2 D_i + 2 d_i D_i d_i l + D_i (d_i^2 l + (d_i l)^2)]."""
    t, x = _prepare(t, x)
    shape = x.shape
    flat = x.reshape(-1)
    eye = jnp.eye(flat.size, dtype=flat.dtype)

    def lp(tt, z):
        return jnp.asarray(log_prob(tt, z.reshape(shape))).astype(flat.dtype)

    dt = jax.jvp(lambda tt: lp(tt, flat), (t,), (jnp.ones_like(t),))[1]
    grad_fn = jax.grad(lp, argnums=1)
    grad, hvp = jax.linearize(lambda z: grad_fn(t, z), flat)
    hdiag = jnp.diagonal(jax.vmap(hvp)(eye))
    f, div_f = _field_and_divergence(drift, t, x)

    def D(z):
        out = jnp.asarray(g2(t, z.reshape(shape))).astype(flat.dtype)
        return jnp.broadcast_to(out, shape).reshape(-1)

    def d1(z, e):
        return jax.jvp(D, (z,), (e,))[1]

    Dx = D(flat)
    dD = jnp.diagonal(jax.vmap(lambda e: d1(flat, e))(eye))
    d2D = jnp.diagonal(
        jax.vmap(lambda e: jax.jvp(lambda z: d1(z, e), (flat,), (e,))[1])(eye)
    )
    transport = jnp.sum(f * grad)
    diff_terms = (d2D, 2 * dD * grad, Dx * hdiag, Dx * grad**2)
    r = dt + div_f + transport - 0.5 * sum(jnp.sum(a) for a in diff_terms)
    if not relative:
        return r
    scale = (
        jnp.abs(dt)
        + jnp.abs(div_f)
        + jnp.abs(transport)
        + 0.5 * sum(jnp.sum(jnp.abs(a)) for a in diff_terms)
    )
    return _scaled(r, scale, relative)


def fokker_planck_residual(
    process,
    log_prob: Callable[[Array, Array], Scalar],
    t: ScalarLike,
    x: Float[ArrayLike, "*shape"],
    *,
    relative: bool = True,
) -> Scalar:
    r"""The Fokker–Planck residual of the forward SDE of `process` for a candidate
    marginal log-density, by autodiff:

    $$r = \partial_t \ell + \nabla\cdot f + f\cdot\nabla\ell
      - \tfrac12 g^2(\Delta\ell + |\nabla\ell|^2), \qquad \ell = \log p_t(x),$$

    divided by the sum of the absolute values of its terms (see the module
    docstring) unless `relative=False`. Zero (to rounding) iff `log_prob` evolves as
    the marginals of $dx = f\,dt + g\,dW$ at $(t, x)$.

    **Arguments:**

    - `process`: a process with scalar (elementwise) coefficients: an
      `sf.AbstractScalarProcess` or an `sf.DeclaredSDE` (non-affine drifts work too —
      the divergence is taken by autodiff). For an `sf.DeclaredSDE`, whose diagonal
      diffusion may depend on the state (`.g2(t, x)`), the equation is
      $\partial_t p = -\nabla\cdot(f p) + \tfrac12\sum_i\partial_i^2(g_i^2 p)$,
      i.e. $r$ gains $-\tfrac12\sum_i[\partial_i^2 g_i^2
      + 2\,\partial_i g_i^2\,\partial_i\ell]$ and $g^2(\Delta\ell + |\nabla\ell|^2)$
      becomes $\sum_i g_i^2(\partial_i^2\ell + (\partial_i\ell)^2)$.
    - `log_prob`: the candidate marginal `log_prob(t, x) -> scalar`, time first.
    - `t`: a scalar time ($t = 0$ data).
    - `x`: one unbatched point, any shape.
    - `relative`: scale as described above (default) or return the raw residual.

    **Returns:** a scalar.

    ```python
    gm = sf.toy.GaussianMixture(w, m, c)
    lp = lambda t, x: gm.marginal(vp, t).log_prob(x)
    sf.checks.fokker_planck_residual(vp, lp, 0.3, x)   # ~1e-16 in float64
    ```
    """
    _require_scalar(process, "sf.checks.fokker_planck_residual")
    return _fp_for(process)(process.drift, process.g2, log_prob, t, x, relative)


def continuity_residual(
    velocity: Callable[[Array, Array], Array],
    log_prob: Callable[[Array, Array], Scalar],
    t: ScalarLike,
    x: Float[ArrayLike, "*shape"],
    *,
    relative: bool = True,
) -> Scalar:
    r"""The continuity-equation residual of a velocity field for a candidate
    log-density, $r = \partial_t\ell + \nabla\cdot v + v\cdot\nabla\ell$, divided by
    $|\partial_t\ell| + |\nabla\cdot v| + |v\cdot\nabla\ell|$ unless
    `relative=False`. Zero iff the flow $\dot x = v(t, x)$ transports `log_prob`.

    **Arguments:**

    - `velocity`: `velocity(t, x)` (e.g. `predictor.velocity`, the probability-flow
      ODE $f x - \tfrac12 g^2\nabla\log p_t$).
    - `log_prob`: `log_prob(t, x) -> scalar`.
    - `t`, `x`: a scalar time and one unbatched point.
    - `relative`: as for [`scoreflow.checks.fokker_planck_residual`][].

    **Returns:** a scalar.
    """
    return _fp(velocity, lambda s: jnp.zeros_like(s), log_prob, t, x, relative)


def reverse_fokker_planck_residual(
    process,
    score: Callable[[Array, Array], Array],
    log_prob: Callable[[Array, Array], Scalar],
    t: ScalarLike,
    x: Float[ArrayLike, "*shape"],
    *,
    relative: bool = True,
) -> Scalar:
    r"""The Fokker–Planck residual of the *reverse-time* SDE, in flipped time.

    The reverse SDE (Anderson 1982) $dx = [f - g^2 s(t, x)]\,dt + g\,d\bar W$, run
    from $t_1$ down to $t_0$, is in the flipped time $u = t_1 - t$ the ordinary SDE
    $dy = b(u, y)\,du + g(t_1 - u)\,dW_u$ with
    $b(u, y) = -f(t_1 - u, y) + g^2(t_1 - u)\,s(t_1 - u, y)$. Its marginals must be
    $q_u = p_{t_1 - u}$. This returns the (relative) FP residual of that SDE for
    $q_u(y) = $ `log_prob`$(t_1 - u, y)$, evaluated at $u = t_1 - t$: zero iff the
    reverse SDE driven by `score` retraces the forward marginals `log_prob`.

    **Arguments:** `process` (drift, `g2`, `t1`), `score(t, x)` (e.g. the exact
    mixture score), `log_prob(t, x)`, a forward time `t`, one point `x`,
    `relative`.

    **Returns:** a scalar.
    """
    _require_scalar(process, "sf.checks.reverse_fokker_planck_residual")
    t1 = process.t1

    def log_q(u, y):
        return log_prob(t1 - u, y)

    def drift(u, y):
        s = t1 - u
        return -process.reverse_drift(s, y, score(s, y), 1.0)

    def g2(u, *y):
        return process.g2(t1 - u, *y)

    t, x = _prepare(t, x)
    return _fp_for(process)(drift, g2, log_q, t1 - t, x, relative)


def _require_scalar(process, call):
    require(
        process,
        (AbstractScalarProcess, DeclaredSDE),
        call,
        need="a process with scalar (elementwise) coefficients",
    )


@functools.singledispatch
def _fp_for(process):
    """The FP residual for the process's diffusion: `g2(t)` for a scalar kernel."""
    return _fp


@_fp_for.register
def _(process: DeclaredSDE):
    """A declared SDE's `g2(t, x)` may depend on the state (diagonal D(x))."""
    return _fp_state


# --------------------------------------------------------------------------- #
# Symbolic check
# --------------------------------------------------------------------------- #


@dataclasses.dataclass(frozen=True)
class FokkerPlanckResult:
    r"""The outcome of [`scoreflow.checks.symbolic_fokker_planck`][].

    - `ok`: whether the residual is 0.
    - `residual`: the simplified FP residual in log form, multiplied by
      $\mathrm{Var}_t^2$ (the variance of the candidate marginal: $\sigma(t)^4$ for
      a point mass) to clear denominators — a sympy expression in `sf.t`, `sf.x`,
      `x_0` (point mass) or `m`, `s` (Gaussian data) and the parameter symbols;
      `0` when consistent.
    - `proof`: `"symbolic"` when sympy simplified the residual to 0 (or found it
      non-zero), `"numeric"` when sympy could not simplify it and the verdict comes
      from 40-digit evaluation at random points (`ok` then means
      $|r| < 10^{-25}$ relative at every point).
    - `log_density`: the candidate $\\log p_t(x)$ that was plugged in.
    - `conditions`: the coefficient conditions behind the residual, e.g.
      `{"alpha' - f alpha": ..., "(sigma^2)' - 2 f sigma^2 - g^2": ...}`, each
      simplified (both 0 iff consistent).
    - `sde`, `kernel`: descriptions of the SDE and of the kernel that were checked.
    """

    ok: bool
    residual: sympy.Expr
    proof: str
    log_density: sympy.Expr
    conditions: dict
    sde: str
    kernel: str
    data: str

    def __bool__(self):
        return self.ok

    def __str__(self):
        head = "consistent" if self.ok else "INCONSISTENT"
        lines = [
            f"Fokker-Planck check ({head}, {self.proof}): SDE {self.sde} "
            f"with kernel {self.kernel}, data {self.data}",
            f"  residual * Var_t^2 = {self.residual}",
        ]
        for k, v in self.conditions.items():
            lines.append(f"  {k} = {v}")
        return "\n".join(lines)


def _info(process):
    require(process, AbstractDeclaredProcess, "sf.checks.symbolic_fokker_planck")
    d, call = process.derivation, process.call
    if (
        d is None
        or d.drift is None
        or isinstance(d.drift, sympy.Symbol)
        and d.drift.name == "drift"
    ):
        raise ValueError(
            f"`sf.checks.symbolic_fokker_planck({call})`: this process was declared "
            "with Python callables and has no symbolic form; declare it with sympy "
            "expressions in sf.t (and sf.x), or use the numerical "
            "`sf.checks.fokker_planck_residual` with a candidate log-density."
        )
    return call, d


def _simplify(e, seconds=8.0):

    if e == 0:
        return sympy.S.Zero
    for fn in (
        sympy.cancel,
        sympy.simplify,
        lambda u: sympy.simplify(sympy.expand(u.rewrite(sympy.exp), power_exp=True)),
        lambda u: sympy.simplify(
            sympy.expand_log(sympy.powsimp(u, force=True), force=True)
        ),
    ):
        out = try_sympy(lambda: fn(e), seconds)
        if out is not None and out == 0:
            return sympy.S.Zero
        if out is not None and sympy.count_ops(out) < sympy.count_ops(e):
            e = out
    return e


def _numerically_zero(
    expr, subs, t_lo, t_hi, scale_expr, seeds=(0.137, 0.42, 0.773, 0.91)
):
    """40-digit evaluation of `expr` at a few points; True iff |expr| is below
    1e-25 times `scale_expr` everywhere."""
    expr = expr.subs(subs)
    scale_expr = scale_expr.subs(subs)
    free = sorted(expr.free_symbols | scale_expr.free_symbols, key=lambda s: s.name)
    with mpmath.workdps(40):
        for i, u in enumerate(seeds):
            point = {}
            for j, s in enumerate(free):
                if s == T:
                    point[s] = sympy.Float(t_lo + (t_hi - t_lo) * u, 40)
                else:  # x, x_0, m, s: moderate positive/negative values
                    v = ((i + 1) * 0.731 + (j + 1) * 0.377) % 2.0 + 0.25
                    point[s] = sympy.Float(v if j % 2 else -v, 40)
            try:
                val = complex(sympy.N(expr.subs(point), 40))
                ref = complex(sympy.N(scale_expr.subs(point), 40))
            except (TypeError, ValueError, ZeroDivisionError):
                return False
            if not abs(val) <= 1e-25 * max(abs(ref), 1e-30):
                return False
    return True


_POLY_SYMS = {
    "point": (X, sympy.Symbol("x_0", real=True)),
    "gaussian": (X, sympy.Symbol("m", real=True)),
}


def _affine_part(drift):
    """f(t) if drift = f(t) x, else None."""
    f = sympy.diff(drift, X)
    if sympy.simplify(sympy.diff(f, X)) != 0 or sympy.simplify(drift.subs(X, 0)) != 0:
        return None
    return f


@functools.lru_cache(maxsize=256)
def _symbolic_fp(drift, g2, alpha, sigma2, data):
    r"""The cached symbolic core: drift f(t, x), g2(t) and kernel alpha(t), sigma2(t)
    -> [(monomial, simplified coefficient, raw coefficient)], log-density,
    conditions.

    For an affine drift $f(t) x$ the log-form residual times $V^2$ ($V$ the
    variance of the candidate marginal $N(\mu, V)$, $\mu = \alpha\,x_0$) is
    exactly $\tfrac12 C_V\,((x - \mu)^2 - V) + C_\alpha\,x_0 (x - \mu) V$ with
    $C_\alpha = \alpha' - f\alpha$ and $C_V = V' - 2 f V - g^2$ (an identity in
    generic functions, checked in the tests), so only the two conditions are
    simplified. Otherwise the full residual is expanded and simplified
    coefficient by coefficient as a polynomial in $x$ and $x_0$.
    """
    X0 = _POLY_SYMS[data][1]
    s = sympy.Symbol("s", positive=True)
    if data == "point":
        mean, var = alpha * X0, sigma2
    else:
        mean, var = alpha * X0, alpha**2 * s**2 + sigma2
    syms = _POLY_SYMS[data]
    f_lin = _affine_part(drift)
    if f_lin is not None:
        c_alpha = _simplify(sympy.diff(alpha, T) - f_lin * alpha)
        c_s = _simplify(sympy.diff(sigma2, T) - 2 * f_lin * sigma2 - g2)
        conds = {"alpha' - f alpha": c_alpha, "(sigma^2)' - 2 f sigma^2 - g^2": c_s}
        c_v = c_s if data == "point" else 2 * alpha * s**2 * c_alpha + c_s
        u = X - mean
        resid = sympy.expand(c_v * (u**2 - var) / 2 + c_alpha * X0 * u * var)
        terms = sympy.Poly(resid, *syms).terms()
        out = []
        for monom, coeff in terms:
            mono = sympy.Mul(*[sym**k for sym, k in zip(syms, monom)])
            c = sympy.S.Zero if c_alpha == 0 and c_s == 0 else _simplify(coeff, 4.0)
            out.append((mono, c, coeff))
        V = sympy.Symbol("V", positive=True)
        ell = -((X - mean) ** 2) / (2 * V) - sympy.log(V) / 2
        ell = ell.subs(V, var) - sympy.log(2 * sympy.pi) / 2
        return tuple(out), ell, conds
    V = sympy.Symbol("V", positive=True)  # stands for Var_t after differentiating
    Vt = sympy.Function("V")(T)
    M = sympy.Function("M")(T)
    ell = -((X - M) ** 2) / (2 * Vt) - sympy.log(Vt) / 2 - sympy.log(2 * sympy.pi) / 2
    d_ell = sympy.diff(ell, X)
    resid = (
        sympy.diff(ell, T)
        + sympy.diff(drift, X)
        + drift * d_ell
        - g2 / 2 * (sympy.diff(ell, X, 2) + d_ell**2)
    )
    # Plug in the kernel: M' = d(mean)/dt, V' = d(var)/dt, then M, V themselves
    # (V kept as a symbol so the residual is a polynomial in x, x0 over Q(t, V)).
    resid = resid.subs(
        {
            sympy.Derivative(M, T): sympy.diff(mean, T),
            sympy.Derivative(Vt, T): sympy.diff(var, T),
        }
    ).subs({M: mean, Vt: V})
    resid = sympy.expand(resid * V**2)
    try:
        terms = sympy.Poly(resid, *syms).terms()
    except sympy.PolynomialError:  # a drift that is not polynomial in x
        terms = [((0, 0), resid)]
    out = []
    for monom, coeff in terms:
        raw = coeff.subs(V, var)
        mono = sympy.Mul(*[sym**k for sym, k in zip(syms, monom)])
        out.append((mono, _simplify(raw), raw))
    conds = {"(drift not affine in x)": sympy.nan}
    return tuple(out), ell.subs({M: mean, Vt: var}), conds


def _assemble(terms, subs, t_lo, t_hi):
    """The residual from the simplified coefficients; a coefficient sympy could not
    simplify to 0 is evaluated numerically (40 digits) before it is reported."""
    total, proof = sympy.S.Zero, "symbolic"
    for mono, c, raw in terms:
        if c == 0:
            continue
        if _numerically_zero(c, subs, t_lo, t_hi, _abs_scale(raw)):
            proof = "numeric"
            continue
        total += c * mono
    return sympy.factor_terms(total), proof


def _abs_scale(expr):
    """A magnitude to compare a coefficient against: the sum of |terms|."""
    args = sympy.Add.make_args(sympy.expand(expr))
    return sympy.Add(*[sympy.Abs(a) for a in args])


def _symbolic_stationary(process, call):
    s = process.symbolic
    ell = process.prior.expr
    p = sympy.exp(ell)
    flux = s.f * p - sympy.diff(s.g2 * p, X) / 2
    residual = _simplify(-sympy.diff(flux, X) / p)
    cond = _simplify(flux / p)
    return FokkerPlanckResult(
        ok=residual == 0,
        residual=residual,
        proof="symbolic",
        log_density=ell,
        conditions={"flux / p = f - (g^2 p)' / (2 p)": cond},
        sde=call,
        kernel="stationary density",
        data="stationary",
    )


def symbolic_fokker_planck(
    process,
    *,
    kernel=None,
    data: Literal["point", "gaussian"] = "point",
    substitute: bool | None = None,
) -> FokkerPlanckResult:
    r"""Check with sympy that the Gaussian kernel solves the Fokker–Planck equation
    of the forward SDE.

    Coefficients are scalar and act on each coordinate alike, so the check is done
    in one dimension. The candidate marginal is the kernel's
    $p_t(x) = N(x;\ \alpha(t) x_0,\ \sigma(t)^2)$ for a point mass at the symbol
    $x_0$ (`data="point"`; by linearity of the FP equation, then every data
    distribution is transported correctly), or
    $N(x;\ \alpha m,\ \alpha^2 s^2 + \sigma^2)$ for data $N(m, s^2)$
    (`data="gaussian"`). It is plugged into the log-form residual
    $\partial_t\ell + \partial_x f + f\,\partial_x\ell - \tfrac12 g^2
    (\partial_x^2\ell + (\partial_x\ell)^2)$, multiplied by $\mathrm{Var}_t^2$ to
    clear denominators, and each coefficient of the resulting polynomial in $x$
    and $x_0$ (or $m$) is simplified. For an affine drift $f(t)x$ the residual
    vanishes iff $\dot\alpha = f\alpha$ and $(\sigma^2)' = 2f\sigma^2 + g^2$, which
    are reported as `conditions`.

    **Arguments:**

    - `process`: a process declared with sympy expressions (its drift and $g^2$
      are checked).
    - `kernel`: another process whose kernel $(\alpha, \sigma)$ to plug in
      (default: `process`'s own derived kernel). Use this to test a hand-derived
      kernel, e.g. `symbolic_fokker_planck(my_sde, kernel=sf.Interpolant(a, s))`.
    - `data`: `"point"` (default) or `"gaussian"`.
    - `substitute`: substitute the parameter values (`True`) or keep parameters
      as symbols, proving consistency for all values (`False`). Default: symbols
      for a self-check, values when `kernel` is another process (two processes may
      share parameter names with different values).

    **Returns:** a [`scoreflow.checks.FokkerPlanckResult`][] with `.ok` and
    `.residual` (0 when consistent). Results are cached per symbolic declaration,
    so checking many parameter draws of one family is cheap.

    For a process without a Gaussian kernel whose prior is its stationary density
    ([`scoreflow.StationaryDensity`][]), the check is instead that $p_\infty$ solves
    the stationary equation $0 = -\partial_x(f p) + \tfrac12\partial_x^2(g^2 p)$
    (residual divided by $p$; `conditions` holds the zero-flux condition).

    **Raises:** `ValueError` for a process declared with callables, or without a
    Gaussian kernel and without a stationary-density prior.
    """
    _require_scalar(process, "sf.checks.symbolic_fokker_planck")
    if data not in ("point", "gaussian"):
        raise ValueError(
            f"`sf.checks.symbolic_fokker_planck(data={data!r})`: expected 'point' or "
            "'gaussian'."
        )
    call, d = _info(process)
    kernel_process = process if kernel is None else kernel
    kcall, kd = _info(kernel_process)
    if kd.alpha is None and kernel is None:
        if process.symbolic.stationary_log_density is not None:
            return _symbolic_stationary(process, call)
    if kd.alpha is None:
        raise ValueError(
            f"`sf.checks.symbolic_fokker_planck`: `{kcall}` has no Gaussian "
            f"kernel ({kd.gaussian_reason}); the symbolic check needs one. Use the "
            "numerical `sf.checks.fokker_planck_residual` with a candidate density."
        )
    if substitute is None:
        substitute = kernel is not None and kernel is not process

    def values(proc, _):
        return proc.exact_params()

    info = kinfo = None
    all_vals = {**values(process, info), **values(kernel_process, kinfo)}
    drift, g2 = d.drift, d.g2
    alpha, sigma2 = kd.alpha, kd.sigma**2
    if substitute:
        drift = drift.subs(values(process, info))
        g2 = g2.subs(values(process, info))
        alpha = alpha.subs(values(kernel_process, kinfo))
        sigma2 = sigma2.subs(values(kernel_process, kinfo))
    t_lo = max(process.t0, kernel_process.t0)
    t_hi = min(process.t1, kernel_process.t1)
    subs = tuple(sorted(all_vals.items(), key=lambda kv: kv[0].name))
    terms, ell, conds = _symbolic_fp(drift, g2, alpha, sigma2, data)
    residual, proof = _assemble(terms, dict(subs), float(t_lo), float(t_hi))
    return FokkerPlanckResult(
        ok=residual == 0,
        residual=residual,
        proof=proof,
        log_density=ell,
        conditions=conds,
        sde=call,
        kernel=kcall,
        data=data if data == "point" else "N(m, s^2)",
    )
