r"""The process ladder: what a forward process offers, rung by rung.

- [`scoreflow.AbstractProcess`][] (the SDE rung): $dx = f(t, x)\,dt + g(t, x)\,dW$ on
  $[t_0, t_1]$ with a prior. It owes `t0`, `t1`, `drift`, `diffusion_operator` and
  the prior; it derives, once for every process, the drift of the reverse-time family
  ([`reverse_drift`][scoreflow.AbstractProcess.reverse_drift]) and the Stratonovich
  reading of its drift.
- [`scoreflow.AbstractGaussianProcess`][]: the transition kernel from data is Gaussian
  (`sample_marginal`, `kernel_score`, the noise a sampler starts from).
  Matrix linear SDEs ([`scoreflow.LinearSDE`][], [`scoreflow.CLD`][]) stand here.
- [`scoreflow.AbstractScalarProcess`][]: the kernel is
  $x_t = \alpha(t)\,x_0 + \sigma(t)\,\varepsilon$ with scalar $\alpha$, $\sigma$ (VP,
  VE, rectified flow, EDM, every `sf.SDE` with an affine drift, every
  `sf.Interpolant`). It owes $\alpha$, $\sigma$, their derivatives and $g^2$; the
  log-SNR and its inverse, the drift $f(t)\,x$ and the diffusion follow.

What a function needs is stated by the annotation of its `process` argument and
checked in one place, [`require`][scoreflow._process._ladder.require].
"""

import abc
import math

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import lineax as lx
from equinox import AbstractVar
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .._custom_types import Scalar, ScalarLike
from . import _log_snr


class AbstractProcess(eqx.Module):
    r"""A forward (noising) process $dx = f(t, x)\,dt + g(t, x)\,dW$ on $[t_0, t_1]$,
    time running from data ($t = 0$) to the prior ($t = t_1$).

    A subclass owes `t0`, `t1`, [`drift`][scoreflow.AbstractProcess.drift],
    [`diffusion_operator`][scoreflow.AbstractProcess.diffusion_operator],
    `prior_sample` and `prior_log_prob`; where $g$ depends on $x$ it also overrides
    [`diffusion_divergence`][scoreflow.AbstractProcess.diffusion_divergence] and
    [`sde_reading`][scoreflow.AbstractProcess.sde_reading].
    """

    t0: AbstractVar[float]
    t1: AbstractVar[float]

    sigma_data = 1.0
    """The data scale the process is designed for, used by EDM preconditioning,
    weighting and the data-scale check (1 unless the process declares one, as
    [`scoreflow.EDM`][] does)."""

    # ---- what a process owes ------------------------------------------------

    @abc.abstractmethod
    def drift(
        self, t: ScalarLike, x: Float[ArrayLike, "*shape"]
    ) -> Float[Array, "*shape"]:
        r"""Forward drift $f(t, x)$ (Itô)."""

    @abc.abstractmethod
    def diffusion_operator(
        self, t: ScalarLike, x: Float[ArrayLike, "*shape"]
    ) -> lx.AbstractLinearOperator:
        r"""The diffusion $g(t, x)$ as a lineax operator acting on a Brownian increment
        shaped like `x`: diagonal for a scalar or elementwise $g$, block for a matrix
        $G(t)$ acting on the leading block axis."""

    @abc.abstractmethod
    def prior_sample(
        self, key: PRNGKeyArray, shape: tuple[int, ...], dtype=None
    ) -> Array:
        """One draw from the prior the reverse dynamics start from."""

    @abc.abstractmethod
    def prior_log_prob(self, x: Float[ArrayLike, "*shape"]) -> Scalar:
        """Log density of one (unbatched) `x` under the prior."""

    # ---- derived, written once ----------------------------------------------

    def diffusion_cov_apply(
        self,
        t: ScalarLike,
        x: Float[ArrayLike, "*shape"],
        v: Float[ArrayLike, "*shape"],
    ) -> Float[Array, "*shape"]:
        r"""$g g^\top v$ at $(t, x)$ (e.g. $v$ the score, in the reverse drift)."""
        op = self.diffusion_operator(t, x)
        return op.mv(op.transpose().mv(v))

    def diffusion_divergence(
        self, t: ScalarLike, x: Float[ArrayLike, "*shape"]
    ) -> Float[Array, "*shape"]:
        r"""$\nabla_x\cdot(g g^\top)$, the extra drift of the reverse SDE when the
        diffusion depends on $x$ (Anderson 1982); zero otherwise."""
        return jnp.zeros_like(jnp.asarray(x))

    def stratonovich_drift(
        self, t: ScalarLike, x: Float[ArrayLike, "*shape"]
    ) -> Float[Array, "*shape"]:
        r"""The drift of the same process read in Stratonovich form,
        $f_S = f - \tfrac12 g\,\partial_x g = f - \tfrac14\nabla_x\cdot(g g^\top)$ for
        diagonal noise (equal to `drift` when $g$ does not depend on $x$)."""
        return self.drift(t, x) - 0.25 * self.diffusion_divergence(t, x)

    def reverse_drift(
        self,
        t: ScalarLike,
        x: Float[ArrayLike, "*shape"],
        score: Float[ArrayLike, "*shape"],
        eta=None,
        convention: str = "ito",
    ) -> Float[Array, "*shape"]:
        r"""The drift, in process time, of the reverse-time family with noise level
        $\eta$ that shares the marginals $p_t$ (Song et al. 2021; Anderson 1982):

        $$f - \tfrac{1 + \eta^2}{2}\big(g g^\top\nabla\log p_t + \nabla\cdot(g g^\top)
        \big),$$

        minus $\tfrac{\eta^2}{4}\nabla\cdot(g g^\top)$ in the Stratonovich reading.
        `eta=None` is the probability-flow ODE ($\eta = 0$, weight exactly 1/2).

        **Arguments:** `t` process time; `x` one state; `score`
        $\nabla_x\log p_t(x)$; `eta` a number or `None`; `convention` `"ito"` or
        `"stratonovich"` (only matters when $g$ depends on $x$).
        """
        w = 0.5 if eta is None else (1 + eta**2) / 2
        div = self.diffusion_divergence(t, x)
        out = self.drift(t, x) - w * (self.diffusion_cov_apply(t, x, score) + div)
        if convention == "stratonovich" and eta is not None:
            out = out + 0.25 * eta**2 * div
        return out

    def sde_reading(self, convention: str | None, *, call: str, noisy: bool = True):
        r"""The Itô/Stratonovich reading to build terms in: `convention` checked,
        `None` meaning `"ito"`. A process whose diffusion depends on $x$ refuses
        `None` for noisy dynamics (the two readings differ there)."""
        if convention is None:
            return "ito"
        if convention not in ("ito", "stratonovich"):
            raise ValueError(
                f"`{call}(convention=...)` must be 'ito' or 'stratonovich', got "
                f"{convention!r}."
            )
        return convention

    def prepare_inverse(self) -> None:
        r"""Derive now, outside `jax.jit`, what a method would otherwise replace by
        a numeric fallback inside jit: for a declared scalar process, the
        closed-form inverse of the log-SNR that `t_from_log_snr` uses. Inside jit
        the parameters are traced and cannot choose the inverse's branch, so a
        first call there falls back to bisection (agreeing to float32 round-off, but
        a larger program, and a result that depended on whether an eager call came
        first). `sf.sample`, `sf.on_path` and the losses whose time sampler maps
        log-SNR to time call it before they compile. A no-op where there is
        nothing to derive, or with traced parameters."""
        return None

    def check_sde_solver(self, solver, *, call: str) -> None:
        """Raise if `solver` cannot integrate this process's noise (e.g. an
        additive-noise SRK for a diffusion that depends on x)."""

    def initial_noise(
        self, key: PRNGKeyArray, t: ScalarLike, shape: tuple[int, ...], dtype
    ) -> Array:
        r"""The point a reverse-time sampler starts from at time `t` (meant for
        $t = t_1$): here a prior draw."""
        return self.prior_sample(key, shape, dtype).astype(dtype)

    def _why_not(self, rung: type) -> str:
        """Why this process does not stand on `rung` (for `require`'s message)."""
        return ""


class AbstractGaussianProcess(AbstractProcess):
    r"""A process whose transition kernel from a data point is Gaussian,
    $x_t \mid x_0 \sim N(A(t)\,x_0, \Sigma(t))$.

    A subclass owes `sample_marginal`, `kernel_score` and `kernel_noise`."""

    @abc.abstractmethod
    def sample_marginal(
        self, key: PRNGKeyArray, x0: Float[ArrayLike, "..."], t: ScalarLike
    ) -> tuple[Array, Array]:
        r"""Draw $x_t$ given one data point: the pair `(x_t, eps)`."""

    @abc.abstractmethod
    def kernel_score(self, t: ScalarLike, x: Array, x0: Array) -> Array:
        r"""$\nabla_x \log p(x_t = x \mid x_0)$."""

    @abc.abstractmethod
    def kernel_noise(
        self, key: PRNGKeyArray, t: ScalarLike, shape: tuple[int, ...], dtype
    ) -> Array:
        r"""A draw of the kernel's noise at time $t$, $N(0, \Sigma(t))$ (the marginal
        at $t$ of data at the origin)."""

    def initial_noise(self, key, t, shape, dtype):
        r"""The kernel's noise at `t`, $N(0, \Sigma(t))$: a sampler started at any
        $t \le t_1$ starts from the right scale."""
        return self.kernel_noise(key, t, shape, dtype)


class AbstractScalarProcess(AbstractGaussianProcess):
    r"""A process with the scalar Gaussian kernel
    $x_t = \alpha(t)\,x_0 + \sigma(t)\,\varepsilon$, $\varepsilon \sim N(0, I)$, and
    SDE $dx = f(t)\,x\,dt + g(t)\,dW$, $f = \dot\alpha/\alpha$,
    $g^2 = \tfrac{d}{dt}\sigma^2 - 2f\sigma^2$.

    A subclass owes `alpha`, `sigma`, `alpha_dot`, `sigma_dot`, `g2`, `t0`, `t1`,
    `as_sde` and `as_interpolant`; it may override `f`, `log_snr` and
    `t_from_log_snr` with closed forms.
    """

    @abc.abstractmethod
    def alpha(self, t: ScalarLike) -> Scalar:
        r"""Signal scale $\alpha(t)$ of the kernel."""

    @abc.abstractmethod
    def sigma(self, t: ScalarLike) -> Scalar:
        r"""Noise scale $\sigma(t)$ of the kernel."""

    @abc.abstractmethod
    def alpha_dot(self, t: ScalarLike) -> Scalar:
        r"""$d\alpha/dt$."""

    @abc.abstractmethod
    def sigma_dot(self, t: ScalarLike) -> Scalar:
        r"""$d\sigma/dt$."""

    @abc.abstractmethod
    def g2(self, t: ScalarLike) -> Scalar:
        r"""Squared diffusion $g(t)^2$."""

    @abc.abstractmethod
    def as_sde(self) -> "AbstractScalarProcess":
        """This process declared by its drift and diffusion (`sf.SDE`)."""

    @abc.abstractmethod
    def as_interpolant(self) -> "AbstractScalarProcess":
        """This process declared by its kernel (`sf.Interpolant`)."""

    # ---- derived ------------------------------------------------------------

    def f(self, t: ScalarLike) -> Scalar:
        r"""Linear drift coefficient $f(t) = \dot\alpha(t)/\alpha(t)$."""
        return self.alpha_dot(t) / self.alpha(t)

    def log_snr(self, t: ScalarLike) -> Scalar:
        r"""Log signal-to-noise ratio $\lambda(t) = \log(\alpha(t)^2/\sigma(t)^2)$."""
        return 2 * (jnp.log(self.alpha(t)) - jnp.log(self.sigma(t)))

    def t_from_log_snr(self, lam: ScalarLike) -> Scalar:
        r"""The time $t \in [t_0, t_1]$ with $\lambda(t) = $ `lam` (the log-SNR
        decreases in $t$): a checked bracketed root find on $[t_0, t_1]$.

        **Raises:** an `EquinoxRuntimeError` (inside jit) for a log-SNR outside
        $[\lambda(t_1), \lambda(t_0)]$."""
        return _log_snr.bisect_time(self.log_snr, lam, self.t0, self.t1)

    def discretize(self, t: ScalarLike, n: int) -> tuple[Scalar, Scalar, Scalar]:
        r"""This SDE cut into `n` discrete steps, as score_sde does
        (`sde_lib.SDE.discretize`, Song et al. 2021): the forward step into the
        level at time `t` is $x_i = m_i\,x_{i-1} + G_i\,z$.

        **Returns:** $(m_i, G_i^2, v_i)$: the mean factor, the step's variance and the
        variance of the ancestral (reverse) step of score_sde's
        `AncestralSamplingPredictor`. The Langevin corrector's $\alpha_i$ is
        $m_i^2$.

        The default is score_sde's for any SDE, Euler--Maruyama at `t` itself with
        $\Delta t = t_1/n$: $m = 1 + f(t)\Delta t$, $G^2 = g(t)^2\Delta t$,
        $v = G^2$. [`scoreflow.VP`][] (DDPM's $\beta_i$ table) and
        [`scoreflow.VE`][] (SMLD's $\sigma_i$ ladder) override it with score_sde's
        tables, indexed by $i = \lfloor t\,(n - 1)/t_1\rfloor$.

        **Arguments:** `t` process time in $[0, t_1]$; `n` the number of levels
        (score_sde's `N`, a Python int $\ge 2$).
        [arXiv:2011.13456](https://arxiv.org/abs/2011.13456)
        """
        dt = self.t1 / n
        g2 = self.g2(t) * dt
        return 1 + self.f(t) * dt, g2, g2

    def drift(self, t, x):
        x = jnp.asarray(x)
        return self.f(t) * x

    def diffusion(self, t: ScalarLike) -> Scalar:
        r"""Diffusion coefficient $g(t) = \sqrt{g(t)^2}$."""
        return jnp.sqrt(self.g2(t))

    def diffusion_operator(self, t, x):
        x = jnp.asarray(x)
        g = jnp.asarray(self.diffusion(t)).astype(x.dtype)
        return lx.DiagonalLinearOperator(jnp.broadcast_to(g, x.shape))

    def diffusion_cov_apply(self, t, x, v):
        return self.g2(t) * v

    def score_scale(self, t: ScalarLike) -> Scalar:
        r"""$1/\sigma(t)$: the scale of the score of the kernel."""
        return 1.0 / self.sigma(t)

    def sample_marginal(
        self, key: PRNGKeyArray, x0: Float[ArrayLike, "*shape"], t: ScalarLike
    ) -> tuple[Float[Array, "*shape"], Float[Array, "*shape"]]:
        r"""Draw $x_t = \alpha(t) x_0 + \sigma(t)\varepsilon$ given one data point.

        **Arguments:**

        - `key`: a JAX PRNG key.
        - `x0`: one data point, any shape.
        - `t`: a scalar time in $[0, t_1]$ ($t = 0$ is data).

        **Returns:** the pair `(x_t, eps)`, both shaped like `x0`.

        **Raises:** an `EqxRuntimeError` (inside jit) if `t` lies outside $[0, t_1]$.
        """
        x0 = jnp.asarray(x0)
        t = jnp.asarray(t, dtype=jnp.result_type(x0.dtype, float))
        t = eqx.error_if(
            t,
            (t < 0) | (t > self.t1),
            f"sample_marginal: t must lie in [0, t1] = [0, {self.t1}]; "
            "clip the times you draw to the process's range.",
        )
        eps = jr.normal(
            key,
            x0.shape,
            x0.dtype if jnp.issubdtype(x0.dtype, jnp.floating) else t.dtype,
        )
        return self.marginal(x0, eps, t), eps

    def marginal(self, x0, eps, t):
        r"""$x_t = \alpha(t)\,x_0 + \sigma(t)\,\varepsilon$ for given `x0`, `eps`
        (the coefficients in the data's dtype). The one place the kernel is written:
        `sample_marginal` and the losses call it."""
        x0 = jnp.asarray(x0)
        dtype = x0.dtype if jnp.issubdtype(x0.dtype, jnp.floating) else None
        a, s = jnp.asarray(self.alpha(t)), jnp.asarray(self.sigma(t))
        if dtype is not None:
            a, s = a.astype(dtype), s.astype(dtype)
        return a * x0 + s * eps

    def kernel_score(self, t, x, x0):
        r"""$-(x - \alpha(t) x_0)/\sigma(t)^2$."""
        x = jnp.asarray(x)
        t = jnp.asarray(t, x.dtype)
        return -(x - self.alpha(t) * x0) / self.sigma(t) ** 2

    def kernel_noise(self, key, t, shape, dtype):
        return (self.sigma(t) * jr.normal(key, shape, dtype)).astype(dtype)

    def prior_std(self) -> Scalar:
        r"""Standard deviation of the prior $N(0, \sigma(t_1)^2 I)$."""
        return self.sigma(self.t1)

    def prior_sample(
        self, key: PRNGKeyArray, shape: tuple[int, ...], dtype=None
    ) -> Array:
        r"""Draw from the prior $N(0, \sigma(t_1)^2 I)$ with the given shape."""
        dtype = jnp.result_type(float) if dtype is None else dtype
        return self.prior_std().astype(dtype) * jr.normal(key, shape, dtype)

    def prior_log_prob(self, x: Float[ArrayLike, "*shape"]) -> Scalar:
        r"""Log density of one (unbatched) `x` under $N(0, \sigma(t_1)^2 I)$."""
        x = jnp.asarray(x)
        s = self.prior_std()
        n = x.size
        return (
            -0.5 * jnp.sum((x / s) ** 2)
            - n * jnp.log(s)
            - 0.5 * n * math.log(2 * math.pi)
        )


_RUNG_TEXT = {
    AbstractScalarProcess: (
        "a process with a scalar Gaussian kernel x_t = alpha(t) x0 + sigma(t) eps"
    ),
    AbstractGaussianProcess: "a process with a Gaussian transition kernel",
    AbstractProcess: "a forward process (an sf.AbstractProcess)",
}


def require(
    process, rung, call: str, *, hint: str = "", need: str | None = None
) -> None:
    """Raise a clear error where `call` needs `process` to stand on `rung` of the
    ladder (a class, or a tuple of classes any of which will do). The one place
    where a process's kind is checked; the message is the process's own explanation
    (`_why_not`)."""
    if isinstance(process, rung):
        return
    names = (
        rung.__name__
        if isinstance(rung, type)
        else " or ".join(r.__name__ for r in rung)
    )
    need = need or _RUNG_TEXT.get(rung, names)
    if not isinstance(process, AbstractProcess):
        raise TypeError(f"`{call}` needs {need}, got {type(process).__name__}.")
    why = process._why_not(rung)
    raise ValueError(
        f"`{call}` needs {need}; {why or f'{process!r} is not one'}.{hint}"
    )


def level_index(t, n: int, t1):
    r"""score_sde's level of time `t` among `n` levels on $[0, t_1]$:
    $i = \lfloor t\,(n - 1)/t_1\rfloor$ (clipped to $[0, n - 1]$), and its time
    $\tau_i = i\,t_1/(n - 1)$. `(i, tau_i)`, `i` an int32 array."""
    t = jnp.asarray(t)
    dtype = t.dtype if jnp.issubdtype(t.dtype, jnp.floating) else jnp.result_type(float)
    i = jnp.clip(jnp.floor(t.astype(dtype) * (n - 1) / t1), 0, n - 1).astype(jnp.int32)
    return i, (i.astype(dtype) * (t1 / (n - 1))).astype(dtype)
