"""Classifier-free and classifier guidance on a 3-class 2-D mixture, where the
conditional and unconditional fields are exact."""

import functools

import diffrax
import helpers
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import scoreflow as sf
from scoreflow import toy

MEANS = jnp.array([[-3.0, 0.0], [3.0, 0.5], [0.0, 3.0]])
W = jnp.array([0.5, 0.3, 0.2])
COV = jnp.array([[0.3, 0.1], [0.1, 0.2]])
NULL = 3


@functools.cache
def mixtures():
    full = toy.GaussianMixture(W, MEANS, jnp.stack([COV] * 3))
    parts = [
        toy.GaussianMixture(jnp.ones(1), MEANS[i : i + 1], COV[None]) for i in range(3)
    ]
    return full, parts


def make_model(p, prediction, counter=None):
    """Exact conditional model: label 0..2 -> that class; NULL -> the full mixture."""
    full, parts = mixtures()
    fields = [getattr(g, prediction if prediction != "v" else "eps")(p) for g in parts]
    fields.append(getattr(full, prediction if prediction != "v" else "eps")(p))

    def model(t, x, c):
        if counter is not None:
            jax.debug.callback(lambda: counter.append(1))
        outs = jnp.stack([f(t, x) for f in fields])
        out = outs[c]
        if prediction == "v":  # build v from eps: v = alpha eps - sigma x0
            eps = out
            x0 = (x - p.sigma(t) * eps) / p.alpha(t)
            out = p.alpha(t) * eps - p.sigma(t) * x0
        return out

    return model


@pytest.mark.parametrize("prediction", ["eps", "score", "x0", "velocity", "v"])
def test_cfg_identity_any_prediction(prediction):
    """guided = uncond + s (cond - uncond) in score space (the lecture notes' form),
    whatever the network predicts; weight=w is scale=1+w; s = 1 is the conditional
    field; cond=None is model(t, x, null_cond)."""
    p = helpers.builtin("VP")
    full, parts = mixtures()
    pred = sf.Predictor(
        make_model(p, prediction), p, prediction=prediction, null_cond=jnp.asarray(NULL)
    )
    t, x = jnp.asarray(0.3), jnp.array([0.4, 1.1])
    for y in (0, 2):
        s_c = parts[y].score(p)(t, x)
        s_u = full.score(p)(t, x)
        for scale in (1.0, 2.5):
            g = sf.cfg(pred, scale)
            want = s_u + scale * (s_c - s_u)
            np.testing.assert_allclose(g.score(t, x, jnp.asarray(y)), want, rtol=1e-8)
            np.testing.assert_allclose(
                g.eps(t, x, jnp.asarray(y)), -p.sigma(t) * want, rtol=1e-8
            )
            gw = sf.cfg(pred, weight=scale - 1.0)
            np.testing.assert_allclose(gw.score(t, x, jnp.asarray(y)), want, rtol=1e-8)
    np.testing.assert_allclose(
        sf.cfg(pred, 4.0).score(t, x, None), full.score(p)(t, x), rtol=1e-8
    )


def test_cfg_no_unconditional_pass_when_off_and_two_when_on():
    p = helpers.builtin("VP")
    counter = []
    pred = sf.Predictor(
        make_model(p, "eps", counter), p, prediction="eps", null_cond=jnp.asarray(NULL)
    )
    labels = jnp.array([0, 2])
    for scale, per_eval in ((1.0, 1), (3.0, 2)):
        counter.clear()
        xs, info = sf.sample(
            jr.key(0),
            p,
            sf.cfg(pred, scale),
            (2,),
            num=2,
            steps=3,
            solver=diffrax.Heun(),
            cond=labels,
            return_info=True,
        )
        jax.block_until_ready(xs)
        jax.effects_barrier()
        assert np.all(info["nfe"] == 6 * per_eval)
        # The callback runs once per (vmapped, batched) network call.
        assert len(counter) == 6 * per_eval


def test_cfg_argument_errors():
    p = helpers.builtin("VP")
    pred = sf.Predictor(make_model(p, "eps"), p, null_cond=jnp.asarray(NULL))
    with pytest.raises(ValueError, match="exactly one"):
        sf.cfg(pred)
    with pytest.raises(ValueError, match="exactly one"):
        sf.cfg(pred, 2.0, weight=1.0)


def test_classifier_guidance_with_exact_classifier_gives_conditional_score():
    p = helpers.builtin("VP")
    full, parts = mixtures()
    pred = sf.Predictor(lambda t, x: full.eps(p)(t, x), p, prediction="eps")

    def log_prob(t, x, y):  # exact log p_t(y | x)
        comps = jnp.stack([parts[k].marginal(p, t).log_prob(x) for k in range(3)])
        return comps[y] + jnp.log(W[y]) - full.marginal(p, t).log_prob(x)

    guided = sf.classifier_guidance(pred, log_prob, scale=1.0)
    t, x = jnp.asarray(0.2), jnp.array([1.0, 0.3])
    score_x0 = jax.jit(lambda y: (guided.score(t, x, y), guided.x0(t, x, y)))
    for y in range(3):
        score, x0 = score_x0(jnp.asarray(y))
        np.testing.assert_allclose(score, parts[y].score(p)(t, x), rtol=1e-7)
        np.testing.assert_allclose(x0, parts[y].x0(p)(t, x), rtol=1e-7)


def test_conditional_sampling_with_cfg_scale_one_hits_each_class():
    p = helpers.builtin("VP")
    pred = sf.Predictor(make_model(p, "eps"), p, null_cond=jnp.asarray(NULL))
    labels = jnp.repeat(jnp.arange(3), 200)
    xs = sf.sample(
        jr.key(1),
        p,
        sf.cfg(pred, 1.0),
        (2,),
        num=600,
        steps=30,
        cond=labels,
        solver=sf.DPMSolverPP2M(),
    )
    for y in range(3):
        mean = xs[labels == y].mean(0)
        assert float(jnp.linalg.norm(mean - MEANS[y])) < 0.15
