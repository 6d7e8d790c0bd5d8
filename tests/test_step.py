"""`sf.step` (one sampler step with given inputs) and `sf.sample(normals=...)` (given
per-step draws): every step is checked against the paper's update written here
independently, and a run of steps against `sf.sample` on the same grid."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import scoreflow as sf

P = sf.VP()
DATA = sf.toy.GaussianMixture(
    jnp.array([0.3, 0.7]),
    jnp.array([[-1.0, 0.5], [1.0, -0.5]]),
    jnp.stack([0.1 * jnp.eye(2)] * 2),
)
PRED = sf.Predictor(DATA.eps(P), P, "eps")
X = jnp.array([0.3, -0.2])
Z = jnp.array([0.5, 1.2])
GRID = jnp.array([0.8, 0.6, 0.5, 0.4, 0.3])


def _beta(t):
    return 0.1 + t * (20.0 - 0.1)


def _vp(t):
    """alpha, sigma, full log-SNR of the VP process from its beta schedule."""
    t = np.float64(t)
    a2 = np.exp(-(0.1 * t + 0.5 * (20.0 - 0.1) * t**2))
    return np.sqrt(a2), np.sqrt(1 - a2), np.log(a2 / (1 - a2))


def _x0_eps(t, x):
    x0, eps = PRED.hub(t, x, None)
    return np.asarray(x0), np.asarray(eps)


def test_ddpm_step_is_the_posterior_draw():
    ta, tb = 0.5, 0.4
    y = sf.step(sf.DDPM(), P, PRED, ta, tb, X, method="sde", normals=Z)
    x0, eps = _x0_eps(ta, X)
    _, _, la = _vp(ta)
    ab, sb, lb = _vp(tb)
    # Ho et al. 2020: mean and std of q(x_b | x_a, x0) in (x0, eps) form
    decay = np.exp(-(lb - la) / 2)
    want = ab * x0 + sb * decay * eps + sb * np.sqrt(1 - decay**2) * np.asarray(Z)
    np.testing.assert_allclose(y, want, rtol=1e-10)


def test_ddim_eta_step():
    ta, tb, eta = 0.6, 0.45, 0.7
    y = sf.step(sf.DDIM(eta=eta), P, PRED, ta, tb, X, method="sde", normals=Z)
    x0, eps = _x0_eps(ta, X)
    _, _, la = _vp(ta)
    ab, sb, lb = _vp(tb)
    c = eta * sb * np.sqrt(1 - np.exp(la - lb))  # Song et al. 2021, eq. 16
    want = ab * x0 + np.sqrt(sb**2 - c**2) * eps + c * np.asarray(Z)
    np.testing.assert_allclose(y, want, rtol=1e-10)
    # eta = 0 and method="ode": the deterministic DDIM step
    y0 = sf.step(sf.DDIM(), P, PRED, ta, tb, X)
    np.testing.assert_allclose(y0, ab * x0 + sb * eps, rtol=1e-10)


def test_euler_maruyama_step():
    ta, tb = 0.5, 0.45
    y = sf.step(diffrax.Euler(), P, PRED, ta, tb, X, method="sde", normals=Z)
    score = np.asarray(PRED.score(ta, X, None))
    b = _beta(ta)
    drift = -0.5 * b * np.asarray(X) - b * score  # f - g^2 score
    dt = ta - tb
    want = np.asarray(X) - drift * dt + np.sqrt(b) * np.sqrt(dt) * np.asarray(Z)
    np.testing.assert_allclose(y, want, rtol=1e-10)


def test_dpmpp2m_step_with_history():
    """Lu et al. 2022, Algorithm 2, second step, with the first point given."""
    t_prev, ta, tb = 0.5, 0.4, 0.3
    x_prev = jnp.array([0.1, 0.4])
    m_prev, _ = _x0_eps(t_prev, x_prev)
    y = sf.step(
        sf.DPMSolverPP2M(), P, PRED, ta, tb, X, history=[(t_prev, x_prev, m_prev)]
    )
    m, _ = _x0_eps(ta, X)
    lp, la, lb = (_vp(t)[2] / 2 for t in (t_prev, ta, tb))
    ab, sb, _ = _vp(tb)
    sa = _vp(ta)[1]
    h, r = lb - la, (la - lp) / (lb - la)
    d = (1 + 1 / (2 * r)) * m - m_prev / (2 * r)
    want = sb / sa * np.asarray(X) - ab * np.expm1(-h) * d
    np.testing.assert_allclose(y, want, rtol=1e-10)


@pytest.mark.parametrize(
    "solver", [sf.DPMSolverPP2M(), sf.DPMSolverPP3M(), sf.IPNDM(), sf.LMS()]
)
def test_history_chain_equals_sample(solver):
    """Steps with the history given by hand retrace `sf.sample` on the same grid."""
    want = sf.sample(
        None, P, PRED, (2,), num=1, solver=solver, time_grid=GRID, noise=X[None]
    )[0]
    x, history = X, []
    for ta, tb in zip(GRID[:-1], GRID[1:]):
        x_next = sf.step(solver, P, PRED, ta, tb, x, history=history)
        history = [(ta, x, PRED.x0(ta, x))] + history
        x = x_next
    np.testing.assert_allclose(x, want, rtol=1e-10)


def test_unipc_state_chain_and_history():
    solver = sf.UniPC()
    want = sf.sample(
        None, P, PRED, (2,), num=1, solver=solver, time_grid=GRID, noise=X[None]
    )[0]
    x, state = X, None
    history = []
    for ta, tb in zip(GRID[:-1], GRID[1:]):
        if history:  # a fresh state from the history gives the same step
            alt = sf.step(solver, P, PRED, ta, tb, x, history=history)
        x_next, state_next = sf.step(
            solver, P, PRED, ta, tb, x, state=state, return_state=True
        )
        if history:
            np.testing.assert_allclose(alt, x_next, rtol=1e-10)
        # UniPC's history point is the (corrected) state it stepped from, kept in
        # its state, with the model's data prediction at the uncorrected one
        history = [(ta, state_next[3], PRED.x0(ta, x))] + history
        x, state = x_next, state_next
    np.testing.assert_allclose(x, want, rtol=1e-10)


def test_sample_replays_given_normals():
    zs = jax.random.normal(jax.random.key(1), (3, 4, 2), jnp.float64)
    x0s = jnp.zeros((3, 2))
    for solver in (sf.DDPM(), diffrax.Euler()):
        ys = sf.sample(
            None,
            P,
            PRED,
            (2,),
            num=3,
            method="sde",
            solver=solver,
            time_grid=GRID,
            noise=x0s,
            normals=zs,
        )
        for i in range(3):
            x = x0s[i]
            for j, (ta, tb) in enumerate(zip(GRID[:-1], GRID[1:])):
                x = sf.step(solver, P, PRED, ta, tb, x, method="sde", normals=zs[i, j])
            np.testing.assert_allclose(ys[i], x, rtol=1e-10)


def test_predictor_corrector_reads_k_normals():
    solver = sf.PredictorCorrector(corrector_steps=2, norms="sample")
    assert solver.normals_per_step() == 3
    zs = jax.random.normal(jax.random.key(2), (2, 4, 3, 2), jnp.float64)
    ys = sf.sample(
        None,
        P,
        PRED,
        (2,),
        num=2,
        method="sde",
        solver=solver,
        time_grid=GRID,
        noise=jnp.ones((2, 2)),
        normals=zs,
    )
    x = jnp.ones(2)
    for j, (ta, tb) in enumerate(zip(GRID[:-1], GRID[1:])):
        x = sf.step(solver, P, PRED, ta, tb, x, method="sde", normals=zs[0, j])
    np.testing.assert_allclose(ys[0], x, rtol=1e-10)
    # each draw matters (none is read twice or skipped)
    for k in range(3):
        bumped = zs.at[0, 1, k].add(1.0)
        other = sf.sample(
            None,
            P,
            PRED,
            (2,),
            num=2,
            method="sde",
            solver=solver,
            time_grid=GRID,
            noise=jnp.ones((2, 2)),
            normals=bumped,
        )
        assert not np.allclose(other[0], ys[0])


def test_key_none_deterministic():
    a = sf.sample(None, P, PRED, (2,), num=2, steps=4, noise=jnp.ones((2, 2)))
    b = sf.sample(
        jax.random.key(3), P, PRED, (2,), num=2, steps=4, noise=jnp.ones((2, 2))
    )
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(key=None), "key=None"),
        (dict(key=None, noise=jnp.ones((2, 2)), method="sde"), "key=None"),
        (dict(normals=jnp.ones((2, 4, 2))), "method='sde'"),
        (
            dict(method="sde", normals=jnp.ones((2, 3, 2))),
            r"must have shape \(2, 4, 1, 2\)",
        ),
        (
            dict(method="sde", normals=jnp.ones((2, 4, 2)), solver=diffrax.ShARK()),
            "Lévy area",
        ),
        (
            dict(method="sde", normals=jnp.ones((2, 4, 2)), brownian="tree"),
            "fixed grid",
        ),
    ],
)
def test_bad_normals_and_keys(kwargs, match):
    args = dict(key=jax.random.key(0), num=2, steps=4)
    args.update(kwargs)
    key = args.pop("key")
    with pytest.raises(ValueError, match=match):
        sf.sample(key, P, PRED, (2,), **args)


def test_step_bad_inputs():
    with pytest.raises(ValueError, match="keeps no history"):
        sf.step(sf.DDIM(), P, PRED, 0.5, 0.4, X, history=[(0.6, X, X)])
    with pytest.raises(ValueError, match="keeps no history"):
        sf.step(diffrax.Heun(), P, PRED, 0.5, 0.4, X, history=[(0.6, X, X)])
    with pytest.raises(ValueError, match="needs the step's normal draws"):
        sf.step(sf.DDPM(), P, PRED, 0.5, 0.4, X, method="sde")
    with pytest.raises(ValueError, match="method='sde'"):
        sf.step(sf.DDPM(), P, PRED, 0.5, 0.4, X, normals=Z)
    with pytest.raises(ValueError, match="triple"):
        sf.step(sf.DPMSolverPP2M(), P, PRED, 0.5, 0.4, X, history=[(0.6, X)])
