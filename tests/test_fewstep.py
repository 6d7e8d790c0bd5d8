"""Few-step sampling (issue 13): the multistep samplers (order bands and one-step
cross-checks against the papers' updates written out here), the time grids, and
sampling along an equivalent path."""

import diffrax
import equinox as eqx
import helpers
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from test_solvers import fitted_order, setup

import scoreflow as sf
from scoreflow import toy

# --------------------------------------------------------------------------- #
# Order bands (same protocol as tests/test_solvers.py: exact mixture predictor,
# same noise, error against a 1e-10 Tsit5 reference)
# --------------------------------------------------------------------------- #

LOF = dict(lower_order_final=False)
ORDER_CASES = [
    pytest.param(
        sf.UniPC(3, **LOF),
        sf.log_snr_grid,
        (16, 32, 64),
        4,
        id="unipc3",
        marks=pytest.mark.slow,
    ),
    pytest.param(
        sf.DPMSolverPP3M(**LOF),
        sf.log_snr_grid,
        (16, 32, 64),
        3,
        id="dpm++3m",
        marks=pytest.mark.slow,
    ),
    pytest.param(
        sf.UniPC(1, **LOF),
        sf.log_snr_grid,
        (16, 32, 64),
        2,
        id="unipc1",
        marks=pytest.mark.slow,
    ),
    pytest.param(
        sf.UniPC(2, **LOF),
        sf.log_snr_grid,
        (64, 128, 256),
        3,
        id="unipc2-bh2",
        marks=pytest.mark.slow,
    ),
    pytest.param(
        sf.UniPC(2, "bh1", **LOF),
        sf.log_snr_grid,
        (64, 128, 256),
        3,
        id="unipc2-bh1",
        marks=pytest.mark.slow,
    ),
    pytest.param(
        sf.UniPC(2, corrector=False, **LOF),
        sf.log_snr_grid,
        (32, 64, 128),
        2,
        id="unip2",
        marks=pytest.mark.slow,
    ),
    pytest.param(
        sf.DPMSolverPP3MSDE(eta=0, **LOF),
        sf.log_snr_grid,
        (16, 32, 64),
        3,
        id="dpm++3m-sde-eta0",
        marks=pytest.mark.slow,
    ),
]


# LMS and iPNDM have their order bands in the registry (tests/helpers.py SAMPLERS,
# fitted in tests/test_solvers.py on EDM's rho-grid: LMS 4 from 128 steps, iPNDM 2
# there, its fixed equal-step weights cost the rest) and one-step cross-checks below.


@pytest.mark.parametrize("solver,grid_fn,steps,expected", ORDER_CASES)
def test_convergence_order(solver, grid_fn, steps, expected):
    order, errs = fitted_order(solver, grid_fn, steps)
    assert abs(order - expected) < 0.4, (order, errs)


# --------------------------------------------------------------------------- #
# One-step cross-checks: the papers' updates, written out independently
# --------------------------------------------------------------------------- #

GRID = jnp.asarray([0.9, 0.6, 0.35, 0.2, 0.1])


def _trajectory(solver, method="ode", key=jr.key(0)):
    p, _, pred = setup()
    _, info = sf.sample(
        key,
        p,
        pred,
        (2,),
        num=3,
        method=method,
        solver=solver,
        time_grid=GRID,
        return_info=True,
        return_trajectory=True,
    )
    return p, pred, info["trajectory"]


def _lam(p, t):  # half log-SNR, log(alpha / sigma)
    return jnp.log(p.alpha(t) / p.sigma(t))


def test_dpmpp3m_third_step_is_lu_et_al():
    """DPM-Solver++(3M), Lu et al. 2022 (multistep third-order update in data
    prediction, dpm_solver's `multistep_dpm_solver_third_update`)."""
    p, pred, traj = _trajectory(sf.DPMSolverPP3M(**LOF))
    for x in traj:
        m = [pred.x0(GRID[i], x[i]) for i in range(3)]
        lam = [_lam(p, t) for t in GRID[:4]]
        h, h0, h1 = lam[3] - lam[2], lam[2] - lam[1], lam[1] - lam[0]
        r0, r1 = h0 / h, h1 / h
        d1_0, d1_1 = (m[2] - m[1]) / r0, (m[1] - m[0]) / r1
        d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
        d2 = (d1_0 - d1_1) / (r0 + r1)
        phi_1 = jnp.expm1(-h)
        phi_2 = phi_1 / h + 1
        phi_3 = phi_2 / h - 0.5
        a, s = p.alpha(GRID[3]), p.sigma(GRID[3])
        want = (
            s / p.sigma(GRID[2]) * x[2]
            - a * phi_1 * m[2]
            + a * phi_2 * d1
            - a * phi_3 * d2
        )
        np.testing.assert_allclose(x[3], want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
def test_unipc_corrector_and_second_order_predictor(variant):
    """Zhao et al. 2023: step 2 of UniPC-2 is UniC-1 (c = 1/2) on step 1 followed by
    UniP-2 (a = 1/2), with B(h) = h (bh1) or e^h - 1 (bh2) (data prediction: -h)."""
    p, pred, traj = _trajectory(sf.UniPC(2, variant, **LOF))
    B = (lambda h: -h) if variant == "bh1" else (lambda h: jnp.expm1(-h))
    t0, t1, t2 = GRID[:3]
    for x in traj:
        m0 = pred.x0(t0, x[0])
        h1 = _lam(p, t1) - _lam(p, t0)
        ddim = p.sigma(t1) / p.sigma(t0) * x[0] - p.alpha(t1) * jnp.expm1(-h1) * m0
        np.testing.assert_allclose(x[1], ddim, rtol=1e-10, atol=1e-12)
        m1 = pred.x0(t1, x[1])  # the model at the *predicted* point, reused
        x1c = ddim - p.alpha(t1) * B(h1) * 0.5 * (m1 - m0)
        h2 = _lam(p, t2) - _lam(p, t1)
        r = (_lam(p, t0) - _lam(p, t1)) / h2
        want = (
            p.sigma(t2) / p.sigma(t1) * x1c
            - p.alpha(t2) * jnp.expm1(-h2) * m1
            - p.alpha(t2) * B(h2) * 0.5 * (m0 - m1) / r
        )
        np.testing.assert_allclose(x[2], want, rtol=1e-10, atol=1e-12)


def test_lms_second_step_integrates_the_lagrange_interpolant():
    """k-diffusion's LMS: x~ += sum_j eps_j * int l_j(s) ds over [sig_a, sig_b],
    here for two nodes in closed form."""
    p, pred, traj = _trajectory(sf.LMS(2, **LOF))
    sig = [jnp.exp(-_lam(p, t)) for t in GRID[:3]]
    for x in traj:
        e0, e1 = pred.eps(GRID[0], x[0]), pred.eps(GRID[1], x[1])
        sa, sb, sp = sig[1], sig[2], sig[0]
        c1 = (sb - sa) * ((sb + sa) / 2 - sp) / (sa - sp)
        c0 = (sb - sa) * ((sb + sa) / 2 - sa) / (sp - sa)
        xt = x[1] / p.alpha(GRID[1]) + c1 * e1 + c0 * e0
        np.testing.assert_allclose(x[2], p.alpha(GRID[2]) * xt, rtol=1e-10)


def test_ipndm_uses_adams_bashforth_coefficients():
    p, pred, traj = _trajectory(sf.IPNDM(3, **LOF))
    sig = [jnp.exp(-_lam(p, t)) for t in GRID]
    for x in traj:
        e = [pred.eps(GRID[i], x[i]) for i in range(3)]
        xt = (
            x[2] / p.alpha(GRID[2])
            + (sig[3] - sig[2]) * (23 * e[2] - 16 * e[1] + 5 * e[0]) / 12
        )
        np.testing.assert_allclose(x[3], p.alpha(GRID[3]) * xt, rtol=1e-10)


def test_ipndm_fourth_step_is_adams_bashforth_4():
    """iPNDM's fourth step: the fixed AB4 weights (55, -59, 37, -9)/24 (Zhang & Chen
    2023; k-diffusion's `sample_ipndm`) times the step in sigma~, not the Lagrange
    weights of the actual unequal steps."""
    p, pred, traj = _trajectory(sf.IPNDM(4, **LOF))
    sig = [jnp.exp(-_lam(p, t)) for t in GRID]
    for x in traj:
        e = [pred.eps(GRID[i], x[i]) for i in range(4)]
        xt = (
            x[3] / p.alpha(GRID[3])
            + (sig[4] - sig[3]) * (55 * e[3] - 59 * e[2] + 37 * e[1] - 9 * e[0]) / 24
        )
        np.testing.assert_allclose(x[4], p.alpha(GRID[4]) * xt, rtol=1e-10)


def test_lms_fourth_step_integrates_the_cubic_interpolant():
    """LMS (k-diffusion's `linear_multistep_coeff`): the weights are the integrals of
    the Lagrange basis on the last four noise levels, here with numpy polynomials."""
    p, pred, traj = _trajectory(sf.LMS(4, **LOF))
    sig = [float(jnp.exp(-_lam(p, t))) for t in GRID]
    nodes = sig[3::-1]  # most recent first
    weights = []
    for j, sj in enumerate(nodes):
        others = [s for i, s in enumerate(nodes) if i != j]
        ell = np.poly1d(others, r=True) / np.prod([sj - s for s in others])
        anti = np.polyint(ell)
        weights.append(anti(sig[4]) - anti(sig[3]))
    for x in traj:
        e = [pred.eps(GRID[i], x[i]) for i in (3, 2, 1, 0)]
        xt = x[3] / p.alpha(GRID[3]) + sum(w * ej for w, ej in zip(weights, e))
        np.testing.assert_allclose(x[4], p.alpha(GRID[4]) * xt, rtol=1e-9)


def test_sde_variants_at_eta0_are_the_ode_methods():
    _, _, a = _trajectory(sf.DPMSolverPP2MSDE(eta=0))
    _, _, b = _trajectory(sf.DPMSolverPP2M())
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    _, _, a = _trajectory(sf.DPMSolverPP3MSDE(eta=0))
    _, _, b = _trajectory(sf.DPMSolverPP3M())
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_sde_first_step_is_the_ddpm_posterior():
    """At eta = 1 the first (first-order) step of DPM-Solver++(2M) SDE is the exact
    DDPM posterior draw, with the same Brownian increment."""
    p, _, pred = setup()
    grid = GRID[:2]
    kw = dict(num=64, method="sde", time_grid=grid)
    a = sf.sample(jr.key(3), p, pred, (2,), solver=sf.DPMSolverPP2MSDE(eta=1.0), **kw)
    b = sf.sample(jr.key(3), p, pred, (2,), solver=sf.DDPM(), **kw)
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "solver", [sf.DPMSolverPP2MSDE(), sf.DPMSolverPP3MSDE()], ids=["2m", "3m"]
)
def test_sde_multistep_reproduces_the_data(solver):
    """Moments of 4000 samples at 40 steps against the exact mixture's (Monte Carlo
    tolerance: FD of exact samples of this size is ~5e-3)."""
    p, gm, pred = setup()
    xs = sf.sample(
        jr.key(1),
        p,
        pred,
        (2,),
        num=4000,
        method="sde",
        solver=solver,
        time_grid=sf.log_snr_grid(p, 40),
    )
    mean, cov = jnp.mean(xs, 0), jnp.cov(xs.T)
    fd = sf.metrics.frechet_distance_gaussians(mean, cov, gm.mean(), gm.cov())
    assert fd < 0.05, fd


@pytest.mark.parametrize(
    "solver",
    [sf.UniPC(3), sf.DPMSolverPP3M(), sf.LMS(), sf.IPNDM()],
    ids=["unipc", "3m", "lms", "ipndm"],
)
def test_one_evaluation_per_step(solver):
    p, _, pred = setup()
    _, info = sf.sample(
        jr.key(0),
        p,
        pred,
        (2,),
        num=2,
        solver=solver,
        time_grid=GRID,
        return_info=True,
    )
    assert int(info["nfe"][0]) == len(GRID) - 1


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="order"):
        sf.UniPC(order=4)
    with pytest.raises(ValueError, match="variant"):
        sf.UniPC(variant="bh3")
    with pytest.raises(ValueError, match="eta"):
        sf.DPMSolverPP2MSDE(eta=-1.0)
    with pytest.raises(ValueError, match="max_order"):
        sf.LMS(max_order=5)
    p, _, pred = setup()
    with pytest.raises(Exception, match="Brownian"):
        sf.sample(
            jr.key(0), p, pred, (2,), num=2, solver=sf.DPMSolverPP2MSDE(), steps=3
        )


# --------------------------------------------------------------------------- #
# Grids
# --------------------------------------------------------------------------- #


def test_diffusers_spacings():
    """Lin et al. 2024, Table 2 (T = 1000, 10 steps), as DDPM times (i + 1)/T."""
    p = sf.VP()
    want = {
        "leading": [900, 800, 700, 600, 500, 400, 300, 200, 100, 0],
        "trailing": [999, 899, 799, 699, 599, 499, 399, 299, 199, 99],
        "linspace": [999, 888, 777, 666, 555, 444, 333, 222, 111, 0],
    }
    for spacing, idx in want.items():
        g = sf.diffusers_grid(p, 10, spacing=spacing)
        np.testing.assert_allclose(g[:-1], (np.asarray(idx) + 1) / 1000, rtol=1e-12)
        assert g[-1] == p.t0 and g.shape == (11,)
    with pytest.raises(ValueError, match="spacing"):
        sf.diffusers_grid(p, 10, spacing="middle")


def test_denoise_grid():
    g = sf.denoise_grid(sf.VP(), 4)
    np.testing.assert_allclose(g, [1.0, 0.8, 0.6, 0.4, 0.2], rtol=1e-12)


def _pilot_error(grid, key, num=64, steps_ref=200):
    p, _, pred = setup()
    kw = dict(num=num, solver=sf.UniPC(2))
    ref = sf.sample(key, p, pred, (2,), time_grid=sf.log_snr_grid(p, steps_ref), **kw)
    xs = sf.sample(key, p, pred, (2,), time_grid=grid, **kw)
    return float(jnp.mean(jnp.sum((xs - ref) ** 2, -1)))


@pytest.mark.slow  # ~2.5 min on the loaded 2-core CI machine (gradient through sf.sample)
def test_optimised_grid_monotone_reproducible_and_better():
    p, _, pred = setup()
    kw = dict(solver=sf.UniPC(2), shape=(2,), num=64, iters=25, reference_steps=100)
    g1 = sf.optimised_grid(jr.key(5), p, pred, 4, **kw)
    g2 = sf.optimised_grid(jr.key(5), p, pred, 4, **kw)
    assert g1.shape == (5,)
    assert np.all(np.diff(np.asarray(g1)) < 0)
    assert g1[0] == p.t1 and g1[-1] == p.t0
    np.testing.assert_array_equal(np.asarray(g1), np.asarray(g2))
    init = sf.log_snr_grid(p, 4)
    # better than its starting grid on fresh noise (not the pilot's)
    assert _pilot_error(g1, jr.key(11)) < _pilot_error(init, jr.key(11))


# --------------------------------------------------------------------------- #
# Equivalent paths
# --------------------------------------------------------------------------- #


def test_straight_path_has_the_same_log_snr_range():
    vp = sf.VP()
    rf = sf.straight_path(vp)
    for a, b in ((vp.t0, rf.t0), (vp.t1, rf.t1)):
        np.testing.assert_allclose(vp.log_snr(a), rf.log_snr(b), rtol=1e-8)


@pytest.mark.parametrize("solver", [diffrax.Heun(), sf.UniPC(2)], ids=["heun", "unipc"])
def test_vp_model_on_straight_path_is_the_rf_sampler(solver):
    """A VP-trained exact eps-model read along the straight path reproduces the
    rectified-flow sampler of the same data from the same noise: to 1e-10 in float64
    and to float32 round-off (amplified by the inverse log-SNR near t0) in float32."""
    gm = toy.ring_mixture()
    vp = sf.VP()
    pp = sf.on_path(sf.Predictor(gm.eps(vp), vp, prediction="eps"))
    rf = pp.process
    rf_pred = sf.Predictor(gm.eps(rf), rf, prediction="eps")
    kw = dict(num=32, solver=solver, steps=5)
    a = sf.sample(jr.key(1), rf, pp, (2,), **kw)
    b = sf.sample(jr.key(1), rf, rf_pred, (2,), **kw)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-10)
    # float32
    z = jr.normal(jr.key(2), (32, 2), jnp.float32) * jnp.float32(rf.sigma(rf.t1))
    pp32, rf_pred32 = helpers.to_float32(pp), helpers.to_float32(rf_pred)
    a32 = sf.sample(jr.key(1), rf, pp32, (2,), noise=z, **kw)
    b32 = sf.sample(jr.key(1), rf, rf_pred32, (2,), noise=z, **kw)
    assert a32.dtype == jnp.float32
    np.testing.assert_allclose(a32, b32, rtol=0, atol=2e-4)


def test_path_predictor_maps_back_to_the_source():
    gm = toy.ring_mixture()
    vp = sf.VP()
    pred = sf.Predictor(gm.eps(vp), vp, prediction="eps")
    pp = sf.on_path(pred)
    u = jnp.asarray(0.3)
    ts, _ = pp.to_source(u, jnp.ones(2))
    np.testing.assert_allclose(vp.log_snr(ts), pp.process.log_snr(u), rtol=1e-8)
    x0 = jnp.asarray([1.0, -2.0])
    eps = jnp.asarray([0.5, 0.3])
    y = pp.process.alpha(u) * x0 + pp.process.sigma(u) * eps
    x = vp.alpha(ts) * x0 + vp.sigma(ts) * eps
    np.testing.assert_allclose(pp.to_source(u, y)[1], x, rtol=1e-8)
    with pytest.raises(ValueError, match="straight"):
        sf.on_path(pred, "curved")


def test_jit_and_vmap_of_a_path_predictor():
    gm = toy.ring_mixture()
    vp = sf.VP()
    pp = sf.on_path(sf.Predictor(gm.eps(vp), vp, prediction="eps"))
    xs = jnp.ones((4, 2))
    out = jax.jit(jax.vmap(pp.velocity, in_axes=(None, 0)))(jnp.asarray(0.5), xs)
    assert out.shape == (4, 2) and bool(jnp.all(jnp.isfinite(out)))


def test_path_grid_is_the_pointwise_path_map():
    """`path_grid` (the scale k(u) and source time t(u) on a grid, one program) is
    the path predictor's own pointwise maps, with the source's exact ends."""
    from scoreflow._sampling._paths import path_grid

    gm = toy.ring_mixture()
    vp = sf.VP()
    pp = sf.on_path(sf.Predictor(gm.eps(vp), vp, prediction="eps"))
    us = sf.uniform_grid(pp.process, 5)
    scale, ts = path_grid(vp, pp.process, us)
    for u, k, t in zip(us, scale, ts):
        np.testing.assert_allclose(k, pp.scale(u), rtol=1e-12)
    np.testing.assert_allclose(ts[1:-1], [pp.source_time(u) for u in us[1:-1]])
    assert float(ts[0]) == vp.t1 and float(ts[-1]) == vp.t0


def test_on_path_derives_the_inverse_before_jit(monkeypatch):
    """Inside jit a process's parameters are traced and cannot pick the branch of
    the closed-form inverse log-SNR, so a first call there fell back to bisection
    (a bigger program, and a result that depended on whether an eager call came
    first). `sf.on_path` derives it first (`prepare_inverse`)."""
    from scoreflow._process import _declared, _log_snr

    def no_bisection(*args):
        raise AssertionError("bisection inside jit")

    monkeypatch.setattr(_log_snr, "_INVERSES", {})
    monkeypatch.setattr(_declared, "_bisect_jit", no_bisection)
    vp = sf.VP()
    in_jit = eqx.filter_jit(lambda q, lam: q.t_from_log_snr(lam))
    with pytest.raises(AssertionError, match="bisection"):
        in_jit(vp, jnp.asarray(0.0))
    sf.on_path(sf.Predictor(toy.ring_mixture().eps(vp), vp, prediction="eps"))
    t = in_jit(vp, jnp.asarray(0.0))
    np.testing.assert_allclose(vp.log_snr(t), 0.0, atol=1e-9)
    # a process without a closed-form inverse: nothing to derive, no error
    sf.CosineVP().prepare_inverse()


# --------------------------------------------------------------------------- #
# Defaults
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("budget", [1, 2, 5, 6, 10, 20])
def test_default_sampler_stays_within_the_budget(budget):
    cfg = sf.default_sampler(sf.VP(), budget)
    assert 1 <= cfg.nfe <= budget and budget - cfg.nfe <= 1
    assert np.all(np.diff(np.asarray(cfg.time_grid)) < 0)
    assert not cfg.denoise and cfg.path == ("straight" if budget >= 2 else "native")


def test_default_sampler_native_for_matrix_processes():
    cfg = sf.default_sampler(sf.CLD(), 10)
    assert cfg.path == "native" and isinstance(cfg.solver, diffrax.Heun)


@pytest.mark.parametrize("budget", [5, 10])
def test_default_sampler_samples_the_data(budget):
    """Counted NFE equals the configuration's, and 4000 samples match the mixture's
    moments (exact-sample FD at this size ~5e-3)."""
    p, gm, pred = setup()
    cfg = sf.default_sampler(p, budget)
    xs, info = cfg.sample(jr.key(4), pred, (2,), num=4000, return_info=True)
    assert int(info["nfe"][0]) == cfg.nfe
    fd = sf.metrics.frechet_distance_gaussians(
        jnp.mean(xs, 0), jnp.cov(xs.T), gm.mean(), gm.cov()
    )
    assert fd < 0.05, fd


# --------------------------------------------------------------------------- #
# sf.sample's default (no solver=): the straight path, mapped back exactly
# --------------------------------------------------------------------------- #

X1 = jnp.asarray([[0.3, -0.2], [1.0, 2.0], [-1.5, 0.4]])


def _midpoint_on_straight_path(p, gm, x1, steps):
    """The oracle, written out: y = x/(alpha + sigma) on u = sigma/(alpha + sigma),
    dy/du = eps_hat - x0_hat (the rectified-flow velocity of the same data),
    `steps` explicit-midpoint steps uniform in u. Returns the states y, (steps + 1,
    num, d)."""
    rf = sf.straight_path(p)
    eps, x0 = gm.eps(rf), gm.x0(rf)

    @jax.jit
    def v(u, y):
        return jax.vmap(lambda yi: eps(u, yi) - x0(u, yi))(y)

    us = np.linspace(rf.t1, rf.t0, steps + 1)
    ys = [np.asarray(x1) / float(p.alpha(p.t1) + p.sigma(p.t1))]
    for ua, ub in zip(us[:-1], us[1:]):
        du, y = ub - ua, ys[-1]
        ys.append(np.asarray(y + du * v(ua + du / 2, y + du / 2 * v(ua, y))))
    return np.stack(ys)


def _heun_in_t(p, pred, x1, steps):
    """The old default, written out: Heun on dx/dt = f x - g^2 score / 2, uniform t."""

    @jax.jit
    def v(t, x):
        s = jax.vmap(lambda xi: pred.score(t, xi))(x)
        return p.f(t) * x - 0.5 * p.g2(t) * s

    ts = np.linspace(p.t1, p.t0, steps + 1)
    x = np.asarray(x1)
    for ta, tb in zip(ts[:-1], ts[1:]):
        h = tb - ta
        k1 = v(ta, x)
        k2 = v(tb, x + h * k1)
        x = np.asarray(x + h / 2 * (k1 + k2))
    return x


def test_sample_default_is_midpoint_on_the_straight_path():
    """No solver=: `steps` Midpoint steps on the straight path (2 * steps NFE), as
    written out above; the same as sf.default_sampler(p, 2 * steps); info says so."""
    p, gm, pred = setup()
    xs, info = sf.sample(
        None,
        p,
        pred,
        (2,),
        num=3,
        steps=4,
        noise=X1,
        return_info=True,
        return_trajectory=True,
    )
    ys = _midpoint_on_straight_path(p, gm, X1, 4)
    np.testing.assert_allclose(xs, ys[-1] * (p.alpha(p.t0) + p.sigma(p.t0)), rtol=1e-10)
    # the trajectory is x(t) = (alpha + sigma)(t) y at the source times t(u)
    k = jax.vmap(lambda t: p.alpha(t) + p.sigma(t))(info["ts"][0])
    want = np.moveaxis(ys, 0, 1) * np.asarray(k)[None, :, None]
    np.testing.assert_allclose(info["trajectory"], want, rtol=1e-10)
    assert info["sampler"] == "straight path, Midpoint, uniform u, 4 steps"
    assert np.all(info["nfe"] == 8)
    cfg = sf.default_sampler(p, 8)
    assert cfg.label == info["sampler"]
    key = jr.key(5)
    np.testing.assert_allclose(
        sf.sample(key, p, pred, (2,), num=3, steps=4),
        cfg.sample(key, pred, (2,), num=3),
        rtol=1e-13,
    )


def test_sample_with_heun_is_the_old_default():
    """solver=diffrax.Heun() is the former default exactly (Heun in t, uniform grid),
    and the new default is far more accurate at the same NFE (error against a tight
    adaptive solve from the same noise)."""
    p, gm, pred = setup()
    kw = dict(num=3, noise=X1)
    heun, info = sf.sample(
        None, p, pred, (2,), solver=diffrax.Heun(), steps=4, return_info=True, **kw
    )
    np.testing.assert_allclose(heun, _heun_in_t(p, pred, X1, 4), rtol=1e-10)
    assert "sampler" not in info  # nothing was picked
    ref = sf.sample(
        None,
        p,
        pred,
        (2,),
        solver=diffrax.Tsit5(),
        stepsize_controller=diffrax.PIDController(rtol=1e-10, atol=1e-10),
        **kw,
    )
    new = sf.sample(None, p, pred, (2,), steps=4, **kw)
    err_new = float(jnp.max(jnp.abs(new - ref)))
    err_heun = float(jnp.max(jnp.abs(heun - ref)))
    assert err_new < err_heun / 5, (err_new, err_heun)


def test_sample_default_keeps_the_process_coordinates():
    """Same key, same initial noise as any other solver; the trajectory is x(t) at
    the source times of the path grid; denoise, batch_size and key=None agree."""
    p, gm, pred = setup()
    key = jr.key(3)
    kw = dict(num=5, steps=3, return_info=True, return_trajectory=True)
    xs, info = sf.sample(key, p, pred, (2,), **kw)
    _, heun = sf.sample(key, p, pred, (2,), solver=diffrax.Heun(), **kw)
    traj, ts = info["trajectory"], info["ts"]
    assert traj.shape == (5, 4, 2) and ts.shape == (5, 4)
    np.testing.assert_allclose(traj[:, 0], heun["trajectory"][:, 0], rtol=1e-12)
    np.testing.assert_allclose(traj[:, -1], xs, rtol=1e-12)
    rf = sf.straight_path(p)
    us = sf.uniform_grid(rf, 3)
    np.testing.assert_allclose(ts[0, [0, -1]], [p.t1, p.t0], rtol=1e-12)
    np.testing.assert_allclose(
        jax.vmap(p.log_snr)(ts[0, 1:-1]), jax.vmap(rf.log_snr)(us[1:-1]), rtol=1e-8
    )
    # given noise (key=None), chunks, and the final Tweedie step
    again = sf.sample(None, p, pred, (2,), num=5, steps=3, noise=traj[:, 0])
    np.testing.assert_allclose(again, xs, rtol=1e-12, atol=1e-14)
    chunks, cinfo = sf.sample(
        key, p, pred, (2,), num=5, steps=3, batch_size=2, return_info=True
    )
    np.testing.assert_allclose(chunks, xs, rtol=1e-13)
    assert cinfo["sampler"] == info["sampler"]
    den = sf.sample(key, p, pred, (2,), num=5, steps=3, denoise=True)
    t_end = pred.process.t0
    want = jax.vmap(lambda x: pred.x0(t_end, x))(xs)
    np.testing.assert_allclose(den, want, rtol=1e-7, atol=1e-9)


def test_sample_default_with_guidance_and_conditions():
    """A guided predictor with per-sample conditions: the default is the same
    straight-path run (guidance counts twice)."""
    p, gm, _ = setup()

    def model(t, x, c):
        return gm.eps(p)(t, x) * (1.0 + 0.1 * jnp.asarray(c, x.dtype))

    cpred = sf.Predictor(model, p, prediction="eps", null_cond=jnp.asarray(0))
    guided = sf.cfg(cpred, 2.0)
    labels = jnp.asarray([1, 2, 0])
    xs, info = sf.sample(
        None, p, guided, (2,), num=3, steps=3, noise=X1, cond=labels, return_info=True
    )
    assert np.all(info["nfe"] == 12)
    rf = sf.straight_path(p)
    pp = sf.on_path(guided, rf)
    k1 = pp.scale(rf.t1)
    ys = sf.sample(
        None,
        rf,
        pp,
        (2,),
        num=3,
        solver=diffrax.Midpoint(),
        time_grid=sf.uniform_grid(rf, 3),
        noise=X1 * k1,
        cond=labels,
    )
    np.testing.assert_allclose(xs, ys / pp.scale(rf.t0), rtol=1e-12)
    plain = sf.sample(None, p, guided, (2,), num=3, steps=3, noise=X1)
    assert not np.allclose(plain, xs)  # the conditions were used


@pytest.mark.parametrize(
    "case,why",
    [
        ("sde", "method='sde'"),
        ("grid", "a given time_grid"),
        ("adaptive", "an adaptive stepsize_controller"),
        ("other-process", "the predictor's process differs"),
        ("jit", "traced process parameters"),
    ],
)
def test_sample_default_falls_back_to_heun(case, why):
    """Where the straight path does not apply, the default is the former one,
    diffrax.Heun() on the native path, exactly; info says why."""
    p, gm, pred = setup()
    kw = dict(num=2, steps=3)
    run = sf.sample
    proc = p
    if case == "sde":
        kw["method"] = "sde"
    elif case == "grid":
        kw = dict(num=2, time_grid=sf.log_snr_grid(p, 3))
    elif case == "adaptive":
        kw = dict(
            num=2, stepsize_controller=diffrax.PIDController(rtol=1e-4, atol=1e-4)
        )
    elif case == "other-process":
        proc = sf.VP(beta_max=19.0)
    else:

        def run(key, proc, pred, shape, **kw):
            return eqx.filter_jit(
                lambda pred: sf.sample(key, pred.process, pred, shape, **kw)
            )(pred)

    got, info = run(jr.key(0), proc, pred, (2,), return_info=True, **kw)
    want = run(jr.key(0), proc, pred, (2,), solver=diffrax.Heun(), **kw)
    np.testing.assert_array_equal(got, want)
    assert info["sampler"].startswith("native path, Heun") and why in info["sampler"]


def test_sample_default_native_for_matrix_processes():
    p = sf.CLD()
    pred = sf.Predictor(lambda t, x: -x, p, prediction="score")
    got, info = sf.sample(jr.key(0), p, pred, (2, 2), num=2, steps=3, return_info=True)
    want = sf.sample(jr.key(0), p, pred, (2, 2), num=2, steps=3, solver=diffrax.Heun())
    np.testing.assert_array_equal(got, want)
    assert "no scalar Gaussian kernel" in info["sampler"]


def test_sample_default_compiles_once():
    """The straight path is built once per process range (a fresh declared process
    would compare unequal and recompile every call)."""
    from scoreflow._sampling import _sample

    p, _, pred = setup()
    sf.sample(jr.key(0), p, pred, (2,), num=2, steps=3)
    before = _sample._TRACES[0]
    for i in range(3):
        sf.sample(jr.key(i), p, pred, (2,), num=2, steps=3)
    assert _sample._TRACES[0] == before


# --------------------------------------------------------------------------- #
# Learned few-step sampler (sf.optimised_sampler, sf.internal.LearnedAdams)
# --------------------------------------------------------------------------- #


def _ode(t, y, args):
    return -2.0 * t * y + jnp.cos(3.0 * t)


def _solve_learned(corrections, ts, y0=1.0):
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(_ode),
        sf.internal.LearnedAdams(corrections),
        t0=ts[0],
        t1=ts[-1],
        dt0=None,
        y0=jnp.asarray(y0),
        stepsize_controller=diffrax.StepTo(ts),
    )
    return float(sol.ys[-1])


def test_learned_adams_steps_are_ab2_plus_the_corrections():
    """Each step against the update written out here: variable-step AB2 (Euler
    first) plus sum_j c_ij v_j, on a non-uniform grid."""
    ts = np.array([0.0, 0.13, 0.3, 0.42, 0.61, 0.8])
    n = len(ts) - 1
    rng = np.random.default_rng(0)
    c = np.tril(rng.normal(scale=0.3, size=(n, n)))
    for corr in (np.zeros((n, n)), c):
        y, vs = 1.0, []
        for i in range(n):
            v = float(_ode(ts[i], y, None))
            vs.append(v)
            h = ts[i + 1] - ts[i]
            rate = v
            if i > 0:
                rate += h / (2 * (ts[i] - ts[i - 1])) * (v - vs[i - 1])
            rate += sum(corr[i, j] * vs[j] for j in range(i + 1))
            y = y + h * rate
        np.testing.assert_allclose(_solve_learned(corr, ts), y, rtol=1e-12)


def test_learned_adams_without_corrections_is_second_order():
    exact = _solve_learned(np.zeros((2048, 2048)), np.linspace(0.0, 1.0, 2049))
    steps = (16, 32, 64, 128)
    errs = [
        abs(_solve_learned(np.zeros((n, n)), np.linspace(0.0, 1.0, n + 1)) - exact)
        for n in steps
    ]
    order = -np.polyfit(np.log(steps), np.log(errs), 1)[0]
    assert abs(order - 2) < 0.4, (order, errs)


def test_learned_adams_refuses_more_steps_than_fitted_and_bad_shapes():
    with pytest.raises(Exception, match="fitted for 3 steps"):
        _solve_learned(np.zeros((3, 3)), np.linspace(0.0, 1.0, 5))
    with pytest.raises(ValueError, match=r"square \(N, N\)"):
        sf.internal.LearnedAdams(np.zeros((3, 2)))
    p, _, pred = setup()
    for kw, word in ((dict(num=0), "num"), (dict(iters=-1), "iters")):
        with pytest.raises(ValueError, match=word):
            sf.optimised_sampler(jr.key(0), pred, 3, shape=(2,), **kw)
    with pytest.raises(ValueError, match="steps"):
        sf.optimised_sampler(jr.key(0), pred, 0, shape=(2,))


@pytest.mark.slow  # gradient through sf.sample: ~1 min on the 2-core machine
def test_optimised_sampler_reproducible_monotone_and_better():
    p, _, pred = setup()
    kw = dict(shape=(2,), num=64, iters=30, reference_steps=100)
    a = sf.optimised_sampler(jr.key(5), pred, 3, **kw)
    b = sf.optimised_sampler(jr.key(5), pred, 3, **kw)
    start = sf.optimised_sampler(jr.key(5), pred, 3, **{**kw, "iters": 0})
    grid = np.asarray(a.time_grid)
    assert grid.shape == (4,) and np.all(np.diff(grid) < 0)
    assert grid[0] == a.process.t1 and grid[-1] == a.process.t0
    np.testing.assert_array_equal(grid, np.asarray(b.time_grid))
    np.testing.assert_array_equal(
        np.asarray(a.solver.corrections), np.asarray(b.solver.corrections)
    )
    np.testing.assert_array_equal(np.asarray(start.solver.corrections), 0.0)
    # closer to the many-step solution than AB2 on the uniform grid, on fresh noise
    ref = sf.default_sampler(p, 200).sample(jr.key(11), pred, (2,), num=256)
    xs, info = a.sample(jr.key(11), pred, (2,), num=256, return_info=True)
    x0 = start.sample(jr.key(11), pred, (2,), num=256)
    assert int(info["nfe"][0]) == 3
    err = float(jnp.mean(jnp.sum((xs - ref) ** 2, -1)))
    err0 = float(jnp.mean(jnp.sum((x0 - ref) ** 2, -1)))
    assert err < 0.5 * err0, (err, err0)
