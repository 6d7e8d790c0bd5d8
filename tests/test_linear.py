"""Matrix linear SDEs and critically-damped Langevin diffusion (CLD).

Oracles: the closed forms of Dockhorn, Vahdat & Kreis (2022, appendix B.1), written
out independently below; scipy's `expm` and `quad_vec`; sf.VP for a 1x1 block; the
exact Gaussian(-mixture) marginals for sampling; a Monte Carlo optimality check for
the DSM / HSM losses (as in test_losses.py)."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import scipy.integrate
import scipy.linalg
import scipy.stats
import sympy

import scoreflow as sf
from scoreflow.toy import GaussianMixture

TS = [1e-3, 0.01, 0.1, 0.37, 0.8, 1.0]


# --------------------------------------------------------------------------- #
# The paper's closed forms (critical damping, constant beta: B(t) = beta t)
# --------------------------------------------------------------------------- #


def cld_paper_kernel(t, beta, m_inv, gamma):
    """Mean matrix A (mean = A @ (x0, v0)) and covariance (Sxx, Sxv, Svv) of the
    CLD kernel from (x0, v0 ~ N(0, gamma M)), Dockhorn et al. (2022), app. B.1."""
    G = 2.0 / np.sqrt(m_inv)  # Gamma = 2 sqrt(M)
    B = beta * t
    e2 = np.exp(-2 * B / G)
    A = e2 * np.array([[1 + 2 * B / G, 4 * B / G**2], [-B, 1 - 2 * B / G]])
    s0x, s0v = 0.0, gamma / m_inv
    e4 = np.exp(-4 * B / G)
    sxx = e4 * (
        s0x
        + 1 / e4
        - 1
        + 4 * B / G * (s0x - 1)
        + 4 * B**2 / G**2 * (s0x - 2)
        + 16 * B**2 / G**4 * s0v
    )
    sxv = e4 * (
        -B * s0x + 4 * B / G**2 * s0v - 2 * B**2 / G * (s0x - 2) - 8 * B**2 / G**3 * s0v
    )
    svv = e4 * (
        G**2 / 4 * (1 / e4 - 1)
        + G * B
        - 4 * B / G * s0v
        + 4 * B**2 / G**2 * s0v
        + s0v
        + B**2 * (s0x - 2)
    )
    return A, np.array([[sxx, sxv], [sxv, svv]])


CLD_PARAMS = [
    dict(beta=4.0, m_inv=4.0, gamma=0.04),  # the paper's defaults
    dict(beta=2.0, m_inv=2.0, gamma=0.1),  # Gamma = sqrt(2), irrational
]


@pytest.fixture(scope="module", params=range(len(CLD_PARAMS)))
def cld_and_params(request):
    kw = CLD_PARAMS[request.param]
    return sf.CLD(**kw), kw


def test_cld_kernel_matches_paper(cld_and_params):
    p, kw = cld_and_params
    assert p.sde.method == "symbolic"
    for t in TS:
        A, S = cld_paper_kernel(t, **kw)
        np.testing.assert_allclose(p.mean_matrix(t), A, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(p.cov(t), S, rtol=1e-9, atol=1e-14)
    # the equilibrium N(0, 1) x N(0, M) is the kernel's limit (beta t large at t1)
    q = sf.CLD(beta=40.0, m_inv=kw["m_inv"], gamma=kw["gamma"])
    np.testing.assert_allclose(q.cov(q.t1), np.diag([1.0, 1 / kw["m_inv"]]), atol=1e-12)
    assert bool(jnp.all(jnp.isfinite(q.cov(q.t0))))


def test_cld_defaults():
    p = sf.CLD()
    assert (p.beta, p.m_inv, p.gamma) == (4.0, 4.0, 0.04)
    assert p.friction == pytest.approx(1.0)  # critical: Gamma^2 = 4 M
    np.testing.assert_allclose(
        p.F(0.3), 4.0 * np.array([[0.0, 4.0], [-1.0, -4.0]]), rtol=1e-15
    )
    np.testing.assert_allclose(p.G(0.3), np.diag([0.0, np.sqrt(8.0)]), rtol=1e-15)


def test_cld_sample_marginal_moments(getkey):
    p = sf.CLD()
    x0 = jnp.array([0.7, -1.2])
    t = 0.2
    keys = jr.split(getkey(), 20000)
    u = jax.vmap(lambda k: p.sample_marginal(k, x0, t)[0])(keys)  # (n, 2, 2)
    A, S = cld_paper_kernel(t, 4.0, 4.0, 0.04)
    mean = A[:, 0:1] * x0[None]
    n = u.shape[0]
    np.testing.assert_allclose(u.mean(0), mean, atol=5 * np.sqrt(S.max() / n))
    for j in range(2):  # per data coordinate, covariance over the block axis
        np.testing.assert_allclose(np.cov(u[:, :, j].T), S, atol=0.03 * S.max())


# --------------------------------------------------------------------------- #
# Moment ODEs vs closed forms vs scipy
# --------------------------------------------------------------------------- #


def test_moment_ode_matches_symbolic_cld():
    p = sf.CLD()
    sym = p.sde.symbolic
    q = sf.LinearSDE(sym.F, sym.G, init_cov=p.sde.init_cov, data_row=0, method="ode")
    assert q.method == "ode"
    for t in TS:
        np.testing.assert_allclose(q.mean_matrix(t), p.mean_matrix(t), atol=1e-9)
        np.testing.assert_allclose(q.cov(t), p.cov(t), atol=1e-9)


def _random_F(seed, complex_eigs):
    rng = np.random.default_rng(seed)
    while True:
        F = np.round(rng.normal(size=(2, 2)), 1)
        disc = np.trace(F) ** 2 - 4 * np.linalg.det(F)
        stable = np.all(np.linalg.eigvals(F).real < -0.05)
        if stable and (disc < -0.1 if complex_eigs else disc > 0.1):
            return F


@pytest.mark.parametrize("complex_eigs", [False, True])
def test_symbolic_matches_expm_and_quadrature(complex_eigs):
    F = _random_F(0, complex_eigs)
    G = np.array([[0.3, 0.0], [0.5, 1.1]])
    S0 = np.array([[0.2, 0.05], [0.05, 0.1]])
    p = sf.LinearSDE(F.tolist(), G.tolist(), init_cov=S0, method="symbolic")
    q = sf.LinearSDE(F.tolist(), G.tolist(), init_cov=S0, method="ode")
    Q = G @ G.T
    for t in [0.05, 0.5, 1.0]:
        A = scipy.linalg.expm(F * t)
        S, _ = scipy.integrate.quad_vec(
            lambda u: scipy.linalg.expm(F * u) @ Q @ scipy.linalg.expm(F * u).T,
            0,
            t,
            epsabs=1e-13,
            epsrel=1e-12,
        )
        S = S + A @ S0 @ A.T
        np.testing.assert_allclose(p.mean_matrix(t), A, rtol=1e-10, atol=1e-12)
        # rtol 1e-8: the entries are compiled in the float32-stable form picked by
        # measurement (expm1 etc.), which can cost ~2e-9 relative in float64
        # (seen with a derivation cache filled under heavy load)
        np.testing.assert_allclose(p.cov(t), S, rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(q.mean_matrix(t), A, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(q.cov(t), S, rtol=1e-8, atol=1e-10)


def test_time_dependent_F_moment_ode():
    """F(t) = beta(t) F0, G(t) = sqrt(beta(t)) G0 with a linear beta schedule: no
    constant F, so the moment ODEs are used; oracle expm + quad_vec."""
    t = sf.t
    b0, b1 = 0.1, 5.0
    beta = b0 + (b1 - b0) * t
    F0 = np.array([[0.0, 1.0], [-1.0, -2.0]])
    G0 = np.array([[0.0, 0.0], [0.0, 2.0]])
    p = sf.LinearSDE(
        beta * sympy.Matrix(F0.tolist()),
        sympy.sqrt(beta) * sympy.Matrix(G0.tolist()),
        init_cov=np.diag([0.0, 0.25]),
        data_row=0,
    )
    assert p.method == "ode"

    def B(s):
        return b0 * s + 0.5 * (b1 - b0) * s**2

    for tt in [0.1, 0.6, 1.0]:
        A = scipy.linalg.expm(B(tt) * F0)

        def integrand(s, tt=tt):
            phi = scipy.linalg.expm((B(tt) - B(s)) * F0)
            return (b0 + (b1 - b0) * s) * phi @ G0 @ G0.T @ phi.T

        S, _ = scipy.integrate.quad_vec(integrand, 0, tt, epsabs=1e-13, epsrel=1e-12)
        S = S + A @ np.diag([0.0, 0.25]) @ A.T
        np.testing.assert_allclose(p.mean_matrix(tt), A, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(p.cov(tt), S, rtol=1e-8, atol=1e-10)
    # a callable F, G (numeric declaration) gives the same moments
    c = sf.LinearSDE(
        lambda s: (b0 + (b1 - b0) * s) * jnp.asarray(F0),
        lambda s: jnp.sqrt(b0 + (b1 - b0) * s) * jnp.asarray(G0),
        init_cov=np.diag([0.0, 0.25]),
        data_row=0,
    )
    np.testing.assert_allclose(c.cov(0.6), p.cov(0.6), rtol=1e-9)


def test_one_block_is_vp():
    """k = 1: F = -beta/2, G = sqrt(beta) with VP's linear schedule is sf.VP."""
    vp = sf.VP()
    beta = 0.1 + (20.0 - 0.1) * sf.t
    p = sf.LinearSDE(
        sympy.Matrix([[-beta / 2]]), sympy.Matrix([[sympy.sqrt(beta)]]), t0=vp.t0
    )
    for t in [0.01, 0.3, 1.0]:
        np.testing.assert_allclose(p.mean_matrix(t)[0, 0], vp.alpha(t), rtol=1e-8)
        np.testing.assert_allclose(p.cov(t)[0, 0], vp.sigma(t) ** 2, rtol=1e-8)


# --------------------------------------------------------------------------- #
# Prior, drift, diffusion
# --------------------------------------------------------------------------- #


def test_prior_log_prob_and_sample(getkey):
    p = sf.CLD()
    S = np.asarray(p.prior_cov())
    x = jr.normal(getkey(), (2, 3))
    want = sum(
        scipy.stats.multivariate_normal(np.zeros(2), S).logpdf(np.asarray(x[:, j]))
        for j in range(3)
    )
    np.testing.assert_allclose(p.prior_log_prob(x), want, rtol=1e-12)
    z = jax.vmap(lambda k: p.prior_sample(k, (2, 1)))(jr.split(getkey(), 20000))
    np.testing.assert_allclose(np.cov(z[:, :, 0].T), S, atol=0.03)


def test_drift_and_diffusion_act_on_blocks():
    p = sf.CLD()
    x = jnp.arange(6.0).reshape(2, 3)
    F = np.asarray(p.F(0.2))
    np.testing.assert_allclose(p.drift(0.2, x), F @ np.asarray(x), rtol=1e-14)
    Q = np.asarray(p.diffusion_cov(0.2))
    np.testing.assert_allclose(p.diffusion_cov_apply(0.2, x, x), Q @ np.asarray(x))


# --------------------------------------------------------------------------- #
# Sampling CLD with the exact score
# --------------------------------------------------------------------------- #

GAUSS = GaussianMixture(
    jnp.ones(1), jnp.array([[0.6, -0.4]]), jnp.array([[[0.9, 0.3], [0.3, 0.5]]])
)
MIXTURE = GaussianMixture(
    jnp.array([0.3, 0.7]),
    jnp.array([[-1.0, 0.5], [1.0, -0.3]]),
    jnp.array([[[0.1, 0.02], [0.02, 0.2]], [[0.15, -0.05], [-0.05, 0.1]]]),
)
NUM = 2000


def _fd_to_exact(x, gm):
    mu, cov = jnp.mean(x, 0), jnp.cov(x.T)
    return float(sf.metrics.frechet_distance_gaussians(mu, cov, gm.mean(), gm.cov()))


def _floor(gm):
    """Mean Fréchet distance of NUM exact samples to the exact moments."""
    return float(
        np.mean([_fd_to_exact(gm.sample(jr.key(100 + i), NUM), gm) for i in range(5)])
    )


def quadratic_grid(p, steps):
    """Times t0 + (t1 - t0) (i / steps)^2, decreasing: dense near t0, where the
    velocity's score is stiff (Sigma_vv(t0) ~ gamma M is small)."""
    return p.t0 + (p.t1 - p.t0) * jnp.linspace(1.0, 0.0, steps + 1) ** 2


def _check_velocity(u, gm, p, rtol):
    """The velocity coordinates at t0 have the exact marginal's variance."""
    want = np.diag(np.asarray(p.mixture_marginal(gm, p.t0).cov()))[2:]
    got = np.var(np.asarray(u[:, 1]), axis=0)
    np.testing.assert_allclose(got, want, rtol=rtol)
    return got, want


@pytest.mark.parametrize(
    "method, data",
    [
        ("ode", "gauss"),
        ("ode", "mixture"),
        pytest.param("sde", "gauss", marks=pytest.mark.slow),  # sde-mixture covers it
        ("sde", "mixture"),
    ],
)
def test_cld_sampling_exact_score(method, data):
    gm = GAUSS if data == "gauss" else MIXTURE
    p = sf.CLD()
    pred = sf.Predictor(p.mixture_score(gm), p, prediction="score")
    if method == "ode":
        kw = dict(solver=diffrax.Heun(), time_grid=quadratic_grid(p, 100))
    else:
        kw = dict(
            method="sde", solver=diffrax.Euler(), time_grid=quadratic_grid(p, 500)
        )
    u = sf.sample(jr.key(0), p, pred, (2, 2), num=NUM, **kw)
    fd, floor = _fd_to_exact(u[:, 0], gm), _floor(gm)
    got, want = _check_velocity(u, gm, p, rtol=0.2)
    print(
        f"CLD {method} {data}: FD = {fd:.2e}, exact-sample floor = {floor:.2e}; "
        f"var v = {got}, exact {want}"
    )
    assert fd < 3 * floor + 1e-3, (fd, floor)
    if data == "mixture":  # the modes' weights are recovered, not just 2 moments
        frac = float(jnp.mean(u[:, 0, 0] < 0))
        assert abs(frac - 0.3) < 0.04, frac


def test_sampling_ode_is_exact_for_gaussian_with_fine_steps():
    """Tsit5 with tight tolerances: the PF-ODE maps the exact prior-time marginal
    of Gaussian data to the data law (positions and velocities)."""
    p = sf.CLD()
    pred = sf.Predictor(p.mixture_score(GAUSS), p, prediction="score")
    u = sf.sample(
        jr.key(1),
        p,
        pred,
        (2, 2),
        num=NUM,
        solver=diffrax.Tsit5(),
        stepsize_controller=diffrax.PIDController(rtol=1e-7, atol=1e-9),
    )
    fd = _fd_to_exact(u[:, 0], GAUSS)
    got, want = _check_velocity(u, GAUSS, p, rtol=0.1)
    print(
        f"CLD ode Tsit5 gauss: FD = {fd:.2e}, floor = {_floor(GAUSS):.2e}; "
        f"var v = {got}, exact {want}"
    )
    assert fd < 3 * _floor(GAUSS) + 1e-3


# --------------------------------------------------------------------------- #
# Losses: the exact score is the minimiser
# --------------------------------------------------------------------------- #


class _Perturbed(eqx.Module):
    exact: object
    delta: jax.Array
    rows: tuple = eqx.field(static=True)

    def __call__(self, t, u):
        h = jnp.tanh(u[0] @ jnp.array([0.7, -0.5]) + u[-1] @ jnp.array([0.2, 0.4]))
        bump = jnp.zeros_like(u)
        for r in self.rows:
            bump = bump.at[r].set(h * jnp.array([1.0, -0.6]) / (1 + t))
        return self.exact(t, u) + self.delta * bump


def _optimality(loss, exact, x0, key, rows, delta0=0.3):
    def per_example(d):
        return loss.per_example(_Perturbed(exact, d, rows), x0, key)

    @jax.jit
    def run():
        ds = jnp.asarray([-delta0, 0.0, delta0])
        return jax.vmap(lambda d: jax.jvp(per_example, (d,), (jnp.ones_like(d),)))(ds)

    vals, grads = run()
    n = x0.shape[0]
    mean, se = float(jnp.mean(grads[1])), float(jnp.std(grads[1]) / np.sqrt(n))
    mean_off, se_off = float(jnp.mean(grads[2])), float(jnp.std(grads[2]) / np.sqrt(n))
    return mean, se, [float(v) for v in jnp.mean(vals, axis=1)], mean_off, se_off


@pytest.mark.parametrize("weighting", ["eps", "likelihood"])
def test_hsm_exact_score_is_optimal(weighting):
    p = sf.CLD()
    loss = sf.hsm_loss(p, weighting=weighting)
    assert loss.rows == (1,)
    x0 = GAUSS.sample(jr.key(1), 2048)
    # the likelihood weighting's gradient is noisier: a larger step shows power
    delta0 = 0.3 if weighting == "eps" else 1.0
    mean, se, vals, mean_off, se_off = _optimality(
        loss, p.mixture_score(GAUSS), x0, jr.key(2), rows=(1,), delta0=delta0
    )
    print(f"HSM {weighting}: grad {mean:.3g} +- {se:.3g}; off {mean_off:.3g}; {vals}")
    assert abs(mean) < 4 * se, (mean, se)
    assert vals[0] > vals[1] and vals[2] > vals[1], vals
    assert abs(mean_off) > 4 * se_off, (mean_off, se_off)


def test_hsm_ignores_rows_without_noise():
    """Only G G^T score enters the reverse dynamics, and HSM trains only those rows:
    perturbing the position row of the model leaves the loss unchanged."""
    p = sf.CLD()
    loss = sf.hsm_loss(p)
    x0 = GAUSS.sample(jr.key(1), 64)
    exact = p.mixture_score(GAUSS)
    f = eqx.filter_jit(lambda d: loss(_Perturbed(exact, d, (0,)), x0, jr.key(3)))
    a, b = f(jnp.asarray(0.0)), f(jnp.asarray(0.5))
    np.testing.assert_allclose(a, b, rtol=1e-14)


@pytest.mark.parametrize("weighting", ["sigma2", "likelihood"])
def test_dsm_full_state_exact_score_is_optimal(weighting):
    """A 2x2 process whose data is the whole state (k = 2, d = 1): DSM on every row
    with the Cholesky factor of the kernel covariance."""
    F = [[-1.0, 0.5], [-0.5, -1.0]]
    G = [[1.0, 0.0], [0.3, 0.8]]
    p = sf.LinearSDE(F, G, t0=1e-2, t1=2.0)
    gm = GaussianMixture(
        jnp.ones(1), jnp.array([[0.5, -0.2]]), jnp.array([[[0.4, 0.1], [0.1, 0.3]]])
    )
    loss = sf.dsm_loss(p, prediction="score", weighting=weighting)
    x0 = gm.sample(jr.key(1), 2048).reshape(-1, 2, 1)

    exact = p.mixture_score(gm)

    def per_example(d):
        def model(t, u):
            h = jnp.tanh(0.7 * u[0, 0] - 0.4 * u[1, 0])
            return exact(t, u) + d * h * jnp.array([[1.0], [-0.6]])

        return loss.per_example(model, x0, jr.key(2))

    delta0 = 0.3 if weighting == "sigma2" else 1.0  # likelihood: noisier gradient
    ds = jnp.asarray([-delta0, 0.0, delta0])
    vals, grads = jax.jit(
        jax.vmap(lambda d: jax.jvp(per_example, (d,), (jnp.ones_like(d),)))
    )(ds)
    mean, se = float(jnp.mean(grads[1])), float(jnp.std(grads[1]) / np.sqrt(2048))
    v = jnp.mean(vals, axis=1)
    print(f"DSM {weighting}: grad {mean:.3g} +- {se:.3g}; {v}")
    assert abs(mean) < 4 * se
    assert v[0] > v[1] and v[2] > v[1]
    assert abs(float(jnp.mean(grads[2]))) > 4 * float(jnp.std(grads[2]) / np.sqrt(2048))


# --------------------------------------------------------------------------- #
# Errors at declaration
# --------------------------------------------------------------------------- #


def test_declaration_errors():
    with pytest.raises(ValueError, match="square"):
        sf.LinearSDE([[1.0, 2.0]], [[1.0, 0.0]])
    with pytest.raises(ValueError, match="same shape"):
        sf.LinearSDE([[-1.0, 0.0], [0.0, -1.0]], [[1.0]])
    with pytest.raises(ValueError, match="positive semi-definite"):
        sf.LinearSDE(
            [[-1.0, 0.0], [0.0, -1.0]], np.eye(2), init_cov=[[1.0, 2.0], [2.0, 1.0]]
        )
    with pytest.raises(ValueError, match="symmetric"):
        sf.LinearSDE(
            [[-1.0, 0.0], [0.0, -1.0]], np.eye(2), init_cov=[[1.0, 0.5], [0.0, 1.0]]
        )
    with pytest.raises(ValueError, match="only depend on sf.t"):
        a = sympy.Symbol("a")
        sf.LinearSDE(sympy.Matrix([[-a]]), sympy.Matrix([[1]]))
    with pytest.raises(ValueError, match="data_row"):
        sf.LinearSDE(-np.eye(2), np.eye(2), data_row=2)
    with pytest.raises(ValueError, match="zero on the data row"):
        sf.LinearSDE(-np.eye(2), np.eye(2), data_row=0, init_cov=np.eye(2))
    with pytest.raises(ValueError, match="no closed-form"):
        sf.LinearSDE(sf.t * sympy.Matrix([[-1]]), [[1]], method="symbolic")
    with pytest.raises(ValueError, match="state shape"):
        sf.CLD().prior_sample(jr.key(0), (3, 2))
    with pytest.raises(ValueError, match="beta must be"):
        sf.CLD(beta=-1.0)
    with pytest.raises(ValueError, match="predict the score"):
        sf.Predictor(lambda t, x: x, sf.CLD(), prediction="eps")
    with pytest.raises(ValueError, match="prediction='score'"):
        sf.dsm_loss(sf.CLD(), prediction="eps")
    with pytest.raises(ValueError, match="trailing"):
        # noise enters row 0 only (row 1 gets it through F): not a trailing set
        sf.hsm_loss(sf.LinearSDE([[-1.0, 0.0], [1.0, -1.0]], np.diag([1.0, 0.0])))
    with pytest.raises(ValueError, match="denoise"):
        p = sf.CLD()
        sf.sample(
            jr.key(0),
            p,
            sf.Predictor(lambda t, x: x, p, "score"),
            (2, 2),
            num=2,
            steps=2,
            denoise=True,
        )


def test_reverse_terms_use_matrix_diffusion(getkey):
    """The reverse drift is -(F x - (1 + eta^2)/2 G G^T score) in flipped time and the
    noise term applies eta G on the block axis; a diffrax solve runs on the terms."""
    p = sf.CLD()
    score = p.mixture_score(GAUSS)
    pred = sf.Predictor(score, p, prediction="score")
    x = jr.normal(getkey(), (2, 2))
    s, t = 0.3, p.t1 - 0.3
    F, Q, G = (np.asarray(m) for m in (p.F(t), p.diffusion_cov(t), p.G(t)))
    sc = np.asarray(score(t, x))
    ode = sf.probability_flow(p, pred)
    np.testing.assert_allclose(
        ode.vf(s, x, None), -(F @ np.asarray(x) - 0.5 * Q @ sc), rtol=1e-12
    )
    terms = sf.reverse_sde(p, pred, key=getkey(), shape=(2, 2))
    drift, noise = terms.terms
    np.testing.assert_allclose(
        drift.vf(s, x, None), -(F @ np.asarray(x) - Q @ sc), rtol=1e-12
    )
    z = jr.normal(getkey(), (2, 2))
    np.testing.assert_allclose(
        noise.vf(s, x, None).mv(z), G @ np.asarray(z), rtol=1e-12
    )
    sol = diffrax.diffeqsolve(
        terms, diffrax.Euler(), 0.0, p.t1 - p.t0, 1e-2, p.prior_sample(getkey(), (2, 2))
    )
    assert bool(jnp.all(jnp.isfinite(sol.ys)))


def test_sampling_time_dependent_process_exact_score():
    """A LinearSDE on the moment-ODE path (F(t) = beta(t) F0, linear beta up to 20):
    PF-ODE sampling with the exact Gaussian score recovers the data."""
    t = sf.t
    beta = sympy.Rational(1, 10) + (20 - sympy.Rational(1, 10)) * t
    F0 = sympy.Matrix([[0, 1], [-1, -2]])
    G0 = sympy.Matrix([[0, 0], [0, 2]])
    p = sf.LinearSDE(
        beta * F0,
        sympy.sqrt(beta) * G0,
        init_cov=np.diag([0.0, 0.04]),
        data_row=0,
        t0=1e-3,
    )
    assert p.method == "ode"
    pred = sf.Predictor(p.mixture_score(GAUSS), p, prediction="score")
    u = sf.sample(
        jr.key(0),
        p,
        pred,
        (2, 2),
        num=NUM,
        solver=diffrax.Heun(),
        time_grid=quadratic_grid(p, 100),
    )
    fd, floor = _fd_to_exact(u[:, 0], GAUSS), _floor(GAUSS)
    print(f"time-dependent F, ode gauss: FD = {fd:.2e}, floor = {floor:.2e}")
    assert fd < 3 * floor + 1e-3, (fd, floor)


def test_scalar_kernel_samplers_refuse_linear_processes():
    """DDIM & co. need alpha(t), sigma(t): a clear error, not an AttributeError."""
    p = sf.CLD()
    pred = sf.Predictor(lambda t, x: jnp.zeros_like(x), p, prediction="score")
    with pytest.raises(ValueError, match="matrix linear SDE"):
        sf.sample(jr.key(0), p, pred, (2,), num=2, solver=sf.DDIM(), steps=3)


def test_scalar_only_functions_refuse_linear_processes():
    p = sf.CLD()
    pred = sf.Predictor(lambda t, x: jnp.zeros_like(x), p, prediction="score")
    x = jnp.zeros((2, 2))
    with pytest.raises(ValueError, match="matrix linear SDE"):
        sf.log_likelihood(jr.key(0), p, pred, x)
    with pytest.raises(ValueError, match="matrix linear SDE"):
        sf.checks.fokker_planck_residual(p, lambda t, y: -jnp.sum(y**2), 0.5, x)
    with pytest.raises(ValueError, match="matrix linear SDE"):
        sf.checks.symbolic_fokker_planck(p)
    with pytest.raises(ValueError, match="matrix linear SDE"):
        sf.elbo_loss(p)


def test_singular_covariance_is_refused_at_declaration():
    """F = -I, G = diag(0, 1): the first component never gets noise, Sigma is
    singular, chol would be NaN. A clear error instead."""
    with pytest.raises(ValueError, match="not positive definite"):
        sf.LinearSDE(-sympy.eye(2), sympy.diag(0, 1))
