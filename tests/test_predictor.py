"""`sf.Predictor` and `sf.convert`: every conversion against hand-derived oracles
(float64, all pairs, all built-in processes); finiteness in float32 on [t0, t1];
EDM preconditioning against Karras et al. (2022), Table 1."""

import itertools

import helpers
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import scoreflow as sf

PAIRS = list(itertools.product(sf.internal.PREDICTIONS, sf.internal.PREDICTIONS))


def _oracle(p, t, x0, eps):
    """Every prediction of the pair (x0, eps), by the textbook formulas."""
    a, s = p.alpha(t), p.sigma(t)
    da, ds = p.alpha_dot(t), p.sigma_dot(t)
    return {
        "eps": eps,
        "x0": x0,
        "score": -eps / s,
        "velocity": da * x0 + ds * eps,
        "v": a * eps - s * x0,
    }


# Every scalar-rung process of the registry.
SCALAR = helpers.process_params(sf.AbstractScalarProcess)


def _times(p, n=7):
    return np.linspace(p.t0, p.t1, n)


@pytest.mark.parametrize("name", SCALAR)
def test_convert_all_pairs_float64(name, getkey):
    p = helpers.process(name)
    ts = jnp.asarray(_times(p, 9))
    x0 = jr.normal(getkey(), (ts.size, 3))
    eps = jr.normal(getkey(), (ts.size, 3))

    @jax.jit
    @jax.vmap
    def check(t, x0, eps):
        x = p.alpha(t) * x0 + p.sigma(t) * eps
        want = _oracle(p, t, x0, eps)
        got = [sf.convert(p, t, x, want[s], source=s, target=g) for s, g in PAIRS]
        return jnp.stack(got), jnp.stack([want[g] for _, g in PAIRS])

    got, want = check(ts, x0, eps)
    scale = jnp.max(jnp.abs(want), axis=-1, keepdims=True)
    err = np.asarray(jnp.max(jnp.abs(got - want) / scale, axis=(0, 2)))
    assert err.max() < 1e-9, {PAIRS[i]: err[i] for i in np.nonzero(err >= 1e-9)[0]}


@pytest.mark.parametrize("name", SCALAR)
def test_predictor_methods_float64(name, getkey):
    p = helpers.process(name)
    t = 0.5 * (p.t0 + p.t1)
    x0 = jr.normal(getkey(), (4,))
    eps = jr.normal(getkey(), (4,))
    x = p.alpha(t) * x0 + p.sigma(t) * eps
    want = _oracle(p, t, x0, eps)
    for src in sf.internal.PREDICTIONS:
        pred = sf.Predictor(lambda tt, xx, src=src: want[src], p, prediction=src)
        for tgt in sf.internal.PREDICTIONS:
            np.testing.assert_allclose(
                getattr(pred, tgt)(t, x), want[tgt], rtol=1e-9, atol=1e-9
            )
            np.testing.assert_allclose(
                pred.as_prediction(tgt)(t, x), want[tgt], rtol=1e-9, atol=1e-9
            )
        hx0, heps = pred.hub(t, x)
        np.testing.assert_allclose(hx0, x0, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(heps, eps, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", SCALAR)
def test_conversions_finite_float32(name):
    """A unit-scale network output converted to every type stays finite in float32
    over the whole of [t0, t1] (endpoints included)."""
    p = helpers.to_float32(helpers.process(name))
    ts = jnp.linspace(p.t0, p.t1, 65, dtype=jnp.float32)
    ts = jnp.concatenate([ts, jnp.asarray([p.t0, p.t1], jnp.float32)])
    key = jr.key(0)
    x = jr.normal(key, (8,), jnp.float32) * p.sigma(p.t1).astype(jnp.float32)
    out = jr.normal(jr.split(key)[0], (8,), jnp.float32)

    @jax.jit
    def all_pairs(t):
        return jnp.stack(
            [sf.convert(p, t, x, out, source=s, target=g) for s, g in PAIRS]
        )

    res = jax.vmap(all_pairs)(ts)
    assert res.dtype == jnp.float32
    bad = ~jnp.isfinite(res)
    where = np.unique(np.nonzero(np.asarray(bad))[1])
    assert not bool(bad.any()), [PAIRS[i] for i in where]


def test_unknown_prediction_message():
    with pytest.raises(ValueError, match="unknown prediction type 'noise'"):
        sf.Predictor(lambda t, x: x, helpers.builtin("EDM"), prediction="noise")


def test_predictor_cond_and_null_cond():
    p = helpers.builtin("RectifiedFlow")

    def model(t, x, c=None):
        return x * 0 + (-1.0 if c is None else c)

    pred = sf.Predictor(model, p, prediction="eps", null_cond=7.0)
    assert float(pred.eps(0.3, jnp.zeros(2))[0]) == 7.0
    assert float(pred.eps(0.3, jnp.zeros(2), 2.0)[0]) == 2.0
    assert float(sf.Predictor(model, p).eps(0.3, jnp.zeros(2))[0]) == -1.0


# --------------------------------------------------------------------------- #
# EDM preconditioning
# --------------------------------------------------------------------------- #


def test_edm_coefficients_table1():
    """For sf.EDM (alpha = 1, sigma = sigma_max t) the coefficients are Table 1's."""
    p = helpers.builtin("EDM")
    sd = p.sigma_data
    for t in _times(p):
        s = float(p.sigma(t))
        c_skip, c_out, c_in, c_noise = sf.internal.edm_coefficients(p, t)
        np.testing.assert_allclose(c_skip, sd**2 / (s**2 + sd**2), rtol=1e-12)
        np.testing.assert_allclose(c_out, s * sd / np.sqrt(s**2 + sd**2), rtol=1e-12)
        np.testing.assert_allclose(c_in, 1 / np.sqrt(s**2 + sd**2), rtol=1e-12)
        np.testing.assert_allclose(c_noise, np.log(s) / 4, rtol=1e-12)


@pytest.mark.parametrize("name", ["VP", "RectifiedFlow", "EDM"])
def test_edm_preconditioner_generalised(name, getkey):
    """D(t, x) = c_skip x/alpha + c_out F(c_noise, c_in x/alpha) with
    sigma_e = sigma/alpha, for any process; and its stable forms agree with
    `edm_coefficients`."""
    p = helpers.builtin(name)
    w = jr.normal(getkey(), (3,))

    def net(c_noise, x_in):
        return jnp.tanh(x_in) * w + c_noise

    D = sf.EDMPreconditioner(net, p)
    for t in _times(p, 5):
        x = jr.normal(getkey(), (3,)) * 2.0
        a = p.alpha(t)
        c_skip, c_out, c_in, c_noise = sf.internal.edm_coefficients(p, t)
        want = c_skip * x / a + c_out * net(c_noise, c_in * x / a)
        np.testing.assert_allclose(D(t, x), want, rtol=1e-10, atol=1e-10)
    # as a Predictor option
    pred = sf.Predictor(net, p, prediction="x0", precondition="edm")
    t = 0.5 * (p.t0 + p.t1)
    x = jnp.ones(3)
    np.testing.assert_allclose(pred.x0(t, x), D(t, x), rtol=1e-12)
    with pytest.raises(ValueError, match="must be 'x0'"):
        sf.Predictor(net, p, prediction="eps", precondition="edm")


def test_edm_preconditioner_finite_float32():
    for name in helpers.process_names(sf.AbstractScalarProcess):
        p = helpers.to_float32(helpers.process(name))
        D = sf.EDMPreconditioner(lambda c, x: x + c, p)
        ts = jnp.linspace(p.t0, p.t1, 33, dtype=jnp.float32)
        x = jnp.full((4,), 3.0, jnp.float32)
        out = jax.vmap(lambda t: D(t, x))(ts)
        assert bool(jnp.isfinite(out).all()), name
