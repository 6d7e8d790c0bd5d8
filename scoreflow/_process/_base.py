"""`AbstractProcess`: what every forward (noising) process offers."""

import abc
import math

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
from equinox import AbstractVar
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .._custom_types import Scalar, ScalarLike


class AbstractProcess(eqx.Module):
    r"""A forward process $dx = f(t, x)\,dt + g(t)\,dW$ on $[t_0, t_1]$, with time
    running from data ($t = 0$) to the prior ($t = t_1$).

    When the drift is $f(t)\,x$ the transition kernel from data is Gaussian,
    $x_t = \alpha(t)\,x_0 + \sigma(t)\,\varepsilon$ with $\varepsilon \sim N(0, I)$,
    and every method below is available. Coefficients are scalar (they multiply
    every coordinate of `x` alike). A declared process may also have a non-affine
    drift or an elementwise diffusion $g(t, x)$ (`has_gaussian_kernel` is then
    False and only the drift, diffusion and score-driven dynamics are defined).
    """

    t0: AbstractVar[float]
    t1: AbstractVar[float]

    # ---- what a concrete process owes ---------------------------------------

    @abc.abstractmethod
    def alpha(self, t: ScalarLike) -> Scalar:
        r"""Signal scale $\alpha(t)$ of the kernel $x_t = \alpha(t) x_0 + \sigma(t)\varepsilon$."""

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
    def drift(
        self, t: ScalarLike, x: Float[ArrayLike, "*shape"]
    ) -> Float[Array, "*shape"]:
        r"""Forward drift $f(t, x)$ (for a Gaussian kernel, $f(t)\,x$)."""

    @abc.abstractmethod
    def g2(self, t: ScalarLike) -> Scalar:
        r"""Squared diffusion $g(t)^2$."""

    @abc.abstractmethod
    def as_sde(self) -> "AbstractProcess":
        """This process declared by its drift and diffusion (`sf.SDE`)."""

    @abc.abstractmethod
    def as_interpolant(self) -> "AbstractProcess":
        """This process declared by its kernel (`sf.Interpolant`)."""

    # ---- derived, shared by every process -----------------------------------

    def diffusion(self, t: ScalarLike, x=None) -> Scalar:
        r"""Diffusion coefficient $g(t) = \sqrt{g(t)^2}$ (elementwise $g(t, x)$ for
        a state-dependent diffusion, which needs `x`)."""
        return jnp.sqrt(self.g2(t) if x is None else self.g2(t, x))

    @property
    def has_gaussian_kernel(self) -> bool:
        """Whether the transition kernel is Gaussian (static)."""
        return True

    @property
    def state_dependent_diffusion(self) -> bool:
        """Whether the diffusion depends on the state $x$ (static)."""
        return False

    def dg2_dx(self, t: ScalarLike, x):
        r"""$\partial_x g^2$ elementwise (zero unless the diffusion depends on x)."""
        return jnp.zeros_like(jnp.asarray(x))

    def f(self, t: ScalarLike) -> Scalar:
        r"""Linear drift coefficient $f(t) = \dot\alpha(t) / \alpha(t)$ (drift $= f(t)\,x$)."""
        return self.alpha_dot(t) / self.alpha(t)

    def log_snr(self, t: ScalarLike) -> Scalar:
        r"""Log signal-to-noise ratio $\lambda(t) = \log(\alpha(t)^2 / \sigma(t)^2)$."""
        return 2 * (jnp.log(self.alpha(t)) - jnp.log(self.sigma(t)))

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
        return self.alpha(t) * x0 + self.sigma(t) * eps, eps

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

    def score_scale(self, t: ScalarLike) -> Scalar:
        r"""$1/\sigma(t)$: the scale of the score of the kernel."""
        return 1.0 / self.sigma(t)
