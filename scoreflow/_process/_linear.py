r"""Linear SDEs with matrix coefficients, $dx = F(t)\,x\,dt + G(t)\,dW$.

The state has a leading *block* axis of size $k$: one state is an array of shape
`(k, *data_shape)` and the $k \times k$ matrices $F$, $G$ act on that axis only (the
identity on the data dimensions), as in critically-damped Langevin diffusion where
the state is the stacked pair (position, velocity). The transition kernel from a
data point is Gaussian,

$$x_t \mid x_0 \sim N\big(A(t)\,m_0(x_0),\ \Sigma(t)\big),\qquad
\dot A = F A,\ A(0) = I,\qquad
\dot\Sigma = F\Sigma + \Sigma F^\top + G G^\top,\ \Sigma(0) = \Sigma_0,$$

with $m_0(x_0)$ the data embedded in the state and $\Sigma_0$ the covariance of the
rows that are not data (e.g. the initial velocity of CLD, marginalised). scoreflow
derives $A$ and $\Sigma$ with sympy when $F$ is constant ($A = e^{Ft}$,
$\Sigma = A\Sigma_0A^\top + \int_0^t e^{Fu} G G^\top(t - u)\, e^{F^\top u}\,du$) and
otherwise integrates the moment ODEs above with diffrax.
"""

import abc
import dataclasses
import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import lineax as lx
import numpy as np
import sympy
from equinox import AbstractVar
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .._custom_types import Scalar, ScalarLike
from .._symbols import t as T_SYM
from . import _derive
from ._expr import MatrixCall, MatrixExpr
from ._kernel import solve_moments
from ._ladder import AbstractGaussianProcess

_U = sympy.Symbol("u", nonnegative=True)  # integration variable (never user-facing)
_VERSION = 2  # part of the derivation's disk-cache key: bump when its logic changes


def apply_blocks(m: Array, x: Array) -> Array:
    """Apply a `(k, k)` matrix to the leading block axis of `x` (shape `(k, ...)`)."""
    return jnp.tensordot(m.astype(x.dtype), x, axes=(1, 0))


class AbstractLinearProcess(AbstractGaussianProcess):
    r"""A forward process $dx = F(t)\,x\,dt + G(t)\,dW$ with $k \times k$ matrix
    coefficients acting on the leading block axis of the state (shape
    `(k, *data_shape)`), time running from data ($t = 0$) to the prior ($t = t_1$).

    The kernel is $x_t = A(t)\,m_0(x_0) + L(t)\,\varepsilon$, $\varepsilon \sim N(0,
    I)$, with $L$ the Cholesky factor of the kernel covariance $\Sigma(t)$. Unlike
    [`scoreflow.AbstractProcess`][] there is no scalar $\alpha$, $\sigma$: the
    reverse dynamics use $G G^\top \nabla\log p_t$ in place of $g^2\nabla\log p_t$.

    A concrete process owes `F`, `G`, `mean_matrix`, `cov`, `num_blocks`,
    `data_row`, `t0`, `t1`.
    """

    t0: AbstractVar[float]
    t1: AbstractVar[float]

    @property
    @abc.abstractmethod
    def num_blocks(self) -> int:
        """$k$, the size of the block axis."""

    @property
    @abc.abstractmethod
    def data_row(self) -> int | None:
        """`None` if a data point is a whole state `(k, *data_shape)`; else the row
        of the block axis that holds the data (the other rows start at mean 0 with
        the covariance `init_cov`)."""

    @abc.abstractmethod
    def F(self, t: ScalarLike) -> Float[Array, " k k"]:
        r"""Drift matrix $F(t)$."""

    @abc.abstractmethod
    def G(self, t: ScalarLike) -> Float[Array, " k k"]:
        r"""Diffusion matrix $G(t)$."""

    @abc.abstractmethod
    def mean_matrix(self, t: ScalarLike) -> Float[Array, " k k"]:
        r"""$A(t)$: the kernel mean is $A(t)\,m_0(x_0)$."""

    @abc.abstractmethod
    def cov(self, t: ScalarLike) -> Float[Array, " k k"]:
        r"""$\Sigma(t)$: the kernel covariance (per data coordinate)."""

    # ---- derived ------------------------------------------------------------

    def diffusion_matrix(self, t: ScalarLike) -> Float[Array, " k k"]:
        r"""$G(t)$ (alias of `G`)."""
        return self.G(t)

    def diffusion_cov(self, t: ScalarLike) -> Float[Array, " k k"]:
        r"""$G(t)\,G(t)^\top$."""
        g = self.G(t)
        return g @ g.T

    def chol(self, t: ScalarLike) -> Float[Array, " k k"]:
        r"""$L(t)$, the lower Cholesky factor of $\Sigma(t)$ (needs $t > 0$ where
        $\Sigma(0)$ is singular)."""
        return jnp.linalg.cholesky(self.cov(t))

    def drift(self, t: ScalarLike, x: Float[ArrayLike, " k *shape"]) -> Array:
        r"""$F(t)\,x$ on the block axis."""
        x = jnp.asarray(x)
        return apply_blocks(self.F(jnp.asarray(t, x.dtype)), x)

    def diffusion_apply(self, t: ScalarLike, z: Float[ArrayLike, " k *shape"]) -> Array:
        r"""$G(t)\,z$ on the block axis (e.g. a Brownian increment)."""
        z = jnp.asarray(z)
        return apply_blocks(self.G(jnp.asarray(t, z.dtype)), z)

    def diffusion_operator(self, t: ScalarLike, x: Float[ArrayLike, " k *shape"]):
        r"""$G(t)$ on the block axis, as a lineax operator on increments shaped like
        `x`."""
        x = jnp.asarray(x)
        g = self.G(jnp.asarray(t, x.dtype)).astype(x.dtype)
        return lx.FunctionLinearOperator(
            lambda z: apply_blocks(g, z), jax.ShapeDtypeStruct(x.shape, x.dtype)
        )

    def diffusion_cov_apply(
        self,
        t: ScalarLike,
        x: Float[ArrayLike, " k *shape"],
        v: Float[ArrayLike, " k *shape"],
    ) -> Array:
        r"""$G(t) G(t)^\top v$ on the block axis (e.g. $v$ the score in the reverse
        drift)."""
        v = jnp.asarray(v)
        return apply_blocks(self.diffusion_cov(jnp.asarray(t, v.dtype)), v)

    def kernel_noise(self, key, t, shape, dtype):
        r"""$L(t)\,z$, $z \sim N(0, I)$ of the state shape `(k, *data_shape)`."""
        z = jr.normal(key, shape, dtype)
        return apply_blocks(self.chol(t), z).astype(dtype)

    def _why_not(self, rung):
        return (
            f"{self!r} is a matrix linear SDE (no scalar alpha, sigma), which it "
            "does not support yet. Its kernel is available directly: "
            "`process.mean_matrix(t)`, `process.cov(t)`, `process.kernel_score`"
        )

    def embed(self, x0: Float[ArrayLike, "..."]) -> Array:
        r"""$m_0(x_0)$: a data point as a state of shape `(k, *data_shape)`."""
        x0 = jnp.asarray(x0)
        if self.data_row is None:
            if x0.ndim == 0 or x0.shape[0] != self.num_blocks:
                raise ValueError(
                    f"{self!r}: a data point is a whole state of shape (k, ...) with "
                    f"k = {self.num_blocks}, got shape {x0.shape}."
                )
            return x0
        out = jnp.zeros((self.num_blocks, *x0.shape), x0.dtype)
        return out.at[self.data_row].set(x0)

    def sample_marginal(
        self, key: PRNGKeyArray, x0: Float[ArrayLike, "..."], t: ScalarLike
    ) -> tuple[Array, Array]:
        r"""Draw $x_t = A(t)\,m_0(x_0) + L(t)\,\varepsilon$ for one data point.

        **Arguments:** `key`; `x0` one data point (shape `data_shape`, or the whole
        state `(k, *data_shape)` when `data_row` is `None`); `t` a scalar time in
        $(0, t_1]$ ($t = 0$ is data).

        **Returns:** `(x_t, eps)`, both of the state shape `(k, *data_shape)`.
        """
        x0 = jnp.asarray(x0)
        if not jnp.issubdtype(x0.dtype, jnp.floating):
            x0 = x0.astype(jnp.result_type(float))
        m0 = self.embed(x0)
        t = jnp.asarray(t, m0.dtype)
        eps = jr.normal(key, m0.shape, m0.dtype)
        xt = apply_blocks(self.mean_matrix(t), m0) + apply_blocks(self.chol(t), eps)
        return xt, eps

    def kernel_score(self, t: ScalarLike, x: Array, x0: Array) -> Array:
        r"""$\nabla_x \log p(x_t = x \mid x_0) = -\Sigma(t)^{-1}(x - A(t) m_0(x_0))$."""
        x = jnp.asarray(x)
        t = jnp.asarray(t, x.dtype)
        r = x - apply_blocks(self.mean_matrix(t), self.embed(jnp.asarray(x0, x.dtype)))
        return -apply_blocks(jnp.linalg.inv(self.cov(t)), r)

    def prior_cov(self) -> Float[Array, " k k"]:
        r"""Covariance $\Sigma(t_1)$ of the prior $N(0, \Sigma(t_1) \otimes I)$."""
        return self.cov(self.t1)

    def prior_sample(
        self, key: PRNGKeyArray, shape: tuple[int, ...], dtype=None
    ) -> Array:
        r"""Draw one state from the prior $N(0, \Sigma(t_1) \otimes I)$; `shape` is the
        state shape `(k, *data_shape)` (vmap over keys for a batch).

        **Raises:** `ValueError` if `shape[0]` is not $k$."""
        shape = tuple(shape)
        if not shape or shape[0] != self.num_blocks:
            raise ValueError(
                f"{self!r}.prior_sample: shape must be the state shape (k, ...) with "
                f"k = {self.num_blocks}, got {shape}; vmap over keys for a batch."
            )
        dtype = jnp.result_type(float) if dtype is None else dtype
        z = jr.normal(key, shape, dtype)
        lo = jnp.linalg.cholesky(self.prior_cov()).astype(dtype)
        return apply_blocks(lo, z)

    def prior_log_prob(self, x: Float[ArrayLike, " k *shape"]) -> Scalar:
        r"""Log density of one state `x` under $N(0, \Sigma(t_1) \otimes I)$."""
        x = jnp.asarray(x)
        lo = jnp.linalg.cholesky(self.prior_cov()).astype(x.dtype)
        k = self.num_blocks
        flat = x.reshape(k, -1)
        z = jax.scipy.linalg.solve_triangular(lo, flat, lower=True)
        n_data = flat.shape[1]
        return (
            -0.5 * jnp.sum(z**2)
            - n_data * jnp.sum(jnp.log(jnp.diag(lo)))
            - 0.5 * x.size * math.log(2 * math.pi)
        )

    def mixture_marginal(self, gm, t: ScalarLike):
        r"""The exact marginal at time $t$ of Gaussian-mixture data `gm`
        (`sf.toy.GaussianMixture` over the data, dimension $d$), as a
        `GaussianMixture` over the flattened state (dimension $k\,d$, row-major):
        component means $(A \otimes I)E\mu_c$, covariances
        $(A \otimes I)E S_c E^\top(A \otimes I)^\top + \Sigma(t) \otimes I_d$, with $E$
        the embedding of the data in the state."""
        k, D = self.num_blocks, gm.dim
        if self.data_row is None:
            if D % k:
                raise ValueError(
                    f"mixture_marginal: the data is a whole state, so its dimension "
                    f"{D} must be a multiple of k = {k}."
                )
            d = D // k
            E = jnp.eye(k * d, dtype=gm.means.dtype)
        else:
            d = D
            E = jnp.kron(
                jnp.eye(k, dtype=gm.means.dtype)[:, self.data_row : self.data_row + 1],
                jnp.eye(d, dtype=gm.means.dtype),
            )
        t = jnp.asarray(t, gm.means.dtype)
        big_a = jnp.kron(self.mean_matrix(t), jnp.eye(d, dtype=gm.means.dtype)) @ E
        noise = jnp.kron(self.cov(t), jnp.eye(d, dtype=gm.means.dtype))
        means = gm.means @ big_a.T
        covs = jnp.einsum("ij,cjl,ml->cim", big_a, gm.covs, big_a) + noise
        return type(gm)(gm.weights, means, covs)

    def mixture_score(self, gm) -> "_LinearMixtureScore":
        r"""The exact score $\nabla_x\log p_t(x)$ of Gaussian-mixture data `gm` under
        this process, as a `(t, x)` callable on states of shape `(k, d)`."""
        return _LinearMixtureScore(self, gm)


class _LinearMixtureScore(eqx.Module):
    process: AbstractLinearProcess
    gm: Any

    def __call__(self, t, x):
        x = jnp.asarray(x)
        marg = self.process.mixture_marginal(self.gm, t)
        return jax.grad(marg.log_prob)(x.reshape(-1)).reshape(x.shape)


# --------------------------------------------------------------------------- #
# Declaration: sympy matrices, numbers or callables
# --------------------------------------------------------------------------- #


def _as_sympy_matrix(value, name, call):
    """A sympy Matrix in `t`, or None if `value` is a callable."""
    if callable(value) and not isinstance(value, sympy.Basic):
        return None
    try:
        m = sympy.Matrix(value)
    except Exception as e:
        raise TypeError(
            f"`{call}`: {name} must be a square matrix (sympy Matrix in sf.t, nested "
            f"lists or an array) or a callable t -> array, got {value!r}."
        ) from e
    m = m.applyfunc(
        lambda e: sympy.nsimplify(e, rational=True) if e.has(sympy.Float) else e
    )
    extra = m.free_symbols - {T_SYM}
    if extra:
        raise ValueError(
            f"`{call}`: {name} may only depend on sf.t, but it contains "
            f"{sorted(map(str, extra))}; substitute numbers for the other symbols."
        )
    return m


def _tidy(e):
    return sympy.powsimp(sympy.expand(e), combine="exp")


def _lyapunov(F, Q):
    """Sigma_inf with F S + S F^T + Q = 0 (exact linear solve), or None if singular."""
    k = F.shape[0]
    syms = sympy.symbols(f"s0:{k * k}")
    S = sympy.Matrix(k, k, syms)
    eqs = list(F * S + S * F.T + Q)
    sol = _derive.try_sympy(lambda: sympy.solve(eqs, syms, dict=True), 20.0)
    if not sol or len(sol) != 1 or set(sol[0]) != set(syms):
        return None
    return S.subs(sol[0])


@_derive.disk_cached
def _symbolic_kernel(F: sympy.ImmutableMatrix, G: sympy.ImmutableMatrix, S0, version):
    r"""(A(t), Sigma(t)) in closed form for constant F, or None.

    $A = e^{Ft}$ by sympy's matrix exponential. With G constant too,
    $\Sigma(t) = \Sigma_\infty - A(\Sigma_\infty - \Sigma_0)A^\top$ where
    $F\Sigma_\infty + \Sigma_\infty F^\top + GG^\top = 0$ (a linear solve; it
    satisfies the moment ODE and the initial condition); otherwise (or if that
    Lyapunov equation is singular) the covariance integral is tried with sympy."""
    t = T_SYM
    if F.has(t):
        return None
    A = _derive.try_sympy(lambda: (F * t).exp(), 20.0)
    if A is not None and A.has(sympy.I):  # complex eigenvalues: back to sin/cos
        A = _derive.try_sympy(
            lambda: A.applyfunc(lambda e: sympy.expand_complex(e)), 20.0
        )
    if A is None or A.has(sympy.I):
        return None
    A = A.applyfunc(_tidy)
    k = F.shape[0]
    Q = G * G.T
    s_inf = None if Q.has(t) else _lyapunov(F, Q)
    if s_inf is not None:
        S = s_inf - A * (s_inf - S0) * A.T
    else:
        Au = A.subs(t, _U)
        integrand = (Au * Q.subs(t, t - _U) * Au.T).applyfunc(sympy.expand)
        S = sympy.zeros(k, k)
        for i in range(k):
            for j in range(i, k):
                e = integrand[i, j]
                v = sympy.Integer(0) if e == 0 else _derive._integrate(e, _U, t)
                if v is None:
                    return None
                S[i, j] = S[j, i] = v
        S = S + A * S0 * A.T
    S = S.applyfunc(_tidy)
    if S.has(sympy.Integral, sympy.I):
        return None
    return sympy.ImmutableMatrix(A), sympy.ImmutableMatrix(S)


@eqx.filter_jit
def _moments_jit(ode, t):
    return ode._eval(t)


@dataclasses.dataclass(frozen=True, eq=False)
class LinearSymbolic:
    """The sympy matrices of a linear SDE (`p.symbolic`): `F`, `G` as declared, and
    the kernel's mean matrix `A` and covariance `Sigma` when derived in closed form
    (else `None`)."""

    F: sympy.Matrix
    G: sympy.Matrix
    A: sympy.Matrix | None = None
    Sigma: sympy.Matrix | None = None


class _MomentODE(eqx.Module):
    r"""$A(t)$, $\Sigma(t)$ from the moment ODEs, integrated with diffrax from 0."""

    F: eqx.Module
    G: eqx.Module
    init_cov: Array
    rtol: float = eqx.field(static=True)
    atol: float = eqx.field(static=True)

    def __call__(self, t):
        return _moments_jit(self, jnp.asarray(t))

    def mean_and_cov(self, t):
        return self(t)

    def _eval(self, t):
        def vf(s, y, args):
            a, cov = y
            f = self.F(s)
            g = self.G(s)
            return f @ a, f @ cov + cov @ f.T + g @ g.T

        k = self.init_cov.shape[0]
        y0 = (jnp.eye(k), self.init_cov)
        a, cov = solve_moments(
            vf, y0, t, rtol=self.rtol, atol=self.atol, max_steps=16384
        )
        return a, 0.5 * (cov + cov.T)


class LinearSDE(AbstractLinearProcess):
    r"""A linear SDE $dx = F(t)\,x\,dt + G(t)\,dW$ with $k \times k$ matrix
    coefficients acting on the block axis of the state `(k, *data_shape)`.

    **Arguments:**

    - `F`, `G`: $k \times k$ matrices: sympy `Matrix` in `sf.t` (or nested
      lists / arrays of numbers), or callables `t -> (k, k)` array (then everything
      is numeric).
    - `init_cov`: $\Sigma_0$, the $k \times k$ covariance of the state at $t = 0$
      given the data (default 0). With `data_row` set, this is how auxiliary rows
      (e.g. a velocity) are marginalised.
    - `data_row`: `None` (a data point is a whole state) or the row of the block axis
      holding the data (shape `data_shape`); the other rows start at mean 0.
    - `t0`, `t1`: the time range ($t = 0$ data, $t_1$ prior). `t0 > 0` is needed
      where $\Sigma(0)$ is singular and a Cholesky factor or score is taken there.
    - `method`: `"auto"` (closed form with sympy when $F$ is constant and the
      covariance integral has a closed form, else moment ODEs), `"symbolic"` (fail
      if there is no closed form) or `"ode"`.
    - `rtol`, `atol`: tolerances of the moment-ODE solve (float64; float32 uses at
      least 1e-6 / 1e-8).

    **Raises:** `ValueError` at declaration for non-square or mismatched matrices,
    symbols other than `t`, an `init_cov` that is not symmetric positive
    semi-definite, or `method="symbolic"` without a closed form.

    ```python
    import sympy, scoreflow as sf
    F = sympy.Matrix([[0, 1], [-1, -2]])
    G = sympy.Matrix([[0, 0], [0, 2]])
    p = sf.LinearSDE(F, G, t0=1e-3)   # A = exp(F t) and Sigma(t) by sympy
    ```
    """

    t0: float = eqx.field(static=True)
    t1: float = eqx.field(static=True)
    _F: eqx.Module
    _G: eqx.Module
    kernel: eqx.Module  # how (A, Sigma) are obtained: _ClosedFormKernel or _MomentODE
    init_cov: Array
    _k: int = eqx.field(static=True)
    _data_row: int | None = eqx.field(static=True)
    method: str = eqx.field(static=True)
    symbolic: LinearSymbolic | None = eqx.field(static=True)
    _call: str = eqx.field(static=True)

    def __init__(
        self,
        F,
        G,
        *,
        init_cov=None,
        data_row: int | None = None,
        t0: float = 0.0,
        t1: float = 1.0,
        method: str = "auto",
        rtol: float = 1e-10,
        atol: float = 1e-12,
        _call: str | None = None,
    ):
        call = _call or "sf.LinearSDE(F, G, ...)"
        self._call = call
        if method not in ("auto", "symbolic", "ode"):
            raise ValueError(
                f"`{call}`: method must be 'auto', 'symbolic' or 'ode', got {method!r}."
            )
        if not (0 <= float(t0) < float(t1)):
            raise ValueError(f"`{call}`: need 0 <= t0 < t1, got t0={t0}, t1={t1}.")
        self.t0, self.t1 = float(t0), float(t1)
        Fs = _as_sympy_matrix(F, "F", call)
        Gs = _as_sympy_matrix(G, "G", call)
        # shapes, from sympy or by evaluating the callables once
        shapes = {}
        for name, s, v in (("F", Fs, F), ("G", Gs, G)):
            if s is not None:
                shapes[name] = tuple(s.shape)
            else:
                shapes[name] = tuple(np.shape(np.asarray(v(jnp.asarray(0.5 * t1)))))
            sh = shapes[name]
            if len(sh) != 2 or sh[0] != sh[1] or sh[0] == 0:
                raise ValueError(
                    f"`{call}`: {name} must be a square k x k matrix, got shape {sh}."
                )
        if shapes["F"] != shapes["G"]:
            raise ValueError(
                f"`{call}`: F and G must have the same shape (k, k) (pad G with zero "
                f"columns if fewer noises drive the state), got F {shapes['F']} and "
                f"G {shapes['G']}."
            )
        k = shapes["F"][0]
        self._k = k
        if data_row is not None and not (
            isinstance(data_row, int) and 0 <= data_row < k
        ):
            raise ValueError(
                f"`{call}`: data_row must be None or an int in [0, {k}), got "
                f"{data_row!r}."
            )
        self._data_row = data_row
        S0 = np.zeros((k, k)) if init_cov is None else np.asarray(init_cov, float)
        if S0.shape != (k, k):
            raise ValueError(
                f"`{call}`: init_cov must have shape ({k}, {k}), got {S0.shape}."
            )
        if not np.allclose(S0, S0.T, atol=1e-12):
            raise ValueError(
                f"`{call}`: init_cov must be symmetric, got {S0.tolist()}."
            )
        if np.linalg.eigvalsh(S0).min() < -1e-12 * max(1.0, np.abs(S0).max()):
            raise ValueError(
                f"`{call}`: init_cov must be positive semi-definite, got eigenvalues "
                f"{np.linalg.eigvalsh(S0).tolist()}."
            )
        if data_row is not None and np.any(S0[data_row] != 0):
            raise ValueError(
                f"`{call}`: init_cov must be zero on the data row {data_row} (the data "
                "row starts at the data point)."
            )
        self.init_cov = jnp.asarray(S0, jnp.result_type(float))
        self._F = MatrixExpr(Fs) if Fs is not None else MatrixCall(F)
        self._G = MatrixExpr(Gs) if Gs is not None else MatrixCall(G)

        kernel = None
        if method != "ode" and Fs is not None and Gs is not None:
            S0s = sympy.ImmutableMatrix(
                sympy.Matrix(S0).applyfunc(lambda e: sympy.nsimplify(e, rational=True))
            )
            kernel = _symbolic_kernel(
                sympy.ImmutableMatrix(Fs), sympy.ImmutableMatrix(Gs), S0s, _VERSION
            )
        if kernel is None and method == "symbolic":
            raise ValueError(
                f"`{call}`: no closed-form kernel (needs a constant F given as a sympy "
                "matrix and a covariance integral sympy can do); use method='auto' or "
                "'ode' for the moment ODEs."
            )
        if kernel is not None:
            A, S = kernel
            # the float32-stable rewrite of each covariance entry (expm1 etc.),
            # chosen against 30-digit arithmetic as for scalar processes
            stable = S.applyfunc(
                lambda e: (
                    e
                    if sympy.count_ops(e) > 2000
                    else _derive.stable_form(e, (), self.t1)
                )
            )
            self.kernel = _ClosedFormKernel(MatrixExpr(A), MatrixExpr(stable))
            self.method = "symbolic"
            self.symbolic = LinearSymbolic(Fs, Gs, A, S)
        else:
            self.kernel = _MomentODE(self._F, self._G, self.init_cov, rtol, atol)
            self.method = "ode"
            self.symbolic = None if Fs is None or Gs is None else LinearSymbolic(Fs, Gs)
        self._check_positive_definite(call)

    def _check_positive_definite(self, call):
        """Sigma(t) must be positive definite on (t0, t1] (else `chol`, DSM and
        sampling are NaN): probe it at three times, in float64 NumPy."""
        span = self.t1 - self.t0
        first = self.t0 if self.t0 > 0 else self.t0 + 0.01 * span
        for tt in (first, self.t0 + 0.5 * span, self.t1):
            cov = np.asarray(self.cov(jnp.asarray(tt)), dtype=np.float64)
            eig = (
                np.linalg.eigvalsh(0.5 * (cov + cov.T))
                if np.all(np.isfinite(cov))
                else np.array([np.nan])
            )
            if not (
                np.all(np.isfinite(eig)) and eig.min() > 1e-12 * max(eig.max(), 1.0)
            ):
                raise ValueError(
                    f"`{call}`: the kernel covariance Sigma(t) is not positive definite "
                    f"at t = {tt:.4g} (eigenvalues {np.round(eig, 6).tolist()}): the "
                    "noise G does not reach every component through F (the pair (F, G) "
                    "is not controllable) and no init_cov covers the rest. Add noise or "
                    "coupling to the missing components, or give init_cov."
                )

    def __repr__(self):
        return self._call

    @property
    def num_blocks(self) -> int:
        return self._k

    @property
    def data_row(self) -> int | None:
        return self._data_row

    def F(self, t):
        return self._F(t)

    def G(self, t):
        return self._G(t)

    def mean_matrix(self, t):
        return self.kernel.mean_and_cov(t)[0]

    def cov(self, t):
        return self.kernel.mean_and_cov(t)[1]

    def mean_and_cov(self, t):
        """`(mean_matrix(t), cov(t))` in one evaluation (one solve for the moment
        ODEs)."""
        return self.kernel.mean_and_cov(t)


class _ClosedFormKernel(eqx.Module):
    """$A(t)$ and $\\Sigma(t)$ from sympy's closed forms."""

    A: MatrixExpr
    S: MatrixExpr

    def mean_and_cov(self, t):
        s = self.S(t)
        return self.A(t), 0.5 * (s + s.T)


class CLD(AbstractLinearProcess):
    r"""Critically-damped Langevin diffusion (Dockhorn, Vahdat & Kreis 2022): the data
    $x$ is coupled to a velocity $v$ and noise enters through $v$ only,

    $$\begin{pmatrix} dx \\ dv\end{pmatrix} = \beta\begin{pmatrix} 0 & M^{-1} \\
    -1 & -\Gamma M^{-1}\end{pmatrix}\begin{pmatrix} x \\ v\end{pmatrix} dt +
    \begin{pmatrix} 0 & 0 \\ 0 & \sqrt{2\Gamma\beta}\end{pmatrix} dW,$$

    critically damped when $\Gamma^2 = 4M$. The state has shape `(2, *data_shape)`
    (row 0 position, row 1 velocity); a data point is a position, and the initial
    velocity $v_0 \sim N(0, \gamma M)$ is marginalised into the kernel (the setting of
    hybrid score matching, [`scoreflow.hsm_loss`][]). The equilibrium is
    $N(0, I) \otimes N(0, M I)$; the prior is the kernel at $t_1$, $N(0, \Sigma(t_1))$.

    Mean and covariance are derived in closed form by sympy's matrix exponential and
    integration (they agree with the paper's appendix B.1).

    **Arguments:**

    - `beta`: the time scale $\beta > 0$ (constant; default 4).
    - `m_inv`: the inverse mass $M^{-1} > 0$ (default 4).
    - `friction`: $\Gamma > 0$; default critical damping $\Gamma = 2\sqrt{M}$.
    - `gamma`: the initial velocity variance factor $\gamma \ge 0$, $v_0 \sim N(0,
      \gamma M)$ (default 0.04).
    - `t0`, `t1`: time range (default $[10^{-3}, 1]$; the kernel covariance is
      singular at $t = 0$).

    ```python
    cld = sf.CLD()
    u_t, eps = cld.sample_marginal(key, x0, 0.5)    # u_t has shape (2, *x0.shape)
    ```
    [arXiv:2112.07068](https://arxiv.org/abs/2112.07068)
    """

    beta: float = eqx.field(static=True)
    m_inv: float = eqx.field(static=True)
    friction: float = eqx.field(static=True)
    gamma: float = eqx.field(static=True)
    t0: float = eqx.field(static=True)
    t1: float = eqx.field(static=True)
    sde: LinearSDE

    def __init__(
        self,
        beta: float = 4.0,
        m_inv: float = 4.0,
        friction: float | None = None,
        gamma: float = 0.04,
        *,
        t0: float = 1e-3,
        t1: float = 1.0,
    ):
        call = (
            f"sf.CLD(beta={beta!r}, m_inv={m_inv!r}, friction={friction!r}, "
            f"gamma={gamma!r})"
        )
        for name, v in (("beta", beta), ("m_inv", m_inv)):
            if not (isinstance(v, (int, float)) and v > 0):
                raise ValueError(f"`{call}`: {name} must be a number > 0, got {v!r}.")
        if friction is not None and not (
            isinstance(friction, (int, float)) and friction > 0
        ):
            raise ValueError(f"`{call}`: friction must be > 0, got {friction!r}.")
        if not (isinstance(gamma, (int, float)) and gamma >= 0):
            raise ValueError(f"`{call}`: gamma must be >= 0, got {gamma!r}.")
        b = sympy.nsimplify(beta, rational=True)
        mi = sympy.nsimplify(m_inv, rational=True)
        fr = (
            2 / sympy.sqrt(mi)
            if friction is None
            else sympy.nsimplify(friction, rational=True)
        )
        ga = sympy.nsimplify(gamma, rational=True)
        F = b * sympy.Matrix([[0, mi], [-1, -fr * mi]])
        G = sympy.Matrix([[0, 0], [0, sympy.sqrt(2 * fr * b)]])
        S0 = np.diag([0.0, float(ga / mi)])
        self.beta, self.m_inv = float(beta), float(m_inv)
        self.friction, self.gamma = float(fr), float(gamma)
        self.t0, self.t1 = float(t0), float(t1)
        self.sde = LinearSDE(
            F, G, init_cov=S0, data_row=0, t0=t0, t1=t1, method="auto", _call=call
        )

    def __repr__(self):
        return repr(self.sde)

    @property
    def num_blocks(self) -> int:
        return 2

    @property
    def data_row(self) -> int:
        return 0

    @property
    def mass(self) -> float:
        """$M = 1 / M^{-1}$."""
        return 1.0 / self.m_inv

    @property
    def symbolic(self) -> LinearSymbolic:
        """The sympy matrices `F`, `G`, `A`, `Sigma` (see [`scoreflow.LinearSDE`][])."""
        return self.sde.symbolic

    def F(self, t):
        return self.sde.F(t)

    def G(self, t):
        return self.sde.G(t)

    def mean_matrix(self, t):
        return self.sde.mean_matrix(t)

    def cov(self, t):
        return self.sde.cov(t)
