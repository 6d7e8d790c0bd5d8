"""Samplers: convergence orders from the same initial noise (exact mixture
predictor, so the only error is discretisation), equivalences and distributions."""

import functools

import diffrax
import helpers
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import scoreflow as sf
from scoreflow import metrics, toy


@functools.cache
def setup():
    p = helpers.builtin("VP")
    gm = toy.ring_mixture()
    pred = sf.Predictor(lambda t, x: gm.eps(p)(t, x), p, prediction="eps")
    return p, gm, pred


NUM = 16


@functools.cache
def reference():
    """The PF-ODE solution from the same initial noise, to ~1e-10."""
    p, _, pred = setup()
    return sf.sample(
        jr.key(0),
        p,
        pred,
        (2,),
        num=NUM,
        solver=diffrax.Tsit5(),
        stepsize_controller=diffrax.PIDController(rtol=1e-11, atol=1e-11),
        max_steps=100_000,
    )


def fitted_order(solver, grid_fn, steps):
    p, _, pred = setup()
    ref = reference()
    errs = []
    for n in steps:
        xs = sf.sample(
            jr.key(0), p, pred, (2,), num=NUM, solver=solver, time_grid=grid_fn(p, n)
        )
        errs.append(float(jnp.mean(jnp.linalg.norm(xs - ref, axis=-1))))
    return -np.polyfit(np.log(steps), np.log(errs), 1)[0], errs


ORDER_CASES = [
    pytest.param("heun", diffrax.Heun(), sf.uniform_grid, (16, 32, 64), 2, id="heun"),
    pytest.param(
        "dpm++2m", sf.DPMSolverPP2M(), sf.log_snr_grid, (32, 64, 128), 2, id="dpm++2m"
    ),
    pytest.param(
        "euler",
        diffrax.Euler(),
        sf.uniform_grid,
        (16, 32, 64),
        1,
        id="euler",
        marks=pytest.mark.slow,
    ),
    pytest.param(
        "ddim",
        sf.DDIM(),
        sf.log_snr_grid,
        (16, 32, 64),
        1,
        id="ddim",
        marks=pytest.mark.slow,
    ),
    pytest.param(
        "edm-heun",
        sf.EDMHeun(),
        sf.edm_grid,
        (32, 64, 128),
        2,
        id="edm-heun",
        marks=pytest.mark.slow,
    ),
]


@pytest.mark.parametrize("name,solver,grid_fn,steps,expected", ORDER_CASES)
def test_convergence_order(name, solver, grid_fn, steps, expected):
    order, errs = fitted_order(solver, grid_fn, steps)
    assert abs(order - expected) < 0.4, (name, order, errs)


def test_ddim_eta1_is_ddpm_and_ddim_eta0_is_deterministic():
    p, _, pred = setup()
    kw = dict(num=8, method="sde", steps=5)
    a = sf.sample(jr.key(4), p, pred, (2,), solver=sf.DDIM(eta=1.0), **kw)
    b = sf.sample(jr.key(4), p, pred, (2,), solver=sf.DDPM(), **kw)
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    # eta = 0 under method="sde" ignores the Brownian path: equals the ODE run.
    c = sf.sample(jr.key(4), p, pred, (2,), solver=sf.DDIM(), **kw)
    d = sf.sample(jr.key(4), p, pred, (2,), num=8, steps=5, solver=sf.DDIM())
    np.testing.assert_allclose(c, d, rtol=1e-12, atol=1e-12)
    assert not np.allclose(a, c)


def _fd_ok(xs, gm, n):
    draw = jax.jit(lambda k, n: gm.sample(k, n), static_argnums=1)
    floor = [
        metrics.frechet_distance_gaussians(
            jnp.mean(y, 0), jnp.cov(y.T), gm.mean(), gm.cov()
        )
        for y in (draw(jr.key(50 + r), n) for r in range(8))
    ]
    fd = metrics.frechet_distance_gaussians(
        jnp.mean(xs, 0), jnp.cov(xs.T), gm.mean(), gm.cov()
    )
    assert np.all(np.isfinite(xs))
    assert fd < np.mean(floor) + 4 * np.std(floor), (fd, np.mean(floor), np.std(floor))


STOCHASTIC = [
    pytest.param(sf.DDPM(), sf.uniform_grid, 200, id="ddpm"),
    pytest.param(
        sf.DDIM(eta=0.5), sf.uniform_grid, 100, id="ddim-eta0.5", marks=pytest.mark.slow
    ),
    pytest.param(
        sf.PredictorCorrector(), sf.uniform_grid, 200, id="pc", marks=pytest.mark.slow
    ),
    pytest.param(
        sf.EDMHeun(gamma=0.2, s_tmax=10.0),
        sf.edm_grid,
        40,
        id="edm-churn",
        marks=[
            pytest.mark.slow,
            pytest.mark.xfail(
                reason="known bug: NaN when churn is restricted by s_tmax (gamma=0.2 everywhere works); under investigation",
                strict=False,
            ),
        ],
    ),
    pytest.param(
        sf.EDMHeun(gamma=0.2),
        sf.edm_grid,
        40,
        id="edm-churn-everywhere",
        marks=pytest.mark.slow,
    ),
    pytest.param(
        diffrax.ShARK(), sf.uniform_grid, 100, id="shark", marks=pytest.mark.slow
    ),
    pytest.param(
        diffrax.SRA1(), sf.uniform_grid, 100, id="sra1", marks=pytest.mark.slow
    ),
]


@pytest.mark.parametrize("solver,grid_fn,steps", STOCHASTIC)
def test_stochastic_samplers_reproduce_data(solver, grid_fn, steps):
    p, gm, pred = setup()
    n = 1024
    xs = sf.sample(
        jr.key(9),
        p,
        pred,
        (2,),
        num=n,
        method="sde",
        solver=solver,
        time_grid=grid_fn(p, steps),
    )
    _fd_ok(xs, gm, n)


def test_stochastic_solver_without_brownian_path_errors():
    p, _, pred = setup()
    with pytest.raises(ValueError, match="Brownian path"):
        sf.sample(jr.key(0), p, pred, (2,), num=1, steps=2, solver=sf.DDIM(eta=0.3))
    with pytest.raises(ValueError, match=">= 0"):
        sf.DDIM(eta=-1.0)
