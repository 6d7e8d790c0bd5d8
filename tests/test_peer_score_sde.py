"""score_sde (yang-song/score_sde_pytorch, `sde_lib.py`, `sampling.py`) reproduced
exactly: its predictors, its Langevin corrector and its whole PC sampler, against
oracles written in numpy from score_sde's published code (float64, one sample at a
time, i.e. score_sde with a batch of one), on the same inputs.

The normal draws are given: a small diffrax path hands the solver's `_normals`
exactly the draws the oracle uses (k per step, the corrector's first)."""

import os
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import scoreflow as sf

RTOL = 1e-6
B0, B1 = 0.1, 20.0  # VPSDE(beta_min, beta_max)
SMIN, SMAX = 0.01, 50.0  # VESDE(sigma_min, sigma_max)
D = 5  # dimension of one sample


# --------------------------------------------------------------------------- #
# The models: an eps-model for VP (score = -eps/std), a score model for VE
# --------------------------------------------------------------------------- #


def _eps_np(t, x):
    return np.tanh(x) * (1 + t) + 0.1 * np.roll(x, 1)


def _eps_jnp(t, x):
    return jnp.tanh(x) * (1 + t) + 0.1 * jnp.roll(x, 1)


def _ve_score_np(t, x):
    s = SMIN * (SMAX / SMIN) ** t
    return -x / (1 + s**2) + 0.05 * np.sin(x) * (1 + t)


def _ve_score_jnp(t, x):
    s = SMIN * (SMAX / SMIN) ** t
    return -x / (1 + s**2) + 0.05 * jnp.sin(x) * (1 + t)


# --------------------------------------------------------------------------- #
# numpy oracle: score_sde's sde_lib / sampling, for one sample
# --------------------------------------------------------------------------- #


class OracleVP:
    """`sde_lib.VPSDE` and `get_score_fn` (continuous: score = -model / std)."""

    def __init__(self, N):
        self.N, self.T = N, 1.0
        self.discrete_betas = np.linspace(B0 / N, B1 / N, N)
        self.alphas = 1.0 - self.discrete_betas

    def timestep(self, t):
        return int(t * (self.N - 1) / self.T)  # torch's .long() truncates

    def sde(self, x, t):
        beta_t = B0 + t * (B1 - B0)
        return -0.5 * beta_t * x, np.sqrt(beta_t)

    def std(self, t):
        log_mean_coeff = -0.25 * t**2 * (B1 - B0) - 0.5 * t * B0
        return np.sqrt(1.0 - np.exp(2.0 * log_mean_coeff))

    def score(self, x, t):
        return -_eps_np(t, x) / self.std(t)

    def discretize(self, x, t):
        i = self.timestep(t)
        beta, alpha = self.discrete_betas[i], self.alphas[i]
        return np.sqrt(alpha) * x - x, np.sqrt(beta)

    def corrector_alpha(self, t):
        return self.alphas[self.timestep(t)]

    def ancestral(self, x, t, z):
        beta = self.discrete_betas[self.timestep(t)]
        x_mean = (x + beta * self.score(x, t)) / np.sqrt(1.0 - beta)
        return x_mean + np.sqrt(beta) * z, x_mean


class OracleVE:
    """`sde_lib.VESDE`; the model is the score."""

    def __init__(self, N):
        self.N, self.T = N, 1.0
        self.discrete_sigmas = np.exp(np.linspace(np.log(SMIN), np.log(SMAX), N))

    def timestep(self, t):
        return int(t * (self.N - 1) / self.T)

    def sde(self, x, t):
        sigma = SMIN * (SMAX / SMIN) ** t
        return np.zeros_like(x), sigma * np.sqrt(2 * (np.log(SMAX) - np.log(SMIN)))

    def score(self, x, t):
        return _ve_score_np(t, x)

    def _sigmas(self, t):
        i = self.timestep(t)
        adjacent = 0.0 if i == 0 else self.discrete_sigmas[i - 1]
        return self.discrete_sigmas[i], adjacent

    def discretize(self, x, t):
        sigma, adjacent = self._sigmas(t)
        return np.zeros_like(x), np.sqrt(sigma**2 - adjacent**2)

    def corrector_alpha(self, t):
        return 1.0

    def ancestral(self, x, t, z):
        sigma, adjacent = self._sigmas(t)
        x_mean = x + self.score(x, t) * (sigma**2 - adjacent**2)
        std = np.sqrt(adjacent**2 * (sigma**2 - adjacent**2) / sigma**2)
        return x_mean + std * z, x_mean


def oracle_predictor(sde, kind, x, t, z, probability_flow=False):
    """score_sde's predictors' `update_fn`: (x, x_mean)."""
    w = 0.5 if probability_flow else 1.0
    if kind == "reverse_diffusion":
        f, G = sde.discretize(x, t)
        rev_f = f - G**2 * sde.score(x, t) * w
        rev_G = 0.0 if probability_flow else G
        x_mean = x - rev_f
        return x_mean + rev_G * z, x_mean
    if kind == "euler_maruyama":
        dt = -1.0 / sde.N
        drift, diffusion = sde.sde(x, t)
        drift = drift - diffusion**2 * sde.score(x, t) * w
        diffusion = 0.0 if probability_flow else diffusion
        x_mean = x + drift * dt
        return x_mean + diffusion * np.sqrt(-dt) * z, x_mean
    if kind == "ancestral":
        return sde.ancestral(x, t, z)
    return x, x  # NonePredictor


def oracle_corrector(sde, x, t, zs, snr):
    """`LangevinCorrector.update_fn` for a batch of one."""
    alpha = sde.corrector_alpha(t)
    x_mean = x
    for noise in zs:
        grad = sde.score(x, t)
        grad_norm = np.linalg.norm(grad)
        noise_norm = np.linalg.norm(noise)
        step_size = (snr * noise_norm / grad_norm) ** 2 * 2 * alpha
        x_mean = x + step_size * grad
        x = x_mean + np.sqrt(step_size * 2) * noise
    return x, x_mean


def oracle_pc(sde, x, zs, *, predictor, n_steps, snr, eps, denoise, pf=False):
    """`get_pc_sampler`'s loop from the given initial point; `zs[i]` holds the
    `n_steps` corrector draws then the predictor's draw of time i."""
    x_mean = x
    for i, t in enumerate(np.linspace(sde.T, eps, sde.N)):
        x, x_mean = oracle_corrector(sde, x, t, zs[i][:n_steps], snr)
        x, x_mean = oracle_predictor(sde, predictor, x, t, zs[i][n_steps], pf)
    return x_mean if denoise else x


# --------------------------------------------------------------------------- #
# scoreflow, stepped with given normals
# --------------------------------------------------------------------------- #


def _setup(name):
    if name == "VP":
        p = sf.VP(B0, B1)
        return p, sf.Predictor(_eps_jnp, p, prediction="eps"), OracleVP
    p = sf.VE(SMIN, SMAX)
    return p, sf.Predictor(_ve_score_jnp, p, prediction="score"), OracleVE


def _run(solver, process, pred, s, x, z):
    # a plain vmap (no sample axis): the corrector's norms are each sample's own,
    # score_sde with a batch of one
    terms = sf.reverse_sde(process, pred, sf.internal.GivenNormals(s, z))
    state = solver.init(terms, s[0], s[1], x, None)

    def body(carry, ab):
        y, st = carry
        y, _, _, st, _ = solver.step(terms, ab[0], ab[1], y, None, st, False)
        return (y, st), None

    (x, _), _ = jax.lax.scan(body, (x, state), (s[:-1], s[1:]))
    return x


def run(solver, process, pred, grid, x, z):
    """Step `solver` over `grid` (process time) from each `x` (a batch), reading the
    normals `z` (shape `(batch, steps, k, *x.shape[1:])`)."""
    s = float(process.t1) - jnp.asarray(grid, jnp.float64)
    return np.asarray(_go(solver, process, pred, s, jnp.asarray(x), jnp.asarray(z)))


_go = eqx.filter_jit(eqx.filter_vmap(_run, in_axes=(None, None, None, None, 0, 0)))


def _draws(seed, steps, k, batch=3):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, D)), rng.standard_normal((batch, steps, k, D))


# --------------------------------------------------------------------------- #
# One predictor step, one corrector step
# --------------------------------------------------------------------------- #

N = 40


@pytest.mark.parametrize("name", ["VP", "VE"])
@pytest.mark.parametrize(
    "predictor,pf",
    [
        ("reverse_diffusion", False),
        ("reverse_diffusion", True),
        ("ancestral", False),
        ("euler_maruyama", False),
        ("euler_maruyama", True),
    ],
)
def test_one_predictor_step_is_score_sdes(name, predictor, pf):
    p, pred, Oracle = _setup(name)
    sde = Oracle(N)
    solver = sf.PredictorCorrector(
        corrector_steps=0, predictor=predictor, levels=N, probability_flow=pf
    )
    xs, zs = _draws(1, 1, 1)
    for t in (1.0, 0.63, 0.2, 0.026):  # a step inside the range: noise is added
        got = run(solver, p, pred, [t, t - 0.01], xs, zs)
        for g, x, z in zip(got, xs, zs):
            want, _ = oracle_predictor(sde, predictor, x, t, z[0, 0], pf)
            assert np.all(np.isfinite(want))
            np.testing.assert_allclose(g, want, rtol=RTOL)


@pytest.mark.parametrize("name", ["VP", "VE"])
def test_one_corrector_step_is_score_sdes_langevin(name):
    p, pred, Oracle = _setup(name)
    sde = Oracle(N)
    for n_steps in (1, 2):
        solver = sf.PredictorCorrector(
            0.16, n_steps, predictor="none", levels=N, step_size="score_sde"
        )
        xs, zs = _draws(2, 1, n_steps + 1)
        for t in (0.97, 0.4, 0.05):
            got = run(solver, p, pred, [t, t - 0.01], xs, zs)
            for g, x, z in zip(got, xs, zs):
                want, _ = oracle_corrector(sde, x, t, z[0, :n_steps], 0.16)
                assert np.all(np.isfinite(want))
                np.testing.assert_allclose(g, want, rtol=RTOL)


# --------------------------------------------------------------------------- #
# A short whole run of sf.peers.score_sde_pc
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("name", ["VP", "VE"])
@pytest.mark.parametrize(
    "predictor,corrector,n_steps,denoise,pf",
    [
        ("reverse_diffusion", "langevin", 1, True, False),
        ("reverse_diffusion", "langevin", 2, False, False),
        ("ancestral", "langevin", 1, True, False),
        ("euler_maruyama", "none", 1, True, False),
        ("reverse_diffusion", "langevin", 1, True, True),
    ],
)
def test_whole_pc_run_is_score_sdes_get_pc_sampler(
    name, predictor, corrector, n_steps, denoise, pf
):
    p, pred, Oracle = _setup(name)
    n = 24  # score_sde's VP needs beta_max / N < 1
    sde = Oracle(n)
    cfg = sf.peers.score_sde_pc(
        p,
        n,
        snr=0.16,
        n_steps=n_steps,
        probability_flow=pf,
        denoise=denoise,
        predictor=predictor,
        corrector=corrector,
    )
    assert cfg.method == "sde" and not cfg.denoise and len(cfg.time_grid) == n + 1
    k = cfg.solver.corrector_steps + 1
    assert cfg.nfe == n * k
    scale = 1.0 if name == "VP" else SMAX  # score_sde's prior N(0, I) / N(0, smax^2)
    xs, zs = _draws(3, n, k)
    got = run(cfg.solver, p, pred, cfg.time_grid, xs * scale, zs)
    nc = n_steps if corrector == "langevin" else 0
    for g, x, z in zip(got, xs * scale, zs):
        want = oracle_pc(
            sde, x, z, predictor=predictor, n_steps=nc, snr=0.16, eps=1e-3,
            denoise=denoise, pf=pf,
        )  # fmt: skip
        assert np.all(np.isfinite(want))
        np.testing.assert_allclose(g, want, rtol=RTOL)


def oracle_pc_batch(sde, xs, zs, *, n_steps, snr, eps):
    """`get_pc_sampler` on a batch: the corrector's norms are batch means
    (`torch.norm(..., dim=-1).mean()`), the reverse-diffusion predictor, denoise."""
    x_mean = xs
    for i, t in enumerate(np.linspace(sde.T, eps, sde.N)):
        alpha = sde.corrector_alpha(t)
        for j in range(n_steps):
            noise = zs[:, i, j]
            grad = np.stack([sde.score(x, t) for x in xs])
            grad_norm = np.linalg.norm(grad, axis=-1).mean()
            noise_norm = np.linalg.norm(noise, axis=-1).mean()
            step = (snr * noise_norm / grad_norm) ** 2 * 2 * alpha
            x_mean = xs + step * grad
            xs = x_mean + np.sqrt(step * 2) * noise
        pairs = [
            oracle_predictor(sde, "reverse_diffusion", x, t, zs[b, i, n_steps])
            for b, x in enumerate(xs)
        ]
        xs = np.stack([a for a, _ in pairs])
        x_mean = np.stack([m for _, m in pairs])
    return x_mean


@pytest.mark.parametrize("name", ["VP", "VE"])
def test_default_pc_averages_the_norms_over_the_batch_like_score_sde(name):
    """Through `sf.sample` the default corrector uses the batch means of the norms,
    exactly score_sde's rule for the whole batch."""
    p, pred, Oracle = _setup(name)
    n = 24
    cfg = sf.peers.score_sde_pc(p, n, n_steps=1)
    scale = 1.0 if name == "VP" else SMAX
    xs, zs = _draws(5, n, 2, batch=4)
    got = sf.sample(None, p, pred, (D,), num=4, noise=jnp.asarray(xs * scale),
                    normals=jnp.asarray(zs), **cfg.kwargs())  # fmt: skip
    want = oracle_pc_batch(Oracle(n), xs * scale, zs, n_steps=1, snr=0.16, eps=1e-3)
    np.testing.assert_allclose(got, want, rtol=RTOL)


def test_score_sde_pc_runs_through_sf_sample_with_its_nfe():
    p, pred, _ = _setup("VP")
    cfg = sf.peers.score_sde_pc(p, 30, n_steps=2)
    x1 = np.random.default_rng(4).standard_normal((2, D))
    xs, info = cfg.sample(
        jax.random.key(0), pred, (D,), num=2, noise=x1, return_info=True
    )
    assert xs.shape == (2, D) and np.all(np.isfinite(xs))
    assert cfg.nfe == 90 and np.all(np.asarray(info["nfe"]) == 90)


def test_score_sde_pc_refuses_bad_input():
    with pytest.raises(ValueError, match="eps"):
        sf.peers.score_sde_pc(sf.VE(), 10, eps=1e-4)  # below VE's t0
    with pytest.raises(ValueError, match="predictor"):
        sf.peers.score_sde_pc(sf.VP(), 10, predictor="heun")
    with pytest.raises(ValueError, match="n must be"):
        sf.peers.score_sde_pc(sf.VP(), 1)
    with pytest.raises(ValueError, match="probability-flow"):
        sf.peers.score_sde_pc(sf.VP(), 10, predictor="ancestral", probability_flow=True)


# --------------------------------------------------------------------------- #
# Ancestral sampling on any grid: sf.DDPM(variance="large")
# --------------------------------------------------------------------------- #


def test_ddpm_large_variance_is_score_sdes_ancestral_step_on_the_kernel_betas():
    """On a grid step t_a -> t_b of VP, DDPM's beta is 1 - (alpha_a/alpha_b)^2;
    score_sde's ancestral VP step with that beta is sf.DDPM(variance="large"), and
    PredictorCorrector(predictor="ancestral") without corrector is the same step."""
    p, pred, _ = _setup("VP")
    sde = OracleVP(N)
    xs, zs = _draws(5, 1, 1)
    for ta, tb in ((0.9, 0.7), (0.3, 0.25), (0.05, 1e-5)):
        lmc = lambda t: -0.25 * t**2 * (B1 - B0) - 0.5 * t * B0  # noqa: E731
        beta = 1 - np.exp(2 * (lmc(ta) - lmc(tb)))
        want = np.stack([
            (x + beta * sde.score(x, ta)) / np.sqrt(1 - beta) + np.sqrt(beta) * z[0, 0]
            for x, z in zip(xs, zs)
        ])  # fmt: skip
        got = run(sf.DDPM(variance="large"), p, pred, [ta, tb], xs, zs)
        np.testing.assert_allclose(got, want, rtol=RTOL)
        pc = sf.PredictorCorrector(0.16, 0, predictor="ancestral", final_noise=True)
        np.testing.assert_allclose(run(pc, p, pred, [ta, tb], xs, zs), want, rtol=RTOL)
        post = run(sf.DDPM(), p, pred, [ta, tb], xs, zs)
        assert not np.allclose(post, want)  # the posterior variance differs


# --------------------------------------------------------------------------- #
# The corrector's step size on unit-Gaussian data (issue 15)
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("name,annealed_ratio", [("VP", 0.10), ("VE", 4.5e-4)])
def test_corrector_median_step_on_unit_gaussian_data_is_score_sdes(
    name, annealed_ratio
):
    """Data N(0, I) in d = 64: p_t = N(0, (alpha^2 + sigma^2) I), exact score. The
    step size of one corrector step at t = 0.1 (read back from x' - x = e s +
    sqrt(2e) z) is score_sde's 2 alpha_i (r |z| / |s|)^2 for every sample; the
    annealed rule's median is 0.10x of it (VP), 4.5e-4x (VE)."""
    d, num, t, r, n = 64, 501, 0.1, 0.16, 1000
    p = sf.VP(B0, B1) if name == "VP" else sf.VE(SMIN, SMAX)
    var = lambda t: p.alpha(t) ** 2 + p.sigma(t) ** 2  # noqa: E731
    pred = sf.Predictor(lambda t, x: -x / var(t), p, prediction="score")
    rng = np.random.default_rng(6)
    x = rng.standard_normal((num, d)) * np.sqrt(float(var(t)))
    z = rng.standard_normal((num, 1, 2, d))
    s = -x / float(var(t))
    alpha_i = OracleVP(n).corrector_alpha(t) if name == "VP" else 1.0
    want = 2 * alpha_i * r**2 * np.sum(z[:, 0, 0] ** 2, -1) / np.sum(s**2, -1)

    def steps(step_size):
        solver = sf.PredictorCorrector(
            r, 1, predictor="none", step_size=step_size, levels=n
        )
        dx = run(solver, p, pred, [t, t - 0.01], x, z) - x
        # least squares of x' - x on (s, z): the coefficient of s is the step
        a = np.stack([s, z[:, 0, 0]], -1)
        coef = np.linalg.solve(
            a.transpose(0, 2, 1) @ a, a.transpose(0, 2, 1) @ dx[..., None]
        )
        return coef[:, 0, 0]

    got = steps("score_sde")
    np.testing.assert_allclose(got, want, rtol=RTOL)
    ratio = np.median(steps("annealed")) / np.median(got)
    np.testing.assert_allclose(ratio, annealed_ratio, rtol=0.1)


@pytest.mark.parametrize("name", ["VP", "VE"])
def test_default_pc_reproduces_a_gaussian_in_64_dimensions(name):
    """The default sampler (reverse diffusion + score_sde's corrector, exact kernel
    between grid times) in the dimension regime its step rule is meant for: data
    N(0.5, 0.25 I) in d = 64, exact score, 30 steps."""
    p = sf.VP(B0, B1) if name == "VP" else sf.VE(SMIN, SMAX)

    def score(t, x):
        a, s = p.alpha(t), p.sigma(t)
        return -(x - a * 0.5) / (a**2 * 0.25 + s**2)

    pred = sf.Predictor(score, p, prediction="score")
    xs = sf.sample(
        jax.random.key(1),
        p,
        pred,
        (64,),
        num=256,
        method="sde",
        solver=sf.PredictorCorrector(),
        time_grid=sf.uniform_grid(p, 30),
    )
    assert abs(float(xs.mean()) - 0.5) < 0.03
    assert abs(float(xs.var()) / 0.25 - 1) < 0.2


# --------------------------------------------------------------------------- #
# Against the real package
# --------------------------------------------------------------------------- #


@pytest.mark.peers
def test_against_score_sde_pytorch(monkeypatch):
    """score_sde is not a pip package: with a checkout of
    yang-song/score_sde_pytorch at $SCORE_SDE_PATH (and torch installed), its own
    ReverseDiffusionPredictor, AncestralSamplingPredictor and LangevinCorrector take
    one update on the same inputs and draws."""
    torch = pytest.importorskip("torch")
    path = os.environ.get("SCORE_SDE_PATH")
    if not path or not os.path.isdir(path):
        pytest.skip(
            "score_sde is not pip-installable: set SCORE_SDE_PATH to a checkout of "
            "yang-song/score_sde_pytorch (with its requirements) to run this check."
        )
    sys.path.insert(0, path)
    try:
        sampling = pytest.importorskip("sampling")
        sde_lib = pytest.importorskip("sde_lib")
    finally:
        sys.path.remove(path)
    torch.set_default_dtype(torch.float64)
    for name in ("VP", "VE"):
        p, pred, _ = _setup(name)
        sde = sde_lib.VPSDE(B0, B1, N) if name == "VP" else sde_lib.VESDE(SMIN, SMAX, N)

        def score_fn(x, t, name=name):
            xn, tn = x.numpy()[0, 0, 0], float(t[0])
            s = (
                -_eps_np(tn, xn) / OracleVP(N).std(tn)
                if name == "VP"
                else (_ve_score_np(tn, xn))
            )
            return torch.from_numpy(s)[None, None, None]

        xs, zs = _draws(7, 1, 2)
        for x, z in zip(xs, zs):
            draws = [torch.from_numpy(z[0, j])[None, None, None] for j in (0, 1)]
            monkeypatch.setattr(torch, "randn_like", lambda _x: draws.pop(0))
            xt = torch.from_numpy(x)[None, None, None]
            t = torch.tensor([0.37])
            corr = sampling.LangevinCorrector(sde, score_fn, 0.16, 1)
            xc, _ = corr.update_fn(xt, t)
            for cls, kind in (
                (sampling.ReverseDiffusionPredictor, "reverse_diffusion"),
                (sampling.AncestralSamplingPredictor, "ancestral"),
            ):
                draws[:] = [torch.from_numpy(z[0, 1])[None, None, None]]
                want, _ = cls(sde, score_fn, False).update_fn(xc, t)
                solver = sf.PredictorCorrector(0.16, 1, predictor=kind, levels=N)
                got = run(solver, p, pred, [0.37, 0.36], x[None], z[None])[0]
                np.testing.assert_allclose(got, want.numpy()[0, 0, 0], rtol=RTOL)
