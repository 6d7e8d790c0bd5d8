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
    x1 = process.prior_sample(key, (n, 2)).astype(jnp.float32)  # the net's dtype

    def solve(x):
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(lambda t, y, args: predictor.velocity(t, y)),
            diffrax.Tsit5(),
            # float32 times, as the net: diffrax promotes the state to the time's
            # dtype, and under the suite's strict promotion float64 cannot meet the
            # float32 weights
            t0=jnp.float32(process.t1),
            t1=jnp.float32(process.t0),
            dt0=jnp.float32(-0.01),
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


# --------------------------------------------------------------------------- #
# What is trained (issue 14, defect 4)
# --------------------------------------------------------------------------- #


def _process_arrays(tree):
    return jax.tree_util.tree_leaves(eqx.filter(tree, eqx.is_inexact_array))


@pytest.mark.parametrize("adapter", ["ddpm", "sigma"])
def test_fit_keeps_wrapped_process_fixed(adapter):
    """`DDPMTimesteps(...).wrap_model(net)` / `SigmaTime(p).wrap_model(net)` carry a
    process (VP's beta_min, beta_max; the log-SNR table): only `net` is trained.
    Before the fix, 30 steps of adamw moved beta_min and the table."""
    p = sf.VP()
    conv = sf.DDPMTimesteps.linear(p) if adapter == "ddpm" else sf.SigmaTime(p)
    net = sf.nets.MLP(2, width=16, depth=1, key=jr.key(0))
    model = conv.wrap_model(net)
    loss = sf.dsm_loss(p, prediction="eps", check_scale=False)
    res = sf.train.fit(
        loss,
        model,
        jr.normal(jr.key(1), (256, 2)),
        key=jr.key(2),
        steps=30,
        batch_size=32,
        optimizer=optax.adamw(1e-2, weight_decay=0.1),
        progress=False,
    )
    before, after = (
        _process_arrays(model.convention),
        _process_arrays(res.model.convention),
    )
    assert len(before) >= 2
    for a, b in zip(before, after):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(
        _process_arrays(model.convention), _process_arrays(res.ema.convention)
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not _same(res.model.model, net)  # the network did train


def test_fit_trains_scheduled_model_params():
    """`sf.ScheduledModel` marks the schedule trainable (its `params` are leaves of
    the model)."""
    p = sf.learned_schedule()
    net = sf.nets.MLP(2, width=16, depth=1, key=jr.key(0))
    model = sf.ScheduledModel(net, p)
    loss = sf.elbo_loss(p)
    data = jr.normal(jr.key(1), (128, 2))
    res = sf.train.fit(
        loss,
        model,
        data,
        learning_rate=1e-2,
        key=jr.key(2),
        steps=2,
        batch_size=32,
        progress=False,
    )
    moved = [
        k
        for k in model.params
        if not np.array_equal(
            np.asarray(model.params[k]), np.asarray(res.model.params[k])
        )
    ]
    assert moved, "the schedule's params were not trained"
    spec = sf.train.default_trainable(model)
    assert all(jax.tree_util.tree_leaves(spec.params))


# --------------------------------------------------------------------------- #
# Bad inputs to fit (issue 14, defects 7 and 8)
# --------------------------------------------------------------------------- #


def _calls_loss(calls):
    inner = sf.cfm_loss(sf.RectifiedFlow())

    def loss(model, x0, key, **kw):
        calls.append(1)
        return inner(model, x0, key, **kw)

    return loss


def test_fit_rejects_bad_arguments_before_training(tmp_path):
    p, net, data = _setup()
    calls = []
    loss = _calls_loss(calls)
    kw = dict(key=jr.key(0), steps=5, progress=False)
    cnet = sf.nets.MLP(2, width=16, depth=1, num_classes=3, key=jr.key(0))
    with pytest.raises(ValueError, match=r"one row per data row \(leading axis 512\)"):
        sf.train.fit(loss, cnet, data, cond=jnp.arange(10) % 3, batch_size=16, **kw)
    with pytest.raises(ValueError, match=r"batch_size=...\)` must be >= 1"):
        sf.train.fit(loss, net, data, batch_size=0, **kw)
    with pytest.raises(TypeError, match="must be a Python int"):
        sf.train.fit(loss, net, data, batch_size=3.5, **kw)
    with pytest.raises(ValueError, match="finite number > 0"):
        sf.train.fit(loss, net, data, batch_size=8, learning_rate=-1e-3, **kw)
    missing = tmp_path / "no-such-dir" / "run.eqx"
    with pytest.raises(FileNotFoundError, match="does not exist.*create it"):
        sf.train.fit(loss, net, data, batch_size=8, checkpoint=missing, **kw)
    assert calls == [], "training started before the arguments were checked"


def test_huge_learning_rate_stops_with_divergence_error():
    """learning_rate=1e3 sends the loss from 2.3 to 7e28 in one step (measured);
    fit stops at once instead of training on."""
    p, net, data = _setup()
    with pytest.raises(sf.train.TrainingDivergedError, match="grew from .* at step 1"):
        sf.train.fit(
            sf.cfm_loss(p),
            net,
            data,
            key=jr.key(2),
            steps=50,
            batch_size=32,
            learning_rate=1e3,
            progress=False,
        )
    # a healthy run never comes near the threshold (max/first loss 1.25 measured)
    res = sf.train.fit(
        sf.cfm_loss(p),
        net,
        data,
        key=jr.key(2),
        steps=50,
        batch_size=32,
        learning_rate=1e-2,
        progress=False,
    )
    assert res.losses.max() < 10 * res.losses[0]


# --------------------------------------------------------------------------- #
# Checkpoint integrity
# --------------------------------------------------------------------------- #


def _two_checkpoints(tmp_path):
    p, net, data = _setup()
    loss = sf.cfm_loss(p)
    ck = tmp_path / "run.eqx"
    kw = dict(key=jr.key(0), batch_size=16, checkpoint=ck, progress=False)
    sf.train.fit(loss, net, data, steps=4, checkpoint_every=2, **kw)
    return loss, net, data, ck, kw


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damaged_checkpoint_is_named_and_previous_kept(tmp_path, damage):
    loss, net, data, ck, kw = _two_checkpoints(tmp_path)
    prev = tmp_path / "run.eqx.prev"
    assert sf.train.read_metadata(ck)["step"] == 4
    assert sf.train.read_metadata(prev)["step"] == 2
    raw = ck.read_bytes()
    if damage == "flip":
        i = len(raw) - 100
        bad = raw[:i] + bytes([raw[i] ^ 0x10]) + raw[i + 1 :]
        words = "SHA-256 checksum of its payload does not match"
    else:
        bad = raw[: len(raw) - 37]
        words = "is truncated"
    ck.write_bytes(bad)
    prev_bytes = prev.read_bytes()
    like = sf.train.init_state(net, optax.adam(1e-3), jr.key(0))
    with pytest.raises(sf.train.CheckpointCorruptError, match=words) as info:
        sf.train.load_checkpoint(ck, like)
    assert "(step 2) is intact" in str(info.value)
    assert info.value.previous == str(prev)
    with pytest.raises(sf.train.CheckpointCorruptError, match=words):
        sf.train.fit(loss, net, data, steps=8, **kw)
    assert ck.read_bytes() == bad and prev.read_bytes() == prev_bytes  # untouched
    # the previous one resumes
    prev.replace(ck)
    res = sf.train.fit(loss, net, data, steps=6, **kw)
    assert len(res.losses) == 4


def test_checkpoint_of_another_structure_says_so(tmp_path):
    loss, net, data, ck, kw = _two_checkpoints(tmp_path)
    other = sf.nets.MLP(2, width=8, depth=1, key=jr.key(0))
    like = sf.train.init_state(other, optax.adam(1e-3), jr.key(0))
    with pytest.raises(sf.train.CheckpointMismatchError, match="another model"):
        sf.train.load_checkpoint(ck, like)


# --------------------------------------------------------------------------- #
# Streamed data
# --------------------------------------------------------------------------- #


def _in_memory_rows(key, n, batch_size, steps):
    """The rows `make_step` draws: (next key, batch key, loss key) = split(key, 3)."""
    out, key = [], jr.key_data(key)
    for _ in range(steps):
        key, k_batch, _ = jr.split(jr.wrap_key_data(key), 3)
        out.append(np.asarray(jr.randint(k_batch, (batch_size,), 0, n)))
        key = jr.key_data(key)
    return out


def test_streamed_batches_equal_in_memory_run(tmp_path):
    """Streaming exactly the rows the in-memory step draws gives the same run bit
    for bit: as a generator of arrays, of (x0, cond) pairs, of mappings, as
    `ProcessLocal` (one process), and resumed from a checkpoint (the stream skips
    the batches already used)."""
    p, _, data = _setup()
    net = sf.nets.MLP(2, width=16, depth=1, num_classes=3, key=jr.key(0))
    labels = jnp.arange(512) % 3
    loss = sf.cfm_loss(p)
    kw = dict(key=jr.key(5), steps=6, batch_size=32, progress=False)
    ref = sf.train.fit(loss, net, data, cond=labels, **kw)
    rows = _in_memory_rows(jr.key(5), 512, 32, 6)
    x, c = np.asarray(data), np.asarray(labels)

    def pairs():
        for idx in rows:
            yield x[idx], c[idx]

    for stream in (
        pairs(),
        sf.train.ProcessLocal({"x0": x[i], "cond": c[i]} for i in rows),
    ):
        res = sf.train.fit(loss, net, stream, **kw)
        np.testing.assert_array_equal(res.losses, ref.losses)
        assert _same(res.state, ref.state)
    ck = tmp_path / "s.eqx"
    sf.train.fit(loss, net, pairs(), **{**kw, "steps": 4}, checkpoint=ck)
    seek = lambda start: ((x[i], c[i]) for i in rows[start:])  # noqa: E731
    res = sf.train.fit(loss, net, seek, **kw, checkpoint=ck)
    np.testing.assert_array_equal(res.losses, ref.losses[4:])
    assert _same(res.state, ref.state)


def test_streamed_data_errors_and_running_out():
    p, net, data = _setup()
    loss = sf.cfm_loss(p)
    kw = dict(key=jr.key(0), progress=False)
    x = np.asarray(data)
    with pytest.raises(ValueError, match="batch 2 has 7 rows but the batches have 16"):
        sf.train.fit(loss, net, iter([x[:16], x[:16], x[:7]]), steps=5, **kw)
    with pytest.raises(ValueError, match="batch 0 has 32 rows but the batches have 16"):
        sf.train.fit(loss, net, iter([x[:32]]), steps=5, batch_size=16, **kw)
    with pytest.raises(ValueError, match="same number of rows"):
        sf.train.fit(loss, net, iter([(x[:16], np.zeros(3))]), steps=5, **kw)
    with pytest.raises(ValueError, match="yields its labels with the batches"):
        sf.train.fit(loss, net, iter([x[:16]]), cond=np.zeros(16), steps=5, **kw)
    with pytest.raises(TypeError, match="could be rows or batches"):
        sf.train.fit(loss, net, [x[:16], x[:16]], steps=5, **kw)
    with pytest.raises(TypeError, match="must be an array, an iterable"):
        sf.train.fit(loss, net, 3.0, steps=5, **kw)
    with pytest.warns(UserWarning, match="data ran out after step 3 of 5"):
        res = sf.train.fit(loss, net, iter([x[:16]] * 3), steps=5, **kw)
    assert len(res.losses) == 3


def test_second_fit_reuses_the_compiled_step():
    """The step is jitted once per (loss, optimiser, options): a second `fit` with the
    same loss and the default optimiser at the same learning rate does not trace the
    loss again, on data in memory and on a stream; a new learning rate does."""
    traces = []
    inner = sf.cfm_loss(sf.RectifiedFlow())

    def loss(model, x0, key):
        traces.append(1)  # runs only while tracing
        return inner(model, x0, key)

    data = np.asarray(jr.normal(jr.key(0), (64, 2)))  # float64, like the network
    net = sf.nets.MLP(2, width=8, depth=1, key=jr.key(1))
    kw = dict(key=jr.key(2), steps=3, batch_size=16, progress=False)

    a = sf.train.fit(loss, net, data, **kw)
    n = len(traces)
    b = sf.train.fit(loss, net, data, **kw)
    assert len(traces) == n  # no new trace
    np.testing.assert_array_equal(a.losses, b.losses)

    def batches():
        return (data[16 * i : 16 * (i + 1)] for i in range(4))

    sf.train.fit(loss, net, batches(), **kw)
    m = len(traces)
    assert m > n  # the streamed step is another function
    sf.train.fit(loss, net, batches(), **kw)
    assert len(traces) == m

    sf.train.fit(loss, net, data, learning_rate=3e-4, **kw)
    assert len(traces) > m  # another optimiser, another step
