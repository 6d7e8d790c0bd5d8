"""Tests for `scoreflow.toy`: every number is checked against an independent oracle
(autodiff of the density, scipy, numpy linear algebra, quadrature, the continuity
equation, or a Monte Carlo estimate with its standard error)."""

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import scipy.stats  # noqa: E402
from scipy.special import logsumexp  # noqa: E402

from scoreflow import toy  # noqa: E402
from scoreflow._process import VE, VP, RectifiedFlow  # noqa: E402

PROCESS_NAMES = ("VP", "VE", "RectifiedFlow")


@pytest.fixture(scope="module")
def processes():
    """Each process built once per module (construction runs sympy)."""
    return {"VP": VP(), "VE": VE(), "RectifiedFlow": RectifiedFlow()}


def _random_spd(rng, d, scale=1.0):
    a = rng.normal(size=(d, d))
    return scale * (a @ a.T / d + 0.3 * np.eye(d))


def _mixture_arrays(seed=0, K=3, d=2):
    rng = np.random.default_rng(seed)
    w = rng.uniform(0.5, 1.5, K)
    w = w / w.sum()
    m = rng.normal(scale=2.0, size=(K, d))
    c = np.stack([_random_spd(rng, d) for _ in range(K)])
    return w, m, c


@pytest.fixture(scope="module")
def gm():
    return toy.GaussianMixture(*_mixture_arrays())


def _times(p):
    return (p.t0, 0.1, 0.5, 0.9, p.t1)


def _points(gm, p, t, key, n=5):
    """Points where the marginal at t has mass (so responsibilities are non-trivial)."""
    return gm.marginal(p, t).sample(key, n)


# --------------------------------------------------------------------------- #
# Construction and validation
# --------------------------------------------------------------------------- #


def test_fields_and_dtype(gm):
    assert gm.weights.shape == (3,)
    assert gm.means.shape == (3, 2)
    assert gm.covs.shape == (3, 2, 2)
    assert gm.weights.dtype == gm.means.dtype == gm.covs.dtype == jnp.float64
    assert gm.num_components == 3 and gm.dim == 2
    # integer input becomes float
    g = toy.GaussianMixture([1], [[0]], [[[1]]])
    assert jnp.issubdtype(g.means.dtype, jnp.floating)


_W, _M, _C = _mixture_arrays()


@pytest.mark.parametrize(
    "weights, means, covs, fragments",
    [
        (_W[:2], _M, _C, ["number of components K must agree", "K = 2"]),
        (_W, _M[:2], _C, ["number of components K must agree"]),
        (_W, _M[:, :1], _C, ["dimension d must agree"]),
        (_W, _M, _C[:, :, :1], ["must be square"]),
        (_W, _M, _C[:, 0], ["full covariances of shape (K, d, d)"]),
        (_W, _M[0], _C, ["means must have shape (K, d)"]),
        (_W[None], _M, _C, ["weights must have shape (K,)"]),
        (np.array([1.2, -0.2, 0.0]), _M, _C, ["non-negative"]),
        (np.array([0.5, 0.5, 0.5]), _M, _C, ["sum to 1", "normalise them"]),
        (_W, _M, _C + np.array([[0.0, 0.5], [0.0, 0.0]]), ["covs[0] is not symmetric"]),
        (
            _W,
            _M,
            np.stack([_C[0], np.diag([1.0, -1e-3]), _C[2]]),
            ["covs[1] is not positive definite", "smallest eigenvalue"],
        ),
        (_W, np.where(np.eye(3, 2) > 0, np.nan, _M), _C, ["means contain NaN"]),
        (
            np.zeros(0),
            np.zeros((0, 2)),
            np.zeros((0, 2, 2)),
            ["at least one component"],
        ),
    ],
)
def test_bad_inputs_raise(weights, means, covs, fragments):
    with pytest.raises(ValueError) as info:
        toy.GaussianMixture(weights, means, covs)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_weights_within_tolerance_accepted():
    w = np.array([0.5, 0.5 + 5e-7])
    toy.GaussianMixture(w, _M[:2], _C[:2])


def test_construction_inside_jit_skips_value_checks():
    @jax.jit
    def f(s):
        return toy.GaussianMixture(
            jnp.ones(1), jnp.zeros((1, 1)), s * jnp.ones((1, 1, 1))
        )

    assert f(2.0).covs[0, 0, 0] == 2.0


def test_log_prob_rejects_batched_x(gm):
    with pytest.raises(ValueError, match="use jax.vmap for batches"):
        gm.log_prob(jnp.zeros((4, 2)))


# --------------------------------------------------------------------------- #
# Density and sampling
# --------------------------------------------------------------------------- #


def test_log_prob_matches_scipy(gm):
    w, m, c = _mixture_arrays()
    x = np.random.default_rng(1).normal(scale=3.0, size=(20, 2))
    ref = logsumexp(
        np.stack(
            [
                np.log(w[k]) + scipy.stats.multivariate_normal(m[k], c[k]).logpdf(x)
                for k in range(3)
            ]
        ),
        axis=0,
    )
    got = jax.vmap(gm.log_prob)(jnp.asarray(x))
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)


def test_log_prob_integrates_to_one_in_1d():
    g = toy.GaussianMixture(
        [0.2, 0.5, 0.3], [[-3.0], [0.0], [2.5]], [[[0.3]], [[1.0]], [[0.05]]]
    )
    grid = np.linspace(-15.0, 15.0, 60001)
    dens = np.exp(np.asarray(jax.vmap(g.log_prob)(jnp.asarray(grid[:, None]))))
    np.testing.assert_allclose(np.trapezoid(dens, grid), 1.0, atol=1e-8)


def _check_moments(samples, mean, cov, num_se=4.0):
    """Sample mean/covariance within `num_se` standard errors of the exact ones; the
    standard error of each covariance entry is estimated from the samples."""
    x = np.asarray(samples, np.float64)
    n = x.shape[0]
    mean, cov = np.asarray(mean), np.asarray(cov)
    se_mean = np.sqrt(np.diag(cov) / n)
    assert np.all(np.abs(x.mean(0) - mean) < num_se * se_mean), (x.mean(0), mean)
    centred = x - mean
    prods = centred[:, :, None] * centred[:, None, :]
    se_cov = prods.std(0, ddof=1) / np.sqrt(n)
    assert np.all(np.abs(prods.mean(0) - cov) < num_se * se_cov), (prods.mean(0), cov)


def test_sample_moments_match_mixture(gm):
    w, m, c = _mixture_arrays()
    mean = w @ m
    cov = sum(w[k] * (c[k] + np.outer(m[k], m[k])) for k in range(3)) - np.outer(
        mean, mean
    )
    x = gm.sample(jr.key(0), 40_000)
    assert x.shape == (40_000, 2) and x.dtype == jnp.float64
    _check_moments(x, mean, cov)
    np.testing.assert_allclose(gm.mean(), mean, rtol=1e-12)
    np.testing.assert_allclose(gm.cov(), cov, rtol=1e-12)


def test_sample_zero_weight_component_never_drawn():
    g = toy.GaussianMixture([1.0, 0.0], [[0.0], [100.0]], [[[1.0]], [[1.0]]])
    assert float(jnp.max(g.sample(jr.key(1), 5000))) < 10.0


def test_marginal_matches_pushed_forward_samples(gm, processes):
    p, t, n = processes["VP"], 0.3, 40_000
    k1, k2 = jr.split(jr.key(2))
    x0 = gm.sample(k1, n)
    xt, _ = jax.vmap(p.sample_marginal)(jr.split(k2, n), x0, jnp.full((n,), t))
    marg = gm.marginal(p, t)
    assert isinstance(marg, toy.GaussianMixture)
    _check_moments(xt, marg.mean(), marg.cov())


# --------------------------------------------------------------------------- #
# Exact predictions
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("name", PROCESS_NAMES)
def test_score_equals_autodiff_of_marginal_log_prob(gm, processes, name):
    p = processes[name]
    score = jax.jit(jax.vmap(gm.score(p), in_axes=(None, 0)))
    for i, t in enumerate(_times(p)):
        x = _points(gm, p, t, jr.key(10 + i))
        ref = jax.vmap(jax.grad(gm.marginal(p, t).log_prob))(x)
        got = score(t, x)
        assert got.shape == x.shape
        np.testing.assert_allclose(
            got,
            ref,
            rtol=1e-6,
            atol=1e-9 * float(jnp.max(jnp.abs(ref))),
            err_msg=f"t={t}",
        )


def _numpy_x0(w, m, c, alpha, sigma, x):
    """Oracle: E[x0 | x_t = x] by Bayes with scipy densities and dense numpy solves."""
    d = m.shape[1]
    covs_t = alpha**2 * c + sigma**2 * np.eye(d)
    logr = np.array(
        [
            np.log(w[k])
            + scipy.stats.multivariate_normal(alpha * m[k], covs_t[k]).logpdf(x)
            for k in range(len(w))
        ]
    )
    r = np.exp(logr - logsumexp(logr))
    # per component: Cov(x0, x_t) Var(x_t)^{-1}
    post = [
        m[k] + alpha * c[k] @ np.linalg.solve(covs_t[k], x - alpha * m[k])
        for k in range(len(w))
    ]
    return r @ np.array(post)


@pytest.mark.parametrize("name", PROCESS_NAMES)
def test_eps_x0_consistent_with_kernel(gm, processes, name):
    """x = alpha x0hat + sigma epshat (x0 is computed in the posterior form, eps from
    the score, so this is Tweedie's formula) and x0 agrees with a numpy oracle."""
    p = processes[name]
    w, m, c = _mixture_arrays()
    eps, x0 = gm.eps(p), gm.x0(p)
    for i, t in enumerate(_times(p)):
        a, s = float(p.alpha(t)), float(p.sigma(t))
        x = _points(gm, p, t, jr.key(20 + i))
        e_hat, x0_hat = (
            jax.vmap(eps, in_axes=(None, 0))(t, x),
            jax.vmap(x0, in_axes=(None, 0))(t, x),
        )
        np.testing.assert_allclose(a * x0_hat + s * e_hat, x, rtol=1e-9, atol=1e-9)
        ref = np.array([_numpy_x0(w, m, c, a, s, np.asarray(xi)) for xi in x])
        np.testing.assert_allclose(x0_hat, ref, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("name", PROCESS_NAMES)
def test_velocity_satisfies_continuity_equation(gm, processes, name):
    r"""$\partial_t \log p_t + \nabla\cdot v + v\cdot\nabla\log p_t = 0$, with
    $\partial_t$ and the divergence by autodiff of the marginal density."""
    p = processes[name]
    v = gm.velocity(p)

    def log_p(t, x):
        return gm.marginal(p, t).log_prob(x)

    def residual(t, x):
        dlogp_dt = jax.jacfwd(log_p, argnums=0)(t, x)
        div = jnp.trace(jax.jacfwd(v, argnums=1)(t, x))
        return dlogp_dt + div + v(t, x) @ jax.grad(log_p, argnums=1)(t, x)

    for i, t in enumerate((0.1, 0.5, 0.9)):
        x = _points(gm, p, t, jr.key(30 + i), n=3)
        t = jnp.asarray(t)
        res = jax.vmap(residual, in_axes=(None, 0))(t, x)
        scale = jax.vmap(lambda xi: jnp.abs(jax.jacfwd(log_p)(t, xi)))(x)
        np.testing.assert_allclose(res, 0.0, atol=1e-8 * (1 + float(jnp.max(scale))))


def test_velocity_single_gaussian_closed_form(processes):
    """1-D Gaussian N(m, c): the marginal N(alpha m, s^2) with s^2 = alpha^2 c + sigma^2
    moves along the linear flow v = alpha' m + (s'/s)(x - alpha m)."""
    p = processes["VP"]
    m, c = 0.7, 0.4
    g = toy.GaussianMixture([1.0], [[m]], [[[c]]])
    for t in (0.05, 0.4, 0.8):
        a, s = float(p.alpha(t)), float(p.sigma(t))
        da, ds = float(p.alpha_dot(t)), float(p.sigma_dot(t))
        std = np.sqrt(a**2 * c + s**2)
        dstd = (a * da * c + s * ds) / std
        x = 1.3
        ref = da * m + dstd / std * (x - a * m)
        np.testing.assert_allclose(g.velocity(p)(t, jnp.array([x]))[0], ref, rtol=1e-10)


def test_x0_finite_and_correct_as_alpha_vanishes(gm, processes):
    """Rectified flow: alpha(1) = 0 exactly, where the marginal is N(0, I) for every
    component, so E[x0 | x_t] = sum_k w_k m_k; near t1 compare with the numpy oracle."""
    p = processes["RectifiedFlow"]
    w, m, c = _mixture_arrays()
    x = jr.normal(jr.key(40), (6, 2))
    x0 = jax.vmap(gm.x0(p), in_axes=(None, 0))
    np.testing.assert_allclose(x0(1.0, x), np.broadcast_to(w @ m, (6, 2)), rtol=1e-12)
    for t in (p.t1, 1 - 1e-6):
        a, s = float(p.alpha(t)), float(p.sigma(t))
        ref = np.array([_numpy_x0(w, m, c, a, s, np.asarray(xi)) for xi in x])
        np.testing.assert_allclose(x0(t, x), ref, rtol=1e-9)
    # float32 too: finite everywhere up to alpha = 0, and close to the float64 answer
    g32 = toy.GaussianMixture(*(np.asarray(v, np.float32) for v in (w, m, c)))
    for t in (p.t1, 1.0):
        out = jax.vmap(g32.x0(p), in_axes=(None, 0))(
            jnp.float32(t), x.astype(jnp.float32)
        )
        assert out.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out)))
        np.testing.assert_allclose(out, x0(t, x), rtol=1e-4, atol=1e-5)
    for f in (g32.score(p), g32.eps(p), g32.velocity(p)):
        assert bool(
            jnp.all(jnp.isfinite(f(jnp.float32(p.t1), x[0].astype(jnp.float32))))
        )


def test_fields_vmap_over_time_and_jit_as_pytrees(gm, processes):
    p = processes["VE"]
    ts = jnp.linspace(p.t0, p.t1, 4)
    x = jr.normal(jr.key(50), (4, 2))

    @jax.jit
    def f(field, t, x):
        return jax.vmap(field)(t, x)

    for make in (gm.score, gm.eps, gm.x0, gm.velocity):
        out = f(make(p), ts, x)
        ref = jnp.stack([make(p)(ts[i], x[i]) for i in range(4)])
        np.testing.assert_allclose(out, ref, rtol=1e-12)


# --------------------------------------------------------------------------- #
# 2-D toy samplers
# --------------------------------------------------------------------------- #


def test_ring_moments_and_mixture():
    K, r, s = 8, 4.0, 0.2
    g = toy.ring_mixture(K, r, s)
    angles = 2 * np.pi * np.arange(K) / K
    np.testing.assert_allclose(
        g.means, r * np.c_[np.cos(angles), np.sin(angles)], atol=1e-12
    )
    np.testing.assert_allclose(g.weights, np.full(K, 1 / K))
    x = toy.ring(jr.key(60), 20_000, num_modes=K, radius=r, std=s)
    assert x.shape == (20_000, 2)
    # exact: mean 0 and covariance (r^2/2 + s^2) I for K >= 3 equally spaced modes
    _check_moments(x, np.zeros(2), (r**2 / 2 + s**2) * np.eye(2))
    # every point is near some mode
    dist = np.min(
        np.linalg.norm(np.asarray(x)[:, None] - np.asarray(g.means)[None], axis=-1), 1
    )
    assert np.max(dist) < 7 * s


def test_ring_bad_arguments():
    with pytest.raises(ValueError, match="num_modes"):
        toy.ring(jr.key(0), 10, num_modes=0)
    with pytest.raises(ValueError, match="std"):
        toy.ring_mixture(std=0.0)


def test_two_moons_geometry_and_moments():
    x = np.asarray(toy.two_moons(jr.key(70), 20_000, noise=0.0))
    on_upper = np.isclose(np.linalg.norm(x, axis=1), 1.0) & (x[:, 1] >= -1e-12)
    on_lower = np.isclose(np.linalg.norm(x - [1.0, 0.5], axis=1), 1.0) & (
        x[:, 1] <= 0.5 + 1e-12
    )
    assert np.all(on_upper | on_lower)
    # theta ~ U[0, pi]: E cos = 0, E sin = 2/pi, E sin^2 = E cos^2 = 1/2;
    # the moon is a fair coin
    mean = np.array([0.5, 0.25])
    ex2 = 0.5 * 0.5 + 0.5 * (1 + 0.5)  # E[x^2]: 1/2 E cos^2 + 1/2 E (1 - cos)^2
    ey2 = 0.5 * 0.5 + 0.5 * (0.25 - 2 / np.pi + 0.5)
    exy = 0.5 * 0.0 + 0.5 * (0.5 - 2 / np.pi)  # E[cos sin] = 0, E[(1-cos)(1/2-sin)]
    cov = np.array([[ex2, exy], [exy, ey2]]) - np.outer(mean, mean)
    _check_moments(x, mean, cov)
    noisy = toy.two_moons(jr.key(71), 100, noise=0.1)
    assert noisy.shape == (100, 2)


def test_checkerboard_support_and_moments():
    n, N, s = 20_000, 4, 4.0
    x = np.asarray(toy.checkerboard(jr.key(80), n, num_squares=N, scale=s))
    assert x.shape == (n, 2)
    assert np.all(np.abs(x) <= s)
    cells = np.floor((x + s) / (2 * s / N)).astype(int)
    assert np.all(cells.sum(1) % 2 == 0)
    # each of the N^2/2 dark cells equally likely (binomial standard error)
    counts = np.bincount(cells[:, 0] * N + cells[:, 1], minlength=N * N)
    dark = (np.add.outer(np.arange(N), np.arange(N)) % 2 == 0).ravel()
    q = 1 / dark.sum()
    assert np.all(np.abs(counts[dark] - n * q) < 4 * np.sqrt(n * q * (1 - q)))
    # even N: each coordinate is uniform on [-s, s] (mean 0, variance s^2/3); the
    # dark cells (i - 1.5, j - 1.5), side 2 give E[xy] = side^2 mean(c_i c_j) = 1
    cov = np.array([[s**2 / 3, 1.0], [1.0, s**2 / 3]])
    _check_moments(x, np.zeros(2), cov)
    with pytest.raises(ValueError, match="num_squares"):
        toy.checkerboard(jr.key(0), 5, num_squares=2.5)
