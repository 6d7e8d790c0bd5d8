r"""Stochastic interpolants between two data sets (Albergo, Boffi & Vanden-Eijnden 2023).

$$x_t = \alpha(t)\,x_0 + \beta(t)\,x_1 + \gamma(t)\,z,\qquad z \sim N(0, I),
\qquad t \in [0, 1],$$

with $x_0 \sim \rho_0$ (the *source* set) at $t = 0$ and $x_1 \sim \rho_1$ (the
*target* set) at $t = 1$. Declared with sympy expressions in `sf.t`; derivatives are
derived by sympy and compiled with sympy2jax, exactly like the processes.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import sympy
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .._custom_types import Scalar, ScalarLike
from .._process import Expr, _derive, params_dict
from .._symbols import t as T_SYM

_NAMES = ("alpha", "beta", "gamma")
_ENDS = {"alpha": (1, 0), "beta": (0, 1), "gamma": (0, 0)}


def brownian_gamma(a: float = 1.0) -> sympy.Expr:
    r"""The Brownian-bridge noise scale $\gamma(t) = \sqrt{a\,t(1 - t)}$ (a sympy
    expression in `sf.t`).

    With $\alpha = 1 - t$, $\beta = t$ this is the Brownian bridge of diffusion
    coefficient $\sigma = \sqrt a$ pinned at $x_0$ and $x_1$: the Schrödinger-bridge
    interpolant of Tong et al. (2024), whose entropic-OT coupling has
    regularisation $2\sigma^2 = 2a$. Its derivative is singular at both ends,
    $\gamma\dot\gamma = a(1 - 2t)/2$ is not.

    **Raises:** `ValueError` if `a` is not a finite number $> 0$.
    """
    if not (np.isfinite(a) and a > 0):
        raise ValueError(f"`sf.brownian_gamma(a=...)` must be > 0, got a={a!r}.")
    a = sympy.Rational(repr(float(a)))
    return sympy.sqrt(a * T_SYM * (1 - T_SYM))


def _gamma_expr(gamma):
    if isinstance(gamma, str) and gamma == "brownian":
        return brownian_gamma()
    return gamma


def _lambdify(expr, dtype=np.float64):
    fn = sympy.lambdify(T_SYM, expr, modules="numpy")

    def call(ts):
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = np.asarray(fn(np.asarray(ts, dtype)))
        return np.broadcast_to(out, np.shape(ts))

    return call


def _end_value(expr, point):
    """The value of `expr` at t = point, by substitution or else a one-sided limit."""
    v = expr.subs(T_SYM, point)
    if v.has(sympy.nan, sympy.zoo, sympy.oo, -sympy.oo) or not v.is_number:
        direction = "+" if point == 0 else "-"
        v = _derive.try_sympy(lambda: sympy.limit(expr, T_SYM, point, dir=direction))
    if v is None:
        return None
    try:
        c = complex(v.evalf())
    except (TypeError, ValueError):
        return None
    return c.real if abs(c.imag) < 1e-12 else c


class StochasticInterpolant(eqx.Module):
    r"""A stochastic interpolant between two data sets (Albergo, Boffi &
    Vanden-Eijnden 2023):

    $$x_t = \alpha(t)\,x_0 + \beta(t)\,x_1 + \gamma(t)\,z,\qquad z \sim N(0, I),$$

    with $\alpha(0) = \beta(1) = 1$, $\alpha(1) = \beta(0) = 0$,
    $\gamma(0) = \gamma(1) = 0$ and $\gamma \ge 0$.

    **Time convention.** Here $t = 0$ is the *source* data set $x_0 \sim \rho_0$
    and $t = 1$ the *target* $x_1 \sim \rho_1$; the interpolant transports
    $\rho_0$ to $\rho_1$ as $t$ increases. This is the same direction as every
    scoreflow process (data at $t = 0$, the prior at $t = 1$): with
    $x_1 \sim N(0, I)$ and $\gamma = 0$ it *is* the ordinary interpolant
    `sf.Interpolant(alpha, sigma=beta)` ($\beta$ playing $\sigma$, $x_1$ playing
    $\varepsilon$), and `sf.StochasticInterpolant.linear()` is `sf.RectifiedFlow()`.

    Derivatives ($\dot\alpha$, $\dot\beta$, $\dot\gamma$ and $\tfrac{d}{dt}\gamma^2$)
    are derived by sympy and compiled with sympy2jax, like every declared process.

    **Arguments:**

    - `alpha`, `beta`: sympy expressions in `sf.t` (or strings).
    - `gamma`: a sympy expression in `sf.t`, `0` (a deterministic interpolant), or
      `"brownian"` for [`scoreflow.brownian_gamma`][]`()` $= \sqrt{t(1 - t)}$.
    - `params`: `{symbol or name: value}` for named constants; they become array
      leaves (`interp.params`).

    **Raises:** `ValueError` (quoting the expression) if an endpoint condition
    fails, $\gamma < 0$ somewhere on $[0, 1]$, or a coefficient is not finite on
    $(0, 1)$; free symbols other than `t` (and `params`) are rejected as for
    [`scoreflow.Interpolant`][].

    ```python
    import scoreflow as sf
    si = sf.StochasticInterpolant(1 - sf.t, sf.t, sf.brownian_gamma(0.5))
    si.symbolic["gamma_dot"]
    ```

    [arXiv:2303.08797](https://arxiv.org/abs/2303.08797)
    """

    params: dict[str, Array]
    _fns: dict[str, Expr]
    _exprs: tuple[tuple[str, sympy.Expr], ...] = eqx.field(static=True)
    call: str = eqx.field(static=True)
    has_noise: bool = eqx.field(static=True)
    singular_ends: bool = eqx.field(static=True)

    def __init__(self, alpha, beta, gamma=0, *, params: Mapping | None = None):
        gamma = _gamma_expr(gamma)
        syms, vals = params_dict(params, "sf.StochasticInterpolant")
        call0 = f"sf.StochasticInterpolant(alpha={alpha}, beta={beta}, gamma={gamma})"
        exprs = {
            name: _derive.to_expr(
                v, call=call0, argname=name, allowed=("t",), params=syms
            )
            for name, v in zip(_NAMES, (alpha, beta, gamma))
        }
        call = (
            f"sf.StochasticInterpolant(alpha={exprs['alpha']}, beta={exprs['beta']}, "
            f"gamma={exprs['gamma']})"
        )
        for name in _NAMES:
            exprs[f"{name}_dot"] = sympy.diff(exprs[name], T_SYM)
        exprs["gamma2_dot"] = sympy.simplify(sympy.diff(exprs["gamma"] ** 2, T_SYM))
        subs = {s: float(vals[s.name]) for s in syms}
        numeric = {k: e.subs(subs) for k, e in exprs.items()}
        _check_declaration(call, numeric)
        gd = _lambdify(numeric["gamma_dot"])(np.array([0.0, 1.0]))
        self.params = vals
        self._fns = {k: Expr(e) for k, e in exprs.items()}
        self._exprs = tuple(exprs.items())
        self.call = call
        self.has_noise = not (numeric["gamma"] == 0)
        self.singular_ends = bool(self.has_noise and not np.all(np.isfinite(gd)))

    # ---- built-ins ----------------------------------------------------------

    @classmethod
    def linear(cls, gamma=0) -> StochasticInterpolant:
        r"""The linear interpolant $x_t = (1 - t)x_0 + t x_1 + \gamma(t) z$
        (with `gamma=sf.brownian_gamma(sigma**2)`: Tong et al.'s Schrödinger-bridge
        CFM path)."""
        return cls(1 - T_SYM, T_SYM, gamma)

    @classmethod
    def trig(cls, gamma=0) -> StochasticInterpolant:
        r"""The trigonometric interpolant
        $x_t = \cos(\tfrac{\pi t}{2})x_0 + \sin(\tfrac{\pi t}{2})x_1 + \gamma(t) z$
        (variance-preserving for independent unit-variance endpoints and $\gamma=0$)."""
        half = sympy.pi / 2 * T_SYM
        return cls(sympy.cos(half), sympy.sin(half), gamma)

    # ---- coefficients -------------------------------------------------------

    def _eval(self, name: str, t) -> Scalar:
        t = jnp.asarray(t)
        if not jnp.issubdtype(t.dtype, jnp.inexact):
            t = t.astype(jnp.result_type(float))
        return self._fns[name](t, self.params)

    def alpha(self, t: ScalarLike) -> Scalar:
        r"""$\alpha(t)$, the weight of the source point $x_0$."""
        return self._eval("alpha", t)

    def beta(self, t: ScalarLike) -> Scalar:
        r"""$\beta(t)$, the weight of the target point $x_1$."""
        return self._eval("beta", t)

    def gamma(self, t: ScalarLike) -> Scalar:
        r"""$\gamma(t) \ge 0$, the scale of the latent noise $z$."""
        return self._eval("gamma", t)

    def alpha_dot(self, t: ScalarLike) -> Scalar:
        r"""$\dot\alpha(t)$ (derived by sympy)."""
        return self._eval("alpha_dot", t)

    def beta_dot(self, t: ScalarLike) -> Scalar:
        r"""$\dot\beta(t)$ (derived by sympy)."""
        return self._eval("beta_dot", t)

    def gamma_dot(self, t: ScalarLike) -> Scalar:
        r"""$\dot\gamma(t)$ (derived by sympy). Infinite at $t \in \{0, 1\}$ for
        $\gamma = \sqrt{a t(1-t)}$ (`interp.singular_ends`); use
        [`gamma2_dot`][scoreflow.StochasticInterpolant.gamma2_dot] where the product
        $\gamma\dot\gamma$ is what is needed."""
        return self._eval("gamma_dot", t)

    def gamma2_dot(self, t: ScalarLike) -> Scalar:
        r"""$\tfrac{d}{dt}\gamma(t)^2 = 2\gamma\dot\gamma$, simplified by sympy
        (finite at the ends for the Brownian $\gamma$)."""
        return self._eval("gamma2_dot", t)

    @property
    def symbolic(self) -> dict[str, sympy.Expr]:
        """The sympy expressions: `alpha`, `beta`, `gamma`, their `*_dot`
        derivatives and `gamma2_dot`."""
        return dict(self._exprs)

    def __repr__(self):
        return self.call

    # ---- samples and regression targets --------------------------------------

    def _coef(self, name, t, x):
        c = self._eval(name, jnp.asarray(t, x.dtype))
        return c.reshape(c.shape + (1,) * (x.ndim - c.ndim))

    def mean(
        self,
        t: ScalarLike,
        x0: Float[ArrayLike, "*shape"],
        x1: Float[ArrayLike, "*shape"],
    ) -> Float[Array, "*shape"]:
        r"""$I(t, x_0, x_1) = \alpha(t)x_0 + \beta(t)x_1$. `t` is a scalar or has the
        leading (batch) shape of `x0`."""
        x0, x1 = _floats(x0, x1)
        return self._coef("alpha", t, x0) * x0 + self._coef("beta", t, x0) * x1

    def interpolate(
        self,
        key: PRNGKeyArray,
        x0: Float[ArrayLike, "*shape"],
        x1: Float[ArrayLike, "*shape"],
        t: ScalarLike,
    ) -> tuple[Float[Array, "*shape"], Float[Array, "*shape"]]:
        r"""Draw $x_t = \alpha(t)x_0 + \beta(t)x_1 + \gamma(t)z$, $z \sim N(0, I)$.

        **Arguments:** `key`; `x0` (source) and `x1` (target) of the same shape,
        one example or a batch; `t` in $[0, 1]$, a scalar or of the batch shape.

        **Returns:** `(x_t, z)`, both shaped like `x0`.
        """
        x0, x1 = _floats(x0, x1)
        z = jr.normal(key, x0.shape, x0.dtype)
        return self.mean(t, x0, x1) + self._coef("gamma", t, x0) * z, z

    def velocity_target(
        self,
        t: ScalarLike,
        x0: Float[ArrayLike, "*shape"],
        x1: Float[ArrayLike, "*shape"],
        z: Float[ArrayLike, "*shape"],
    ) -> Float[Array, "*shape"]:
        r"""The conditional velocity $\partial_t I + \dot\gamma z =
        \dot\alpha x_0 + \dot\beta x_1 + \dot\gamma z$, whose conditional
        expectation given $x_t$ is the transport velocity $b(t, x)$.

        For the linear path with $\gamma = \sigma\sqrt{t(1-t)}$ it equals Tong et
        al.'s $u_t = \tfrac{1 - 2t}{2t(1 - t)}(x_t - (t x_1 + (1 - t)x_0)) + x_1 - x_0$.
        Infinite at $t \in \{0, 1\}$ when `singular_ends`: draw $t$ inside.
        """
        x0, x1 = _floats(x0, x1)
        z = jnp.asarray(z, x0.dtype)
        out = self._coef("alpha_dot", t, x0) * x0 + self._coef("beta_dot", t, x0) * x1
        if self.has_noise:
            out = out + self._coef("gamma_dot", t, x0) * z
        return out

    def score_from_denoiser(
        self, t: ScalarLike, eta: Float[ArrayLike, "*shape"]
    ) -> Float[Array, "*shape"]:
        r"""The score $\nabla\log\rho_t = -\eta/\gamma(t)$ from the denoiser
        $\eta(t, x) = E[z \mid x_t = x]$. Where $\gamma(t) = 0$ (the ends) it
        returns 0 rather than a division by zero: there the score is not
        determined by $\eta$, and the dynamics here only need $\epsilon\,s$ with
        a finite limit."""
        eta = jnp.asarray(eta)
        g = self._coef("gamma", t, eta)
        pos = g > 0
        return jnp.where(pos, -eta / jnp.where(pos, g, 1), 0)


def _floats(x0, x1):
    x0, x1 = jnp.asarray(x0), jnp.asarray(x1)
    dtype = jnp.result_type(x0.dtype, x1.dtype, float)
    if x0.shape != x1.shape:
        raise ValueError(
            f"x0 and x1 must have the same shape, got {x0.shape} and {x1.shape}."
        )
    return x0.astype(dtype), x1.astype(dtype)


def _check_declaration(call: str, numeric: dict):
    for name in _NAMES:
        for point, want in zip((0, 1), _ENDS[name]):
            got = _end_value(numeric[name], point)
            if got is None:
                continue  # sympy could not decide: never raise on an unknown
            if isinstance(got, complex) or not abs(got - want) <= 1e-9:
                raise ValueError(
                    f"`{call}`: need {name}({point}) = {want}, but {name} = "
                    f"{numeric[name]} gives {name}({point}) = {got}."
                )
    grid = np.linspace(0.0, 1.0, 257)
    interior = grid[1:-1]
    g = _lambdify(numeric["gamma"], np.complex128)(grid)
    if np.iscomplexobj(g) and np.any(np.abs(np.imag(g)) > 1e-12):
        i = int(np.argmax(np.abs(np.imag(g))))
        raise ValueError(
            f"`{call}`: gamma = {numeric['gamma']} is not real on [0, 1] (at "
            f"t = {grid[i]:.4g} it is {complex(g[i]):.4g})."
        )
    g = np.real(g)
    if np.any(g < -1e-12):
        i = int(np.argmin(g))
        raise ValueError(
            f"`{call}`: need gamma(t) >= 0 on [0, 1], but gamma = {numeric['gamma']} "
            f"is {g[i]:.4g} at t = {grid[i]:.4g}."
        )
    for name, e in numeric.items():
        v = _lambdify(e, np.complex128)(interior)
        if not np.all(np.isfinite(v)):
            i = int(np.argmin(np.isfinite(v)))
            raise ValueError(
                f"`{call}`: {name} = {e} is not finite at t = {interior[i]:.4g} in "
                "(0, 1)."
            )
