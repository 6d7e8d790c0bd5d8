r"""Distances between distributions and sample sets, for evaluating samplers.

Each function is compiled with `equinox.filter_jit` (Python numbers such as
`num_projections` and `p` are static) and works inside `jit`/`vmap` of your own.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jax.scipy.linalg import cho_solve, solve_triangular
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from ._custom_types import Scalar

__all__ = [
    "frechet_distance",
    "frechet_distance_gaussians",
    "gaussian_kl",
    "sliced_wasserstein",
]


def _sqrtm_psd(a: Float[Array, "d d"]) -> Float[Array, "d d"]:
    """Square root of a symmetric positive semi-definite matrix by eigendecomposition,
    clipping the small negative eigenvalues that rounding produces."""
    w, v = jnp.linalg.eigh((a + a.T) / 2)
    return (v * jnp.sqrt(jnp.clip(w, 0.0))) @ v.T


def _as_float(x) -> Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    return x


def _check_gaussian(call, mu, cov, i):
    if mu.ndim != 1 or cov.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(
            f"`{call}`: mu{i} must have shape (d,) and cov{i} shape (d, d), got "
            f"{mu.shape} and {cov.shape}."
        )


def _check_pair(call, mu1, cov1, mu2, cov2):
    _check_gaussian(call, mu1, cov1, 1)
    _check_gaussian(call, mu2, cov2, 2)
    if mu1.shape != mu2.shape:
        raise ValueError(
            f"`{call}`: both Gaussians must live in the same dimension, got d = "
            f"{mu1.shape[0]} and d = {mu2.shape[0]}."
        )


@eqx.filter_jit
def frechet_distance_gaussians(
    mu1: Float[ArrayLike, " d"],
    cov1: Float[ArrayLike, "d d"],
    mu2: Float[ArrayLike, " d"],
    cov2: Float[ArrayLike, "d d"],
) -> Scalar:
    r"""The squared Fréchet (2-Wasserstein) distance between two Gaussians,

    $$d^2 = \|\mu_1 - \mu_2\|^2 + \operatorname{tr}\big(C_1 + C_2
      - 2\,(C_1^{1/2} C_2 C_1^{1/2})^{1/2}\big),$$

    the quantity behind FID. (The symmetric form has the same trace as the more
    common $(C_1 C_2)^{1/2}$, and its square roots are of symmetric PSD matrices,
    computed by eigendecomposition.) Clipped at 0 against rounding.

    **Arguments:**

    - `mu1`, `mu2`: means of shape `(d,)`.
    - `cov1`, `cov2`: symmetric positive semi-definite covariances of shape `(d, d)`.

    **Returns:** a non-negative scalar (a squared distance, as FID reports).

    **References:** Dowson & Landau (1982); Heusel et al. 2017,
    [arXiv:1706.08500](https://arxiv.org/abs/1706.08500).
    """
    mu1, cov1, mu2, cov2 = map(_as_float, (mu1, cov1, mu2, cov2))
    _check_pair("sf.metrics.frechet_distance_gaussians", mu1, cov1, mu2, cov2)
    root1 = _sqrtm_psd(cov1)
    inner = root1 @ cov2 @ root1
    w = jnp.linalg.eigvalsh((inner + inner.T) / 2)
    trace_cross = jnp.sum(jnp.sqrt(jnp.clip(w, 0.0)))
    d2 = jnp.sum((mu1 - mu2) ** 2) + jnp.trace(cov1) + jnp.trace(cov2) - 2 * trace_cross
    return jnp.maximum(d2, 0.0)


def _mean_cov(call, name, x):
    x = _as_float(x)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(
            f"`{call}`: {name} must be a sample set of shape (n, d) with n >= 2, got "
            f"shape {x.shape}."
        )
    mu = jnp.mean(x, axis=0)
    centred = x - mu
    return mu, centred.T @ centred / (x.shape[0] - 1)


@eqx.filter_jit
def frechet_distance(x: Float[ArrayLike, "n d"], y: Float[ArrayLike, "m d"]) -> Scalar:
    r"""The squared Fréchet distance between Gaussian fits of two sample sets:
    [`scoreflow.metrics.frechet_distance_gaussians`][] of their sample means and
    (unbiased, $n - 1$) sample covariances. On Inception features this is FID.

    **Arguments:**

    - `x`: samples of shape `(n, d)`.
    - `y`: samples of shape `(m, d)`; `m` may differ from `n`.

    **Returns:** a non-negative scalar.
    """
    call = "sf.metrics.frechet_distance(x, y)"
    mu1, cov1 = _mean_cov(call, "x", x)
    mu2, cov2 = _mean_cov(call, "y", y)
    if mu1.shape != mu2.shape:
        raise ValueError(
            f"`{call}`: x and y must have the same dimension d, got {mu1.shape[0]} "
            f"and {mu2.shape[0]}."
        )
    # the two sets in one dtype, explicitly (float32 samples against a float64
    # reference would fail under JAX's strict dtype promotion)
    with jax.numpy_dtype_promotion("standard"):
        dtype = jnp.promote_types(mu1.dtype, mu2.dtype)
    mu1, cov1, mu2, cov2 = (a.astype(dtype) for a in (mu1, cov1, mu2, cov2))
    return frechet_distance_gaussians(mu1, cov1, mu2, cov2)


@eqx.filter_jit
def gaussian_kl(
    mu1: Float[ArrayLike, " d"],
    cov1: Float[ArrayLike, "d d"],
    mu2: Float[ArrayLike, " d"],
    cov2: Float[ArrayLike, "d d"],
) -> Scalar:
    r"""$\mathrm{KL}(N(\mu_1, C_1)\,\|\,N(\mu_2, C_2))$ in closed form,

    $$\tfrac12\Big[\operatorname{tr}(C_2^{-1} C_1)
      + (\mu_2 - \mu_1)^\top C_2^{-1} (\mu_2 - \mu_1) - d
      + \log\det C_2 - \log\det C_1\Big],$$

    via Cholesky factorisations.

    **Arguments:**

    - `mu1`, `cov1`: mean `(d,)` and positive definite covariance `(d, d)` of the
      first Gaussian.
    - `mu2`, `cov2`: the same for the second.

    **Returns:** a scalar (in nats).
    """
    mu1, cov1, mu2, cov2 = map(_as_float, (mu1, cov1, mu2, cov2))
    _check_pair("sf.metrics.gaussian_kl", mu1, cov1, mu2, cov2)
    d = mu1.shape[0]
    l1 = jnp.linalg.cholesky(cov1)
    l2 = jnp.linalg.cholesky(cov2)
    trace = jnp.trace(cho_solve((l2, True), cov1))
    z = solve_triangular(l2, mu2 - mu1, lower=True)
    logdet1 = 2 * jnp.sum(jnp.log(jnp.diagonal(l1)))
    logdet2 = 2 * jnp.sum(jnp.log(jnp.diagonal(l2)))
    return 0.5 * (trace + jnp.sum(z**2) - d + logdet2 - logdet1)


@eqx.filter_jit
def sliced_wasserstein(
    key: PRNGKeyArray,
    x: Float[ArrayLike, "n d"],
    y: Float[ArrayLike, "n d"],
    *,
    num_projections: int = 128,
    p: float = 2,
) -> Scalar:
    r"""The Monte Carlo sliced Wasserstein-$p$ distance between two equal-size
    sample sets,

    $$SW_p(x, y) = \Big(\frac1L\sum_{l=1}^L W_p^p(\theta_l^\top x,\,
      \theta_l^\top y)\Big)^{1/p},$$

    with $\theta_l$ uniform on the unit sphere and each one-dimensional $W_p$
    computed exactly by sorting the projections.

    **Arguments:**

    - `key`: a JAX PRNG key (for the projection directions).
    - `x`, `y`: sample sets of the same shape `(n, d)`.
    - `num_projections`: the number $L$ of random directions (static).
    - `p`: the order, $\ge 1$ (static).

    **Returns:** a non-negative scalar (a distance, not its $p$-th power).

    **References:** Bonneel et al. 2015, "Sliced and Radon Wasserstein Barycenters
    of Measures".
    """
    call = "sf.metrics.sliced_wasserstein(key, x, y)"
    x, y = _as_float(x), _as_float(y)
    if x.ndim != 2 or x.shape != y.shape:
        raise ValueError(
            f"`{call}`: x and y must be sample sets of the same shape (n, d), got "
            f"{x.shape} and {y.shape}; subsample the larger set to equal size."
        )
    if not p >= 1:
        raise ValueError(f"`{call}`: p must be >= 1, got p={p!r}.")
    if num_projections < 1:
        raise ValueError(
            f"`{call}`: num_projections must be >= 1, got {num_projections!r}."
        )
    dtype = jnp.result_type(x.dtype, y.dtype)
    theta = jr.normal(key, (num_projections, x.shape[1]), dtype)
    theta = theta / jnp.linalg.norm(theta, axis=-1, keepdims=True)
    px = jnp.sort(theta @ x.T, axis=-1)  # (L, n): sorting along the last axis is
    py = jnp.sort(theta @ y.T, axis=-1)  # faster on CPU than along the first
    wp = jnp.mean(jnp.abs(px - py) ** p, axis=-1)
    return jnp.mean(wp) ** (1 / p)
