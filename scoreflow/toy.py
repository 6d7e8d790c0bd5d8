r"""Toy data with exact answers.

[`scoreflow.toy.GaussianMixture`][] is the ground truth for tests and benchmarks:
under any process with a Gaussian kernel $x_t = \alpha(t) x_0 + \sigma(t)\varepsilon$
its marginal at every time is again a Gaussian mixture, so its density, score,
denoiser and probability-flow velocity are known in closed form.

The 2-D samplers ([`scoreflow.toy.ring`][], [`scoreflow.toy.two_moons`][],
[`scoreflow.toy.checkerboard`][]) are the usual toy data sets of the diffusion
literature; [`scoreflow.toy.ring_mixture`][] gives the exact mixture behind `ring`.
Samplers are compiled with `equinox.filter_jit` (the sample count `n` and other
Python numbers are static).
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jax.scipy.linalg import solve_triangular
from jax.scipy.special import logsumexp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from ._custom_types import Scalar, ScalarLike
from ._process import AbstractProcess

__all__ = ["GaussianMixture", "checkerboard", "ring", "ring_mixture", "two_moons"]

_WEIGHT_TOL = 1e-6
_SYM_TOL = 1e-6


def _is_concrete(*arrays) -> bool:
    return not any(isinstance(a, jax.core.Tracer) for a in arrays)


def _as_float(x) -> Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    return x


def _gaussian_terms(
    gm: GaussianMixture, alpha, sigma, x: Float[Array, " d"]
) -> tuple[Float[Array, " K"], Float[Array, "K d"], Float[Array, "K d"]]:
    r"""For each component $k$ of the marginal $N(\alpha m_k, \alpha^2 C_k + \sigma^2
    I)$, with $C_k = Q_k \operatorname{diag}(\lambda_k) Q_k^\top$: the log density at
    `x`, $\Sigma_k^{-1}(x - \alpha m_k)$ and $C_k \Sigma_k^{-1}(x - \alpha m_k)$.

    In the eigenbasis of $C_k$ the marginal covariance is diagonal,
    $\alpha^2\lambda_k + \sigma^2$, so this is matrix products only: no
    factorisation at each call (and no LAPACK call inside a sampler's loop, where
    two batched triangular solves running at once can deadlock XLA's CPU thread
    pool on a 2-core machine)."""
    if gm.eigvecs is None:
        return _gaussian_terms_cholesky(gm.means, gm.covs, alpha, sigma, x)
    means, eigvals, eigvecs = gm.means, gm.eigvals, gm.eigvecs
    d = x.shape[-1]
    y = jnp.einsum("kji,kj->ki", eigvecs, x - alpha * means)  # Q_k^T (x - alpha m_k)
    var = alpha**2 * eigvals + sigma**2
    w = y / var
    maha = jnp.sum(y * w, axis=-1)
    logdet = jnp.sum(jnp.log(var), axis=-1)
    log_density = -0.5 * (maha + logdet + d * math.log(2 * math.pi))
    precision_diff = jnp.einsum("kij,kj->ki", eigvecs, w)
    cov_precision_diff = jnp.einsum("kij,kj->ki", eigvecs, eigvals * w)
    return log_density, precision_diff, cov_precision_diff


def _gaussian_terms_cholesky(means, covs, alpha, sigma, x):
    """`_gaussian_terms` for covariances known only inside a trace (no
    eigendecomposition: its derivative is undefined at repeated eigenvalues), by one
    Cholesky factorisation and two triangular solves per component."""
    d = x.shape[-1]
    covs_t = alpha**2 * covs + sigma**2 * jnp.eye(d, dtype=covs.dtype)
    chol = jnp.linalg.cholesky(covs_t)

    def one(c, r):
        z = solve_triangular(c, r, lower=True)
        return z, solve_triangular(c, z, lower=True, trans="T")

    z, precision_diff = jax.vmap(one)(chol, x - alpha * means)
    maha = jnp.sum(z**2, axis=-1)
    logdet = 2 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)
    log_density = -0.5 * (maha + logdet + d * math.log(2 * math.pi))
    return log_density, precision_diff, jnp.einsum("kij,kj->ki", covs, precision_diff)


def _eigh(covs):
    """Eigenvalues and eigenvectors of each covariance, in float64 NumPy, when the
    values are concrete (building a mixture compiles nothing); `(None, None)` when
    they are traced (the Cholesky form is used then)."""
    if covs.ndim != 3 or covs.shape[-1] != covs.shape[-2]:
        return None, None  # __check_init__ names the bad shape
    if not _is_concrete(covs):
        return None, None
    lam, q = np.linalg.eigh(np.asarray(covs, np.float64))
    return jnp.asarray(lam, covs.dtype), jnp.asarray(q, covs.dtype)


class GaussianMixture(eqx.Module):
    r"""A mixture of $K$ Gaussians in $\mathbb{R}^d$,
    $p(x) = \sum_k w_k\,N(x; m_k, C_k)$, with full covariances.

    Pushed through a process with kernel $x_t = \alpha(t) x_0 + \sigma(t)\varepsilon$,
    its marginal is the mixture with the same weights, means $\alpha m_k$ and
    covariances $\Sigma_k(t) = \alpha^2 C_k + \sigma^2 I$
    ([`scoreflow.toy.GaussianMixture.marginal`][]); `score`, `eps`, `x0` and
    `velocity` return the exact (Bayes-optimal) predictions.

    **Arguments:**

    - `weights`: shape `(K,)`, non-negative, summing to 1.
    - `means`: shape `(K, d)`.
    - `covs`: shape `(K, d, d)`, each symmetric positive definite.

    **Raises:** `ValueError` for inconsistent shapes, and (when the values are
    concrete, i.e. not traced inside `jit`) for negative weights, weights that do
    not sum to 1, non-finite entries, or covariances that are not symmetric positive
    definite.

    ```python
    import jax.numpy as jnp
    import scoreflow as sf

    gm = sf.toy.GaussianMixture(
        weights=jnp.array([0.3, 0.7]),
        means=jnp.array([[-2.0, 0.0], [2.0, 0.0]]),
        covs=jnp.stack([jnp.eye(2), 0.5 * jnp.eye(2)]),
    )
    score = gm.score(sf.VP())           # (t, x) -> grad_x log p_t(x)
    score(0.5, jnp.zeros(2))
    ```
    """

    weights: Float[Array, " K"]
    means: Float[Array, "K d"]
    covs: Float[Array, "K d d"]
    eigvals: Float[Array, "K d"] | None  # C_k = Q_k diag(eigvals_k) Q_k^T
    eigvecs: Float[Array, "K d d"] | None

    def __init__(
        self,
        weights: Float[ArrayLike, " K"],
        means: Float[ArrayLike, "K d"],
        covs: Float[ArrayLike, "K d d"],
        *,
        _eig=None,
    ):
        weights, means, covs = _as_float(weights), _as_float(means), _as_float(covs)
        dtype = jnp.result_type(weights.dtype, means.dtype, covs.dtype)
        self.weights = weights.astype(dtype)
        self.means = means.astype(dtype)
        self.covs = covs.astype(dtype)
        # internal: `marginal` passes the known eigendecomposition of its covariances
        self.eigvals, self.eigvecs = _eigh(self.covs) if _eig is None else _eig

    def __check_init__(self):
        w, m, c = self.weights, self.means, self.covs
        call = "`sf.toy.GaussianMixture(weights, means, covs)`"
        if w.ndim != 1:
            raise ValueError(
                f"{call}: weights must have shape (K,), got shape {w.shape}."
            )
        if m.ndim != 2:
            raise ValueError(
                f"{call}: means must have shape (K, d), got shape {m.shape}; for a "
                "single component pass means[None]."
            )
        if c.ndim != 3:
            raise ValueError(
                f"{call}: covs must be full covariances of shape (K, d, d), got shape "
                f"{c.shape}; for isotropic components pass s**2 * jnp.eye(d)[None]."
            )
        if c.shape[-1] != c.shape[-2]:
            raise ValueError(
                f"{call}: each covariance must be square, got covs of shape {c.shape}."
            )
        K = w.shape[0]
        if K == 0:
            raise ValueError(f"{call}: need at least one component, got K = 0.")
        if m.shape[0] != K or c.shape[0] != K:
            raise ValueError(
                f"{call}: the number of components K must agree, got K = {K} weights, "
                f"{m.shape[0]} means and {c.shape[0]} covariances."
            )
        if m.shape[1] != c.shape[1]:
            raise ValueError(
                f"{call}: dimension d must agree, got means of shape {m.shape} (d = "
                f"{m.shape[1]}) and covs of shape {c.shape} (d = {c.shape[1]})."
            )
        if m.shape[1] == 0:
            raise ValueError(f"{call}: need dimension d >= 1, got d = 0.")
        if not _is_concrete(w, m, c):
            return
        w, m, c = np.asarray(w, np.float64), np.asarray(m), np.asarray(c, np.float64)
        for name, v in (("weights", w), ("means", m), ("covs", c)):
            if not np.all(np.isfinite(v)):
                raise ValueError(f"{call}: {name} contain NaN or inf.")
        if np.any(w < 0):
            raise ValueError(f"{call}: weights must be non-negative, got {w.tolist()}.")
        total = float(w.sum())
        if abs(total - 1) > _WEIGHT_TOL:
            raise ValueError(
                f"{call}: weights must sum to 1, got sum {total:.8g}; normalise them "
                "(weights / weights.sum())."
            )
        scale = max(1.0, float(np.abs(c).max()))
        asym = np.abs(c - np.swapaxes(c, -1, -2)).max(axis=(-1, -2))
        if np.any(asym > _SYM_TOL * scale):
            k = int(np.argmax(asym))
            raise ValueError(
                f"{call}: covs[{k}] is not symmetric (max |C - C^T| = {asym[k]:.3g}); "
                "pass (C + C.T) / 2."
            )
        eig_min = np.linalg.eigvalsh(c).min(axis=-1)
        if np.any(eig_min <= 0):
            k = int(np.argmin(eig_min))
            raise ValueError(
                f"{call}: covs[{k}] is not positive definite (smallest eigenvalue "
                f"{eig_min[k]:.3g}); add a small multiple of the identity, e.g. "
                "C + 1e-6 * jnp.eye(d)."
            )

    @property
    def num_components(self) -> int:
        """The number of components $K$."""
        return self.weights.shape[0]

    @property
    def dim(self) -> int:
        """The dimension $d$ of the space."""
        return self.means.shape[1]

    def mean(self) -> Float[Array, " d"]:
        r"""The mixture mean $\mu = \sum_k w_k m_k$."""
        return self.weights @ self.means

    def cov(self) -> Float[Array, "d d"]:
        r"""The mixture covariance $\sum_k w_k (C_k + m_k m_k^\top) - \mu\mu^\top$."""
        mu = self.mean()
        second = jnp.einsum("k,kij->ij", self.weights, self.covs) + jnp.einsum(
            "k,ki,kj->ij", self.weights, self.means, self.means
        )
        return second - jnp.outer(mu, mu)

    @eqx.filter_jit
    def sample(self, key: PRNGKeyArray, n: int) -> Float[Array, "n d"]:
        r"""Draw `n` independent samples: a component $k \sim w$, then
        $m_k + L_k z$ with $L_k L_k^\top = C_k$ and $z \sim N(0, I)$.

        **Arguments:**

        - `key`: a JAX PRNG key.
        - `n`: the number of samples (a Python int).

        **Returns:** an array of shape `(n, d)`.
        """
        ckey, nkey = jr.split(key)
        k = jr.categorical(ckey, jnp.log(self.weights), shape=(n,))
        z = jr.normal(nkey, (n, self.dim), self.means.dtype)
        chol = jnp.linalg.cholesky(self.covs)
        return self.means[k] + jnp.einsum("nij,nj->ni", chol[k], z)

    def log_prob(self, x: Float[ArrayLike, " d"]) -> Scalar:
        r"""The log density $\log\sum_k w_k\,N(x; m_k, C_k)$ of one point.

        **Arguments:**

        - `x`: one unbatched point of shape `(d,)` (`jax.vmap` for batches).

        **Returns:** a scalar.
        """
        x = self._check_x(x)
        log_density, _, _ = _gaussian_terms(self, 1, 0, x)
        return logsumexp(jnp.log(self.weights) + log_density)

    def marginal(self, process: AbstractProcess, t: ScalarLike) -> GaussianMixture:
        r"""The exact marginal of $x_t = \alpha(t) x_0 + \sigma(t)\varepsilon$ for
        $x_0$ from this mixture: weights $w_k$, means $\alpha(t) m_k$, covariances
        $\alpha(t)^2 C_k + \sigma(t)^2 I$.

        **Arguments:**

        - `process`: any process with a Gaussian kernel.
        - `t`: a scalar time ($t = 0$ is data).

        **Returns:** a `GaussianMixture`.
        """
        alpha, sigma = self._coefficients(process, t)
        eye = jnp.eye(self.dim, dtype=self.covs.dtype)
        # same eigenvectors, eigenvalues alpha^2 lambda + sigma^2: exact, and
        # differentiable in t (an eigh of the traced covariances would not be)
        eig = None
        if self.eigvecs is not None:
            eig = (alpha**2 * self.eigvals + sigma**2, self.eigvecs)
        return GaussianMixture(
            self.weights,
            alpha * self.means,
            alpha**2 * self.covs + sigma**2 * eye,
            _eig=eig,
        )

    def score(self, process: AbstractProcess) -> _MixtureField:
        r"""The exact score of the marginal, $\nabla_x \log p_t(x) =
        -\sum_k r_k(x)\,\Sigma_k(t)^{-1}(x - \alpha m_k)$, where $r_k(x)$ are the
        posterior component probabilities (responsibilities) under $p_t$.

        **Arguments:**

        - `process`: any process with a Gaussian kernel.

        **Returns:** a callable `score(t, x)`, time first, `x` one unbatched point of
        shape `(d,)`, returning shape `(d,)`; jit- and vmap-compatible.
        """
        return _MixtureField(self, process, "score")

    def eps(self, process: AbstractProcess) -> _MixtureField:
        r"""The exact noise prediction $\hat\varepsilon(t, x) =
        E[\varepsilon \mid x_t = x] = -\sigma(t)\,\nabla_x\log p_t(x)$.

        **Arguments:** as for [`scoreflow.toy.GaussianMixture.score`][].

        **Returns:** a callable `eps(t, x)` returning shape `(d,)`.
        """
        return _MixtureField(self, process, "eps")

    def x0(self, process: AbstractProcess) -> _MixtureField:
        r"""The exact denoiser $\hat x_0(t, x) = E[x_0 \mid x_t = x]$, in the
        posterior form
        $\sum_k r_k(x)\,[m_k + \alpha C_k \Sigma_k(t)^{-1}(x - \alpha m_k)]$,
        which stays finite as $\alpha(t) \to 0$ (where Tweedie's
        $(x + \sigma^2\nabla\log p_t)/\alpha$ does not).

        **Arguments:** as for [`scoreflow.toy.GaussianMixture.score`][].

        **Returns:** a callable `x0(t, x)` returning shape `(d,)`.
        """
        return _MixtureField(self, process, "x0")

    def velocity(self, process: AbstractProcess) -> _MixtureField:
        r"""The exact marginal (probability-flow) velocity
        $v(t, x) = E[\dot x_t \mid x_t = x] = \dot\alpha(t)\,\hat x_0 +
        \dot\sigma(t)\,\hat\varepsilon$, which satisfies the continuity equation
        $\partial_t p_t + \nabla\cdot(p_t v) = 0$.

        **Arguments:** as for [`scoreflow.toy.GaussianMixture.score`][].

        **Returns:** a callable `velocity(t, x)` returning shape `(d,)`.
        """
        return _MixtureField(self, process, "velocity")

    # ---- helpers --------------------------------------------------------------

    def _check_x(self, x) -> Array:
        x = jnp.asarray(x)
        if x.shape != (self.dim,):
            raise ValueError(
                f"GaussianMixture with d = {self.dim} takes one unbatched point of "
                f"shape ({self.dim},), got shape {x.shape}; use jax.vmap for batches."
            )
        return x.astype(jnp.result_type(x.dtype, self.means.dtype))

    def _coefficients(self, process, t, *derivatives: bool):
        dtype = self.means.dtype
        fns = [process.alpha, process.sigma]
        if derivatives:
            fns += [process.alpha_dot, process.sigma_dot]
        # Constant coefficients may come back as integer arrays: cast.
        return tuple(jnp.asarray(f(t)).astype(dtype) for f in fns)

    def _posterior(self, process, t, x, want_x0: bool):
        """sigma(t), the score and (optionally) the denoiser at (t, x), from the
        responsibilities of the marginal components."""
        x = self._check_x(x)
        alpha, sigma = self._coefficients(process, t)
        log_density, precision_diff, cov_precision_diff = _gaussian_terms(
            self, alpha, sigma, x
        )
        r = jax.nn.softmax(jnp.log(self.weights) + log_density)
        score = -r @ precision_diff
        if not want_x0:
            return sigma, score, None
        x0_k = self.means + alpha * cov_precision_diff
        return sigma, score, r @ x0_k


class _MixtureField(eqx.Module):
    """An exact prediction `(t, x) -> (d,)` of a `GaussianMixture` under a process."""

    mixture: GaussianMixture
    process: AbstractProcess
    kind: str = eqx.field(static=True)

    def __repr__(self):
        return f"{self.mixture!r}.{self.kind}({self.process!r})"

    def __call__(self, t: ScalarLike, x: Float[ArrayLike, " d"]) -> Float[Array, " d"]:
        gm, p = self.mixture, self.process
        want_x0 = self.kind in ("x0", "velocity")
        sigma, score, x0 = gm._posterior(p, t, x, want_x0)
        if self.kind == "score":
            return score
        if self.kind == "x0":
            return x0
        # eps from the score, not (x - alpha x0) / sigma, which is 0/0 as sigma -> 0
        eps = -sigma * score
        if self.kind == "eps":
            return eps
        _, _, alpha_dot, sigma_dot = gm._coefficients(p, t, True)
        return alpha_dot * x0 + sigma_dot * eps


# --------------------------------------------------------------------------- #
# 2-D toy samplers
# --------------------------------------------------------------------------- #


@eqx.filter_jit
def ring_mixture(
    num_modes: int = 8, radius: ScalarLike = 4.0, std: ScalarLike = 0.2
) -> GaussianMixture:
    r"""The exact mixture behind [`scoreflow.toy.ring`][]: `num_modes` equally weighted
    isotropic Gaussians $N(m_k, \mathrm{std}^2 I)$ centred at
    $m_k = r(\cos(2\pi k/K), \sin(2\pi k/K))$, $k = 0, \dots, K - 1$.

    **Arguments:**

    - `num_modes`: the number of modes $K \ge 1$ (a Python int).
    - `radius`: the radius $r$ of the circle of centres.
    - `std`: the standard deviation of each mode, $> 0$.

    **Returns:** a 2-D `GaussianMixture`.
    """
    _check_int("sf.toy.ring_mixture", "num_modes", num_modes, 1)
    angles = 2 * jnp.pi * jnp.arange(num_modes, dtype=float) / num_modes
    if _is_concrete(std) and not float(std) > 0:
        raise ValueError(f"`sf.toy.ring_mixture(std=...)` must be > 0, got std={std}.")
    radius, std = _as_float(radius), _as_float(std)
    means = radius * jnp.stack([jnp.cos(angles), jnp.sin(angles)], axis=-1)
    covs = jnp.broadcast_to(std**2 * jnp.eye(2), (num_modes, 2, 2))
    weights = jnp.full((num_modes,), 1 / num_modes, means.dtype)
    return GaussianMixture(weights, means, covs)


@eqx.filter_jit
def ring(
    key: PRNGKeyArray,
    n: int,
    *,
    num_modes: int = 8,
    radius: ScalarLike = 4.0,
    std: ScalarLike = 0.2,
) -> Float[Array, "n 2"]:
    r"""`n` samples from `num_modes` Gaussian modes evenly spaced on a circle (the
    "8 Gaussians" toy set); exactly [`scoreflow.toy.ring_mixture`][]`(num_modes,
    radius, std).sample(key, n)`.

    **Arguments:**

    - `key`: a JAX PRNG key.
    - `n`: the number of samples.
    - `num_modes`, `radius`, `std`: as for `ring_mixture`.

    **Returns:** an array of shape `(n, 2)`.
    """
    return ring_mixture(num_modes, radius, std).sample(key, n)


@eqx.filter_jit
def two_moons(
    key: PRNGKeyArray, n: int, *, noise: ScalarLike = 0.05
) -> Float[Array, "n 2"]:
    r"""`n` samples from two interleaving half circles (as
    `sklearn.datasets.make_moons`, but with random angles and a random moon per
    point): with $\theta \sim U[0, \pi]$, the upper moon is $(\cos\theta, \sin\theta)$
    and the lower one $(1 - \cos\theta, \tfrac12 - \sin\theta)$, each chosen with
    probability 1/2, plus $N(0, \mathrm{noise}^2 I)$. The mean is $(1/2, 1/4)$.

    **Arguments:**

    - `key`: a JAX PRNG key.
    - `n`: the number of samples.
    - `noise`: the standard deviation of the Gaussian noise added to each point.

    **Returns:** an array of shape `(n, 2)`.
    """
    dtype = jnp.result_type(float)
    mkey, tkey, nkey = jr.split(key, 3)
    upper = jr.bernoulli(mkey, 0.5, (n,))
    theta = jr.uniform(tkey, (n,), dtype, 0.0, jnp.pi)
    c, s = jnp.cos(theta), jnp.sin(theta)
    x = jnp.where(upper, c, 1 - c)
    y = jnp.where(upper, s, 0.5 - s)
    return jnp.stack([x, y], axis=-1) + noise * jr.normal(nkey, (n, 2), dtype)


@eqx.filter_jit
def checkerboard(
    key: PRNGKeyArray, n: int, *, num_squares: int = 4, scale: ScalarLike = 4.0
) -> Float[Array, "n 2"]:
    r"""`n` samples uniform on the dark squares of a checkerboard: the square
    $[-s, s]^2$ cut into `num_squares` $\times$ `num_squares` cells, of which the
    cells $(i, j)$ with $i + j$ even (counting from the lower left) are dark.

    **Arguments:**

    - `key`: a JAX PRNG key.
    - `n`: the number of samples.
    - `num_squares`: cells per side (a Python int $\ge 1$).
    - `scale`: the half-width $s$ of the board.

    **Returns:** an array of shape `(n, 2)`.
    """
    _check_int("sf.toy.checkerboard", "num_squares", num_squares, 1)
    dtype = jnp.result_type(float)
    dark = np.array(
        [
            (i, j)
            for i in range(num_squares)
            for j in range(num_squares)
            if (i + j) % 2 == 0
        ]
    )
    ckey, ukey = jr.split(key)
    cell = jnp.asarray(dark, dtype)[jr.randint(ckey, (n,), 0, len(dark))]
    u = jr.uniform(ukey, (n, 2), dtype)
    side = 2 * scale / num_squares
    return -scale + (cell + u) * side


def _check_int(call, name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(
            f"`{call}({name}=...)` must be a Python int, got {name}={value!r}."
        )
    if value < minimum:
        raise ValueError(
            f"`{call}({name}=...)` must be >= {minimum}, got {name}={value!r}."
        )
