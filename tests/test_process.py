"""Processes: derived coefficients against the papers' closed forms (oracles written
out by hand here, independently of the sympy derivation), numerics, errors."""

import math
import warnings

import equinox as eqx
import helpers
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import scipy.integrate
import sympy
from helpers import BUILTIN_NAMES, builtin, to_float32

import scoreflow as sf

# --------------------------------------------------------------------------- #
# Paper closed forms (the oracles)
# --------------------------------------------------------------------------- #


def _vp_int_beta(t, b0=0.1, b1=20.0):
    return b0 * t + 0.5 * (b1 - b0) * t**2


def oracle(name, t):
    """(alpha, sigma, f, g^2) from the papers, numpy float64."""
    t = np.asarray(t, dtype=np.float64)
    if name == "VP":  # Song et al. 2021, eq. 33
        B = _vp_int_beta(t)
        beta = 0.1 + (20.0 - 0.1) * t
        a = np.exp(-0.5 * B)
        return a, np.sqrt(-np.expm1(-B)), -0.5 * beta, beta
    if name == "SubVP":  # Song et al. 2021, eq. 34 and its kernel
        B = _vp_int_beta(t)
        beta = 0.1 + (20.0 - 0.1) * t
        return np.exp(-0.5 * B), -np.expm1(-B), -0.5 * beta, beta * -np.expm1(-2 * B)
    if name == "VE":  # Song et al. 2021, eq. 30
        smin, smax = 0.01, 50.0
        s_ve = smin * (smax / smin) ** t
        g2 = 2 * s_ve**2 * math.log(smax / smin)
        return np.ones_like(t), np.sqrt(s_ve**2 - smin**2), np.zeros_like(t), g2
    if name == "CosineVP":  # Nichol & Dhariwal 2021, eq. 17: alpha_bar = f(t)/f(0)
        s = 0.008
        fn = lambda u: np.cos((u + s) / (1 + s) * np.pi / 2) ** 2
        abar = fn(t) / fn(0.0)
        a = np.sqrt(abar)
        f = -np.pi / (2 * (1 + s)) * np.tan((t + s) / (1 + s) * np.pi / 2)
        return a, np.sqrt(1 - abar), f, -2 * f
    if name == "RectifiedFlow":  # Liu et al. 2022
        return 1 - t, t, -1 / (1 - t), 2 * t / (1 - t)
    if name == "EDM":  # Karras et al. 2022: sigma(t) = t, here rescaled by sigma_max
        return np.ones_like(t), 80.0 * t, np.zeros_like(t), 2 * 80.0**2 * t
    raise KeyError(name)


# Every scalar-rung process of the registry (built-ins, sympy and callable
# declarations); those derived from the paper oracles above are checked against them.
SCALAR = helpers.process_params(sf.AbstractScalarProcess)


@pytest.mark.parametrize("name", BUILTIN_NAMES)
def test_builtin_matches_paper(name):
    p = builtin(name)
    ts = np.linspace(p.t0, p.t1, 97)
    a, s, f, g2 = oracle(name, ts)
    tj = jnp.asarray(ts)
    np.testing.assert_allclose(p.alpha(tj), a, rtol=1e-6)
    np.testing.assert_allclose(p.sigma(tj), s, rtol=1e-6)
    np.testing.assert_allclose(p.f(tj), f, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(p.g2(tj), g2, rtol=1e-6)
    np.testing.assert_allclose(p.diffusion(tj), np.sqrt(g2), rtol=1e-6)
    x = jnp.linspace(-2.0, 2.0, 5)
    np.testing.assert_allclose(p.drift(0.3, x), oracle(name, 0.3)[2] * x, rtol=1e-6)
    np.testing.assert_allclose(
        p.log_snr(tj), 2 * np.log(a) - 2 * np.log(s), rtol=1e-6, atol=1e-9
    )


@pytest.mark.parametrize("name", SCALAR)
def test_derivatives_match_autodiff(name):
    p = helpers.process(name)
    ts = jnp.linspace(p.t0 + 0.01, p.t1 - 0.01, 11)
    np.testing.assert_allclose(
        p.alpha_dot(ts), jax.vmap(jax.grad(p.alpha))(ts), rtol=1e-8
    )
    np.testing.assert_allclose(
        p.sigma_dot(ts), jax.vmap(jax.grad(p.sigma))(ts), rtol=1e-8
    )
    # g^2 = (sigma^2)' - 2 f sigma^2 (Kolmogorov forward equation for the variance)
    s2dot = jax.vmap(jax.grad(lambda t: p.sigma(t) ** 2))(ts)
    np.testing.assert_allclose(
        p.g2(ts), s2dot - 2 * p.f(ts) * p.sigma(ts) ** 2, rtol=1e-7
    )


@pytest.mark.parametrize("name", SCALAR)
def test_float32_finite_on_dense_grid(name):
    p = to_float32(helpers.process(name))
    ts = jnp.concatenate(
        [
            jnp.linspace(p.t0, p.t1, 2001, dtype=jnp.float32),
            p.t0 + jnp.geomspace(1e-7, 1e-2, 30).astype(jnp.float32),
            p.t1 - jnp.geomspace(1e-7, 1e-2, 30).astype(jnp.float32),
        ]
    )
    ts = jnp.clip(ts, p.t0, p.t1).astype(jnp.float32)
    x = jnp.ones((3,), jnp.float32)
    for fn in (
        p.alpha,
        p.sigma,
        p.alpha_dot,
        p.sigma_dot,
        p.log_snr,
        p.f,
        p.g2,
        p.diffusion,
    ):
        vals = jax.vmap(fn)(ts)
        assert vals.dtype == jnp.float32, fn
        assert jnp.all(jnp.isfinite(vals)), (name, fn.__name__)
    assert jnp.all(jnp.isfinite(jax.vmap(lambda t: p.drift(t, x))(ts)))
    # float32 accuracy of sigma at t0 (the stable forms matter there): against the
    # paper oracle for a built-in, against the float64 process otherwise.
    if name in BUILTIN_NAMES:
        a, s, _, _ = oracle(name, np.float64(p.t0))
    else:
        s = helpers.process(name).sigma(jnp.float64(p.t0))
    assert abs(float(p.sigma(jnp.float32(p.t0))) / float(s) - 1) < 1e-4


def test_endpoints_are_explained():
    rf = builtin("RectifiedFlow")
    assert rf.t1 < 1.0 and "alpha(t) -> 0" in rf.endpoints.reason_t1
    assert rf.t0 > 0.0 and "sigma(t) -> 0" in rf.endpoints.reason_t0
    # The rule: log-SNR = +-LOG_SNR_MAX at the automatic endpoints (3 significant digits)
    assert abs(float(rf.log_snr(rf.t0)) - sf.internal.LOG_SNR_MAX) < 0.02
    assert abs(float(rf.log_snr(rf.t1)) - sf.internal.LOG_SNR_MIN) < 0.02
    vp = builtin("VP")
    assert vp.t1 == 1.0 and vp.t0 == pytest.approx(
        1e-5, rel=0.01
    )  # Song et al.'s choice
    assert "t0" in str(vp.endpoints)


def test_explicit_singular_endpoint_raises():
    with pytest.raises(ValueError, match=r"alpha\(t1=1\)"):
        sf.RectifiedFlow(t1=1.0)
    with pytest.raises(ValueError, match=r"sigma\(t0=0\)\^2 = 0"):
        sf.VP(t0=0.0)


def test_prior_mismatch_warns():
    with pytest.warns(sf.PriorMismatchWarning, match="KL"):
        sf.VP(beta_min=0.1, beta_max=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sf.VP(beta_min=0.2, beta_max=15.0)


# --------------------------------------------------------------------------- #
# Custom declarations
# --------------------------------------------------------------------------- #


def test_custom_sde_matches_quadrature():
    t, x = sf.t, sf.x
    p = sf.SDE(-(1 + t) * x, sympy.sqrt(2 + 2 * t))
    assert not p._info.numeric

    def oracle_(tv):
        A = scipy.integrate.quad(lambda s: -(1 + s), 0, tv)[0]
        I = scipy.integrate.quad(
            lambda s: (2 + 2 * s) * math.exp(2 * (s + s**2 / 2)),
            0,
            tv,
            epsabs=1e-13,
            epsrel=1e-13,
        )[0]
        return math.exp(A), math.exp(A) * math.sqrt(I)

    for tv in (0.05, 0.3, 0.77, 1.0):
        a, s = oracle_(tv)
        assert float(p.alpha(tv)) == pytest.approx(a, rel=1e-8)
        assert float(p.sigma(tv)) == pytest.approx(s, rel=1e-8)


def test_numeric_fallback_when_no_closed_form():
    # sympy finds no closed form for sigma^2 here: diffrax moment ODEs take over.
    t, x = sf.t, sf.x
    p = sf.SDE(-sympy.sqrt(1 + t**3) * x, 1 + t)
    assert p._info.numeric

    def oracle_(tv):
        A = lambda u: -scipy.integrate.quad(lambda s: math.sqrt(1 + s**3), 0, u)[0]
        I = scipy.integrate.quad(lambda s: (1 + s) ** 2 * math.exp(-2 * A(s)), 0, tv)[0]
        return math.exp(A(tv)), math.exp(A(tv)) * math.sqrt(I)

    for tv in (0.1, 0.5, 1.0):
        a, s = oracle_(tv)
        assert float(p.alpha(tv)) == pytest.approx(a, rel=1e-4)
        assert float(p.sigma(tv)) == pytest.approx(s, rel=1e-4)
    np.testing.assert_allclose(p.sigma_dot(0.5), jax.grad(p.sigma)(0.5), rtol=1e-4)


def test_callables_match_symbolic():
    vp = builtin("VP")
    num = sf.SDE(
        lambda t, x: -0.5 * (0.1 + 19.9 * t) * x, lambda t: jnp.sqrt(0.1 + 19.9 * t)
    )
    ts = jnp.array([0.1, 0.5, 0.9])
    np.testing.assert_allclose(num.alpha(ts), vp.alpha(ts), rtol=1e-6)
    np.testing.assert_allclose(num.sigma(ts), vp.sigma(ts), rtol=1e-6)
    interp = sf.Interpolant(lambda t: 1 - t, lambda t: t, t0=0.01, t1=0.99)
    rf = builtin("RectifiedFlow")
    np.testing.assert_allclose(interp.g2(ts), rf.g2(ts), rtol=1e-10)
    np.testing.assert_allclose(interp.f(ts), rf.f(ts), rtol=1e-10)


@pytest.mark.parametrize(
    "name",
    helpers.process_params(
        sf.AbstractScalarProcess, default=("VP", "RectifiedFlow", "Interpolant(sympy)")
    ),
)
def test_sde_interpolant_round_trip(name):
    p = helpers.process(name)
    q = p.as_interpolant().as_sde()
    ts = jnp.linspace(p.t0, p.t1, 17)
    for fn in ("alpha", "sigma", "f", "g2"):
        np.testing.assert_allclose(getattr(q, fn)(ts), getattr(p, fn)(ts), rtol=1e-6)
    assert (q.t0, q.t1) == (p.t0, p.t1)


def test_symbolic_view():
    vp = builtin("VP")
    s = vp.symbolic
    beta = sympy.Rational(1, 10) + (20 - sympy.Rational(1, 10)) * sf.t
    assert sympy.simplify(s.f - (-beta / 2 * sf.x)) == 0
    assert sympy.simplify(s.g2 - beta) == 0
    B = sympy.integrate(beta, (sf.t, 0, sf.t))
    assert sympy.simplify(s.alpha - sympy.exp(-B / 2)) == 0
    assert sympy.simplify(s.sigma**2 - (1 - sympy.exp(-B))) == 0
    text = vp.describe()
    for key in ("forward SDE", "kernel", "reverse SDE", "PF-ODE", "t0 ="):
        assert key in text
    assert vp.latex().startswith("\\begin{aligned}") and "\\nabla_x" in vp.latex()
    assert repr(vp).startswith("sf.VP(beta_min=0.1, beta_max=20.0, t0=")


# --------------------------------------------------------------------------- #
# Sampling and priors
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    "name",
    helpers.process_params(
        sf.AbstractScalarProcess, default=("VP", "VE", "RectifiedFlow", "SDE(sympy)")
    ),
)
def test_sample_marginal_moments(name, getkey):
    p = helpers.process(name)
    n, t = 200_000, 0.4
    x0 = jnp.array([1.5, -0.5])
    keys = jr.split(getkey(), n)
    xt, eps = jax.vmap(lambda k: p.sample_marginal(k, x0, t))(keys)
    np.testing.assert_allclose(xt, p.alpha(t) * x0 + p.sigma(t) * eps, rtol=1e-12)
    se_mean = float(p.sigma(t)) / math.sqrt(n)
    assert np.all(np.abs(xt.mean(0) - p.alpha(t) * x0) < 5 * se_mean)
    var = float(p.sigma(t)) ** 2
    assert np.all(np.abs(xt.var(0) / var - 1) < 5 * math.sqrt(2 / n))


def test_prior(getkey):
    ve = builtin("VE")
    x = ve.prior_sample(getkey(), (100_000,))
    assert abs(float(x.std()) / float(ve.sigma(ve.t1)) - 1) < 0.01
    y = jnp.array([0.3, -1.0, 2.0])
    s = float(ve.sigma(ve.t1))
    want = sum(
        -0.5 * (v / s) ** 2 - math.log(s) - 0.5 * math.log(2 * math.pi)
        for v in y.tolist()
    )
    assert float(ve.prior_log_prob(y)) == pytest.approx(want, rel=1e-12)


def test_sample_marginal_rejects_time_outside_range(getkey):
    rf = builtin("RectifiedFlow")
    with pytest.raises(Exception, match="t must lie in"):
        jax.jit(lambda t: rf.sample_marginal(getkey(), jnp.ones(2), t))(1.5)


# --------------------------------------------------------------------------- #
# JAX transformations: jit, vmap, grad w.r.t. schedule parameters
# --------------------------------------------------------------------------- #


def test_jit_vmap_grad_wrt_parameters():
    vp = builtin("VP")
    ts = jnp.linspace(0.1, 0.9, 5)
    out = eqx.filter_jit(lambda p, t: jax.vmap(p.sigma)(t))(vp, ts)
    np.testing.assert_allclose(out, vp.sigma(ts))

    # d alpha(t) / d beta_max = -t^2/4 alpha(t)
    def alpha_at(p):
        return p.alpha(0.5)

    grads = eqx.filter_grad(alpha_at)(vp)
    np.testing.assert_allclose(
        grads.params["beta_max"], -(0.5**2) / 4 * vp.alpha(0.5), rtol=1e-8
    )
    np.testing.assert_allclose(
        grads.params["beta_min"], -(0.5 - 0.5**2 / 2) / 2 * vp.alpha(0.5), rtol=1e-8
    )


def test_trainable_custom_parameter():
    k = sympy.Symbol("k", positive=True)
    p = sf.Interpolant(
        sympy.exp(-k * sf.t), sympy.sqrt(1 - sympy.exp(-2 * k * sf.t)), params={k: 2.0}
    )
    g = eqx.filter_grad(lambda q: q.log_snr(0.5))(p)
    # log_snr = -2kt - log(1 - exp(-2kt)); d/dk at t=0.5, k=2
    u = 2 * 2.0 * 0.5
    want = -2 * 0.5 - (2 * 0.5 * math.exp(-u)) / (1 - math.exp(-u))
    assert float(g.params["k"]) == pytest.approx(want, rel=1e-8)


# --------------------------------------------------------------------------- #
# Log-SNR inverse and time conventions
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("name", SCALAR)
def test_t_from_log_snr_round_trip(name):
    p = helpers.process(name)
    ts = jnp.linspace(p.t0, p.t1, 9)
    np.testing.assert_allclose(
        p.t_from_log_snr(p.log_snr(ts)), ts, rtol=1e-9, atol=1e-12
    )


def test_time_conventions():
    vp, edm = builtin("VP"), builtin("EDM")
    fm = sf.FlowMatchingTime()
    assert float(fm.to_t(0.25)) == 0.75 and float(
        fm.from_t(fm.to_t(0.1))
    ) == pytest.approx(0.1)
    st = sf.SigmaTime(edm)
    np.testing.assert_allclose(
        st.to_t(jnp.array([0.002, 8.0, 80.0])), [2.5e-5, 0.1, 1.0], rtol=1e-9
    )
    ddpm = sf.DDPMTimesteps.linear(vp, num=1000)
    i = jnp.array([0.0, 10.0, 500.0, 900.0])
    t = ddpm.to_t(i)
    ac = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    # Same log-SNR: alpha(t)^2 = alphas_cumprod[i]
    np.testing.assert_allclose(vp.alpha(t) ** 2, ac[np.asarray(i, int)], rtol=1e-8)
    np.testing.assert_allclose(ddpm.from_t(t), i, atol=1e-6)
    wrapped = fm.wrap_model(lambda u, x: u * x)
    assert float(wrapped(0.25, 2.0)) == 1.5
    with pytest.raises(ValueError, match="strictly"):
        sf.DDPMTimesteps(vp, [0.9, 0.95])


# --------------------------------------------------------------------------- #
# Bad input: clear errors at declaration time
# --------------------------------------------------------------------------- #


def test_negative_implied_g2_reports_expression():
    with pytest.raises(
        ValueError, match=r"implied squared diffusion g\^2\(t\) = .*negative"
    ):
        sf.Interpolant(alpha=1, sigma=1 - sf.t, t0=0.1, t1=0.9)


def test_not_affine_drift_when_kernel_needed():
    p = sf.SDE(-(sf.x**3) + sf.x, 1)
    x = jnp.array([0.5, 2.0])
    np.testing.assert_allclose(p.drift(0.2, x), -(x**3) + x)
    with pytest.raises(ValueError, match="not affine in x"):
        p.alpha(0.5)
    with pytest.raises(ValueError, match="no Gaussian transition kernel"):
        p.sample_marginal(jr.key(0), x, 0.5)


def test_free_symbols_rejected():
    a = sympy.Symbol("a")
    with pytest.raises(ValueError, match=r"free symbol\(s\) a.*params="):
        sf.SDE(-a * sf.x, 1)
    with pytest.raises(ValueError, match="may only depend on sf.t and sf.x"):
        sf.SDE(-sf.x, a * sf.x)
    # A diffusion in x is a state-dependent diffusion (tests/test_nonlinear.py).
    assert sf.SDE(-sf.x, sf.x).symbolic.dg2_dx != 0


def test_bad_times_and_parameters():
    with pytest.raises(ValueError, match="t0 < t1"):
        sf.RectifiedFlow(t0=0.5, t1=0.4)
    with pytest.raises(ValueError, match=r"beta_min must be > 0, got beta_min=-0.1"):
        sf.VP(beta_min=-0.1)
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        sf.VE(sigma_min=10.0, sigma_max=1.0)
    with pytest.raises(ValueError, match="diffusion g\\(t\\) = .* is negative"):
        sf.SDE(-sf.x, sf.t - 0.5)
    with pytest.raises(ValueError, match="could not parse"):
        sf.SDE("-x *", 1)
    with pytest.raises(TypeError, match="both as sympy expressions"):
        sf.SDE(-sf.x, lambda t: 1.0)


def test_non_finite_schedule_rejected():
    # sigma(t) = t / (t - 0.5) blows up inside [t0, t1]
    with pytest.raises(ValueError, match="non-finite|negative|positive"):
        sf.Interpolant(alpha=1, sigma=sf.t / (0.5 - sf.t) ** 2, t0=0.1, t1=0.9)


@pytest.mark.parametrize(
    "name",
    helpers.process_params(
        sf.AbstractScalarProcess,
        default=("VP", "RectifiedFlow", "Interpolant(callable)"),
    ),
)
def test_t_from_log_snr_with_traced_process(name):
    p = helpers.process(name)
    # log-SNRs inside the process's own range (SDE(sympy) stops above -3 at t1)
    lo, hi = float(p.log_snr(p.t1)), float(p.log_snr(p.t0))
    lam = jnp.clip(
        jnp.array([-3.0, 0.0, 3.0]), lo + 0.1 * (hi - lo), hi - 0.1 * (hi - lo)
    )
    traced = eqx.filter_jit(lambda q, l: q.t_from_log_snr(l))(p, lam)
    np.testing.assert_allclose(traced, p.t_from_log_snr(lam), rtol=1e-10)
    np.testing.assert_allclose(p.log_snr(traced), lam, atol=1e-8)


def test_capability_flags_are_deprecated_and_replaced_by_the_ladder():
    """`has_gaussian_kernel` / `state_dependent_diffusion` still answer, with a
    DeprecationWarning; the ladder's classes say the same."""
    vp, gbm = sf.VP(), sf.SDE(0.5 * sf.x, 0.4 * sf.x)
    with pytest.warns(DeprecationWarning, match="AbstractGaussianProcess"):
        assert vp.has_gaussian_kernel
    with pytest.warns(DeprecationWarning, match="dg2_dx"):
        assert gbm.state_dependent_diffusion
    assert isinstance(vp, sf.AbstractScalarProcess)
    assert isinstance(sf.CLD(), sf.AbstractGaussianProcess)
    assert not isinstance(sf.CLD(), sf.AbstractScalarProcess)
    assert isinstance(gbm, sf.DeclaredSDE)
    assert not isinstance(gbm, sf.AbstractGaussianProcess)
    assert isinstance(sf.SDE(-sf.x, 1), sf.DeclaredProcess)
