"""Losses: the exact optimal predictor minimises DSM (every prediction space) and CFM
(Monte Carlo gradient ~ 0 within its standard error, perturbations raise the loss);
one weighting currency (same implied weighting -> same loss); weightings at
SNR = 0 and inf; time-sampler normalisation; OT coupling; label dropout; SSM on a
non-Gaussian process; data-scale check."""

import sys

import equinox as eqx
import helpers
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import scipy.optimize

import scoreflow as sf
from scoreflow.toy import GaussianMixture

N = 2048
# Every scalar-rung process of the registry; RectifiedFlow builds in ~1 s, the
# others repeat the same checks in the slow run.
PROCESSES = helpers.process_params(sf.AbstractScalarProcess, default=("RectifiedFlow",))


@pytest.fixture(scope="module")
def gauss():
    """A correlated 2-D Gaussian (a one-component mixture): its exact predictors
    are the Bayes-optimal models."""
    return GaussianMixture(
        jnp.ones(1), jnp.array([[0.6, -0.4]]), jnp.array([[[0.9, 0.3], [0.3, 0.5]]])
    )


def _exact(gm, p, prediction):
    if prediction == "v":
        f = gm.eps(p)
        return lambda t, x: sf.convert(p, t, x, f(t, x), source="eps", target="v")
    return getattr(gm, prediction)(p)


class _Perturbed(eqx.Module):
    """exact(t, x) + delta * slope_P(t) * tanh(x @ a) u: an eps-scale perturbation
    in prediction space P."""

    exact: object
    process: object
    prediction: str = eqx.field(static=True)
    delta: jax.Array

    def __call__(self, t, x):
        slope = (
            jnp.abs(sf.internal.prediction_factor(self.process, self.prediction, t))
            ** 0.5
        )
        h = jnp.tanh(x @ jnp.array([0.7, -0.5]) + 0.3) * jnp.array([1.0, -0.6])
        return self.exact(t, x) + self.delta * slope * h


def _optimality(loss, exact, p, prediction, x0, key, delta0=0.3):
    """Per-example loss values and d/d(delta) at delta in (-delta0, 0, delta0), in
    one compiled function; returns the MC mean and standard error of the gradient
    at 0 and at delta0, and the three mean losses."""

    def per_example(d):
        model = _Perturbed(exact, p, prediction, d)
        return loss.per_example(model, x0, key)

    @jax.jit
    def run():
        ds = jnp.asarray([-delta0, 0.0, delta0])
        return jax.vmap(lambda d: jax.jvp(per_example, (d,), (jnp.ones_like(d),)))(ds)

    vals, grads = run()
    n = x0.shape[0]
    mean, se = float(jnp.mean(grads[1])), float(jnp.std(grads[1]) / np.sqrt(n))
    mean_off = float(jnp.mean(grads[2]))
    se_off = float(jnp.std(grads[2]) / np.sqrt(n))
    return mean, se, [float(v) for v in jnp.mean(vals, axis=1)], mean_off, se_off


@pytest.mark.parametrize("name", PROCESSES)
@pytest.mark.parametrize("prediction", sf.internal.PREDICTIONS)
def test_dsm_exact_predictor_is_optimal(name, prediction, gauss):
    p = helpers.process(name)
    x0 = gauss.sample(jr.key(1), N)
    loss = sf.dsm_loss(p, prediction=prediction, weighting="min_snr", check_scale=False)
    mean, se, vals, mean_off, se_off = _optimality(
        loss, _exact(gauss, p, prediction), p, prediction, x0, jr.key(2)
    )
    assert abs(mean) < 4 * se, (mean, se)
    assert vals[0] > vals[1] and vals[2] > vals[1], vals
    # the test has power: away from the optimum the gradient is clearly nonzero
    assert abs(mean_off) > 4 * se_off, (mean_off, se_off)


@pytest.mark.parametrize("name", PROCESSES)
@pytest.mark.parametrize("coupling", ["independent", "ot"])
def test_cfm_exact_velocity_is_optimal(name, coupling, gauss):
    p = helpers.process(name)
    n = N if coupling == "independent" else 256
    if coupling == "independent" and name in ("VE", "EDM"):
        # unweighted velocity MSE of the exploding processes: the target is about
        # sigma'(t) eps with sigma up to 50-80, so per-example gradients are ~10x
        # noisier; 8x the pairs keep the power check below meaningful
        n = 8 * N
    x0 = gauss.sample(jr.key(3), n)
    loss = sf.cfm_loss(p, coupling=coupling, check_scale=False)
    # perturb in eps units (the velocity MSE has no weighting to tame the
    # velocity's 1/alpha scale near t1)
    mean, se, vals, mean_off, se_off = _optimality(
        loss, gauss.velocity(p), p, "eps", x0, jr.key(4)
    )
    if coupling == "independent":
        # OT pairs change the conditional paths, so the marginal velocity of the
        # independent coupling is no longer the minimiser: only check independent.
        assert abs(mean) < 4 * se, (mean, se)
        assert vals[0] > vals[1] and vals[2] > vals[1], vals
        assert abs(mean_off) > 4 * se_off, (mean_off, se_off)
    else:
        assert np.isfinite(vals).all()


# --------------------------------------------------------------------------- #
# One currency
# --------------------------------------------------------------------------- #


class _VelocityMSE(sf.AbstractWeighting):
    """w = k_velocity: makes DSM in velocity space the plain velocity MSE (CFM)."""

    def __call__(self, process, t):
        return sf.internal.prediction_factor(process, "velocity", t)


@pytest.mark.parametrize(
    "name",
    helpers.process_params(
        sf.AbstractScalarProcess,
        default=("VP", "RectifiedFlow", "EDM", "Interpolant(sympy)"),
    ),
)
def test_same_implied_weighting_same_loss(name, getkey):
    p = helpers.process(name)
    net = sf.nets.MLP(2, width=32, depth=2, key=getkey())
    net = jax.tree_util.tree_map(
        lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, net
    )
    pred = sf.Predictor(net, p, prediction="eps")
    x0 = jr.normal(getkey(), (256, 2))
    key = getkey()
    weightings = [
        "sigma2",
        "min_snr",
        sf.MinSNR(gamma=1.0),
        "edm",
        "likelihood",
        lambda lam: jax.nn.sigmoid(2.0 - lam),
    ]
    for w in weightings:
        values = {}
        for P in sf.internal.PREDICTIONS:
            loss = sf.dsm_loss(p, prediction=P, weighting=w, check_scale=False)
            values[P] = float(loss(pred.as_prediction(P), x0, key))
        ref = values["eps"]
        for P, v in values.items():
            np.testing.assert_allclose(v, ref, rtol=1e-9, err_msg=f"{w} {P}")
    # SNR on the x0-MSE is the plain eps-MSE (Hang et al. 2023, Table 1)
    a = sf.dsm_loss(p, prediction="x0", weighting="snr", check_scale=False)(
        pred.x0, x0, key
    )
    b = sf.dsm_loss(p, prediction="eps", weighting="sigma2", check_scale=False)(
        pred.eps, x0, key
    )
    np.testing.assert_allclose(a, b, rtol=1e-10)
    # CFM is DSM in velocity space with w = k_velocity
    c = sf.cfm_loss(p, check_scale=False)(pred.velocity, x0, key)
    d = sf.dsm_loss(
        p, prediction="velocity", weighting=_VelocityMSE(), check_scale=False
    )
    np.testing.assert_allclose(c, d(pred.velocity, x0, key), rtol=1e-10)


def test_explicit_space_formulas():
    """The conversion factors against the papers' forms: Min-SNR's min(SNR, gamma)
    on the x0-MSE; likelihood's g^2 on the score-MSE; EDM's lambda(sigma) on x0."""
    p = helpers.builtin("VP")
    ts = jnp.linspace(p.t0, p.t1, 11)
    snr = p.alpha(ts) ** 2 / p.sigma(ts) ** 2
    k_x0 = sf.internal.prediction_factor(p, "x0", ts)
    np.testing.assert_allclose(
        sf.MinSNR(5.0)(p, ts) / k_x0, jnp.minimum(snr, 5.0), rtol=1e-9
    )
    k_s = sf.internal.prediction_factor(p, "score", ts)
    np.testing.assert_allclose(
        sf.LikelihoodWeighting()(p, ts) / k_s, p.g2(ts), rtol=1e-9
    )
    se = p.sigma(ts) / p.alpha(ts)
    sd = 0.7
    lam_edm = (se**2 + sd**2) / (se * sd) ** 2
    np.testing.assert_allclose(sf.EDMWeighting(sd)(p, ts) / k_x0, lam_edm, rtol=1e-9)
    k_v = sf.internal.prediction_factor(p, "v", ts)
    np.testing.assert_allclose(
        k_v, (p.alpha(ts) ** 2 + p.sigma(ts) ** 2) ** 2 / p.alpha(ts) ** 2, rtol=1e-9
    )


def test_edm_weighting_with_preconditioning_is_unit_on_network(getkey):
    """Karras et al.: lambda(sigma) c_out^2 = 1, so the 'edm' loss of a
    preconditioned model is the plain MSE of F against (x0 - c_skip x~)/c_out."""
    p = helpers.builtin("EDM")
    w = jr.normal(getkey(), (2,))
    net = lambda c, x: jnp.tanh(x) * w + c  # noqa: E731
    x0 = 0.5 * jr.normal(getkey(), (512, 2))
    key = getkey()
    loss = sf.dsm_loss(
        p, prediction="x0", weighting="edm", precondition="edm", check_scale=False
    )
    got = loss.per_example(net, x0, key)
    # by hand
    k_t, k_eps, _, _ = jr.split(key, 4)
    t, _ = sf.UniformTime().sample(k_t, p, 512)
    eps = jr.normal(k_eps, x0.shape)

    def one(x0, eps, t):
        x = p.alpha(t) * x0 + p.sigma(t) * eps
        c_skip, c_out, c_in, c_noise = sf.internal.edm_coefficients(p, t)
        F_target = (x0 - c_skip * x / p.alpha(t)) / c_out
        return jnp.mean((net(c_noise, c_in * x / p.alpha(t)) - F_target) ** 2)

    np.testing.assert_allclose(got, jax.vmap(one)(x0, eps, t), rtol=1e-9)


def test_weightings_at_snr_zero_and_infinity():
    lam = jnp.array([-jnp.inf, -30.0, 0.0, 30.0, jnp.inf])
    m = sf.MinSNR(gamma=5.0).of_log_snr(lam)
    np.testing.assert_allclose(m, [1.0, 1.0, 1.0, 5 * np.exp(-30.0), 0.0], rtol=1e-12)
    np.testing.assert_array_equal(sf.ConstantWeighting().of_log_snr(lam), 1.0)
    e = sf.EDMWeighting(sigma_data=0.5).of_log_snr(lam)
    assert e[0] == jnp.inf and e[-1] == 1.0 and not jnp.isnan(e).any()
    for w in (sf.MinSNR(5.0), sf.ConstantWeighting(), sf.EDMWeighting(0.5)):
        assert not bool(jnp.isnan(w.of_log_snr(lam)).any())
        assert not bool(jnp.isnan(jax.vmap(jax.grad(w.of_log_snr))(lam[1:-1])).any())
    with pytest.raises(ValueError, match="gamma"):
        sf.MinSNR(gamma=-1.0)
    with pytest.raises(ValueError, match="unknown weighting"):
        sf.dsm_loss(helpers.builtin("EDM"), weighting="p2")


@pytest.mark.parametrize(
    "name",
    helpers.process_params(
        sf.AbstractScalarProcess, default=("VP", "RectifiedFlow", "EDM", "SDE(sympy)")
    ),
)
def test_likelihood_weighting_is_minus_dlogsnr(name):
    p = helpers.process(name)
    ts = jnp.linspace(p.t0, p.t1, 9)
    dlam = jax.vmap(jax.grad(lambda t: p.log_snr(t)))(ts)
    np.testing.assert_allclose(sf.LikelihoodWeighting()(p, ts), -dlam, rtol=1e-7)


# --------------------------------------------------------------------------- #
# Time samplers
# --------------------------------------------------------------------------- #


SAMPLERS = {
    "uniform": sf.UniformTime(),
    "logit_normal": sf.LogitNormal(0.3, 0.8),
    "log_normal": sf.LogNormalSigma(),
    "likelihood": sf.LikelihoodImportance(),
}


@pytest.mark.parametrize("which", list(SAMPLERS))
@pytest.mark.parametrize(
    "name", helpers.process_params(sf.AbstractScalarProcess, default=("VP", "EDM"))
)
def test_time_sampler_normalisation_and_distribution(which, name):
    p = helpers.process(name)
    s = SAMPLERS[which]
    n = 4000
    t, w = jax.jit(lambda k: s.sample(k, p, n))(jr.key(5))
    assert bool(((t >= p.t0) & (t <= p.t1)).all())
    grid = jnp.concatenate(
        [jnp.geomspace(p.t0, 1e-2, 2000), jnp.linspace(1e-2, p.t1, 4000)[1:]]
    )
    dens = s.density(p, grid)
    dens = jnp.where(jnp.isfinite(dens), dens, 0.0)
    cdf = jnp.concatenate(
        [jnp.zeros(1), jnp.cumsum(0.5 * (dens[1:] + dens[:-1]) * jnp.diff(grid))]
    )
    clamped = s.clamped_fraction(p) if which == "log_normal" else 0.0
    np.testing.assert_allclose(cdf[-1] + clamped, 1.0, atol=2e-3)
    # Kolmogorov-Smirnov distance between samples and the density's CDF
    below = t <= p.t0
    emp = jnp.searchsorted(jnp.sort(t), grid, side="right").astype(grid.dtype) / n
    ks = float(jnp.max(jnp.abs(emp - (cdf + jnp.mean(below, dtype=cdf.dtype)))))
    assert ks < 2.0 / np.sqrt(n), ks
    if which == "likelihood":
        np.testing.assert_allclose(
            jnp.mean(w), 1.0, atol=4 * float(jnp.std(w)) / np.sqrt(n)
        )
        # with the likelihood weighting the per-example weight is constant
        prod = w * sf.LikelihoodWeighting()(p, t)
        np.testing.assert_allclose(prod, prod[0], rtol=1e-6)
    else:
        np.testing.assert_array_equal(w, 1.0)


def test_implied_weighting_reports_the_objective():
    """Importance sampling keeps the objective: likelihood weighting with uniform
    time and with `LikelihoodImportance` imply the same omega(t) = g^2/sigma^2 /
    (t1 - t0); a logit-normal sampler multiplies w by its density."""
    p = helpers.builtin("RectifiedFlow")
    ts = jnp.linspace(p.t0, p.t1, 13)[1:-1]
    a = sf.dsm_loss(p, weighting="likelihood").implied_weighting(ts)
    b = sf.dsm_loss(p, weighting="likelihood", time_sampler="likelihood")
    np.testing.assert_allclose(b.implied_weighting(ts), a, rtol=1e-10)
    np.testing.assert_allclose(
        a, p.g2(ts) / p.sigma(ts) ** 2 / (p.t1 - p.t0), rtol=1e-10
    )
    ln = sf.LogitNormal(0.0, 1.0)
    c = sf.dsm_loss(p, weighting="min_snr", time_sampler=ln).implied_weighting(ts)
    np.testing.assert_allclose(c, sf.MinSNR()(p, ts) * ln.density(p, ts), rtol=1e-10)


def test_log_normal_sigma_matches_edm_and_clamps():
    p = helpers.builtin("EDM")
    t, _ = sf.LogNormalSigma(-1.2, 1.2).sample(jr.key(6), p, 20000)
    log_sigma = jnp.log(p.sigma(t))
    inner = (t > p.t0) & (t < p.t1)
    assert float(jnp.mean(inner)) > 0.99
    np.testing.assert_allclose(jnp.mean(log_sigma), -1.2, atol=0.05)
    np.testing.assert_allclose(jnp.std(log_sigma), 1.2, atol=0.05)
    s = sf.LogNormalSigma(p_mean=4.0, p_std=1.0)  # sigma ~ e^4 often above sigma_max
    t, _ = s.sample(jr.key(7), p, 20000)
    np.testing.assert_allclose(jnp.mean(t == p.t1), s.clamped_fraction(p), atol=0.015)


# --------------------------------------------------------------------------- #
# Couplings, conditioning, data scale
# --------------------------------------------------------------------------- #


def test_ot_coupling_lowers_cost_and_labels_travel(getkey):
    p = helpers.builtin("RectifiedFlow")
    n = 128
    data = jr.normal(getkey(), (n, 2)) * 0.5 + 2.0
    labels = jnp.arange(n)

    def oracle(t, x, c):  # the conditional target (x_t - x0)/t, if c names x0
        return (x - data[c]) / t

    for coupling in ("independent", "ot"):
        loss = sf.cfm_loss(p, coupling=coupling, check_scale=False)
        val = loss(oracle, data, getkey(), cond=labels)
        assert float(val) < 1e-20, (coupling, val)
        wrong = loss(oracle, data, getkey(), cond=jnp.roll(labels, 1))
        assert float(wrong) > 1e-2
    eps = jr.normal(getkey(), (n, 2))
    j = sf.internal.ot_coupling(getkey(), data, eps)
    cost = np.asarray(jnp.sum((data[:, None] - eps[None]) ** 2, -1))
    rows, cols = scipy.optimize.linear_sum_assignment(cost)
    cost_exact = cost[rows, cols].mean()
    cost_ot = cost[np.arange(n), np.asarray(j)].mean()
    cost_ind = np.diag(cost).mean()
    assert cost_ot < cost_exact + 0.25 * (cost_ind - cost_exact), (
        cost_ot,
        cost_exact,
        cost_ind,
    )


def test_ot_missing_dependency_message(monkeypatch):
    for mod in [m for m in sys.modules if m == "ott" or m.startswith("ott.")]:
        monkeypatch.setitem(sys.modules, mod, None)
    monkeypatch.setitem(sys.modules, "ott", None)
    with pytest.raises(ImportError, match="ott-jax"):
        sf.cfm_loss(helpers.builtin("RectifiedFlow"), coupling="ot")


def test_label_dropout(gauss):
    p = helpers.builtin("RectifiedFlow")
    x0 = gauss.sample(jr.key(8), 512)
    exact = gauss.eps(p)

    def model(t, x, c):
        return exact(t, x) + c

    labels = jnp.ones((512,))
    base = sf.dsm_loss(p, check_scale=False)(exact, x0, jr.key(9))
    all_null = sf.dsm_loss(p, cond_dropout=1.0, null_cond=0.0, check_scale=False)
    np.testing.assert_allclose(
        all_null(model, x0, jr.key(9), cond=labels), base, rtol=1e-12
    )
    none = sf.dsm_loss(p, cond_dropout=0.0, check_scale=False)
    shifted = sf.dsm_loss(p, check_scale=False)(
        lambda t, x: exact(t, x) + 1.0, x0, jr.key(9)
    )
    np.testing.assert_allclose(none(model, x0, jr.key(9), cond=labels), shifted)
    assert float(shifted) > float(base) + 0.5
    half = sf.dsm_loss(p, cond_dropout=0.5, null_cond=0.0, check_scale=False)
    per = half.per_example(model, x0, jr.key(9), cond=labels)
    base_per = sf.dsm_loss(p, check_scale=False).per_example(exact, x0, jr.key(9))
    dropped = jnp.abs(per - base_per) < 1e-12
    assert 0.4 < float(jnp.mean(dropped)) < 0.6
    with pytest.raises(ValueError, match="null label"):
        sf.dsm_loss(p, cond_dropout=0.1, check_scale=False)(
            model, x0, jr.key(9), cond=labels
        )
    # with a reference network and its null label, under jit
    net = sf.nets.MLP(2, width=16, depth=1, num_classes=3, key=jr.key(0))
    loss = sf.dsm_loss(p, cond_dropout=0.2, null_cond=net.null_label)
    v = eqx.filter_jit(loss)(net, x0, jr.key(1), cond=jnp.arange(512) % 3)
    assert np.isfinite(float(v))


def test_data_scale_check_and_standardize(gauss):
    p = helpers.builtin("RectifiedFlow")
    x0 = gauss.sample(jr.key(10), 256)
    model = gauss.eps(p)
    loss = sf.dsm_loss(p)
    with pytest.warns(sf.DataScaleWarning, match="sf.standardize"):
        loss(model, 20.0 * x0, jr.key(0))
    z, scaler = sf.standardize(20.0 * x0)
    np.testing.assert_allclose(jnp.std(z), 1.0, rtol=1e-10)
    np.testing.assert_allclose(scaler.inverse(z), 20.0 * x0, rtol=1e-10)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", sf.DataScaleWarning)
        loss(model, z, jr.key(0))
        jax.jit(lambda x: loss(model, x, jr.key(0)))(20.0 * x0)  # no check when traced
    edm = helpers.builtin("EDM")
    z, _ = sf.standardize(x0, std=edm.sigma_data)
    with warnings.catch_warnings():
        warnings.simplefilter("error", sf.DataScaleWarning)
        sf.check_data_scale(edm, z)
    with pytest.warns(sf.DataScaleWarning):
        sf.check_data_scale(edm, 4 * z)


@pytest.mark.parametrize("name", PROCESSES)
def test_float32_losses_finite(name):
    """Every prediction space, weighting and time sampler gives a finite float32
    loss (one compiled function per process, the process a traced argument)."""
    p = helpers.to_float32(helpers.process(name))
    x0 = jr.normal(jr.key(0), (128, 2), jnp.float32)
    w = jnp.asarray([0.5, -0.3], jnp.float32)

    def net(t, x):
        return jnp.tanh(x) * w + t

    configs = [dict(prediction=P, weighting="min_snr") for P in sf.internal.PREDICTIONS]
    configs += [dict(weighting=wt) for wt in ("sigma2", "edm", "likelihood")]
    configs += [dict(time_sampler=ts) for ts in ("logit_normal", "log_normal")]
    configs += [dict(time_sampler="likelihood", weighting="likelihood")]

    @eqx.filter_jit
    def all_losses(p, x0):
        out = [
            sf.dsm_loss(p, check_scale=False, **c)(net, x0, jr.key(2)) for c in configs
        ]
        out.append(sf.cfm_loss(p, check_scale=False)(net, x0, jr.key(2)))
        return jnp.stack(out)

    v = all_losses(p, x0)
    assert v.dtype == jnp.float32
    assert bool(jnp.isfinite(v).all()), [
        c for c, ok in zip(configs, jnp.isfinite(v)) if not ok
    ]


def test_dsm_on_non_gaussian_process_points_to_ssm():
    p = sf.SDE(-(sf.x**3) + sf.x, 1.0)
    with pytest.raises(ValueError, match="ssm_loss"):
        sf.dsm_loss(p)
    with pytest.raises(ValueError, match="ssm_loss"):
        sf.cfm_loss(p)


# --------------------------------------------------------------------------- #
# Sliced score matching
# --------------------------------------------------------------------------- #


def _double_well_stationary(key, n):
    """Samples of p(x) ∝ exp(x^2 - x^4/2), the stationary law of
    dx = (x - x^3) dt + dW, by inverse CDF on a grid."""
    grid = np.linspace(-4, 4, 20001)
    logp = grid**2 - grid**4 / 2
    cdf = np.cumsum(np.exp(logp - logp.max()))
    cdf /= cdf[-1]
    u = np.asarray(jr.uniform(key, (n,)))
    return jnp.asarray(np.interp(u, cdf, grid))[:, None]


class _ScorePerturbed(eqx.Module):
    delta: jax.Array

    def __call__(self, t, x):
        return 2 * (x - x**3) + self.delta * jnp.tanh(x - 0.5)


def test_ssm_non_gaussian_process_exact_score_is_optimal():
    """For the double-well SDE started at its stationary law, p_t is stationary and
    its score 2(x - x^3) is known: SSM on simulated paths is minimised there, and
    SSM(s) - SSM(s*) = E|s - s*|^2 / 2."""
    p = sf.SDE(-(sf.x**3) + sf.x, 1.0)
    x0 = _double_well_stationary(jr.key(11), 4096)
    loss = sf.ssm_loss(p, num_steps=32, check_scale=False)
    key = jr.key(12)

    def per(d):
        return loss.per_example(_ScorePerturbed(d), x0, key)

    g = jax.jit(jax.jacfwd(per))(jnp.asarray(0.0))
    mean, se = float(jnp.mean(g)), float(jnp.std(g) / np.sqrt(g.size))
    assert abs(mean) < 4 * se, (mean, se)
    per_j = jax.jit(per)
    l0, l1 = (
        float(jnp.mean(per_j(jnp.asarray(0.0)))),
        float(jnp.mean(per_j(jnp.asarray(0.8)))),
    )
    # the quadratic term, from the simulated x_t of the same key
    k_t, k_path, _, _ = jr.split(key, 4)
    t, _ = sf.UniformTime().sample(k_t, p, x0.shape[0])
    xt = jax.vmap(
        lambda x, t, k: sf.internal.simulate_forward(p, k, x, t, num_steps=32)
    )(x0, t, jr.split(k_path, x0.shape[0]))
    quad = 0.5 * float(jnp.mean((0.8 * jnp.tanh(xt - 0.5)) ** 2))
    d = jax.jacfwd(per)(jnp.asarray(0.0))  # linear term (MC noise)
    np.testing.assert_allclose(
        l1 - l0, quad + 0.8 * float(jnp.mean(d)), rtol=1e-6, atol=1e-9
    )
    assert abs(l1 - l0 - quad) < 0.8 * 4 * se + 1e-9
    # stationarity of the simulated marginal (checks the simulation itself)
    np.testing.assert_allclose(jnp.var(xt), jnp.var(x0), rtol=0.08)


def test_ssm_ou_matches_dsm_minimiser():
    """Ornstein-Uhlenbeck dx = -x dt + sqrt(2) dW from N(0, 1) is stationary with
    score -x; SSM's gradient there is ~0 and a perturbation raises the loss."""
    p = sf.SDE(-sf.x, sf.sympy.sqrt(2))
    x0 = jr.normal(jr.key(13), (4096, 2))

    def per(d):
        model = lambda t, x: -x + d * jnp.sin(x)  # noqa: E731
        return sf.ssm_loss(p, num_steps=16, check_scale=False).per_example(
            model, x0, jr.key(14)
        )

    g = jax.jit(jax.jacfwd(per))(jnp.asarray(0.0))
    assert abs(float(jnp.mean(g))) < 4 * float(jnp.std(g)) / np.sqrt(g.size)
    assert float(jnp.mean(per(0.5))) > float(jnp.mean(per(0.0)))


def test_loss_derives_the_inverse_before_jit(monkeypatch):
    """A loss whose time sampler maps log-SNR to time (`sf.LogNormalSigma`) calls
    `t_from_log_snr` inside the jitted training step; building the loss derives
    the closed-form inverse first (`process.prepare_inverse`), so the step never
    falls back to bisection because nothing eager ran before it."""
    from scoreflow._process import _declared, _log_snr

    def no_bisection(*args):
        raise AssertionError("bisection inside jit")

    monkeypatch.setattr(_log_snr, "_INVERSES", {})
    monkeypatch.setattr(_declared, "_bisect_jit", no_bisection)
    p = sf.VP()
    loss = sf.dsm_loss(p, time_sampler=sf.LogNormalSigma(), check_scale=False)
    net = lambda t, x: x * t  # noqa: E731
    x0 = jnp.ones((8, 2))
    value = eqx.filter_jit(lambda l, k: l(net, x0, k))(loss, jr.key(0))
    assert np.isfinite(float(value))
