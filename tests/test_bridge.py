"""Stochastic interpolants and bridges: derived coefficients against hand-written
closed forms, the exact Gaussian velocity as an oracle for the loss and the
transport, couplings, and a small trained bridge between two toy sets."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import sympy

import scoreflow as sf

T = np.linspace(0.01, 0.99, 37)


def _brownian(a):
    g = lambda t: np.sqrt(a * t * (1 - t))
    gd = lambda t: a * (1 - 2 * t) / (2 * np.sqrt(a * t * (1 - t)))
    return g, gd


# (interpolant, alpha, beta, gamma, alpha', beta', gamma'), all hand-written.
def _cases():
    h = np.pi / 2
    zero = lambda t: 0 * t
    g, gd = _brownian(0.7)
    return {
        "linear": (
            sf.StochasticInterpolant.linear(),
            lambda t: 1 - t,
            lambda t: t,
            zero,
            lambda t: -1 + 0 * t,
            lambda t: 1 + 0 * t,
            zero,
        ),
        "trig": (
            sf.StochasticInterpolant.trig(),
            lambda t: np.cos(h * t),
            lambda t: np.sin(h * t),
            zero,
            lambda t: -h * np.sin(h * t),
            lambda t: h * np.cos(h * t),
            zero,
        ),
        "linear-brownian": (
            sf.StochasticInterpolant.linear(sf.brownian_gamma(0.7)),
            lambda t: 1 - t,
            lambda t: t,
            g,
            lambda t: -1 + 0 * t,
            lambda t: 1 + 0 * t,
            gd,
        ),
        "trig-brownian": (
            sf.StochasticInterpolant.trig("brownian"),
            lambda t: np.cos(h * t),
            lambda t: np.sin(h * t),
            _brownian(1.0)[0],
            lambda t: -h * np.sin(h * t),
            lambda t: h * np.cos(h * t),
            _brownian(1.0)[1],
        ),
    }


@pytest.mark.parametrize("name", ["linear", "trig", "linear-brownian", "trig-brownian"])
def test_derived_coefficients_match_closed_forms(name):
    si, a, b, g, ad, bd, gd = _cases()[name]
    t = jnp.asarray(T)
    for fn, ref in [
        (si.alpha, a),
        (si.beta, b),
        (si.gamma, g),
        (si.alpha_dot, ad),
        (si.beta_dot, bd),
        (si.gamma_dot, gd),
    ]:
        np.testing.assert_allclose(fn(t), ref(T), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(si.gamma2_dot(t), 2 * g(T) * gd(T), atol=1e-10)
    # Endpoint values, and the product gamma * gamma' finite at the ends.
    ends = jnp.array([0.0, 1.0])
    np.testing.assert_allclose(si.alpha(ends), [1, 0], atol=1e-15)
    np.testing.assert_allclose(si.beta(ends), [0, 1], atol=1e-15)
    np.testing.assert_allclose(si.gamma(ends), [0, 0], atol=1e-15)
    assert np.all(np.isfinite(si.gamma2_dot(ends)))
    assert si.singular_ends == name.endswith("brownian")


def test_float32_and_jit():
    si = sf.StochasticInterpolant.linear("brownian")
    t = jnp.linspace(0, 1, 11, dtype=jnp.float32)
    out = eqx.filter_jit(lambda s, t: (s.gamma(t), s.gamma2_dot(t), s.alpha(t)))(si, t)
    assert all(o.dtype == jnp.float32 and jnp.all(jnp.isfinite(o)) for o in out)


def test_params_are_leaves():
    c = sympy.Symbol("c", positive=True)
    si = sf.StochasticInterpolant(
        1 - sf.t, sf.t, sympy.sqrt(c * sf.t * (1 - sf.t)), params={c: 0.3}
    )
    np.testing.assert_allclose(si.gamma(0.5), math.sqrt(0.3 / 4))
    grad = eqx.filter_grad(lambda s: s.gamma(0.5))(si)
    np.testing.assert_allclose(grad.params["c"], 0.25 / math.sqrt(0.3))


@pytest.mark.parametrize(
    "args, match",
    [
        ((1 + sf.t, sf.t), r"alpha\(1\) = 0"),
        ((2 - sf.t, sf.t), r"alpha\(0\) = 1"),
        ((1 - sf.t, sf.t**2 + 0.5 * sf.t), r"beta\(1\) = 1"),
        ((1 - sf.t, sf.t, sf.t), r"gamma\(1\) = 0"),
        ((1 - sf.t, sf.t, sf.t * (1 - sf.t) * (sf.t - 0.5)), r"gamma\(t\) >= 0"),
        ((1 - sf.t, sf.t, sympy.sqrt(sf.t * (sf.t - 0.5) * (1 - sf.t))), "not real"),
        ((1 - sf.t, sf.t, sf.t * (1 - sf.t) / (sf.t - 0.5) ** 2), "not finite"),
        ((1 - sf.t, sf.t * sympy.Symbol("k")), "free symbol"),
    ],
)
def test_declaration_errors_quote_the_expression(args, match):
    with pytest.raises(ValueError, match=match):
        sf.StochasticInterpolant(*args)


def test_interpolate_endpoints_and_tong_velocity(getkey):
    sigma = 0.6
    si = sf.StochasticInterpolant.linear(sf.brownian_gamma(sigma**2))
    x0, x1 = jr.normal(getkey(), (5, 3)), jr.normal(getkey(), (5, 3)) + 2
    for t, want in [(0.0, x0), (1.0, x1)]:
        xt, _ = si.interpolate(getkey(), x0, x1, t)
        np.testing.assert_allclose(xt, want, atol=1e-12)
    t = jr.uniform(getkey(), (5,), minval=0.01, maxval=0.99)
    xt, z = si.interpolate(getkey(), x0, x1, t)
    tt = t[:, None]
    # Tong et al. (2024), eq. for u_t of SB-CFM.
    mu = tt * x1 + (1 - tt) * x0
    u = (1 - 2 * tt) / (2 * tt * (1 - tt)) * (xt - mu) + (x1 - x0)
    np.testing.assert_allclose(si.velocity_target(t, x0, x1, z), u, rtol=1e-9)


def test_gamma_zero_reduces_to_rectified_flow(getkey):
    si, rf = sf.StochasticInterpolant.linear(), sf.RectifiedFlow()
    x0, eps = jr.normal(getkey(), (4, 2)), jr.normal(getkey(), (4, 2))
    t = jnp.array([0.1, 0.4, 0.7, 0.9])
    xt, _ = si.interpolate(getkey(), x0, eps, t)
    tt = t[:, None]
    np.testing.assert_allclose(xt, rf.alpha(tt) * x0 + rf.sigma(tt) * eps)
    np.testing.assert_allclose(
        si.velocity_target(t, x0, eps, 0 * x0),
        rf.alpha_dot(tt) * x0 + rf.sigma_dot(tt) * eps,
    )


# --------------------------------------------------------------------------- #
# The Gaussian oracle: x0 ~ N(m0, S0), x1 ~ N(m1, S1), z ~ N(0, I) independent.
# x_t ~ N(mu_t, C_t), C_t = a^2 S0 + b^2 S1 + g^2 I, and (V, x_t) jointly Gaussian
# with Cov(V, x_t) = a a' S0 + b b' S1 + g g' I = C_t' / 2, so
# b(t, x) = mu_t' + (C_t'/2) C_t^{-1} (x - mu_t),  E[z | x_t] = g C_t^{-1}(x - mu_t).
# --------------------------------------------------------------------------- #

M0, M1 = np.array([-2.0, 0.5]), np.array([1.5, -1.0])
S0 = np.array([[0.6, 0.2], [0.2, 0.3]])
S1 = np.array([[0.4, -0.25], [-0.25, 1.2]])


class ExactVelocity(eqx.Module):
    si: sf.StochasticInterpolant
    m0: jax.Array
    m1: jax.Array
    s0: jax.Array
    s1: jax.Array
    perturb: jax.Array  # a scalar c: b + c * (A x + v)

    def moments(self, t):
        a, b, g = self.si.alpha(t), self.si.beta(t), self.si.gamma(t)
        ad, bd, g2d = self.si.alpha_dot(t), self.si.beta_dot(t), self.si.gamma2_dot(t)
        eye = jnp.eye(2)
        mu = a * self.m0 + b * self.m1
        mud = ad * self.m0 + bd * self.m1
        cov = a**2 * self.s0 + b**2 * self.s1 + g**2 * eye
        half_covd = a * ad * self.s0 + b * bd * self.s1 + g2d / 2 * eye
        return mu, mud, cov, half_covd

    def __call__(self, t, x):
        mu, mud, cov, half_covd = self.moments(t)
        b = mud + half_covd @ jnp.linalg.solve(cov, x - mu)
        h = jnp.array([[0.3, -0.7], [0.5, 0.2]]) @ x + jnp.array([0.4, -0.1])
        return b + self.perturb * h


class ExactDenoiser(eqx.Module):
    exact: ExactVelocity
    perturb: jax.Array = eqx.field(default_factory=lambda: jnp.zeros(()))

    def __call__(self, t, x):
        mu, _, cov, _ = self.exact.moments(t)
        eta = self.exact.si.gamma(t) * jnp.linalg.solve(cov, x - mu)
        return eta + self.perturb * (jnp.array([[0.2, 0.5], [-0.6, 0.1]]) @ x + 0.3)


def _exact(si, perturb=0.0):
    arr = lambda v: jnp.asarray(v, jnp.float64)
    return ExactVelocity(si, arr(M0), arr(M1), arr(S0), arr(S1), arr(perturb))


def _gauss(key, m, s, n):
    return jr.multivariate_normal(key, jnp.asarray(m), jnp.asarray(s), (n,))


ORACLE_CASES = {
    "linear-brownian": lambda: sf.StochasticInterpolant.linear(sf.brownian_gamma(0.5)),
    "trig": lambda: sf.StochasticInterpolant.trig(),
}


@pytest.mark.parametrize("name", sorted(ORACLE_CASES))
def test_exact_velocity_is_a_stationary_point_of_the_loss(name, getkey):
    si = ORACLE_CASES[name]()
    loss = sf.bridge_loss(si)
    grad = eqx.filter_jit(
        lambda m, x0, x1, k: eqx.filter_grad(lambda m: loss(m, x0, x1, k))(m).perturb
    )
    n, reps = 4096, 12
    gs, wrong = [], []
    for _ in range(reps):
        x0 = _gauss(getkey(), M0, S0, n)
        x1 = _gauss(getkey(), M1, S1, n)
        k = getkey()
        gs.append(grad(_exact(si), x0, x1, k))
        # Test power: a wrong velocity (here shifted by 0.2 h) has a clear gradient.
        wrong.append(grad(_exact(si, 0.2), x0, x1, k))
    gs, wrong = np.asarray(gs), np.asarray(wrong)
    se = gs.std(ddof=1) / math.sqrt(reps)
    print(
        f"{name}: dL/dc at exact b = {gs.mean():.2e} +- {se:.1e}; "
        f"at c=0.2: {wrong.mean():.3f}"
    )
    assert abs(gs.mean()) < 4 * se
    assert wrong.mean() > 10 * se + abs(gs.mean())


def test_exact_denoiser_is_a_stationary_point_of_the_score_loss(getkey):
    si = ORACLE_CASES["linear-brownian"]()
    loss = sf.bridge_loss(si, objective="velocity+score")

    @eqx.filter_jit
    def grad(c, x0, x1, k):
        exact = _exact(si)
        f = lambda c: loss((exact, ExactDenoiser(exact, c)), x0, x1, k)
        return jax.grad(f)(c)

    gs, wrong = [], []
    for _ in range(12):
        x0, x1 = _gauss(getkey(), M0, S0, 4096), _gauss(getkey(), M1, S1, 4096)
        k = getkey()
        gs.append(grad(jnp.zeros(()), x0, x1, k))
        wrong.append(grad(jnp.asarray(0.2), x0, x1, k))
    gs, wrong = np.asarray(gs), np.asarray(wrong)
    se = gs.std(ddof=1) / math.sqrt(len(gs))
    print(
        f"dL/dc at exact eta = {gs.mean():.2e} +- {se:.1e}; at c=0.2: {wrong.mean():.3f}"
    )
    assert abs(gs.mean()) < 4 * se
    assert wrong.mean() > 10 * se + abs(gs.mean())


def _eps_schedule(t):
    return 2 * t * (1 - t)  # a time-dependent noise level, vanishing at the ends


@pytest.mark.parametrize(
    "name, method, direction, eps",
    [
        ("linear-brownian", "ode", "forward", 0.5),
        ("trig", "ode", "backward", 0.5),
        ("linear-brownian", "sde", "forward", 0.5),
        ("linear-brownian", "sde", "backward", 0.5),
        ("linear-brownian", "sde", "forward", _eps_schedule),
    ],
)
def test_exact_transport_maps_gaussian_to_gaussian(
    name, method, direction, eps, getkey
):
    si = ORACLE_CASES[name]()
    exact = _exact(si)
    model = exact if method == "ode" else (exact, ExactDenoiser(exact))
    n = 2000
    src, dst = ((M0, S0), (M1, S1)) if direction == "forward" else ((M1, S1), (M0, S0))
    x = _gauss(getkey(), *src, n)
    y = sf.transport(
        getkey(), si, model, x, method=method, eps=eps, direction=direction, steps=100
    )
    ref = _gauss(getkey(), *dst, n)
    fd = float(sf.metrics.frechet_distance(y, ref))
    floor = float(sf.metrics.frechet_distance(_gauss(getkey(), *dst, n), ref))
    exact_fd = float(
        sf.metrics.frechet_distance_gaussians(
            jnp.mean(y, 0), jnp.cov(y.T), jnp.asarray(dst[0]), jnp.asarray(dst[1])
        )
    )
    print(
        f"{name} {method} {direction}: FD {fd:.2e} (floor {floor:.2e}), "
        f"FD to the exact law {exact_fd:.2e}"
    )
    assert np.all(np.isfinite(y))
    assert fd < 4 * floor + 1e-3
    assert exact_fd < 0.02


@pytest.mark.parametrize("name", sorted(ORACLE_CASES))
def test_exact_ode_flow_pushes_the_law_forward(name):
    # With the exact (linear) b the flow map is affine, y = A x + c: read A and c off
    # three points and check A m0 + c = m1, A S0 A^T = S1 at the population level,
    # and that Heun's error falls at its order 2.
    si = ORACLE_CASES[name]()
    pts = jnp.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    errs = []
    for steps in (50, 100):
        y = sf.transport(None, si, _exact(si), pts, steps=steps)
        c, A = y[0], (y[1:] - y[0]).T
        errs.append(
            max(
                float(jnp.max(jnp.abs(A @ M0 + c - M1))),
                float(jnp.max(jnp.abs(A @ S0 @ A.T - S1))),
            )
        )
    order = math.log2(errs[0] / errs[1])
    print(
        f"{name}: pushforward error {errs[0]:.1e} (50 steps), {errs[1]:.1e} (100); "
        f"order {order:.2f}"
    )
    assert errs[1] < 1e-3
    assert -0.4 < order - 2 < 0.4


def test_ode_transport_is_invertible(getkey):
    si = ORACLE_CASES["linear-brownian"]()
    exact = _exact(si)
    x = _gauss(getkey(), M0, S0, 64)
    y, path = sf.transport(None, si, exact, x, steps=100, return_path=True)
    back = sf.transport(None, si, exact, y, steps=100, direction="backward")
    assert path.shape == (101, 64, 2)
    np.testing.assert_allclose(path[0], x)
    np.testing.assert_allclose(path[-1], y)
    np.testing.assert_allclose(back, x, atol=1e-6)


# --------------------------------------------------------------------------- #
# Couplings and the loss surface
# --------------------------------------------------------------------------- #


def test_couplings_order_transport_cost(getkey):
    pytest.importorskip("ott")
    si = sf.StochasticInterpolant.linear(sf.brownian_gamma(0.5))
    x0 = sf.toy.two_moons(getkey(), 256)
    x1 = sf.toy.ring(getkey(), 256, radius=2.0, std=0.1)
    cost = {}
    for c in ("independent", "sb", "ot"):
        loss = sf.bridge_loss(si, coupling=c)
        y = loss.pair(getkey(), x0, x1)
        cost[c] = float(jnp.mean(jnp.sum((y - x0) ** 2, -1)))
    print("mean squared pair distance:", cost)
    assert cost["ot"] < cost["sb"] < cost["independent"]
    # Tong et al.: the SB regularisation is 2 sigma^2 = 2 a.
    assert sf.bridge_loss(si, coupling="sb").epsilon == pytest.approx(1.0)


def test_loss_signatures_and_errors(getkey):
    si = sf.StochasticInterpolant.linear("brownian")
    net = sf.nets.MLP(2, width=16, depth=1, key=getkey())
    x0, x1 = jr.normal(getkey(), (8, 2)), jr.normal(getkey(), (8, 2))
    k = getkey()
    loss = sf.bridge_loss(si, objective="velocity+score")
    a = loss((net, net), x0, x1, k)
    b = loss((net, net), jnp.stack([x0, x1], 1), k)
    np.testing.assert_allclose(a, b)
    assert np.isfinite(a)
    with pytest.raises(ValueError, match="coupling"):
        sf.bridge_loss(si, coupling="exact")
    with pytest.raises(ValueError, match="gamma = 0"):
        sf.bridge_loss(sf.StochasticInterpolant.linear(), objective="velocity+score")
    with pytest.raises(ValueError, match="t_min"):
        sf.bridge_loss(si, t_min=0.0)
    with pytest.raises(ValueError, match="velocity, denoiser"):
        sf.transport(getkey(), si, net, x0, method="sde")
    with pytest.raises(ValueError, match="eps must be >= 0"):
        sf.transport(getkey(), si, (net, net), x0, method="sde", eps=-0.1)
    # transport is jit-compatible (strings and ints are static under filter_jit).
    y = eqx.filter_jit(sf.transport)(None, si, net, x0, steps=4)
    np.testing.assert_allclose(y, sf.transport(None, si, net, x0, steps=4), rtol=1e-6)


# --------------------------------------------------------------------------- #
# A trained bridge: two moons -> eight Gaussians on a ring (as examples/bridge_2d.py)
# --------------------------------------------------------------------------- #


def _toy_sets(key, n):
    k0, k1 = jr.split(key)
    x0 = sf.toy.two_moons(k0, n) * 1.5 - jnp.array([0.75, 0.4])
    return x0, sf.toy.ring(k1, n, radius=2.0, std=0.15)


def _train_and_transport(coupling, steps, width, n_test=1000, batch_size=256):
    pytest.importorskip("ott")
    k = jr.split(jr.key(0), 5)
    x0, x1 = _toy_sets(k[0], 4096)
    si = sf.StochasticInterpolant.linear()
    net = sf.nets.MLP(2, width=width, depth=2, key=k[1])
    res = sf.train.fit(
        sf.bridge_loss(si, coupling=coupling),
        net,
        jnp.stack([x0, x1], 1),
        key=k[2],
        steps=steps,
        batch_size=batch_size,
        learning_rate=2e-3,
        ema_decay=0.98,
        progress=False,
    )
    src, ref = _toy_sets(k[3], n_test)
    y = sf.transport(None, si, res.ema, src, steps=32)
    fd = float(sf.metrics.frechet_distance(y, ref))
    floor = float(sf.metrics.frechet_distance(_toy_sets(k[4], n_test)[1], ref))
    cost = float(jnp.mean(jnp.sum((y - src) ** 2, -1)))
    print(
        f"{coupling}, {steps} steps: FD {fd:.4f} (floor {floor:.4f}, source "
        f"{float(sf.metrics.frechet_distance(src, ref)):.3f}), mean |T(x0)-x0|^2 "
        f"{cost:.3f} (independent pairs {float(jnp.mean(jnp.sum((ref - src) ** 2, -1))):.3f})"
    )
    assert np.all(np.isfinite(y))
    return fd, floor, cost, src, ref


def test_trained_ot_bridge_reaches_the_target():
    fd, floor, cost, src, ref = _train_and_transport(
        "ot", steps=200, width=64, batch_size=128
    )
    assert fd < 0.05  # the source set is at FD 0.66; the floor is about 0.003
    # Far below the cost of independent pairs (about 5.4 here).
    assert cost < 0.25 * float(jnp.mean(jnp.sum((ref - src) ** 2, -1)))


@pytest.mark.slow
def test_ot_coupling_lowers_the_transport_cost():
    fd_ot, floor, cost_ot, _, _ = _train_and_transport(
        "ot", steps=3000, width=128, n_test=4000
    )
    fd_ind, _, cost_ind, _, _ = _train_and_transport(
        "independent", steps=3000, width=128, n_test=4000
    )
    assert fd_ot < 3 * floor and fd_ind < 3 * floor
    assert cost_ot < 0.85 * cost_ind
