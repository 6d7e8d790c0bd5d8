"""The continuous-time ELBO and learned (trainable, monotone) schedules."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import scoreflow as sf


@pytest.fixture(scope="module")
def sched():
    return sf.learned_schedule(log_snr_max=8.0, log_snr_min=-6.0)


def _with(p, **values):
    params = dict(p.params)
    params.update({k: jnp.asarray(v, params[k].dtype) for k, v in values.items()})
    return eqx.tree_at(lambda q: q.params, p, params)


def test_end_points_are_parameters(sched):
    assert float(sched.log_snr(0.0)) == pytest.approx(8.0, rel=1e-9)
    assert float(sched.log_snr(1.0)) == pytest.approx(-6.0, rel=1e-9)
    assert set(sched.params) == {"log_snr_max", "log_range", "w1", "w2", "w3"}
    # variance preserving: alpha^2 + sigma^2 = 1
    ts = jnp.linspace(0.0, 1.0, 11)
    a, s = jax.vmap(sched.alpha)(ts), jax.vmap(sched.sigma)(ts)
    np.testing.assert_allclose(a**2 + s**2, 1.0, rtol=1e-12)


@settings(max_examples=8, deadline=None)
@given(
    lmax=st.floats(-2.0, 15.0),
    rho=st.floats(-3.0, 3.5),
    w=st.lists(st.floats(-6.0, 6.0), min_size=3, max_size=3),
)
def test_any_parameters_give_a_valid_schedule(sched, lmax, rho, w):
    """Monotone for every parameter value: lambda' < 0 and g^2 > 0, finite in float32,
    and lambda(1) = lambda_max - exp(rho)."""
    p = _with(sched, log_snr_max=lmax, log_range=rho, w1=w[0], w2=w[1], w3=w[2])
    ts = jnp.linspace(0.0, 1.0, 101)
    slope = jax.vmap(lambda t: jax.jvp(p.log_snr, (t,), (jnp.ones_like(t),))[1])(ts)
    assert bool(jnp.all(slope < 0))
    assert float(p.log_snr(1.0)) == pytest.approx(lmax - math.exp(rho), abs=1e-9)
    p32 = jax.tree_util.tree_map(
        lambda v: v.astype(jnp.float32) if eqx.is_inexact_array(v) else v, p
    )
    ts32 = ts.astype(jnp.float32)
    for fn in (p32.alpha, p32.sigma, p32.g2, p32.f, p32.log_snr):
        assert bool(jnp.all(jnp.isfinite(jax.vmap(fn)(ts32))))
    assert bool(jnp.all(jax.vmap(p32.g2)(ts32) >= 0))


def test_bad_declarations():
    with pytest.raises(ValueError, match="log_snr_max must exceed"):
        sf.learned_schedule(log_snr_max=-1.0, log_snr_min=2.0)
    with pytest.raises(ValueError, match="num_basis"):
        sf.learned_schedule(num_basis=0)
    net = sf.nets.MLP(2, key=jr.key(0))
    with pytest.raises(ValueError, match="no trainable"):
        sf.ScheduledModel(net, sf.Interpolant(1 - sf.t, sf.t))
    with pytest.raises(ValueError, match="not parameters"):
        sf.ScheduledModel(net, sf.learned_schedule(num_basis=1), frozen=("beta",))


def _gaussian_bound(lmax, lmin, mu, s, d):
    """VDM's bound for data N(mu, s^2 I) and the exact eps predictor, by hand:
    E||eps - eps*||^2 = D SNR s^2 / (1 + SNR s^2), integrated over lambda."""
    recon = d / 2 * (math.log(2 * math.pi) + 1 - lmax)
    prior = 0.5 * math.exp(lmin) * (float(mu @ mu) + d * s**2)
    diff = (
        d / 2 * (math.log1p(s**2 * math.exp(lmax)) - math.log1p(s**2 * math.exp(lmin)))
    )
    return recon + prior + diff, diff


@pytest.mark.parametrize("process", ["learned", "vp"])
def test_elbo_of_gaussian_data_matches_closed_form(sched, process):
    """The Monte Carlo bound with the exact predictor equals the closed form (within
    4 standard errors), and approaches the entropy as the end points widen."""
    p = sched if process == "learned" else sf.VP()
    d, s, mu = 2, 0.5, jnp.array([0.3, -0.2])
    gm = sf.toy.GaussianMixture(jnp.ones(1), mu[None], (s**2 * jnp.eye(d))[None])
    pred = sf.Predictor(gm.eps(p), p, prediction="eps")
    n = 2000
    xs = gm.sample(jr.key(0), n)
    res = eqx.filter_jit(jax.vmap(lambda k, x: sf.elbo(k, p, pred, x, num_times=16)))(
        jr.split(jr.key(1), n), xs
    )
    lmax, lmin = float(p.log_snr(p.t0)), float(p.log_snr(p.t1))
    closed, closed_diff = _gaussian_bound(lmax, lmin, mu, s, d)
    # the diffusion term alone has less spread than the total
    se = float(jnp.std(res.diffusion)) / math.sqrt(n)
    assert abs(float(jnp.mean(res.diffusion)) - closed_diff) < 4 * se
    se_tot = float(jnp.std(res.total)) / math.sqrt(n)
    assert abs(float(jnp.mean(res.total)) - closed) < 4 * se_tot
    entropy = d / 2 * math.log(2 * math.pi * math.e * s**2)
    assert closed >= entropy  # a bound
    assert closed - entropy < 0.05  # tight for these end points
    assert bool(jnp.all(res.bits_per_dim == res.total / (d * math.log(2))))


def test_loss_is_the_bound_per_dimension(sched):
    """`elbo_loss` estimates the same bound as `sf.elbo` (per dimension), and its
    gradient reaches the schedule's parameters through ScheduledModel."""
    d, s = 2, 0.7
    gm = sf.toy.GaussianMixture(
        jnp.ones(1), jnp.zeros((1, d)), (s**2 * jnp.eye(d))[None]
    )

    class Exact(eqx.Module):
        process: sf.AbstractProcess

        def __call__(self, t, x):
            return gm.eps(self.process)(t, x)

    loss = sf.elbo_loss(sched, check_scale=False)
    xs = gm.sample(jr.key(2), 4096)
    val = float(loss(Exact(sched), xs, jr.key(3)))
    closed, _ = _gaussian_bound(8.0, -6.0, jnp.zeros(d), s, d)
    per = loss.per_example(Exact(sched), xs, jr.key(3))
    assert abs(val - closed / d) < 4 * float(jnp.std(per)) / math.sqrt(xs.shape[0])

    joint = sf.ScheduledModel(sf.nets.MLP(d, key=jr.key(4)), sched)
    grads = eqx.filter_grad(loss)(joint, xs[:256], jr.key(5))
    g = grads.params
    assert all(bool(jnp.isfinite(v)) for v in g.values())
    assert float(jnp.abs(g["log_snr_max"])) > 0 and float(jnp.abs(g["log_range"])) > 0
    frozen = sf.ScheduledModel(joint.model, sched, frozen=("log_snr_max",))
    g2 = eqx.filter_grad(loss)(frozen, xs[:256], jr.key(5)).params
    assert float(g2["log_snr_max"]) == 0.0 and float(jnp.abs(g2["log_range"])) > 0


def test_end_point_gradient_has_the_right_sign():
    """With the exact model of N(0, s^2) data the bound decreases as the end points
    widen (d/d lambda_max < 0 and d/d lambda_min > 0, in closed form), and the
    autodiff gradient of the Monte Carlo bound agrees in sign and size."""
    d, s = 2, 0.5
    gm = sf.toy.GaussianMixture(
        jnp.ones(1), jnp.zeros((1, d)), (s**2 * jnp.eye(d))[None]
    )
    p = sf.learned_schedule(log_snr_max=4.0, log_snr_min=-3.0, num_basis=1)

    def bound(p):
        pred = sf.Predictor(gm.eps(p), p, prediction="eps")
        xs = gm.sample(jr.key(0), 1000)
        r = jax.vmap(lambda k, x: sf.elbo(k, p, pred, x, num_times=32))(
            jr.split(jr.key(1), 1000), xs
        )
        return jnp.mean(r.total)

    g = eqx.filter_grad(bound)(p).params
    # closed form: d/d lmax [ -d/2 lmax + d/2 log(1 + s^2 e^lmax) ] = -d/2 / (1 + s^2 e^lmax)
    lmax, lmin = 4.0, -3.0
    want_max = -d / 2 / (1 + s**2 * math.exp(lmax))
    # lmin = lmax - e^rho: d/d rho = d/d lmin * (-e^rho)
    dlmin = 0.5 * math.exp(lmin) * d * s**2 - d / 2 * s**2 * math.exp(lmin) / (
        1 + s**2 * math.exp(lmin)
    )
    want_rho = dlmin * -(lmax - lmin)
    # total derivative wrt lmax also moves lmin (= lmax - e^rho) by the same amount
    want_lmax = want_max + dlmin
    assert float(g["log_snr_max"]) == pytest.approx(want_lmax, rel=0.15, abs=0.01)
    assert float(g["log_range"]) == pytest.approx(want_rho, rel=0.15, abs=0.01)


@pytest.mark.slow
def test_learned_schedule_improves_the_bound_on_the_ring():
    """Same network, same keys, 3000 steps, from a narrow start (log-SNR in [-2, 6]):
    learning the schedule lowers the held-out bound by more than 3 paired standard
    errors."""
    ring = sf.toy.ring_mixture()
    data, scaler = sf.standardize(ring.sample(jr.key(0), 20_000))
    test = scaler(ring.sample(jr.key(1), 2000))
    sched = sf.learned_schedule(log_snr_max=6.0, log_snr_min=-2.0)
    loss = sf.elbo_loss(sched)
    totals = {}
    for name in ("fixed", "learned"):
        net = sf.nets.MLP(2, key=jr.key(2))
        model = net if name == "fixed" else sf.ScheduledModel(net, sched)
        fit = sf.train.fit(
            loss,
            model,
            data,
            key=jr.key(3),
            steps=3000,
            batch_size=512,
            learning_rate=2e-3,
            ema_decay=0.995,
            progress=False,
        )
        m = fit.ema
        net, proc = (m, sched) if name == "fixed" else (m.model, m.process)
        pred = sf.Predictor(net, proc, prediction="eps")
        res = eqx.filter_jit(
            jax.vmap(lambda k, x: sf.elbo(k, proc, pred, x, num_times=64))
        )(jr.split(jr.key(4), test.shape[0]), test)
        totals[name] = res.total
    diff = totals["fixed"] - totals["learned"]
    gain, se = float(jnp.mean(diff)), float(jnp.std(diff)) / math.sqrt(diff.shape[0])
    print(f"bound gain {gain:.4f} +- {se:.4f} nats/example")
    assert gain > 3 * se


def test_variance_gradient_for_the_shape_parameters():
    """`ScheduledModel(variance=...)`: same loss value, same gradients for the network
    and the end points, and for the shape weights the gradient of the mean squared
    diffusion term (VDM sec. 5.2), checked against autodiff of that square."""
    # unequal weights (at equal ones the w1 direction is flat: t + (2t - t^2) + t^2 = 3t)
    sched = _with(
        sf.learned_schedule(log_snr_max=8.0, log_snr_min=-6.0), w1=0.3, w2=-0.2, w3=0.1
    )
    shape = ("w1", "w2", "w3")
    net = sf.nets.MLP(2, key=jr.key(0))
    xs = jr.normal(jr.key(1), (64, 2))
    loss = sf.elbo_loss(sched, check_scale=False)
    plain = sf.ScheduledModel(net, sched)
    var = sf.ScheduledModel(net, sched, variance=shape)
    v0, g0 = eqx.filter_value_and_grad(loss)(plain, xs, jr.key(2))
    v1, g1 = eqx.filter_value_and_grad(loss)(var, xs, jr.key(2))
    assert float(v1) == pytest.approx(float(v0), rel=1e-12)
    for a, b in zip(
        jax.tree_util.tree_leaves(eqx.filter(g0.model, eqx.is_array)),
        jax.tree_util.tree_leaves(eqx.filter(g1.model, eqx.is_array)),
    ):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)
    for k in ("log_snr_max", "log_range"):
        assert float(g1.params[k]) == pytest.approx(float(g0.params[k]), rel=1e-10)

    d = xs.shape[1]
    lam0, lam1 = float(sched.log_snr(0.0)), float(sched.log_snr(1.0))
    ends = (
        d / 2 * (math.log(2 * math.pi) + 1 - lam0)
        + 0.5 * math.exp(lam1) * jnp.sum(xs**2, axis=1)
    ) / d

    def mean_square(m):  # the diffusion term per dimension, squared, batch mean
        return jnp.mean((loss.per_example(m, xs, jr.key(2)) - ends) ** 2)

    want = eqx.filter_grad(mean_square)(plain).params
    for k in shape:
        assert float(g1.params[k]) == pytest.approx(float(want[k]), rel=1e-8, abs=1e-14)
        assert float(g1.params[k]) != pytest.approx(float(g0.params[k]), rel=1e-3)
    with pytest.raises(ValueError, match="both frozen"):
        sf.ScheduledModel(net, sched, frozen=("w1",), variance=("w1",))
