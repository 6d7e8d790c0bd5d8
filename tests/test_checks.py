"""Tests for `sf.checks`: symbolic and autodiff Fokker–Planck / continuity residuals.

Oracles: exact Gaussian-mixture marginals (consistent by construction), hand-made
inconsistent pairs (another process's kernel, a wrong noise scale, a scaled
velocity or score), a known stationary density of a non-affine SDE, and a generic
sympy identity behind the symbolic shortcut.
"""

import helpers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sympy
from helpers import BUILTIN_NAMES, builtin

import scoreflow as sf
from scoreflow import checks, toy


def _mixture():
    w = jnp.array([0.35, 0.65])
    m = jnp.array([[-1.5, 0.5], [1.0, -0.8]])
    c = jnp.stack(
        [jnp.array([[0.6, 0.2], [0.2, 0.4]]), jnp.array([[0.3, -0.1], [-0.1, 0.8]])]
    )
    return toy.GaussianMixture(w, m, c)


def _points(p):
    """Three (t, x): near t0, in the middle, near t1; x typical of the marginal."""
    ts = jnp.array(
        [p.t0 + 1e-3 * (p.t1 - p.t0), 0.5 * p.t1, p.t0 + 0.95 * (p.t1 - p.t0)]
    )
    base = jnp.array([[0.3, -1.0], [1.2, 0.4], [-0.7, 0.9]])
    xs = jax.vmap(lambda t, b: p.alpha(t) * b + p.sigma(t) * b[::-1])(ts, base)
    return ts, xs


def _wrong_noise_log_prob(gm, p, factor):
    """The marginal with sigma(t) replaced by factor * sigma(t): wrong at every t."""

    def log_prob(t, x):
        a, s = p.alpha(t), factor * p.sigma(t)
        wrong = toy.GaussianMixture(
            gm.weights, a * gm.means, a**2 * gm.covs + s**2 * jnp.eye(gm.dim)
        )
        return wrong.log_prob(x)

    return log_prob


# --------------------------------------------------------------------------- #
# Symbolic
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("name", BUILTIN_NAMES)
@pytest.mark.parametrize("data", ["point", "gaussian"])
def test_symbolic_fp_builtins(name, data):
    r = checks.symbolic_fokker_planck(builtin(name), data=data)
    assert r.ok and bool(r)
    assert r.residual == 0
    assert all(v == 0 for v in r.conditions.values())
    assert r.proof == "symbolic"


def test_symbolic_fp_custom_and_hand_derived_kernel():
    t, x = sf.t, sf.x
    sde = sf.SDE(drift=-t * x, diffusion=sympy.sqrt(2 * t))
    assert checks.symbolic_fokker_planck(sde).residual == 0
    trig = sf.Interpolant(sympy.cos(sympy.pi * t / 2), sympy.sin(sympy.pi * t / 2))
    assert checks.symbolic_fokker_planck(trig).ok
    a = sympy.Symbol("a", positive=True)
    ou = sf.SDE(drift=-a * x, diffusion=sympy.sqrt(2 * a), params={a: 1.5})
    assert checks.symbolic_fokker_planck(ou).ok
    # A hand-derived kernel checked against an SDE: the OU kernel with g^2 = 2.
    kernel = sf.Interpolant(sympy.exp(-t), sympy.sqrt(1 - sympy.exp(-2 * t)))
    good = checks.symbolic_fokker_planck(
        sf.SDE(drift=-x, diffusion=sympy.sqrt(2)), kernel=kernel
    )
    assert good.ok and good.residual == 0
    bad = checks.symbolic_fokker_planck(sf.SDE(drift=-x, diffusion=1), kernel=kernel)
    assert not bad.ok and bad.residual != 0
    assert bad.conditions["alpha' - f alpha"] == 0
    # (sigma^2)' - 2 f sigma^2 - g^2 = 2 - 1
    assert sympy.simplify(bad.conditions["(sigma^2)' - 2 f sigma^2 - g^2"] - 1) == 0
    assert "INCONSISTENT" in str(bad)


def test_symbolic_fp_inconsistent_pairs():
    vp, sub = builtin("VP"), builtin("SubVP")
    r = checks.symbolic_fokker_planck(vp, kernel=sub)
    assert not r.ok and r.residual != 0
    assert r.conditions["alpha' - f alpha"] == 0  # same alpha, different sigma
    assert r.conditions["(sigma^2)' - 2 f sigma^2 - g^2"] != 0
    # Same family, different parameter values: the values are substituted.
    r2 = checks.symbolic_fokker_planck(vp, kernel=sf.VP(beta_max=10.0))
    assert not r2.ok and r2.residual.has(sf.x)
    # And a kernel from a process with another alpha.
    r3 = checks.symbolic_fokker_planck(builtin("VE"), kernel=builtin("EDM"))
    assert not r3.ok


def test_symbolic_shortcut_identity():
    """The affine-drift shortcut: for ell = log N(x; M, V), the log-form FP residual
    times V^2 equals C_V (u^2 - V)/2 + C_M u V, with u = x - M, C_M = M' - f M,
    C_V = V' - 2 f V - g^2 — for generic functions M, V, f, g^2."""
    t, x = sf.t, sf.x
    M, V, f, G = (sympy.Function(n)(t) for n in ("M", "V", "f", "G"))
    ell = -((x - M) ** 2) / (2 * V) - sympy.log(V) / 2
    dl = sympy.diff(ell, x)
    R = sympy.diff(ell, t) + f + f * x * dl - G / 2 * (sympy.diff(ell, x, 2) + dl**2)
    u = x - M
    C_M = sympy.diff(M, t) - f * M
    C_V = sympy.diff(V, t) - 2 * f * V - G
    assert (
        sympy.simplify(sympy.expand(R * V**2 - C_V * (u**2 - V) / 2 - C_M * u * V)) == 0
    )


def test_symbolic_fp_errors():
    with pytest.raises(ValueError, match="data"):
        checks.symbolic_fokker_planck(builtin("VP"), data="uniform")


@pytest.mark.slow
def test_symbolic_fp_non_affine():
    # A non-affine drift without a stationary density: no kernel to check, an error.
    forced = sf.SDE(drift=-(sf.x**3) + sf.t * sf.x, diffusion=sympy.sqrt(2))
    with pytest.raises(ValueError, match="no Gaussian kernel"):
        checks.symbolic_fokker_planck(forced)
    # A gradient drift has the stationary prior p ~ exp(-x^4 / 4): the check is of
    # the stationary equation, and it holds.
    cubic = sf.SDE(drift=-(sf.x**3), diffusion=sympy.sqrt(2))
    assert cubic.symbolic.stationary_log_density == -(sf.x**4) / 4
    assert checks.symbolic_fokker_planck(cubic).ok
    # A non-affine drift against a Gaussian kernel: the general path, not ok.
    r = checks.symbolic_fokker_planck(cubic, kernel=builtin("VE"))
    assert not r.ok


# --------------------------------------------------------------------------- #
# Numerical (autodiff) residuals
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("name", helpers.process_params(sf.AbstractScalarProcess))
def test_numeric_residuals_vanish_for_exact_marginals(name):
    p = helpers.process(name)
    gm = _mixture()
    score = gm.score(p)
    pred = sf.Predictor(gm.eps(p), p, prediction="eps")

    def log_prob(t, x):
        return gm.marginal(p, t).log_prob(x)

    def pf(t, x):
        return p.drift(t, x) - 0.5 * p.g2(t) * score(t, x)

    def all_residuals(t, x):
        return jnp.stack(
            [
                checks.fokker_planck_residual(p, log_prob, t, x),
                checks.continuity_residual(pf, log_prob, t, x),
                checks.continuity_residual(pred.velocity, log_prob, t, x),
                checks.reverse_fokker_planck_residual(p, score, log_prob, t, x),
            ]
        )

    ts, xs = _points(p)
    r = jax.vmap(all_residuals)(ts, xs)
    assert jnp.all(jnp.isfinite(r))
    assert float(jnp.max(jnp.abs(r))) < 1e-9, r


@pytest.mark.parametrize(
    "name",
    helpers.process_params(
        sf.AbstractScalarProcess, default=("VP", "VE", "RectifiedFlow")
    ),
)
def test_numeric_residuals_detect_wrong_densities(name):
    """The checks can fail: a wrong noise scale, another process's marginals, a
    scaled velocity and a scaled score all give relative residuals >> 1e-9."""
    p = helpers.process(name)
    other = builtin("SubVP" if name != "SubVP" else "VP")
    gm = _mixture()
    score = gm.score(p)

    def log_prob(t, x):
        return gm.marginal(p, t).log_prob(x)

    wrong = _wrong_noise_log_prob(gm, p, 1.1)

    def other_lp(t, x):
        return gm.marginal(other, t).log_prob(x)

    def pf_scaled(t, x):
        return 1.05 * (p.drift(t, x) - 0.5 * p.g2(t) * score(t, x))

    def score_scaled(t, x):
        return 0.9 * score(t, x)

    def residuals(t, x):
        return jnp.stack(
            [
                checks.fokker_planck_residual(p, wrong, t, x),
                checks.fokker_planck_residual(p, other_lp, t, x),
                checks.continuity_residual(pf_scaled, log_prob, t, x),
                checks.reverse_fokker_planck_residual(p, score_scaled, log_prob, t, x),
            ]
        )

    ts, xs = _points(p)
    r = np.asarray(jax.vmap(residuals)(ts, xs))
    worst_case = np.abs(r).max(axis=0)  # over points, per wrong candidate
    # six orders above the exact residuals' bound (1e-9, the test above); a 5%
    # velocity error leaves a relative residual of about 1e-2 (EDM: 0.0096)
    assert np.all(worst_case > 1e-3), r
    assert np.all(np.abs(r) <= 1 + 1e-12)  # relative residuals lie in [-1, 1]


def test_relative_scaling():
    """relative=False returns the raw residual (units 1/time); the relative one is
    raw / (sum of |terms|), in [-1, 1], and invariant to a change of time scale:
    EDM(sigma_max=160) at t/2 has the same marginals as EDM(sigma_max=80) at t but
    runs twice as fast, so its raw residual doubles while the relative is equal."""
    gm = _mixture()
    slow, fast = builtin("EDM"), sf.EDM(sigma_max=160.0)
    x = jnp.array([0.2, -0.3])
    for t in (0.01, 0.3):
        raw_s = checks.fokker_planck_residual(
            slow, _wrong_noise_log_prob(gm, slow, 1.1), t, x, relative=False
        )
        raw_f = checks.fokker_planck_residual(
            fast, _wrong_noise_log_prob(gm, fast, 1.1), t / 2, x, relative=False
        )
        rel_s = checks.fokker_planck_residual(
            slow, _wrong_noise_log_prob(gm, slow, 1.1), t, x
        )
        rel_f = checks.fokker_planck_residual(
            fast, _wrong_noise_log_prob(gm, fast, 1.1), t / 2, x
        )
        np.testing.assert_allclose(raw_f, 2 * raw_s, rtol=1e-9)
        np.testing.assert_allclose(rel_f, rel_s, rtol=1e-9)
        assert 1e-3 < abs(float(rel_s)) <= 1
        assert float(raw_s / rel_s) > 0


def test_non_affine_stationary_density():
    """dx = -x^3 dt + sqrt(2) dW has the stationary density exp(-|x|^4/4): the
    autodiff residual handles non-affine drifts; exp(-|x|^4/2) fails."""
    p = sf.SDE(drift=-(sf.x**3), diffusion=sympy.sqrt(2))

    def good(t, x):
        return -jnp.sum(x**4) / 4

    def bad(t, x):
        return -jnp.sum(x**4) / 2

    bad_r = []
    for x in (jnp.array([0.5, -1.2]), jnp.array([1.3, 0.2])):
        assert abs(float(checks.fokker_planck_residual(p, good, 0.3, x))) < 1e-12
        bad_r.append(abs(float(checks.fokker_planck_residual(p, bad, 0.3, x))))
    # By hand: r = sum(3 x^2 - 2 x^6) / sum(9 x^2 + 6 x^6) -> 0.028 and 0.100.
    np.testing.assert_allclose(bad_r, [0.0280923, 0.1002385], rtol=1e-5)


def test_shapes_and_unbatched_image_like_x():
    """x of any shape (here (2, 2)) is one example; vmap for batches."""
    p = builtin("EDM")

    def log_prob(t, x):  # N(0, (1 + sigma(t)^2) I): data N(0, I) under EDM
        v = 1 + p.sigma(t) ** 2
        return -jnp.sum(x**2) / (2 * v) - x.size / 2 * jnp.log(2 * jnp.pi * v)

    x = jnp.array([[0.1, -0.4], [0.9, 0.3]])
    r = checks.fokker_planck_residual(p, log_prob, 0.2, x)
    assert r.shape == () and abs(float(r)) < 1e-12
    rs = jax.vmap(lambda xx: checks.fokker_planck_residual(p, log_prob, 0.2, xx))(
        jnp.stack([x, 2 * x])
    )
    assert rs.shape == (2,) and float(jnp.max(jnp.abs(rs))) < 1e-12
