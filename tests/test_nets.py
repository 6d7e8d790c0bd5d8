"""Reference networks: shapes, conditioning with a null label, embeddings, dtype,
jit/vmap, gradients."""

import equinox as eqx
import helpers
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import scoreflow as sf


@pytest.mark.parametrize("embedding", ["sinusoidal", "fourier"])
def test_mlp(embedding, getkey):
    net = sf.nets.MLP(3, width=32, depth=2, time_embedding=embedding, key=getkey())
    x = jr.normal(getkey(), (5, 3))
    t = jnp.linspace(0.0, 1.0, 5)
    y = jax.jit(jax.vmap(net))(t, x)
    assert y.shape == (5, 3) and bool(jnp.isfinite(y).all())
    assert not np.allclose(net(0.1, x[0]), net(0.9, x[0]))  # time matters
    g = eqx.filter_grad(lambda m: jnp.sum(m(0.3, x[0]) ** 2))(net)
    if embedding == "fourier":  # the random frequencies are not trained
        assert float(jnp.abs(g.embed.time.weights).max()) == 0.0
    net32 = helpers.to_float32(net)
    assert net32(jnp.float32(0.3), x[0].astype(jnp.float32)).dtype == jnp.float32


def test_mlp_class_embedding_and_null_label(getkey):
    net = sf.nets.MLP(2, width=16, depth=1, num_classes=4, key=getkey())
    assert net.null_label == 4
    x = jnp.ones(2)
    outs = [net(0.5, x, c) for c in range(5)]
    assert all(not np.allclose(outs[0], o) for o in outs[1:])
    np.testing.assert_array_equal(net(0.5, x), net(0.5, x, net.null_label))
    plain = sf.nets.MLP(2, width=16, depth=1, key=getkey())
    assert plain.null_label is None
    with pytest.raises(ValueError, match="no class embedding"):
        plain(0.5, x, 1)


@pytest.mark.parametrize(
    "shape", [pytest.param((1, 28, 28), marks=pytest.mark.slow), (3, 8, 8)]
)
def test_unet(shape, getkey):
    net = sf.nets.UNet(shape[0], channels=(8, 16, 16), num_classes=10, key=getkey())
    x = jr.normal(getkey(), (2,) + shape)
    y = jax.jit(jax.vmap(net))(jnp.array([0.1, 0.9]), x, jnp.array([3, net.null_label]))
    assert y.shape == (2,) + shape and bool(jnp.isfinite(y).all())
    with pytest.raises(ValueError, match="channels-first"):
        net(0.1, jnp.ones(shape[1:] + shape[:1]))


@pytest.mark.slow
def test_unet_trains_with_a_loss(getkey):
    p = helpers.builtin("EDM")
    net = sf.nets.UNet(1, channels=(8, 8, 8), key=getkey())
    x0 = 0.5 * jr.normal(getkey(), (4, 1, 8, 8))
    loss = sf.dsm_loss(p, prediction="x0", weighting="edm", precondition="edm")
    v, g = eqx.filter_jit(eqx.filter_value_and_grad(loss))(net, x0, getkey())
    assert np.isfinite(float(v))
    assert all(bool(jnp.isfinite(a).all()) for a in jax.tree_util.tree_leaves(g))


@pytest.mark.parametrize("jit", [False, True])
def test_out_of_range_label_is_an_error_not_the_null_label(getkey, jit):
    # Issue 14, defect 7: jnp's clamping index turned 7 (or -1) into the null label 3.
    from float32 import float32

    with float32():
        net = sf.nets.MLP(2, num_classes=3, key=getkey())
        call = eqx.filter_jit(net) if jit else net
        x = jnp.ones(2)
        for label in (7, -1, 4):
            with pytest.raises(eqx.EquinoxRuntimeError, match="label out of range"):
                call(0.5, x, label)
        for label in (0, 2, net.null_label):  # the null label itself stays valid
            assert np.all(np.isfinite(call(0.5, x, label)))
        np.testing.assert_array_equal(call(0.5, x), call(0.5, x, net.null_label))
