"""`sf.train`: exact resume, NaN stop keeping the last good checkpoint, checkpoint
metadata refusing another convention, EMA; and (slow) training the MLP on the ring
of 8 Gaussians to a Fréchet distance near the exact-sample noise floor."""

import diffrax
import equinox as eqx
import helpers
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest

import scoreflow as sf


def _setup(name="RectifiedFlow", steps_key=0):
    p = helpers.builtin(name)
    net = sf.nets.MLP(2, width=16, depth=1, key=jr.key(steps_key))
    data = jr.normal(jr.key(1), (512, 2))
    return p, net, data


def _same(a, b):
    la, lb = (
        jax.tree_util.tree_leaves(eqx.filter(a, eqx.is_array)),
        jax.tree_util.tree_leaves(eqx.filter(b, eqx.is_array)),
    )
    return len(la) == len(lb) and all(
        x.dtype == y.dtype and bool(jnp.array_equal(x, y)) for x, y in zip(la, lb)
    )


def test_resume_is_bit_identical(tmp_path):
    p, net, data = _setup()
    loss = sf.dsm_loss(p, prediction="velocity", weighting="min_snr")
    opt = optax.adam(optax.cosine_decay_schedule(3e-3, 12))
    kw = dict(
        key=jr.key(2), batch_size=32, optimizer=opt, ema_decay=0.9, progress=False
    )
    full = sf.train.fit(loss, net, data, steps=12, **kw)
    ck = tmp_path / "run.eqx"
    first = sf.train.fit(
        loss, net, data, steps=5, checkpoint=ck, checkpoint_every=5, **kw
    )
    assert sf.train.read_metadata(ck)["step"] == 5
    second = sf.train.fit(
        loss, net, data, steps=12, checkpoint=ck, checkpoint_every=5, **kw
    )
    assert int(second.state.step) == 12 and len(second.losses) == 7
    np.testing.assert_array_equal(
        np.concatenate([first.losses, second.losses]), full.losses
    )
    assert _same(second.state, full.state)  # model, EMA, optimiser state, step, key
    assert not _same(full.model, full.ema)
    assert not _same(full.model, net)


def test_checkpoint_metadata_refuses_other_conventions(tmp_path):
    p, net, data = _setup()
    ck = tmp_path / "rf.eqx"
    loss = sf.cfm_loss(p)
    sf.train.fit(
        loss,
        net,
        data,
        key=jr.key(0),
        steps=2,
        batch_size=16,
        checkpoint=ck,
        progress=False,
    )
    meta = sf.train.read_metadata(ck)
    assert meta["process"] == repr(p) and meta["prediction"] == "velocity"
    assert meta["time_convention"] == sf._loss.TIME_CONVENTION
    other = sf.dsm_loss(p, prediction="eps")
    with pytest.raises(sf.train.CheckpointMismatchError, match="prediction='velocity'"):
        sf.train.fit(
            other,
            net,
            data,
            key=jr.key(0),
            steps=4,
            batch_size=16,
            checkpoint=ck,
            progress=False,
        )
    # a file claiming the other time convention (data at t = 1)
    raw = ck.read_bytes().replace(b"t=0 data, t=t1 prior", b"t=1 data, t=0 prior")
    bad = tmp_path / "flipped.eqx"
    bad.write_bytes(raw)
    like = sf.train.init_state(net, optax.adam(1e-3), jr.key(0))
    with pytest.raises(sf.train.CheckpointMismatchError, match="time convention"):
        sf.train.load_checkpoint(bad, like)


class _Climber(eqx.Module):
    w: jax.Array

    def __call__(self, t, x):
        return x * self.w


def test_nan_stops_and_keeps_last_good_checkpoint(tmp_path):
    """loss = -w (SGD raises w by 1 per step) turns NaN once w > 6.5."""

    def loss(model, x0, key):
        w = model.w
        return jnp.where(w > 6.5, jnp.nan, -w) + 0 * jnp.sum(x0)

    ck = tmp_path / "nan.eqx"
    with pytest.raises(sf.train.TrainingDivergedError, match="nan at step 7") as info:
        sf.train.fit(
            loss,
            _Climber(jnp.asarray(0.0)),
            jnp.zeros((8, 2)),
            key=jr.key(0),
            steps=20,
            batch_size=4,
            optimizer=optax.sgd(1.0),
            checkpoint=ck,
            checkpoint_every=2,
            progress=False,
        )
    err = info.value
    assert err.step == 7 and float(err.state.model.w) == 7.0
    assert str(ck) in str(err) and "step 6" in str(err)
    like = sf.train.init_state(_Climber(jnp.asarray(0.0)), optax.sgd(1.0), jr.key(0))
    state, meta = sf.train.load_checkpoint(ck, like)
    assert meta["step"] == 6 and float(state.model.w) == 6.0


def test_ema_and_conditional_training(getkey):
    p, _, data = _setup()
    net = sf.nets.MLP(2, width=16, depth=1, num_classes=2, key=getkey())
    labels = (data[:, 0] > 0).astype(jnp.int32)
    loss = sf.cfm_loss(p, cond_dropout=0.2, null_cond=net.null_label)
    res = sf.train.fit(
        loss,
        net,
        data,
        cond=labels,
        key=getkey(),
        steps=30,
        batch_size=64,
        learning_rate=3e-3,
        ema_decay=0.5,
        progress=False,
    )
    assert res.losses.shape == (30,) and np.isfinite(res.losses).all()
    assert res.losses[-10:].mean() < res.losses[:5].mean()


# --------------------------------------------------------------------------- #
# End to end on the ring of 8 Gaussians (slow)
# --------------------------------------------------------------------------- #


def _pf_ode_samples(process, predictor, key, n):
    """Integrate the PF-ODE dx/dt = velocity(t, x) from t1 to t0 with diffrax (Heun,
    fixed steps on a log-SNR-uniform grid would be nicer; tsit5 adaptive here)."""
    x1 = process.prior_sample(key, (n, 2))

    def solve(x):
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(lambda t, y, args: predictor.velocity(t, y)),
            diffrax.Tsit5(),
            t0=process.t1,
            t1=process.t0,
            dt0=-0.01,
            y0=x,
            stepsize_controller=diffrax.PIDController(rtol=1e-4, atol=1e-4),
            max_steps=4096,
        )
        return sol.ys[0]

    return jax.jit(jax.vmap(solve))(x1)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,loss_fn",
    [
        ("VP", lambda p: sf.dsm_loss(p, prediction="eps", weighting="sigma2")),
        ("RectifiedFlow", lambda p: sf.cfm_loss(p)),
    ],
)
def test_ring_of_8_fid_near_noise_floor(name, loss_fn):
    """Train the MLP (float32) for 4000 steps on the standardised ring of 8
    Gaussians; PF-ODE samples must be within 5x the Fréchet-distance noise floor
    (FD between two exact sample sets of the same size)."""
    p = helpers.to_float32(helpers.builtin(name))
    n = 4000
    raw = sf.toy.ring(jr.key(0), 20000).astype(jnp.float32)
    data, scaler = sf.standardize(raw)
    net = helpers.to_float32(sf.nets.MLP(2, width=128, depth=3, key=jr.key(1)))
    res = sf.train.fit(
        loss_fn(p),
        net,
        data,
        key=jr.key(2),
        steps=4000,
        batch_size=512,
        optimizer=optax.adam(optax.cosine_decay_schedule(2e-3, 4000, alpha=0.05)),
        ema_decay=0.995,
        progress=False,
    )
    pred = sf.Predictor(res.ema, p, prediction=loss_fn(p).prediction_type)
    samples = scaler.inverse(_pf_ode_samples(p, pred, jr.key(3), n))
    ref = sf.toy.ring(jr.key(4), n)
    fd = float(sf.metrics.frechet_distance(samples, ref))
    floor = np.mean(
        [
            float(
                sf.metrics.frechet_distance(
                    sf.toy.ring(jr.key(10 + i), n), sf.toy.ring(jr.key(20 + i), n)
                )
            )
            for i in range(5)
        ]
    )
    print(f"{name}: FD = {fd:.4g}, noise floor = {floor:.4g}, ratio = {fd / floor:.3g}")
    assert fd < 5 * floor, (fd, floor)
