"""The training step sharded over 4 forced host devices equals the single-device
step; data in memory is sharded by rows (padded where the rows do not divide), and
a stream of the same rows gives the in-memory run. Runs in a subprocess: XLA_FLAGS must be set before jax is imported."""

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import jax
    jax.config.update("jax_enable_x64", True)
    import equinox as eqx
    import jax.numpy as jnp
    import jax.random as jr
    import numpy as np
    import optax
    import scoreflow as sf

    assert len(jax.devices()) == 4, jax.devices()
    p = sf.RectifiedFlow()
    net = sf.nets.MLP(2, width=32, depth=2, num_classes=3, key=jr.key(0))
    data = jr.normal(jr.key(1), (256, 2))
    labels = jnp.arange(256) % 3
    loss = sf.dsm_loss(p, prediction="v", weighting="min_snr", cond_dropout=0.1,
                       null_cond=net.null_label, check_scale=False)
    opt = optax.adam(1e-3)
    state0 = sf.train.init_state(net, opt, jr.key(2))

    single = sf.train.make_step(loss, opt, batch_size=64)
    mesh = sf.train.make_mesh()
    sharded = sf.train.make_step(loss, opt, batch_size=64, mesh=mesh)

    s1, s4 = state0, sf.train.replicate(state0, mesh)
    d4, c4 = sf.train.replicate((data, labels), mesh)
    for _ in range(3):
        s1, l1 = single(s1, data, labels)
        s4, l4 = sharded(s4, d4, c4)
        np.testing.assert_allclose(l4, l1, rtol=1e-12)
    a = jax.tree_util.tree_leaves(eqx.filter(s1, eqx.is_inexact_array))
    b = jax.tree_util.tree_leaves(eqx.filter(s4, eqx.is_inexact_array))
    for x, y in zip(a, b):
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-10, atol=1e-12)
    w = s4.model.inp.weight
    assert len(w.sharding.device_set) == 4 and w.sharding.is_fully_replicated

    # the batch really is split: lower the step and look for a sharded batch
    hlo = sharded.lower(s4, d4, c4).compile().compiled.as_text()
    assert "all-reduce" in hlo, "no gradient all-reduce in the sharded step"
    assert "all-reduce" not in single.lower(s1, data, labels).compile().compiled.as_text()

    # fit uses the mesh by default on several devices
    res = sf.train.fit(loss, net, data, cond=labels, key=jr.key(2), steps=3,
                       batch_size=64, optimizer=opt, progress=False)
    ref = sf.train.fit(loss, net, data, cond=labels, key=jr.key(2), steps=3,
                       batch_size=64, optimizer=opt, progress=False, shard=False)
    np.testing.assert_allclose(res.losses, ref.losses, rtol=1e-12)

    # data in memory is sharded by rows over the devices (not replicated); 250 rows
    # are padded to 252 and the padding is never drawn
    blocks = sf.train.shard_rows(np.asarray(data), mesh)
    assert [s.data.shape for s in blocks.addressable_shards] == [(64, 2)] * 4
    kw = dict(cond=labels[:250], key=jr.key(3), steps=3, batch_size=64,
              optimizer=opt, progress=False)
    res = sf.train.fit(loss, net, data[:250], **kw)
    ref = sf.train.fit(loss, net, data[:250], shard=False, **kw)
    np.testing.assert_allclose(res.losses, ref.losses, rtol=1e-12)

    # a stream of the same rows on 4 devices equals the in-memory run bit for bit
    key, rows = jr.key_data(jr.key(3)), []
    for _ in range(3):
        key, kb, _ = jr.split(jr.wrap_key_data(key), 3)
        rows.append(np.asarray(jr.randint(kb, (64,), 0, 250)))
        key = jr.key_data(key)
    x, c = np.asarray(data), np.asarray(labels)
    kw.pop("cond")
    streamed = sf.train.fit(loss, net, ((x[i], c[i]) for i in rows), **kw)
    np.testing.assert_array_equal(streamed.losses, res.losses)
    print("SHARDING-OK")
    """
)


def test_sharded_step_equals_single_device_step():
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    env["JAX_PLATFORMS"] = "cpu"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0 and "SHARDING-OK" in out.stdout, out.stderr[-4000:]
