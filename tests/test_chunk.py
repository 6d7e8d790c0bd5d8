"""`sf.chunked` and `sf.sample(batch_size=)`: sampling and likelihoods in chunks equal the
unchunked calls for the same key (the exact Gaussian-mixture model: no training)."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import scoreflow as sf

chunked = sf.chunked


def _model():
    p = sf.RectifiedFlow()
    gm = sf.toy.GaussianMixture(
        jnp.array([0.3, 0.7]),
        jnp.array([[-1.0, 0.5], [1.0, -0.5]]),
        jnp.stack([0.2 * jnp.eye(2), 0.1 * jnp.eye(2)]),
    )
    return p, sf.Predictor(gm.eps(p), p, prediction="eps"), gm


@pytest.mark.parametrize("pad", [True, False])
def test_chunked_sample_equals_one_call(pad):
    p, pred, _ = _model()
    key = jr.key(0)
    one = sf.sample(key, p, pred, (2,), num=10, steps=8)

    def fn(idx, keys):
        return sf.sample(keys, p, pred, (2,), num=len(idx), steps=8)

    xs = chunked(fn, 10, 4, key=key, pad=pad)
    assert isinstance(xs, np.ndarray) and xs.shape == (10, 2)
    np.testing.assert_array_equal(xs, np.asarray(one))


def test_chunked_log_likelihood_equals_vmapped_call():
    p, pred, gm = _model()
    x = gm.sample(jr.key(1), 7)
    ll = jax.jit(
        jax.vmap(lambda xi, k: sf.log_likelihood(k, p, pred, xi, rtol=1e-6, atol=1e-6))
    )
    keys = jax.vmap(lambda i: jr.fold_in(jr.key(2), i))(jnp.arange(7))
    ref = np.asarray(ll(x, keys))
    got = chunked(lambda idx, k: ll(x[idx], k), 7, 3, key=jr.key(2))
    np.testing.assert_allclose(got, ref, rtol=1e-12)
    # pytree results and index-only functions
    tree = chunked(lambda idx: {"i": idx, "sq": idx**2}, 5, 2)
    np.testing.assert_array_equal(tree["i"], np.arange(5))
    np.testing.assert_array_equal(tree["sq"], np.arange(5) ** 2)


def test_chunked_bad_arguments():
    with pytest.raises(
        ValueError, match=r"batch_size=...\)` must be a Python int >= 1"
    ):
        chunked(lambda idx: idx, 5, 0)
    with pytest.raises(ValueError, match="leading axis len\\(idx\\) = 2"):
        chunked(lambda idx: jnp.sum(idx), 5, 2)


def test_sample_batch_size_equals_one_call():
    """`sf.sample(..., batch_size=)` (issue 16, item 4): identical samples and info,
    with a single key, a batch of keys, given noise and a condition-free model."""
    p, pred, _ = _model()
    key = jr.key(3)
    one, info1 = sf.sample(key, p, pred, (2,), num=10, steps=8, return_info=True)
    got, info2 = sf.sample(
        key, p, pred, (2,), num=10, steps=8, return_info=True, batch_size=4
    )
    np.testing.assert_array_equal(np.asarray(got), np.asarray(one))
    np.testing.assert_array_equal(np.asarray(info2["nfe"]), np.asarray(info1["nfe"]))
    np.testing.assert_array_equal(np.asarray(info2["ts"]), np.asarray(info1["ts"]))
    keys = jr.split(jr.key(4), 10)
    noise = jr.normal(jr.key(5), (10, 2))
    one = sf.sample(keys, p, pred, (2,), num=10, steps=8, noise=noise, method="sde")
    got = sf.sample(
        keys, p, pred, (2,), num=10, steps=8, noise=noise, method="sde", batch_size=3
    )
    np.testing.assert_array_equal(np.asarray(got), np.asarray(one))
