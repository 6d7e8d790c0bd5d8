"""Tests for `sf.log_likelihood` and `sf.bits_per_dim`.

Oracles: the exact Gaussian-mixture marginal log-density (`gm.marginal(p, t0)`), the
closed-form trace and Hutchinson variance of a linear map, Monte Carlo means with
their standard errors, finite differences, and autodiff of the exact density.
"""

import math

import diffrax
import equinox as eqx
import helpers
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from helpers import builtin, to_float32

import scoreflow as sf
from scoreflow import toy
from scoreflow._likelihood import _velocity_fn, divergence, draw_probes

TIGHT = dict(rtol=1e-10, atol=1e-10)


def _mixture(d, seed=0, K=2, mean_scale=1.0):
    rng = np.random.default_rng(seed)
    w = rng.uniform(0.5, 1.5, K)
    m = mean_scale * rng.normal(size=(K, d))
    a = rng.normal(size=(K, d, d))
    c = a @ np.swapaxes(a, -1, -2) / d * 0.3 + 0.2 * np.eye(d)
    return toy.GaussianMixture(jnp.asarray(w / w.sum()), jnp.asarray(m), jnp.asarray(c))


def _predictor(gm, p, prediction="eps"):
    field = getattr(gm, prediction)(p)
    return sf.Predictor(field, p, prediction=prediction)


@eqx.filter_jit
def _ll(key, p, pred, x, prior, **kw):
    return sf.log_likelihood(key, p, pred, x, prior_log_prob=prior, **kw)


# --------------------------------------------------------------------------- #
# The PF-ODE velocity used by the likelihood
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("name", helpers.process_params(sf.AbstractScalarProcess))
def test_pf_velocity_identity(name):
    """f x - g^2/2 score (the PF-ODE) == predictor.velocity == gm.velocity."""
    p = helpers.process(name)
    gm = _mixture(2)
    pred = _predictor(gm, p, "eps")
    score = gm.score(p)
    x = jnp.array([0.4, -1.1])
    for t in (p.t0, 0.6 * p.t1):
        t = jnp.asarray(t)
        pf = p.drift(t, x) - 0.5 * p.g2(t) * score(t, x)
        scale = 1 + jnp.max(jnp.abs(pf))
        np.testing.assert_allclose(pred.velocity(t, x), pf, atol=1e-9 * scale)
        np.testing.assert_allclose(gm.velocity(p)(t, x), pf, atol=1e-9 * scale)


# --------------------------------------------------------------------------- #
# Exact trace: agreement with the exact mixture density
# --------------------------------------------------------------------------- #


def _check_exact(p, d, prediction="eps", seed=0):
    gm = _mixture(d, seed)
    pred = _predictor(gm, p, prediction)
    x = gm.sample(jr.key(seed + 1), 1)[0]
    exact_t0 = gm.marginal(p, p.t0).log_prob(x)
    terminal = gm.marginal(p, p.t1).log_prob
    ll, info = _ll(None, p, pred, x, terminal, return_info=True, **TIGHT)
    assert info.result == diffrax.RESULTS.successful
    assert int(info.num_steps) > 0
    assert float(info.std_error) == 0.0
    err = abs(float(ll - exact_t0))
    # With the exact terminal density only the ODE solve is in the error.
    assert err < 1e-6, (p, d, err)
    # With the process's prior N(0, sigma(t1)^2 I) the error is the prior mismatch
    # at x1: exactly prior(x1) - terminal(x1).
    ll_prior = ll - terminal(info.x1) + p.prior_log_prob(info.x1)
    return err, float(ll_prior - exact_t0), float(exact_t0 - gm.log_prob(x))


@pytest.mark.parametrize("name", ["VP", "RectifiedFlow"])
def test_exact_likelihood_2d(name):
    err, prior_err, t0_gap = _check_exact(builtin(name), 2)
    # The log-density at t0 differs from the one at t = 0 by O(sigma(t0)^2).
    assert abs(t0_gap) < 1e-3


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    helpers.process_params(sf.AbstractScalarProcess, exclude=("VP", "RectifiedFlow")),
)
def test_exact_likelihood_2d_all(name):
    _check_exact(helpers.process(name), 2)


def test_exact_likelihood_10d():
    _check_exact(builtin("VP"), 10, seed=3)


def test_velocity_prediction_and_default_prior():
    """A velocity-predicting model gives the same value; with the default prior and
    centred unit-scale data the error to the exact density stays below 1e-3 nats."""
    p = builtin("VP")
    gm = _mixture(2, seed=5, mean_scale=0.3)
    x = jnp.array([0.2, -0.4])
    exact_t0 = gm.marginal(p, p.t0).log_prob(x)
    ll_v = _ll(None, p, _predictor(gm, p, "velocity"), x, None, **TIGHT)
    assert abs(float(ll_v - exact_t0)) < 1e-3
    # A plain velocity callable is accepted in place of a predictor.
    field = gm.velocity(p)
    assert _velocity_fn(field) is field


# --------------------------------------------------------------------------- #
# Divergence estimators on a linear map (closed-form trace and variance)
# --------------------------------------------------------------------------- #


def _linear(d, seed=0):
    A = jnp.asarray(np.random.default_rng(seed).normal(size=(d, d)))
    return A, (lambda z: A @ z)


def test_divergence_exact_linear():
    A, fn = _linear(6)
    out, div = divergence(fn, jnp.ones(6), trace="exact")
    np.testing.assert_allclose(div, jnp.trace(A), rtol=1e-12)
    np.testing.assert_allclose(out, A @ jnp.ones(6))


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_mean_and_variance_linear(probe):
    """Single-probe estimates have mean tr(A) and the closed-form variance
    (Rademacher: sum_{i<j} (A_ij + A_ji)^2; Gaussian: 2 ||(A + A^T)/2||_F^2);
    averaging m probes divides the variance by m (not a sum of estimates)."""
    d, n = 6, 4000
    A, fn = _linear(d)
    S = (A + A.T) / 2
    off = S - jnp.diag(jnp.diag(S))
    var_exact = 2 * jnp.sum(off**2) if probe == "rademacher" else 2 * jnp.sum(S**2)
    x = jnp.zeros(d)

    def est(key, m):
        z = draw_probes(key, (d,), m, probe, x.dtype)
        return divergence(fn, x, trace="hutchinson", probes=z)[1]

    keys = jr.split(jr.key(0), n)
    e1 = jax.vmap(lambda k: est(k, 1))(keys)
    e4 = jax.vmap(lambda k: est(k, 4))(keys)
    se = jnp.std(e1) / math.sqrt(n)
    assert abs(float(jnp.mean(e1) - jnp.trace(A))) < 3 * se
    assert abs(float(jnp.mean(e4) - jnp.trace(A))) < 3 * se
    np.testing.assert_allclose(jnp.var(e1), var_exact, rtol=0.1)
    np.testing.assert_allclose(jnp.var(e4), var_exact / 4, rtol=0.1)


def test_hutchpp_unbiased_and_exact_at_full_rank():
    d = 6
    A, fn = _linear(d, seed=2)
    x = jnp.zeros(d)
    # 3 k probes with k >= d: Q spans R^d, so the estimate is exact.
    z = draw_probes(jr.key(1), (d,), 3 * d, "rademacher", x.dtype)
    np.testing.assert_allclose(
        divergence(fn, x, trace="hutch++", probes=z)[1], jnp.trace(A), rtol=1e-10
    )
    # k < d: unbiased (also for this non-symmetric A).
    n = 4000

    def est(key):
        z = draw_probes(key, (d,), 6, "rademacher", x.dtype)
        return divergence(fn, x, trace="hutch++", probes=z)[1]

    e = jax.vmap(est)(jr.split(jr.key(2), n))
    se = jnp.std(e) / math.sqrt(n)
    assert abs(float(jnp.mean(e) - jnp.trace(A))) < 3 * se


# --------------------------------------------------------------------------- #
# Stochastic traces inside the likelihood: unbiased, variance reported
# --------------------------------------------------------------------------- #

HUTCH_RESULTS = {}


@pytest.mark.parametrize(
    "trace,num_probes,probe",
    [
        ("hutchinson", 1, "rademacher"),
        pytest.param("hutchinson", 4, "rademacher", marks=pytest.mark.slow),
        pytest.param("hutchinson", 1, "gaussian", marks=pytest.mark.slow),
        pytest.param("hutch++", 3, "rademacher", marks=pytest.mark.slow),
    ],
)
def test_stochastic_trace_unbiased(trace, num_probes, probe):
    """Mean over keys within 3 standard errors of the exact-trace value (the same
    ODE up to the divergence); the probe variance is recorded and printed."""
    p = builtin("VP")
    d, n = 10, 48
    gm = _mixture(d, seed=3)
    pred = _predictor(gm, p, "eps")
    x = gm.sample(jr.key(4), 1)[0]
    terminal = gm.marginal(p, p.t1).log_prob
    tol = TIGHT
    exact = _ll(None, p, pred, x, terminal, **tol)
    keys = jr.split(jr.key(7), n)
    keys = keys.at[-1].set(keys[0])  # a repeated key must give the same value
    est = jax.vmap(
        lambda k: _ll(
            k,
            p,
            pred,
            x,
            terminal,
            trace=trace,
            num_probes=num_probes,
            probe=probe,
            **tol,
        )
    )(keys)
    est = np.asarray(est)
    # Probes are a function of the key only: the same key gives the same value.
    again = _ll(
        keys[0],
        p,
        pred,
        x,
        terminal,
        trace=trace,
        num_probes=num_probes,
        probe=probe,
        **tol,
    )
    np.testing.assert_allclose(again, est[0], rtol=1e-12)
    var = est.var(ddof=1)
    se = math.sqrt(var / n)
    HUTCH_RESULTS[(trace, num_probes, probe)] = var
    print(
        f"{trace} m={num_probes} {probe}: mean-exact={est.mean() - exact:.4f} "
        f"var={var:.4f} se={se:.4f}"
    )
    assert var > 0
    assert abs(est.mean() - float(exact)) < 3 * se
    if (trace, num_probes, probe) == ("hutchinson", 4, "rademacher") and (
        "hutchinson",
        1,
        "rademacher",
    ) in HUTCH_RESULTS:
        # 4 probes: variance about 1/4 (with 48 samples, allow a factor 2 slack).
        assert var < HUTCH_RESULTS[("hutchinson", 1, "rademacher")] / 2


def test_single_call_standard_error():
    """With m probes one call carries m divergence integrals; its reported
    standard error matches the spread of the estimate over keys (factor 2)."""
    p = builtin("VP")
    d, n, m = 4, 24, 8
    gm = _mixture(d, seed=6)
    pred = _predictor(gm, p)
    x = gm.sample(jr.key(8), 1)[0]
    terminal = gm.marginal(p, p.t1).log_prob
    exact = gm.marginal(p, p.t0).log_prob(x)
    ll, info = jax.vmap(
        lambda k: _ll(
            k,
            p,
            pred,
            x,
            terminal,
            trace="hutchinson",
            num_probes=m,
            return_info=True,
            rtol=1e-7,
            atol=1e-7,
        )
    )(jr.split(jr.key(9), n))
    se = np.asarray(info.std_error)
    assert np.all(np.isfinite(se)) and np.all(se > 0)
    spread = float(np.std(np.asarray(ll), ddof=1))
    assert 0.5 < float(np.sqrt(np.mean(se**2))) / spread < 2.0
    assert abs(float(np.mean(ll) - exact)) < 3 * spread / math.sqrt(n)


# --------------------------------------------------------------------------- #
# Gradients (likelihood training)
# --------------------------------------------------------------------------- #


class _MeanModel(eqx.Module):
    """Exact eps of a mixture whose means are shifted by a trainable `shift`."""

    shift: jax.Array
    base: toy.GaussianMixture = eqx.field(static=False)
    process: sf.AbstractProcess

    def mixture(self):
        return toy.GaussianMixture(
            self.base.weights, self.base.means + self.shift, self.base.covs
        )

    def __call__(self, t, x):
        return self.mixture().eps(self.process)(t, x)


def test_gradient_matches_exact_and_finite_differences():
    """jax.grad through the solve (RecursiveCheckpointAdjoint) w.r.t. a model
    parameter: finite, equal to the gradient of the exact density (the model and
    terminal density are exact), and to central finite differences."""
    p = builtin("VP")
    gm = _mixture(2, seed=2)
    x = jnp.array([0.3, -0.5])

    @eqx.filter_jit
    def loss(shift):
        model = _MeanModel(shift, gm, p)
        pred = sf.Predictor(model, p, prediction="eps")
        prior = model.mixture().marginal(p, p.t1).log_prob
        return sf.log_likelihood(None, p, pred, x, prior_log_prob=prior, **TIGHT)

    shift = jnp.array([0.2, -0.1])
    g = eqx.filter_jit(jax.grad(loss))(shift)
    assert jnp.all(jnp.isfinite(g))
    exact = jax.grad(
        lambda s: _MeanModel(s, gm, p).mixture().marginal(p, p.t0).log_prob(x)
    )(shift)
    np.testing.assert_allclose(g, exact, rtol=1e-5, atol=1e-7)
    h = 1e-5
    fd = [(loss(shift + e) - loss(shift - e)) / (2 * h) for e in h * jnp.eye(2)]
    np.testing.assert_allclose(g, jnp.stack(fd), rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------- #
# bits per dimension
# --------------------------------------------------------------------------- #


def _grid_mixture(num_bits, low, high, std):
    """A mixture with one narrow component at the centre of every cell (2-D)."""
    levels = 2**num_bits
    cell = (high - low) / levels
    centres = low + cell * (jnp.arange(levels, dtype=float) + 0.5)
    means = jnp.stack(jnp.meshgrid(centres, centres, indexing="ij"), -1).reshape(-1, 2)
    K = means.shape[0]
    covs = jnp.broadcast_to(std**2 * jnp.eye(2), (K, 2, 2))
    return toy.GaussianMixture(jnp.full((K,), 1 / K), means, covs)


def test_bits_per_dim_formula_and_dequantization_pitfall():
    """bpd = -(log p(y) + D log cell) / (D log 2), with y the dequantised point. For a
    model that puts narrow peaks on the grid, no dequantisation gives negative
    bits/dim (the pitfall); uniform dequantisation gives a positive number."""
    p = builtin("VP")
    num_bits, low, high = 2, -1.0, 1.0
    gm = _grid_mixture(num_bits, low, high, std=0.03)
    pred = _predictor(gm, p)
    exact_prior = gm.marginal(p, p.t1).log_prob
    x = jnp.array([1.0, 3.0])  # integer levels
    kw = dict(
        num_bits=num_bits,
        data_range=(low, high),
        prior_log_prob=exact_prior,
        rtol=1e-8,
        atol=1e-8,
        return_info=True,
    )
    bpd_none, ex_none = sf.bits_per_dim(
        jr.key(0), p, pred, x, dequantization="none", **kw
    )
    bpd_unif, ex_unif = sf.bits_per_dim(
        jr.key(0), p, pred, x, dequantization="uniform", **kw
    )
    cell = (high - low) / 2**num_bits
    np.testing.assert_allclose(ex_none["y"], low + cell * (x + 0.5))
    y = ex_unif["y"]
    assert jnp.all((y >= low + cell * x) & (y < low + cell * (x + 1)))
    for bpd, y in ((bpd_none, ex_none["y"]), (bpd_unif, y)):
        oracle = -(gm.marginal(p, p.t0).log_prob(y) + 2 * math.log(cell)) / (
            2 * math.log(2)
        )
        np.testing.assert_allclose(bpd, oracle, atol=1e-5)
    assert bpd_none < 0 < bpd_unif


def test_bits_per_dim_validation():
    p = builtin("VP")
    gm = _mixture(2)
    pred = _predictor(gm, p)
    with pytest.raises(ValueError, match="integer levels"):
        sf.bits_per_dim(jr.key(0), p, pred, jnp.array([0.5, 1.0]), num_bits=2)
    with pytest.raises(ValueError, match="integer levels"):
        sf.bits_per_dim(jr.key(0), p, pred, jnp.array([0.0, 4.0]), num_bits=2)
    with pytest.raises(ValueError, match="dequantization"):
        sf.bits_per_dim(jr.key(0), p, pred, jnp.zeros(2), dequantization="variational")


# --------------------------------------------------------------------------- #
# Errors and float32
# --------------------------------------------------------------------------- #


def test_errors():
    p = builtin("VP")
    gm = _mixture(2)
    pred = _predictor(gm, p)
    x = jnp.zeros(2)
    with pytest.raises(ValueError, match="probability-flow ODE only"):
        sf.log_likelihood(None, p, pred, x, method="sde")
    with pytest.raises(ValueError, match="SDE solver"):
        sf.log_likelihood(None, p, pred, x, solver=diffrax.ShARK())
    with pytest.raises(ValueError, match="SDE solver"):
        sf.log_likelihood(None, p, pred, x, solver=diffrax.EulerHeun())
    with pytest.raises(ValueError, match="trace"):
        sf.log_likelihood(None, p, pred, x, trace="skilling")
    with pytest.raises(ValueError, match="probe"):
        sf.log_likelihood(jr.key(0), p, pred, x, trace="hutchinson", probe="sphere")
    with pytest.raises(ValueError, match="multiple of 3"):
        sf.log_likelihood(jr.key(0), p, pred, x, trace="hutch++", num_probes=4)
    with pytest.raises(ValueError, match="PRNG key"):
        sf.log_likelihood(None, p, pred, x, trace="hutchinson")
    with pytest.raises(ValueError, match="num_probes"):
        sf.log_likelihood(jr.key(0), p, pred, x, trace="hutchinson", num_probes=0)
    with pytest.raises(TypeError, match="velocity"):
        sf.log_likelihood(None, p, 3.0, x)


@pytest.mark.slow
def test_float32_finite_and_close():
    p = builtin("VP")
    gm = _mixture(2)
    x = jnp.array([0.3, -0.2])
    ll64 = _ll(None, p, _predictor(gm, p), x, None, rtol=1e-8, atol=1e-8)
    p32, gm32 = to_float32(p), to_float32(gm)
    ll32, info = sf.log_likelihood(
        None, p32, _predictor(gm32, p32), x.astype(jnp.float32), return_info=True
    )
    assert ll32.dtype == jnp.float32
    assert jnp.isfinite(ll32)
    assert abs(float(ll32) - float(ll64)) < 1e-2
    assert int(info.num_vector_field_evals) >= 6 * int(info.num_steps) > 0
