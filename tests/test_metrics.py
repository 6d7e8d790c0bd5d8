"""Tests for `scoreflow.metrics`, each against an independent oracle: scipy's
`sqrtm`, one-dimensional closed forms, Monte Carlo estimates with their standard
errors, scipy's exact 1-D Wasserstein distance and an exact assignment solver."""

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import scipy.linalg  # noqa: E402
import scipy.optimize  # noqa: E402
import scipy.stats  # noqa: E402

from scoreflow import metrics  # noqa: E402


def _random_spd(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def _frechet_reference(mu1, c1, mu2, c2):
    """The lecture notes' form, ||mu1 - mu2||^2 + tr(C1 + C2 - 2 (C1 C2)^{1/2}),
    with scipy's general (Schur) matrix square root."""
    cross = scipy.linalg.sqrtm(c1 @ c2)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(c1 + c2 - 2 * cross.real))


# --------------------------------------------------------------------------- #
# Fréchet distance
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("d", [1, 3, 8])
def test_frechet_gaussians_matches_scipy_sqrtm(d):
    rng = np.random.default_rng(d)
    for _ in range(3):
        mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
        c1, c2 = _random_spd(rng, d), _random_spd(rng, d)
        got = metrics.frechet_distance_gaussians(mu1, c1, mu2, c2)
        ref = _frechet_reference(mu1, c1, mu2, c2)
        np.testing.assert_allclose(got, ref, rtol=1e-8, atol=1e-10)
        # symmetric in its two arguments
        swapped = metrics.frechet_distance_gaussians(mu2, c2, mu1, c1)
        np.testing.assert_allclose(swapped, got, rtol=1e-8, atol=1e-10)


def test_frechet_gaussians_1d_closed_form():
    # W2^2(N(m1, s1^2), N(m2, s2^2)) = (m1 - m2)^2 + (s1 - s2)^2
    m1, s1, m2, s2 = 0.3, 1.7, -1.1, 0.4
    got = metrics.frechet_distance_gaussians(
        np.array([m1]), np.array([[s1**2]]), np.array([m2]), np.array([[s2**2]])
    )
    np.testing.assert_allclose(got, (m1 - m2) ** 2 + (s1 - s2) ** 2, rtol=1e-12)


def test_frechet_gaussians_singular_covariance():
    # rank-deficient covariances: eigenvalues clipped, still matches scipy
    rng = np.random.default_rng(5)
    a = rng.normal(size=(4, 2))
    c1 = a @ a.T
    c2 = _random_spd(rng, 4)
    mu = np.zeros(4)
    got = metrics.frechet_distance_gaussians(mu, c1, mu, c2)
    assert np.isfinite(got)
    np.testing.assert_allclose(got, _frechet_reference(mu, c1, mu, c2), rtol=1e-6)


def test_frechet_distance_of_samples():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 5)) @ rng.normal(size=(5, 5)) + 1.0
    y = rng.normal(size=(200, 5)) * 2.0
    got = metrics.frechet_distance(x, y)
    ref = _frechet_reference(
        x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False)
    )
    np.testing.assert_allclose(got, ref, rtol=1e-8)
    # identical sets: zero (up to rounding, relative to the trace of the covariance)
    same = metrics.frechet_distance(x, x)
    assert 0.0 <= float(same) < 1e-10 * np.trace(np.cov(x, rowvar=False))


def test_frechet_distance_float32_and_jit_vmap():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 100, 2)).astype(np.float32)
    y = x + 1.0
    out = jax.jit(jax.vmap(metrics.frechet_distance))(x, y)
    assert out.dtype == jnp.float32
    # a pure shift by (1, 1) moves the mean only: d^2 = 2
    np.testing.assert_allclose(out, 2.0, rtol=1e-4)


def test_frechet_bad_inputs():
    with pytest.raises(ValueError, match=r"shape \(n, d\) with n >= 2"):
        metrics.frechet_distance(np.zeros(5), np.zeros((5, 1)))
    with pytest.raises(ValueError, match="same dimension"):
        metrics.frechet_distance(np.zeros((5, 2)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="cov1 shape"):
        metrics.frechet_distance_gaussians(
            np.zeros(2), np.eye(3), np.zeros(2), np.eye(2)
        )


# --------------------------------------------------------------------------- #
# Gaussian KL
# --------------------------------------------------------------------------- #


def test_gaussian_kl_1d_closed_form():
    m1, s1, m2, s2 = 0.5, 0.8, -0.2, 1.9
    ref = np.log(s2 / s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - 0.5
    got = metrics.gaussian_kl(
        np.array([m1]), np.array([[s1**2]]), np.array([m2]), np.array([[s2**2]])
    )
    np.testing.assert_allclose(got, ref, rtol=1e-12)


def test_gaussian_kl_matches_monte_carlo():
    rng = np.random.default_rng(2)
    d, n = 3, 200_000
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    c1, c2 = _random_spd(rng, d), _random_spd(rng, d)
    p1 = scipy.stats.multivariate_normal(mu1, c1)
    p2 = scipy.stats.multivariate_normal(mu2, c2)
    x = p1.rvs(size=n, random_state=rng)
    log_ratio = p1.logpdf(x) - p2.logpdf(x)
    estimate, se = log_ratio.mean(), log_ratio.std(ddof=1) / np.sqrt(n)
    got = float(metrics.gaussian_kl(mu1, c1, mu2, c2))
    assert abs(got - estimate) < 4 * se, (got, estimate, se)
    assert float(metrics.gaussian_kl(mu1, c1, mu1, c1)) == pytest.approx(0, abs=1e-12)


def test_gaussian_kl_vmaps_over_batches():
    mus = np.linspace(-1.0, 1.0, 5)[:, None] * np.ones((5, 2))
    kl = jax.vmap(metrics.gaussian_kl, in_axes=(0, None, None, None))(
        mus, np.eye(2), np.zeros(2), np.eye(2)
    )
    # equal unit covariances: KL = ||mu||^2 / 2
    np.testing.assert_allclose(kl, 0.5 * np.sum(mus**2, axis=1), rtol=1e-12)


# --------------------------------------------------------------------------- #
# Sliced Wasserstein
# --------------------------------------------------------------------------- #


def test_sliced_wasserstein_identical_sets_is_zero():
    # (same shape and num_projections as the d-dimensional test: one compilation)
    x = np.random.default_rng(0).normal(size=(200, 4))
    sw = metrics.sliced_wasserstein(jr.key(1), x, x, num_projections=2000)
    assert float(sw) == 0.0


@pytest.mark.parametrize("p", [1, 2])
def test_sliced_wasserstein_1d_is_exact_wasserstein(p):
    """In 1-D every direction is +-1, so SW_p is W_p between the empirical measures,
    found here by an exact assignment solver (and by scipy for p = 1)."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(60, 1))
    y = rng.standard_t(3, size=(60, 1)) + 0.5
    cost = np.abs(x - y.T) ** p
    rows, cols = scipy.optimize.linear_sum_assignment(cost)
    ref = cost[rows, cols].mean() ** (1 / p)
    got = metrics.sliced_wasserstein(jr.key(4), x, y, num_projections=8, p=p)
    np.testing.assert_allclose(got, ref, rtol=1e-10)
    if p == 1:
        np.testing.assert_allclose(
            got, scipy.stats.wasserstein_distance(x[:, 0], y[:, 0]), rtol=1e-10
        )


def test_sliced_wasserstein_shifted_gaussians():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(4000, 1))
    # a pure shift in 1-D: exactly the shift
    np.testing.assert_allclose(
        metrics.sliced_wasserstein(jr.key(6), x, x + 3.0), 3.0, rtol=1e-10
    )
    # independent samples of N(0, 1) and N(3, 1): W2 = 3 up to sampling error. With
    # n = 4000 the difference of sample means has standard error sqrt(2/n) = 0.022
    # and the empirical W2 between two N(0, 1) samples is about 0.03: allow 0.1.
    y = 3.0 + rng.normal(size=(4000, 1))
    sw = metrics.sliced_wasserstein(jr.key(8), x, y)
    assert abs(float(sw) - 3.0) < 0.1


def test_sliced_wasserstein_shift_in_d_dimensions():
    r"""y = x + c e_1: every projection is shifted by c theta_1, so
    SW_2 = c sqrt(mean theta_1^2) -> c / sqrt(d); theta_1^2 has mean 1/d and variance
    2(d - 1)/(d^2 (d + 2)) for theta uniform on the sphere (4 standard errors)."""
    d, c, L = 4, 2.0, 2000
    x = np.random.default_rng(9).normal(size=(200, d))
    sw = float(
        metrics.sliced_wasserstein(
            jr.key(10), x, x + c * np.eye(d)[0], num_projections=L
        )
    )
    mean, var = 1 / d, 2 * (d - 1) / (d**2 * (d + 2))
    assert abs((sw / c) ** 2 - mean) < 4 * np.sqrt(var / L)


def test_sliced_wasserstein_bad_inputs():
    x = np.zeros((10, 2))
    with pytest.raises(ValueError, match="same shape"):
        metrics.sliced_wasserstein(jr.key(0), x, np.zeros((11, 2)))
    with pytest.raises(ValueError, match="p must be >= 1"):
        metrics.sliced_wasserstein(jr.key(0), x, x, p=0.5)
    with pytest.raises(ValueError, match="num_projections"):
        metrics.sliced_wasserstein(jr.key(0), x, x, num_projections=0)


def test_frechet_distance_of_mixed_dtypes():
    """float32 samples against a float64 reference (a float32 model checked
    against exact float64 samples) are compared in the wider dtype, also under the
    suite's strict dtype promotion, where mixing them used to raise."""
    x = jr.normal(jr.key(0), (200, 3), jnp.float64)
    y = jr.normal(jr.key(1), (300, 3), jnp.float64) + 0.5
    mixed = metrics.frechet_distance(x.astype(jnp.float32), y)
    want = metrics.frechet_distance(x.astype(jnp.float32).astype(jnp.float64), y)
    assert mixed.dtype == jnp.float64
    # x's moments are taken in float32 before the promotion: float32 round-off
    np.testing.assert_allclose(mixed, want, rtol=1e-6)
