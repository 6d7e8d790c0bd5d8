"""Meta's flow_matching (and torchdiffeq behind its ODESolver), reproduced exactly.

Oracles are written in numpy from flow_matching's published formulas
(`flow_matching/path/scheduler/scheduler.py`: the five schedulers' alpha_t, sigma_t
and their derivatives; `flow_matching/path/affine.py`: `velocity_to_target`,
`velocity_to_epsilon`) and torchdiffeq's fixed-grid steps (`_impl/fixed_grid.py`,
`rk_common.rk4_alt_step_func`, the step-size grid of `solvers.py`). In their time u
data sits at u = 1; scoreflow's time is t = 1 - u.

The `peers`-marked tests run the same checks against the real packages.
"""

import diffrax
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import scoreflow as sf

# --------------------------------------------------------------------------- #
# numpy oracles from flow_matching's formulas
# --------------------------------------------------------------------------- #


def fm_scheduler(name, u, n=2.0, beta_min=0.1, beta_max=20.0):
    """(alpha_u, sigma_u, d alpha_u/du, d sigma_u/du), flow_matching's time u."""
    u = np.asarray(u, np.float64)
    if name == "cond_ot":
        return u, 1 - u, np.ones_like(u), -np.ones_like(u)
    if name == "polynomial":
        return u**n, 1 - u**n, n * u ** (n - 1), -n * u ** (n - 1)
    if name == "vp":
        b, B = beta_min, beta_max
        T = 0.5 * (1 - u) ** 2 * (B - b) + (1 - u) * b
        dT = -(1 - u) * (B - b) - b
        return (
            np.exp(-0.5 * T),
            np.sqrt(1 - np.exp(-T)),
            -0.5 * dT * np.exp(-0.5 * T),
            0.5 * dT * np.exp(-T) / np.sqrt(1 - np.exp(-T)),
        )
    if name == "linear_vp":
        return u, (1 - u**2) ** 0.5, np.ones_like(u), -u / (1 - u**2) ** 0.5
    if name == "cosine":
        h = np.pi / 2
        return np.sin(h * u), np.cos(h * u), h * np.cos(h * u), -h * np.sin(h * u)
    raise ValueError(name)


def fm_velocity_to_target(sched, v, x):
    a, s, da, ds = sched
    den = da * s - ds * a
    return (-ds / den) * x + (s / den) * v


def fm_velocity_to_epsilon(sched, v, x):
    a, s, da, ds = sched
    den = ds * a - da * s
    return (-da / den) * x + (a / den) * v


W = np.array([[0.7, -0.4], [0.3, 0.9]])
B = np.array([0.5, -1.2])


def vf_np(u, x):
    """A smooth nonlinear velocity field in their convention (u, batch of x)."""
    return np.tanh(x @ W.T + u * B) - 0.5 * x + u


def vf_jax(u, x):
    """The same field, unbatched and time-first (what flow_matching_velocity takes)."""
    return jnp.tanh(jnp.asarray(W) @ x + u * jnp.asarray(B)) - 0.5 * x + u


def torchdiffeq_grid(u0, u1, h):
    """torchdiffeq's `_grid_constructor_from_step_size`, in float64."""
    niters = int(np.ceil((u1 - u0) / h + 1))
    g = np.arange(niters) * h + u0
    g[-1] = u1
    return g


def fixed_step(method, f, u0, h, x):
    """One torchdiffeq fixed-grid step (its Euler, Midpoint, Heun2, RK4 = 3/8 rule)."""
    k1 = f(u0, x)
    if method == "euler":
        return x + h * k1
    if method == "midpoint":
        return x + h * f(u0 + h / 2, x + h / 2 * k1)
    if method == "heun2":
        return x + h * (k1 + f(u0 + h, x + h * k1)) / 2
    k2 = f(u0 + h / 3, x + h * k1 / 3)
    k3 = f(u0 + 2 * h / 3, x + h * (k2 - k1 / 3))
    k4 = f(u0 + h, x + h * (k1 - k2 + k3))
    return x + (k1 + 3 * (k2 + k3) + k4) * h / 8


def fm_ode_oracle(method, grid, x):
    for u0, u1 in zip(grid[:-1], grid[1:]):
        x = fixed_step(method, vf_np, u0, u1 - u0, x)
    return x


SCHEDULERS = [
    ("cond_ot", {}),
    ("polynomial", {"n": 2.0}),
    ("polynomial", {"n": 0.5}),
    ("vp", {"beta_min": 0.1, "beta_max": 20.0}),
    ("linear_vp", {}),
    ("cosine", {}),
]


# --------------------------------------------------------------------------- #
# 1. The velocity helper
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("name,params", SCHEDULERS, ids=lambda v: str(v))
def test_velocity_helper_matches_flow_matching_formulas(name, params):
    pred = sf.peers.flow_matching_velocity(vf_jax, name, **params)
    p = pred.process
    rng = np.random.default_rng(0)
    us = np.array([0.05, 0.2, 0.5, 0.8, 0.95])
    xs = rng.normal(size=(len(us), 2))
    a, s, da, ds = fm_scheduler(name, us, **params)
    ts = jnp.asarray(1.0 - us)
    # the path: alpha(t) = alpha_{1-t}, sigma(t) = sigma_{1-t}, derivatives flip sign
    np.testing.assert_allclose(jax.vmap(p.alpha)(ts), a, rtol=1e-6)
    np.testing.assert_allclose(jax.vmap(p.sigma)(ts), s, rtol=1e-6)
    np.testing.assert_allclose(jax.vmap(p.alpha_dot)(ts), -da, rtol=1e-6)
    np.testing.assert_allclose(jax.vmap(p.sigma_dot)(ts), -ds, rtol=1e-6)
    # the views: velocity = -vf, x0 / eps = their velocity_to_target / _epsilon
    v = vf_np(us[:, None], xs)
    sched = tuple(c[:, None] for c in (a, s, da, ds))
    vel = jax.vmap(pred.velocity)(ts, jnp.asarray(xs))
    np.testing.assert_allclose(vel, -v, rtol=1e-6)
    x0 = jax.vmap(pred.x0)(ts, jnp.asarray(xs))
    np.testing.assert_allclose(
        x0, fm_velocity_to_target(sched, v, xs), rtol=1e-6, atol=1e-12
    )
    eps = jax.vmap(pred.eps)(ts, jnp.asarray(xs))
    np.testing.assert_allclose(
        eps, fm_velocity_to_epsilon(sched, v, xs), rtol=1e-6, atol=1e-12
    )


def test_scheduler_objects_names_and_bad_input():
    class PolynomialConvexScheduler:  # duck-typed stand-in for theirs
        n = 3.0

    p = sf.peers.flow_matching_process(PolynomialConvexScheduler())
    q = sf.peers.flow_matching_process("polynomial", n=3.0)
    t = jnp.asarray(0.3)
    assert float(p.alpha(t)) == float(q.alpha(t))
    r = sf.peers.flow_matching_process("CondOTScheduler")
    assert float(r.alpha(t)) == pytest.approx(0.7)
    with pytest.raises(ValueError, match="unknown scheduler"):
        sf.peers.flow_matching_process("linear")
    with pytest.raises(ValueError, match="exponent n > 0"):
        sf.peers.flow_matching_process("polynomial")
    with pytest.raises(ValueError, match="takes"):
        sf.peers.flow_matching_process("cosine", n=2)
    with pytest.raises(TypeError, match="scheduler must be"):
        sf.peers.flow_matching_process(object())


# --------------------------------------------------------------------------- #
# 2. ODESolver.sample with fixed steps
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    "name,method,step_size,time_grid",
    [
        ("cond_ot", "midpoint", 0.3, None),
        ("cond_ot", "euler", 0.25, None),
        ("cond_ot", "rk4", 0.3, None),
        ("cond_ot", "heun2", 0.3, (1e-5, 1 - 1e-5)),
        ("cosine", "midpoint", None, (0.01, 0.3, 0.7, 0.99)),
    ],
)
def test_fixed_step_ode_matches_torchdiffeq_oracle(name, method, step_size, time_grid):
    pred = sf.peers.flow_matching_velocity(vf_jax, name)
    cfg = sf.peers.flow_matching_ode(
        name, method=method, step_size=step_size, time_grid=time_grid
    )
    p = pred.process if time_grid is None else cfg.process
    u0, u1 = (
        (1 - p.t1, 1 - p.t0) if time_grid is None else time_grid[:: len(time_grid) - 1]
    )
    grid = (
        np.asarray(time_grid, np.float64)
        if step_size is None
        else torchdiffeq_grid(u0, u1, step_size)
    )
    x_init = np.random.default_rng(1).normal(size=(6, 2))
    xs, info = cfg.sample(
        jr.key(0), pred, (2,), num=6, noise=jnp.asarray(x_init), return_info=True
    )
    np.testing.assert_allclose(xs, fm_ode_oracle(method, grid, x_init), rtol=1e-6)
    steps = len(grid) - 1
    per = {"euler": 1, "midpoint": 2, "heun2": 2, "rk4": 4}[method]
    assert cfg.nfe == per * steps
    assert np.all(np.asarray(info["nfe"]) == per * steps)


def test_ode_recipe_bad_input():
    with pytest.raises(ValueError, match="not defined"):
        sf.peers.flow_matching_ode("cond_ot", method="euler", time_grid=(0.0, 1.0))
    with pytest.raises(ValueError, match="increasing"):
        sf.peers.flow_matching_ode("cond_ot", method="euler", time_grid=(0.9, 0.1))
    with pytest.raises(ValueError, match="fixed-step methods"):
        sf.peers.flow_matching_ode("cond_ot", method="dopri5", step_size=0.1)
    with pytest.raises(ValueError, match="expected one of"):
        sf.peers.flow_matching_ode("cond_ot", method="rk45")


# --------------------------------------------------------------------------- #
# 3. The batch as one system (sf.sample(adaptive="batch")), and dopri5
# --------------------------------------------------------------------------- #


def ring():
    """Problem A of the benchmarks, exact: 8 Gaussians (std 0.3) at radius 4,
    weights proportional to 1..8."""
    k = 8
    ang = 2 * np.pi * np.arange(k) / k
    means = 4 * np.stack([np.cos(ang), np.sin(ang)], 1)
    w = np.arange(1, k + 1) / np.arange(1, k + 1).sum()
    gm = sf.toy.GaussianMixture(w, means, np.broadcast_to(0.09 * np.eye(2), (k, 2, 2)))
    p = sf.RectifiedFlow()
    return p, gm, sf.Predictor(gm.eps(p), p, prediction="eps")


def gaussian_cond_model(p, s=0.7):
    """Exact eps of data N(c, s^2 I) under `p`, conditioned on the mean c."""

    def model(t, x, c):
        a, sg = p.alpha(t), p.sigma(t)
        return sg * (x - a * c) / (a**2 * s**2 + sg**2)

    return sf.Predictor(model, p, prediction="eps")


def _dopri(tol):
    return dict(
        solver=diffrax.Dopri5(),
        stepsize_controller=diffrax.PIDController(rtol=tol, atol=tol),
    )


def test_batch_mode_same_answer_as_per_sample_at_tight_tolerance():
    p = sf.RectifiedFlow()
    pred = gaussian_cond_model(p)
    cond = jnp.asarray(np.random.default_rng(2).normal(size=(5, 2)))
    kw = dict(num=5, cond=cond, return_info=True, denoise=True, **_dopri(1e-10))
    xa, ia = sf.sample(jr.key(3), p, pred, (2,), **kw)
    xb, ib = sf.sample(jr.key(3), p, pred, (2,), adaptive="batch", **kw)
    np.testing.assert_allclose(xb, xa, rtol=1e-6, atol=1e-8)
    assert ib["nfe"].shape == () and ia["nfe"].shape == (5,)
    assert int(ib["nfe"]) == 1 + 6 * int(ib["num_steps"]) + 1  # FSAL + denoise


def test_batch_mode_one_count_made_and_fewer_than_per_sample_max():
    p, gm, _ = ring()
    counter = []

    def model(t, x):
        jax.debug.callback(lambda: counter.append(1))
        return gm.eps(p)(t, x)

    pred = sf.Predictor(model, p, prediction="eps")
    num = 32
    xb, ib = sf.sample(
        jr.key(0),
        p,
        pred,
        (2,),
        num=num,
        adaptive="batch",
        return_info=True,
        **_dopri(1e-5),
    )
    jax.block_until_ready(xb)
    jax.effects_barrier()
    # the callback (no batched arguments) runs once per batched evaluation
    assert len(counter) == int(ib["nfe"]), (len(counter), ib["nfe"])
    _, ia = sf.sample(
        jr.key(0), p, ring()[2], (2,), num=num, return_info=True, **_dopri(1e-5)
    )
    assert int(ib["nfe"]) < int(ia["nfe"].max()), (ib["nfe"], ia["nfe"])


def test_batch_mode_chunks_and_errors():
    p, _, pred = ring()
    _, info = sf.sample(
        jr.key(0),
        p,
        pred,
        (2,),
        num=10,
        adaptive="batch",
        batch_size=4,
        return_info=True,
        **_dopri(1e-3),
    )
    assert info["nfe"].shape == (3,)  # one count per chunk (each chunk a system)
    with pytest.raises(ValueError, match="needs an adaptive stepsize_controller"):
        sf.sample(jr.key(0), p, pred, (2,), num=2, steps=4, adaptive="batch")
    with pytest.raises(ValueError, match="method='ode' only"):
        sf.sample(
            jr.key(0),
            p,
            pred,
            (2,),
            num=2,
            method="sde",
            adaptive="batch",
            **_dopri(1e-3),
        )
    with pytest.raises(ValueError, match="'per_sample' or 'batch'"):
        sf.sample(jr.key(0), p, pred, (2,), num=2, adaptive="all", **_dopri(1e-3))


def test_dopri5_recipe_solves_to_tolerance():
    """On Gaussian data N(m, s^2 I) the CondOT flow is affine and known:
    X_u = u m + sqrt(u^2 s^2 + (1 - u)^2) z. dopri5 at atol = rtol = 1e-7 lands
    within ~1e-6 of it, as one system with torchdiffeq's controller."""
    m, s = np.array([1.0, -2.0]), 0.5

    def vf(u, x):  # the exact marginal velocity in their time
        var = u**2 * s**2 + (1 - u) ** 2
        dvar = 2 * u * s**2 - 2 * (1 - u)
        return jnp.asarray(m) + 0.5 * dvar / var * (x - u * jnp.asarray(m))

    pred = sf.peers.flow_matching_velocity(vf, "cond_ot")
    cfg = sf.peers.flow_matching_ode("cond_ot", method="dopri5", atol=1e-7, rtol=1e-7)
    opts = dict(cfg.options)
    assert opts["adaptive"] == "batch"
    assert opts["stepsize_controller"].error_order == 5
    u0, u1 = 1 - cfg.process.t1, 1 - cfg.process.t0
    x_init = np.random.default_rng(4).normal(size=(16, 2))
    xs, info = cfg.sample(
        jr.key(0), pred, (2,), num=16, noise=jnp.asarray(x_init), return_info=True
    )
    z = (x_init - u0 * m) / np.sqrt(u0**2 * s**2 + (1 - u0) ** 2)
    exact = u1 * m + np.sqrt(u1**2 * s**2 + (1 - u1) ** 2) * z
    np.testing.assert_allclose(xs, exact, atol=1e-5)
    assert info["nfe"].shape == ()


# --------------------------------------------------------------------------- #
# Against the real packages (pytest -m peers; needs torch, flow_matching)
# --------------------------------------------------------------------------- #


def _torch_vf(torch):
    w, b = torch.tensor(W, dtype=torch.float64), torch.tensor(B, dtype=torch.float64)

    def vf(x, t):
        return torch.tanh(x @ w.T + t * b) - 0.5 * x + t

    return vf


@pytest.mark.peers
@pytest.mark.parametrize("name,params", SCHEDULERS, ids=lambda v: str(v))
def test_peer_schedulers_and_path(name, params):
    torch = pytest.importorskip("torch")
    pytest.importorskip("flow_matching")
    from flow_matching.path import AffineProbPath, scheduler as fms

    cls = {
        "cond_ot": fms.CondOTScheduler,
        "polynomial": fms.PolynomialConvexScheduler,
        "vp": fms.VPScheduler,
        "linear_vp": fms.LinearVPScheduler,
        "cosine": fms.CosineScheduler,
    }[name]
    theirs = cls(**params)
    path = AffineProbPath(theirs)
    pred = sf.peers.flow_matching_velocity(vf_jax, theirs)  # their object, one call
    us = np.array([0.05, 0.2, 0.5, 0.8, 0.95])
    xs = np.random.default_rng(0).normal(size=(5, 2))
    ut = torch.tensor(us, dtype=torch.float64)
    xt = torch.tensor(xs, dtype=torch.float64)
    out = theirs(ut)
    ts = jnp.asarray(1 - us)
    np.testing.assert_allclose(
        jax.vmap(pred.process.alpha)(ts), out.alpha_t.numpy(), rtol=1e-6
    )
    np.testing.assert_allclose(
        jax.vmap(pred.process.sigma)(ts), out.sigma_t.numpy(), rtol=1e-6
    )
    v = _torch_vf(torch)(xt, ut[:, None])
    u_col = ut[:, None]
    np.testing.assert_allclose(
        jax.vmap(pred.velocity)(ts, jnp.asarray(xs)), -v.numpy(), rtol=1e-6
    )
    np.testing.assert_allclose(
        jax.vmap(pred.x0)(ts, jnp.asarray(xs)),
        path.velocity_to_target(v, xt, u_col).numpy(),
        rtol=1e-6,
        atol=1e-12,
    )
    np.testing.assert_allclose(
        jax.vmap(pred.eps)(ts, jnp.asarray(xs)),
        path.velocity_to_epsilon(v, xt, u_col).numpy(),
        rtol=1e-6,
        atol=1e-12,
    )


@pytest.mark.peers
@pytest.mark.parametrize(
    "method,step_size",
    [("midpoint", 0.3), ("euler", 0.25), ("rk4", 0.3), ("dopri5", None)],
)
def test_peer_ode_solver_sample(method, step_size):
    torch = pytest.importorskip("torch")
    pytest.importorskip("flow_matching")
    pytest.importorskip("torchdiffeq")
    from flow_matching.solver import ODESolver

    pred = sf.peers.flow_matching_velocity(vf_jax, "cond_ot")
    cfg = sf.peers.flow_matching_ode(
        "cond_ot", method=method, step_size=step_size, atol=1e-7, rtol=1e-7
    )
    p = cfg.process
    x_init = np.random.default_rng(1).normal(size=(6, 2))
    theirs = ODESolver(velocity_model=_torch_vf(torch)).sample(
        x_init=torch.tensor(x_init, dtype=torch.float64),
        step_size=step_size,
        method=method,
        atol=1e-7,
        rtol=1e-7,
        time_grid=torch.tensor([1 - p.t1, 1 - p.t0], dtype=torch.float64),
    )
    ours = cfg.sample(jr.key(0), pred, (2,), num=6, noise=jnp.asarray(x_init))
    if step_size is None:  # adaptive: the same to the tolerance, not to rounding
        np.testing.assert_allclose(ours, theirs.numpy(), atol=1e-5)
    else:
        np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-6)
