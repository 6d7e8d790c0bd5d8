"""A registry of bad inputs across the public API (issue 14): each must raise an
error of the stated type whose message names the problem (a regex), in the default
float32. Entries that today give a silent answer or an unhelpful error in code this
file's owner does not own are `xfail(strict=True)` with the defect they belong to:
they turn into failures the day they are fixed, so the fixer moves them to the list.
"""

import functools
import re

import diffrax
import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import sympy
from float32 import float32

import scoreflow as sf

t, x = sf.t, sf.x
KEY = jr.key(0)


# Shared objects, built once (in float32) on first use.
@functools.cache
def vp():
    return sf.VP()


@functools.cache
def rf():
    return sf.RectifiedFlow()


@functools.cache
def nonlinear():
    return sf.SDE(drift=-(x**3), diffusion=1)


@functools.cache
def callable_sde():
    return sf.SDE(lambda s, y: -y, lambda s: jnp.sqrt(2.0) + 0 * s)


def zero_model(s, y, *cond):
    return jnp.zeros_like(y)


def scalar_model(s, y, *cond):  # returns one number, not an array like y
    return jnp.sum(y)


def wrong_shape_model(s, y, *cond):
    return jnp.zeros(3)


def nan_model(s, y, *cond):
    return jnp.full_like(y, jnp.nan)


def pred(model=zero_model, prediction="eps", process=vp):
    return sf.Predictor(model, process(), prediction=prediction)


def net3():
    return sf.nets.MLP(2, num_classes=3, key=KEY)


def sample(predictor=None, **kw):
    kw = {"num": 2, "steps": 4, **kw}
    predictor = pred() if predictor is None else predictor
    return sf.sample(KEY, vp(), predictor, (2,), **kw)


def loss_call(loss, model=zero_model, x0=None):
    x0 = jnp.ones((4, 2)) if x0 is None else x0
    return loss(model, x0, KEY)


def finite_or_raise(value, what):
    """For entries whose bug is a silent non-finite or out-of-range value: turn the
    value into the error the issue asks for, so the xfail is about the library."""
    v = np.asarray(value)
    if not np.all(np.isfinite(v)):
        raise ValueError(f"{what}: silently non-finite: {v}")
    return v


def silent(value, what):
    raise AssertionError(f"{what}: no error, returned {np.asarray(value)}")


def xfail(reason):
    return pytest.mark.xfail(strict=True, reason=f"issue 14: {reason}")


BAD_INPUTS = [
    # ---- declarations: built-ins -------------------------------------------------
    ("VP beta_min<0", lambda: sf.VP(beta_min=-0.1), ValueError, r"beta_min.*> 0"),
    ("VP betas swapped", lambda: sf.VP(beta_min=20, beta_max=0.1), ValueError, r"beta"),
    ("SubVP beta_max<0", lambda: sf.SubVP(beta_max=-1.0), ValueError, r"beta_max"),
    ("VE sigma_min=0", lambda: sf.VE(sigma_min=0.0), ValueError, r"sigma_min"),
    ("VE min>max", lambda: sf.VE(sigma_min=5, sigma_max=1), ValueError, r"sigma_m"),
    ("EDM sigma_data<0", lambda: sf.EDM(sigma_data=-0.5), ValueError, r"sigma_data"),
    ("CosineVP s<0", lambda: sf.CosineVP(s=-0.1), ValueError, r"\bs\b.*(>|positive)"),
    # ---- declarations: sympy -----------------------------------------------------
    ("SDE unparsable", lambda: sf.SDE("-x *", 1), ValueError, r"could not parse"),
    (
        "SDE free symbol",
        lambda: sf.SDE(-x * sympy.Symbol("k"), 1),
        ValueError,
        r"free symbol.*k.*params=",
    ),
    ("SDE infinity", lambda: sf.SDE(-x, sympy.zoo), ValueError, r"infinity or NaN"),
    (
        "SDE mixed kinds",
        lambda: sf.SDE(-x, lambda s: s),
        TypeError,
        r"both as sympy.*both as Python callables",
    ),
    (
        "SDE params with callables",
        lambda: sf.SDE(lambda s, y: -y, lambda s: 1.0, params={"b": 1.0}),
        ValueError,
        r"params= is only for sympy",
    ),
    ("SDE negative diffusion", lambda: sf.SDE(-x, -1), ValueError, r"negative"),
    (
        "SDE zero diffusion",
        lambda: sf.SDE(drift=-x, diffusion=0),
        ValueError,
        r"diffusion is identically 0.*no noise.*sigma\(t\) = 0",
    ),
    (
        "SDE zero diffusion, nonlinear",
        lambda: sf.SDE(drift=-(x**3), diffusion=0),
        ValueError,
        r"diffusion is identically 0",
    ),
    (
        "SDE drift with offset",
        lambda: sf.SDE(1 - x, 1).alpha(0.5),
        ValueError,
        r"x-independent part",
    ),
    (
        "param named t",
        lambda: sf.SDE(-x, 1, params={"t": 1.0}),
        ValueError,
        r"may not be called 't'",
    ),
    (
        "param not scalar",
        lambda: sf.SDE(-sympy.Symbol("b") * x, 1, params={"b": [1.0, 2.0]}),
        ValueError,
        r"must be a scalar",
    ),
    ("t0 >= t1", lambda: sf.SDE(-x, 1, t0=0.5, t1=0.2), ValueError, r"t0 < t1"),
    (
        "Interpolant with x",
        lambda: sf.Interpolant(alpha=x, sigma=t),
        ValueError,
        r"free symbol.*x.*sf\.t",
    ),
    (
        "Interpolant zero sigma",
        lambda: sf.Interpolant(alpha=1 - t, sigma=0),
        ValueError,
        r"sigma is identically 0",
    ),
    (
        "Interpolant mixed kinds",
        lambda: sf.Interpolant(1 - t, lambda s: s),
        TypeError,
        r"both as sympy",
    ),
    (
        "Interpolant g2<0 named first",
        lambda: sf.Interpolant(alpha=1, sigma=1 - t),
        ValueError,
        r"^`[^`]*`: the implied squared diffusion g\^2[^.]*negative",
    ),
    # ---- process methods ---------------------------------------------------------
    (
        "symbolic of callables",
        lambda: callable_sde().symbolic,
        ValueError,
        r"declared with Python callables",
        pytest.mark.slow,
    ),  # ~10-30 s numeric build
    (
        "alpha without kernel",
        lambda: nonlinear().alpha(0.5),
        ValueError,
        r"no Gaussian transition kernel.*not affine",
    ),
    (
        "g2 needs x",
        lambda: sf.SDE(-x, sympy.sqrt(1 + x**2)).g2(0.5),
        ValueError,
        r"depends on x.*need the state x",
    ),
    (
        "grid beyond t1",
        lambda: sf.uniform_grid(vp(), 4, t_start=2.0),
        ValueError,
        r"outside|t1",
    ),
    (
        "SigmaTime beyond the range",
        lambda: np.asarray(sf.SigmaTime(vp()).to_t(1e4)),
        eqx.EquinoxRuntimeError,
        r"log-SNR outside the process's range",
    ),
    (
        "t_from_log_snr below range",
        lambda: np.asarray(vp().t_from_log_snr(-20.0)),
        eqx.EquinoxRuntimeError,
        r"log-SNR outside the process's range",
    ),  # the inverse's first solve
    # ---- predictor, losses -------------------------------------------------------
    (
        "Predictor unknown prediction",
        lambda: pred(prediction="noise"),
        ValueError,
        r"prediction",
    ),
    (
        "dsm unknown prediction",
        lambda: sf.dsm_loss(vp(), prediction="noise"),
        ValueError,
        r"prediction",
    ),
    (
        "dsm unknown weighting",
        lambda: sf.dsm_loss(vp(), weighting="nope"),
        ValueError,
        r"weighting",
    ),
    (
        "cfm unknown coupling",
        lambda: sf.cfm_loss(rf(), coupling="nope"),
        ValueError,
        r"coupling",
    ),
    (
        "dsm cond_dropout>1",
        lambda: sf.dsm_loss(vp(), cond_dropout=1.5),
        ValueError,
        r"cond_dropout must lie in \[0, 1\]",
    ),
    (
        "loss: wrong output shape",
        lambda: loss_call(sf.dsm_loss(vp()), wrong_shape_model),
        ValueError,
        r"model returned shape \(3,\) for one example x of shape \(2,\)",
    ),
    (
        "loss: scalar model output",
        lambda: silent(
            loss_call(sf.dsm_loss(vp()), scalar_model), "dsm_loss with a scalar model"
        ),
        ValueError,
        r"model returned shape \(\) for one example",
    ),
    # ---- sampling ----------------------------------------------------------------
    (
        "sample method",
        lambda: sample(method="euler"),
        ValueError,
        r"must be 'ode' or 'sde'",
    ),
    ("sample num=0", lambda: sample(num=0), ValueError, r"num=.*>= 1"),
    (
        "sample solver class",
        lambda: sample(solver=diffrax.Heun),
        TypeError,
        r"diffrax solver instance",
    ),
    (
        "sample steps and grid",
        lambda: sample(time_grid=sf.log_snr_grid(vp(), 4)),
        ValueError,
        r"either steps= or time_grid=",
    ),
    ("sample no steps", lambda: sample(steps=None), ValueError, r"pass steps="),
    (
        "sample increasing grid",
        lambda: sample(steps=None, time_grid=jnp.linspace(vp().t0, vp().t1, 5)),
        ValueError,
        r"increasing",
    ),
    ("sample eta with ode", lambda: sample(eta=1.0), ValueError, r"eta=.*method='sde'"),
    (
        "sample wrong output shape",
        lambda: sample(pred(wrong_shape_model)),
        ValueError,
        r"model returned shape \(3,\) for one example x of shape \(2,\)",
    ),
    (
        "sample NaN model",
        lambda: sample(pred(nan_model)),
        eqx.EquinoxRuntimeError,
        r"not finite",
    ),
    # ---- grids and time adapters -------------------------------------------------
    (
        "log_snr_grid steps=0",
        lambda: sf.log_snr_grid(vp(), 0),
        ValueError,
        r"steps must be a Python int >= 1",
    ),
    (
        "edm_grid rho<=0",
        lambda: sf.edm_grid(vp(), 10, rho=0.0),
        ValueError,
        r"rho=.*> 0",
    ),
    (
        "uniform_grid t_start<t_end",
        lambda: sf.uniform_grid(vp(), 4, t_start=0.1, t_end=0.5),
        ValueError,
        r"t_start > t_end",
    ),
    (
        "check_time_grid NaN",
        lambda: sf.internal.check_time_grid(jnp.array([1.0, jnp.nan])),
        ValueError,
        r"NaN or inf",
    ),
    (
        "check_time_grid one point",
        lambda: sf.internal.check_time_grid(jnp.array([1.0])),
        ValueError,
        r"at least 2 points",
    ),
    # ---- guidance ------------------------------------------------------------
    (
        "cfg NaN scale",
        lambda: silent(
            sf.cfg(pred(), jnp.nan).eps(0.5, jnp.ones(2), None), "cfg(scale=nan)"
        ),
        ValueError,
        r"scale.*must be finite",
    ),
    # ---- networks ------------------------------------------------------------
    (
        "label 7 of 3",
        lambda: net3()(0.5, jnp.ones(2), 7),
        eqx.EquinoxRuntimeError,
        r"label out of range.*\[0, 2\].*3 = null_label",
    ),
    (
        "label -1",
        lambda: eqx.filter_jit(net3())(0.5, jnp.ones(2), -1),
        eqx.EquinoxRuntimeError,
        r"label out of range",
    ),
    (
        "float label",
        lambda: net3()(0.5, jnp.ones(2), 1.5),
        TypeError,
        r"class labels must be integers",
    ),
    (
        "label without embedding",
        lambda: sf.nets.MLP(2, key=KEY)(0.5, jnp.ones(2), 1),
        ValueError,
        r"no class embedding",
    ),
    (
        "odd embedding dim",
        lambda: sf.nets.SinusoidalEmbedding(3),
        ValueError,
        r"must be even",
    ),
    (
        "unknown time embedding",
        lambda: sf.nets.MLP(2, time_embedding="nope", key=KEY),
        ValueError,
        r"time_embedding must be 'sinusoidal' or 'fourier'",
    ),
    # ---- toy data and metrics ------------------------------------------------
    (
        "mixture negative weight",
        lambda: sf.toy.GaussianMixture(
            jnp.array([1.5, -0.5]), jnp.zeros((2, 2)), jnp.stack([jnp.eye(2)] * 2)
        ),
        ValueError,
        r"weights must be non-negative",
    ),
    (
        "frechet dims differ",
        lambda: sf.metrics.frechet_distance(jnp.ones((8, 2)), jnp.ones((8, 3))),
        ValueError,
        r"dimension|shape",
    ),
]


def _params():
    out = []
    for entry in BAD_INPUTS:
        name, fn, exc, regex, *marks = entry
        out.append(pytest.param(fn, exc, regex, id=name, marks=marks))
    return out


def test_registry_is_large_and_unique():
    names = [e[0] for e in BAD_INPUTS]
    assert len(names) == len(set(names))
    default = [e for e in BAD_INPUTS if pytest.mark.slow not in e[4:]]
    assert len(default) >= 40


@pytest.mark.parametrize("fn,exc,regex", _params())
def test_bad_input_is_named(fn, exc, regex):
    with float32():
        with pytest.raises(exc) as info:
            fn()
    message = str(info.value)
    assert re.search(regex, message, flags=re.S), message


def test_coefficients_are_formulas_outside_the_range():
    """The documented half of the time-range rule (docs/concepts/endpoints.md):
    coefficients evaluate their formulas at any time, unchecked."""
    p = sf.VP()
    want = np.exp(-0.5 * (0.1 * 2.0 + 0.5 * (20.0 - 0.1) * 2.0**2))
    np.testing.assert_allclose(p.alpha(2.0), want, rtol=1e-5)
    np.testing.assert_allclose(p.alpha(0.0), 1.0, rtol=1e-6)
