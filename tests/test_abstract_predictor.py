"""`sf.AbstractPredictor`: the five views written once over the hub, the raw-output
shortcut of `sf.Predictor`, and `map_models` on every final predictor. Oracles: the
exact fields of a Gaussian mixture (`sf.toy`), and the network's own output."""

import equinox as eqx
import helpers
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import scoreflow as sf
from scoreflow import toy

PREDICTIONS = ("score", "eps", "x0", "velocity", "v")


def _mixture():
    return toy.GaussianMixture(
        jnp.array([0.3, 0.7]),
        jnp.array([[-1.0, 0.5], [2.0, -0.5]]),
        jnp.stack([jnp.eye(2) * 0.4, jnp.array([[0.5, 0.1], [0.1, 0.3]])]),
    )


class _ExactHub(sf.AbstractPredictor):
    """A predictor that only defines the hub: the exact (x0, eps) of a mixture."""

    process: sf.AbstractProcess
    mixture: toy.GaussianMixture

    def hub(self, t, x, cond=None):
        return self.mixture.x0(self.process)(t, x), self.mixture.eps(self.process)(t, x)

    def map_models(self, fn):
        return self


def test_abstract_predictor_is_abstract():
    with pytest.raises(TypeError):
        sf.AbstractPredictor()  # pyright: ignore


@pytest.mark.parametrize("name", ["VP", "VE", "RectifiedFlow"])
def test_views_of_a_hub_only_subclass_are_exact(name):
    """A subclass that defines only `hub` gets all five views, equal to the exact
    fields: score and eps from the mixture, velocity and v by their textbook forms."""
    p = helpers.builtin(name)
    gm = _mixture()
    pred = _ExactHub(p, gm)
    t, x = jnp.asarray(0.37), jnp.array([0.4, -1.3])
    a, s, da, ds = p.alpha(t), p.sigma(t), p.alpha_dot(t), p.sigma_dot(t)
    x0, eps = gm.x0(p)(t, x), gm.eps(p)(t, x)
    want = {
        "score": gm.score(p)(t, x),
        "eps": eps,
        "x0": x0,
        "velocity": da * x0 + ds * eps,
        "v": a * eps - s * x0,
    }
    for target in PREDICTIONS:
        got = pred.as_prediction(target)(t, x)
        np.testing.assert_allclose(got, want[target], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_predictor_own_view_is_the_raw_output_bit_for_bit(prediction):
    """Asking `sf.Predictor` for its own prediction type returns the network output
    itself (no round trip through the hub); the other views go through the hub."""
    p = helpers.builtin("VP")
    gm = _mixture()
    field = getattr(gm, prediction if prediction != "v" else "eps")(p)
    pred = sf.Predictor(field, p, prediction=prediction)
    t, x = jnp.asarray(0.52), jnp.array([0.1, 0.9])
    out = field(t, x)
    assert np.array_equal(pred.as_prediction(prediction)(t, x), out)
    x0, eps = pred.hub(t, x)
    for target in PREDICTIONS:
        if target != prediction:
            want = sf.convert(p, t, x, out, source=prediction, target=target)
            assert np.array_equal(pred.as_prediction(target)(t, x), want)
    np.testing.assert_allclose(p.alpha(t) * x0 + p.sigma(t) * eps, x, rtol=1e-12)


class _Counted(eqx.Module):
    fn: object
    tag: str = eqx.field(static=True)

    def __call__(self, *args):
        _CALLS.append(self.tag)
        return self.fn(*args)


_CALLS: list = []


def test_map_models_predictor_cfg_and_classifier():
    """`map_models(fn)` replaces every wrapped network by `fn(network)`: the model of
    `sf.Predictor`, the inner model of `sf.cfg` (both branches), and the model and
    the classifier of `sf.classifier_guidance`; the values are unchanged."""
    p = helpers.builtin("VP")
    gm = _mixture()
    t, x, y = jnp.asarray(0.3), jnp.array([0.2, -0.4]), jnp.asarray(1)

    def model(t, x, c=None):
        return gm.eps(p)(t, x) * (1.0 if c is None else 1.0 + 0.1 * c)

    def log_prob(t, x, c):
        return -0.5 * jnp.sum((x - c) ** 2)

    pred = sf.Predictor(model, p, null_cond=jnp.asarray(0))
    guided = {
        "predictor": pred,
        "cfg": sf.cfg(pred, 2.5),
        "classifier": sf.classifier_guidance(pred, log_prob, 2.0),
    }
    expected_calls = {
        "predictor": ["model"],
        "cfg": ["model", "model"],
        "classifier": ["model", "classifier"],
    }
    for name, g in guided.items():
        mapped = g.map_models(
            lambda m: _Counted(m, "classifier" if m is log_prob else "model")
        )
        assert type(mapped) is type(g)
        assert isinstance(mapped, sf.AbstractPredictor)
        _CALLS.clear()
        got = mapped.score(t, x, y)
        assert sorted(_CALLS) == sorted(expected_calls[name]), (name, _CALLS)
        assert np.array_equal(got, g.score(t, x, y))
        # jit and vmap see the wrapped networks as ordinary pytree nodes.
        batched = jax.jit(jax.vmap(lambda xi: mapped.eps(t, xi, y)))(jnp.stack([x, x]))
        np.testing.assert_allclose(batched[0], g.eps(t, x, y), rtol=1e-12)
