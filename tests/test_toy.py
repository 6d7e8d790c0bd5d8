"""Tests for `scoreflow.toy`: every number is checked against an independent oracle
(autodiff of the density, scipy, numpy linear algebra, quadrature, the continuity
equation, or a Monte Carlo estimate with its standard error)."""

import jax

jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
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


@eqx.filter_jit
def _log_probs(g, x):
    return jax.vmap(g.log_prob)(x)


def test_log_prob_matches_scipy(gm):
    w, m, c = _mixture_arrays()
    x = np.random.default_rng(1).normal(scale=3.0, size=(20, 2))
    ref = logsumexp(
        [
            np.log(w[k]) + scipy.stats.multivariate_normal(m[k], c[k]).logpdf(x)
            for k in range(3)
        ],
        axis=0,
    )
    np.testing.assert_allclose(_log_probs(gm, x), ref, rtol=1e-12, atol=1e-12)


def test_log_prob_integrates_to_one_in_1d():
    g = toy.GaussianMixture(
        [0.2, 0.5, 0.3], [[-3.0], [0.0], [2.5]], [[[0.3]], [[1.0]], [[0.05]]]
    )
    grid = np.linspace(-15.0, 15.0, 60001)
    dens = np.exp(np.asarray(_log_probs(g, grid[:, None])))
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


NUM_SAMPLES = 40_000


def _numpy_draws(rng, n):
    """n draws of x0 from the test mixture and of eps ~ N(0, I), with numpy."""
    w, m, c = _mixture_arrays()
    k = rng.choice(len(w), size=n, p=w)
    z = rng.normal(size=(n, 2))
    x0 = m[k] + np.einsum("nij,nj->ni", np.linalg.cholesky(c)[k], z)
    return x0, rng.normal(size=x0.shape)


def test_sample_moments_match_mixture(gm):
    w, m, c = _mixture_arrays()
    mean = w @ m
    second = sum(w[k] * (c[k] + np.outer(m[k], m[k])) for k in range(3))
    cov = second - np.outer(mean, mean)
    x = gm.sample(jr.key(0), NUM_SAMPLES)
    assert x.shape == (NUM_SAMPLES, 2) and x.dtype == jnp.float64
    _check_moments(x, mean, cov)
    np.testing.assert_allclose(gm.mean(), mean, rtol=1e-12)
    np.testing.assert_allclose(gm.cov(), cov, rtol=1e-12)


def test_sample_zero_weight_component_never_drawn():
    g = toy.GaussianMixture([1.0, 0.0], [[0.0], [100.0]], [[[1.0]], [[1.0]]])
    assert np.max(np.asarray(g.sample(jr.key(1), 5000))) < 10.0


def test_marginal_matches_pushed_forward_samples(gm, processes):
    """Moments of alpha x0 + sigma eps (numpy draws of x0 from the mixture and of
    eps) match those of `marginal(p, t)`."""
    p, t = processes["VP"], 0.3
    x0, eps = _numpy_draws(np.random.default_rng(2), NUM_SAMPLES)
    xt = float(p.alpha(t)) * x0 + float(p.sigma(t)) * eps
    marg = gm.marginal(p, t)
    assert isinstance(marg, toy.GaussianMixture)
    _check_moments(xt, marg.mean(), marg.cov())


# --------------------------------------------------------------------------- #
# Exact predictions
# --------------------------------------------------------------------------- #


NUM_POINTS = 4


def _draws(p, seed):
    """Times (NUM_POINTS per time) and numpy draws (x0, eps) from the mixture and the
    noise, so x_t = alpha x0 + sigma eps is a point where the marginal has mass."""
    ts = np.repeat(_times(p), NUM_POINTS)
    return (ts, *_numpy_draws(np.random.default_rng(seed), len(ts)))


@eqx.filter_jit
def _evaluate(gm, p, ts, x0, eps):
    """Everything the prediction tests check, for all (t, x) pairs in one compiled
    call."""

    def log_p(t, x):
        return gm.marginal(p, t).log_prob(x)

    v = gm.velocity(p)

    def one(t, x0, e):
        x = p.alpha(t) * x0 + p.sigma(t) * e
        return dict(
            x=x,
            alpha=p.alpha(t),
            sigma=p.sigma(t),
            score=gm.score(p)(t, x),
            grad_log_p=jax.grad(log_p, argnums=1)(t, x),
            eps=gm.eps(p)(t, x),
            x0=gm.x0(p)(t, x),
            velocity=v(t, x),
            dlogp_dt=jax.grad(log_p, argnums=0)(t, x),
            div_v=jnp.trace(jax.jacfwd(v, argnums=1)(t, x)),
        )

    return jax.vmap(one)(ts, x0, eps)


@pytest.fixture(scope="module")
def evaluated(gm, processes):
    out = {}
    for i, name in enumerate(PROCESS_NAMES):
        ts, x0, eps = _draws(processes[name], seed=10 + i)
        res = _evaluate(gm, processes[name], ts, x0, eps)
        out[name] = dict(jax.tree.map(np.asarray, res), t=ts)
    return out


@pytest.mark.parametrize("name", PROCESS_NAMES)
def test_score_equals_autodiff_of_marginal_log_prob(evaluated, name):
    e = evaluated[name]
    assert e["score"].shape == e["x"].shape
    err = np.linalg.norm(e["score"] - e["grad_log_p"], axis=1)
    bound = 1e-6 * np.linalg.norm(e["grad_log_p"], axis=1)
    assert np.all(err <= bound), np.c_[e["t"], err, bound]


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
    # per component: E[x0] + Cov(x0, x_t) Var(x_t)^{-1} (x - E[x_t])
    post = [
        m[k] + alpha * c[k] @ np.linalg.solve(covs_t[k], x - alpha * m[k])
        for k in range(len(w))
    ]
    return r @ np.array(post)


@pytest.mark.parametrize("name", PROCESS_NAMES)
def test_eps_x0_consistent_with_kernel(evaluated, name):
    """x = alpha x0hat + sigma epshat (x0 is computed in the posterior form, eps from
    the score, so this is Tweedie's formula) and x0 agrees with a numpy oracle."""
    e = evaluated[name]
    a, s, x = e["alpha"][:, None], e["sigma"][:, None], e["x"]
    np.testing.assert_allclose(a * e["x0"] + s * e["eps"], x, rtol=1e-9, atol=1e-9)
    w, m, c = _mixture_arrays()
    ref = [_numpy_x0(w, m, c, *row) for row in zip(e["alpha"], e["sigma"], x)]
    np.testing.assert_allclose(e["x0"], np.array(ref), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("name", PROCESS_NAMES)
def test_velocity_satisfies_continuity_equation(evaluated, name):
    r"""$\partial_t \log p_t + \nabla\cdot v + v\cdot\nabla\log p_t = 0$, with
    $\partial_t \log p_t$ and the divergence by autodiff of the marginal density."""
    e = evaluated[name]
    transport = np.sum(e["velocity"] * e["grad_log_p"], axis=-1)
    terms = (e["dlogp_dt"], e["div_v"], transport)
    scale = 1 + sum(np.abs(term) for term in terms)
    np.testing.assert_array_less(np.abs(sum(terms)), 1e-8 * scale)


@eqx.filter_jit
def _apply(fields, p, t, x):
    """Each field at (t, x_i) for every row of x, and the process coefficients at t."""
    outs = tuple(jax.vmap(f, in_axes=(None, 0))(t, x) for f in fields)
    return outs, (p.alpha(t), p.sigma(t), p.alpha_dot(t), p.sigma_dot(t))


def test_velocity_single_gaussian_closed_form(processes):
    """1-D Gaussian N(m, c): the marginal N(alpha m, s^2) with s^2 = alpha^2 c + sigma^2
    moves along the linear flow v = alpha' m + (s'/s)(x - alpha m)."""
    p = processes["VP"]
    m, c = 0.7, 0.4
    g = toy.GaussianMixture([1.0], [[m]], [[[c]]])
    x = np.array([[-0.4], [1.3]])
    for t in (0.05, 0.8):
        (v,), (a, s, da, ds) = _apply((g.velocity(p),), p, jnp.asarray(t), x)
        std = np.sqrt(a**2 * c + s**2)
        dstd = (a * da * c + s * ds) / std
        np.testing.assert_allclose(v, da * m + dstd / std * (x - a * m), rtol=1e-10)


def test_x0_finite_and_correct_as_alpha_vanishes(gm, processes):
    """Rectified flow: alpha(1) = 0 exactly, where the marginal is N(0, I) for every
    component, so E[x0 | x_t] = sum_k w_k m_k; near t1 compare with the numpy oracle."""
    p = processes["RectifiedFlow"]
    w, m, c = _mixture_arrays()
    x = np.random.default_rng(40).normal(size=(6, 2))
    g32 = toy.GaussianMixture(*(np.asarray(v, np.float32) for v in (w, m, c)))
    fields32 = (g32.x0(p), g32.score(p), g32.eps(p), g32.velocity(p))
    for t in (p.t1, 1 - 1e-6, 1.0):
        (x0,), (a, s, _, _) = _apply((gm.x0(p),), p, jnp.asarray(t), x)
        if t == 1.0:
            np.testing.assert_allclose(x0, np.broadcast_to(w @ m, x.shape), rtol=1e-12)
        else:
            ref = [_numpy_x0(w, m, c, a, s, xi) for xi in x]
            np.testing.assert_allclose(x0, np.array(ref), rtol=1e-9)
        # float32: finite up to alpha = 0, and close to the float64 answer
        outs, _ = _apply(fields32, p, jnp.float32(t), x.astype(np.float32))
        assert outs[0].dtype == jnp.float32
        assert all(np.all(np.isfinite(o)) for o in outs)
        np.testing.assert_allclose(outs[0], x0, rtol=1e-4, atol=1e-5)


@eqx.filter_jit
def _apply_batched(fields, t, x):
    return tuple(jax.vmap(f)(t, x) for f in fields)


def test_fields_are_pytrees_through_jit_and_vmap_over_time(gm, processes, evaluated):
    p, e = processes["VE"], evaluated["VE"]
    kinds = ("score", "eps", "x0", "velocity")
    outs = _apply_batched(tuple(getattr(gm, k)(p) for k in kinds), e["t"], e["x"])
    for kind, out in zip(kinds, outs):
        np.testing.assert_allclose(out, e[kind], rtol=1e-12, err_msg=kind)


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


def test_eigenbasis_and_cholesky_forms_agree_and_differentiate_in_t():
    """A concrete mixture works in each covariance's eigenbasis (no LAPACK call per
    model evaluation); covariances known only inside a trace use the Cholesky form.
    The two agree, and the marginal's log density is differentiable in t even for
    isotropic covariances (repeated eigenvalues), as the Fokker-Planck checks need."""
    gm = toy.GaussianMixture(
        jnp.array([0.3, 0.7]),
        jnp.array([[-1.0, 0.5], [2.0, 0.0]]),
        jnp.stack([0.5 * jnp.eye(2), jnp.array([[0.4, 0.1], [0.1, 0.3]])]),
    )
    assert gm.eigvecs is not None
    p, x = VP(), jnp.array([0.3, -0.2])

    @jax.jit
    def traced(w, m, c):
        g = toy.GaussianMixture(w, m, c)
        assert g.eigvecs is None  # traced: Cholesky form
        return g.log_prob(x), g.score(p)(0.4, x), g.x0(p)(0.4, x)

    a = (gm.log_prob(x), gm.score(p)(0.4, x), gm.x0(p)(0.4, x))
    b = traced(gm.weights, gm.means, gm.covs)
    for u, v in zip(a, b):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-10)

    def lp(t):
        return gm.marginal(p, t).log_prob(x)

    d = jax.grad(lp)(0.4)
    h = 1e-5
    fd = (lp(0.4 + h) - lp(0.4 - h)) / (2 * h)
    assert np.isfinite(float(d))
    np.testing.assert_allclose(float(d), float(fd), rtol=1e-6)
