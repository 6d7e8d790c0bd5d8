"""Reverse-time dynamics as diffrax terms (flipped time s = t1 - t)."""

import warnings

import diffrax
import helpers
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import scoreflow as sf
from scoreflow import toy


def _gaussian(d=2, m=1.5, s=0.5):
    return toy.GaussianMixture(
        jnp.ones(1), jnp.full((1, d), m), (s**2 * jnp.eye(d))[None]
    )


def _pred(p, gm):
    return sf.Predictor(lambda t, x: gm.eps(p)(t, x), p, prediction="eps")


def test_probability_flow_sign_on_gaussian_data():
    """For Gaussian data N(m, s^2 I) the PF-ODE moves x_t to x_0 keeping the
    standardised value z = (x - alpha m) / sqrt(alpha^2 s^2 + sigma^2) fixed. A
    wrong sign of the drift or of the time flip sends x far away."""
    p = helpers.builtin("VP")
    m, s = 1.5, 0.5
    gm = _gaussian(m=m, s=s)
    term = sf.probability_flow(p, _pred(p, gm))
    t_start, t_end = 0.6, 0.05
    a0, s0 = p.alpha(t_start), p.sigma(t_start)
    a1, s1 = p.alpha(t_end), p.sigma(t_end)
    z = jnp.array([0.7, -1.3])
    x_start = a0 * m + jnp.sqrt(a0**2 * s**2 + s0**2) * z
    sol = diffrax.diffeqsolve(
        term,
        diffrax.Tsit5(),
        p.t1 - t_start,
        p.t1 - t_end,
        None,
        x_start,
        stepsize_controller=diffrax.PIDController(rtol=1e-10, atol=1e-10),
    )
    exact = a1 * m + jnp.sqrt(a1**2 * s**2 + s1**2) * z
    np.testing.assert_allclose(sol.ys[-1], exact, rtol=1e-7, atol=1e-7)


def test_reverse_sde_sign_and_noise_on_gaussian_data():
    """The reverse SDE (diffrax MultiTerm, VirtualBrownianTree in s, ShARK) brings
    N(0, I)-ish prior samples to N(m, s^2): mean and std within 5 standard errors.
    Wrong drift sign (or the forward SDE) drives the mean to 0 and the std to 1."""
    p = helpers.builtin("VP")
    m, s = 1.5, 0.5
    gm = _gaussian(d=1, m=m, s=s)
    pred = _pred(p, gm)
    n = 200

    def one(key):
        k1, k2 = jr.split(key)
        terms = sf.reverse_sde(p, pred, key=k2, shape=(1,))
        assert isinstance(terms, diffrax.MultiTerm)
        x1 = p.prior_sample(k1, (1,))
        sol = diffrax.diffeqsolve(
            terms,
            diffrax.ShARK(),
            0.0,
            p.t1 - p.t0,
            2e-2,
            x1,
            saveat=diffrax.SaveAt(t1=True),
        )
        return sol.ys[-1, 0]

    xs = jax.jit(jax.vmap(one))(jr.split(jr.key(3), n))
    assert abs(float(xs.mean()) - m) < 5 * s / np.sqrt(n)
    assert abs(float(xs.std()) - s) < 5 * s / np.sqrt(2 * n)


def test_reverse_dynamics_family_formula():
    """drift(s, x) = -[f x - (1 + eta^2)/2 g^2 score] at t = t1 - s; diffusion eta g;
    eta = 0 is probability_flow and eta = 1 reverse_sde."""
    p = helpers.builtin("VP")
    gm = toy.ring_mixture()
    pred = _pred(p, gm)
    s, x = 0.3, jnp.array([0.4, -1.0])
    t = p.t1 - s
    score = gm.score(p)(t, x)
    bm = diffrax.UnsafeBrownianPath((2,), jr.key(0))
    for eta in (0.0, 0.5, 1.0, 2.0):
        terms = sf.reverse_dynamics(p, pred, eta=eta, brownian_motion=bm)
        drift = terms if eta == 0 else terms.terms[0]
        want = -(p.f(t) * x - (1 + eta**2) / 2 * p.g2(t) * score)
        np.testing.assert_allclose(drift.vf(s, x, None), want, rtol=1e-12)
        if eta:
            op = terms.terms[1].vf(s, x, None)
            np.testing.assert_allclose(
                op.mv(jnp.ones(2)), eta * p.diffusion(t) * jnp.ones(2)
            )
    pf = sf.probability_flow(p, pred)
    assert isinstance(pf, diffrax.ODETerm)
    np.testing.assert_allclose(
        pf.vf(s, x, None), -(p.f(t) * x - 0.5 * p.g2(t) * score), rtol=1e-12
    )
    sde = sf.reverse_sde(p, pred, bm)
    np.testing.assert_allclose(
        sde.terms[0].vf(s, x, None), -(p.f(t) * x - p.g2(t) * score), rtol=1e-12
    )
    eta_fn = sf.reverse_dynamics(p, pred, eta=lambda t: 2 * t, brownian_motion=bm)
    np.testing.assert_allclose(
        eta_fn.terms[0].vf(s, x, None),
        -(p.f(t) * x - (1 + (2 * t) ** 2) / 2 * p.g2(t) * score),
        rtol=1e-12,
    )


def test_reverse_sde_needs_randomness():
    p = helpers.builtin("VP")
    pred = _pred(p, _gaussian())
    with pytest.raises(ValueError, match="needs randomness"):
        sf.reverse_sde(p, pred)


def test_samplers_declare_the_reverse_term_structure():
    """scoreflow's samplers declare `AbstractReverseTerm` as their diffrax
    `term_structure`: both forms of the reverse dynamics (the PF-ODE drift term and
    the SDE MultiTerm) qualify and step; a plain ODETerm is refused by diffrax's own
    check (`TermAndSolverIncompatible`), before any step runs. The SDE form stays a
    `diffrax.MultiTerm`, so diffrax's SDE solvers take it."""
    p = helpers.builtin("VP")
    pred = _pred(p, _gaussian())
    x1 = jnp.array([0.3, -0.2])
    s1 = p.t1 - p.t0
    ode = sf.probability_flow(p, pred)
    sde = sf.reverse_dynamics(p, pred, eta=1.0, key=jr.key(0), shape=(2,))
    assert isinstance(ode, sf.internal.AbstractReverseTerm)
    assert isinstance(sde, sf.internal.AbstractReverseTerm)
    assert isinstance(sde, diffrax.MultiTerm)
    assert sf.DDIM.term_structure is sf.internal.AbstractReverseTerm
    drift, noise = sde.reverse_parts()
    assert isinstance(drift, sf.internal.ReverseDrift) and noise is not None
    assert ode.reverse_parts() == (ode.vector_field, None)
    for terms, solver in [(ode, sf.DDIM()), (sde, sf.DDPM())]:
        with warnings.catch_warnings():  # DDPM is neither Ito nor Stratonovich
            warnings.simplefilter("ignore", UserWarning)
            sol = diffrax.diffeqsolve(terms, solver, 0.0, s1, s1 / 4, x1)
        assert np.all(np.isfinite(sol.ys))
    with pytest.raises(ValueError, match="not compatible with solver"):
        diffrax.diffeqsolve(
            diffrax.ODETerm(lambda s, x, a: -x), sf.DDIM(), 0.0, s1, s1 / 4, x1
        )
