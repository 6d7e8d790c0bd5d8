"""Property tests with `scoreflow.testing`: random processes (built-ins with random
parameters, custom SDE / interpolant families) and random Gaussian mixtures satisfy
the forward Fokker–Planck equation, the PF-ODE continuity equation and the
reverse-SDE Fokker–Planck equation; the symbolic check agrees; wrong densities are
caught. Bounded: few examples, `deadline=None` (the first call compiles)."""

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import scoreflow as sf
import scoreflow.testing as sft
from scoreflow import checks, toy

PROPERTY = settings(
    max_examples=5,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,  # reproducible in CI; run with --hypothesis-seed to explore
)


def test_lazy_import_and_namespace():
    assert sf.testing is sft
    with pytest.raises(AttributeError):
        sf.no_such_name  # noqa: B018


@PROPERTY
@given(gm=sft.gaussian_mixtures(dim=3, num_components=3))
def test_gaussian_mixture_strategy_is_valid(gm):
    assert gm.means.shape == (3, 3) and gm.covs.shape == (3, 3, 3)
    np.testing.assert_allclose(jnp.sum(gm.weights), 1.0, rtol=1e-12)
    assert np.linalg.eigvalsh(np.asarray(gm.covs)).min() > 0
    assert jnp.isfinite(gm.log_prob(jnp.zeros(3)))


@PROPERTY
@given(p=sft.processes(), data=st.data())
def test_process_strategy_and_symbolic_fp(p, data):
    """Every drawn process is valid and symbolically Fokker–Planck consistent."""
    assert 0 <= p.t0 < p.t1
    t, x = data.draw(sft.time_points(p, dim=2))
    assert p.t0 <= float(t) <= p.t1
    assert x.shape == (2,) and jnp.all(jnp.isfinite(x))
    r = checks.symbolic_fokker_planck(p)
    assert r.ok, str(r)


@PROPERTY
@given(p=sft.processes(), gm=sft.gaussian_mixtures(dim=2), data=st.data())
def test_random_processes_and_mixtures_satisfy_fp_continuity_reverse(p, gm, data):
    t, x = data.draw(sft.time_points(p, dim=2))
    res = sft.assert_marginals_consistent(p, gm, t, x)
    assert set(res) == {"fokker_planck", "continuity", "reverse_sde"}


@PROPERTY
@given(
    p=sft.processes(families=list(sft.CUSTOM_FAMILIES)),
    gm=sft.gaussian_mixtures(dim=2),
)
def test_wrong_noise_scale_is_detected(p, gm):
    """A candidate with sigma(t) -> 1.2 sigma(t) fails the FP check at a mid time:
    the property tests can fail."""
    t = jnp.asarray(0.5 * (p.t0 + p.t1))
    x = p.alpha(t) * gm.means[0] + p.sigma(t) * jnp.array([0.7, -0.4])

    def wrong(s, y):
        a, sig = p.alpha(s), 1.2 * p.sigma(s)
        return toy.GaussianMixture(
            gm.weights, a * gm.means, a**2 * gm.covs + sig**2 * jnp.eye(2)
        ).log_prob(y)

    r = checks.fokker_planck_residual(p, wrong, t, x)
    assert abs(float(r)) > 1e-3
    # Score of one mixture, density of another: the reverse-SDE check fails.
    other = toy.GaussianMixture(gm.weights, gm.means, 1.5 * gm.covs)
    rr = checks.reverse_fokker_planck_residual(
        p, gm.score(p), lambda s, y: other.marginal(p, s).log_prob(y), t, x
    )
    assert abs(float(rr)) > 1e-3
    # A process whose g^2 disagrees with its kernel fails the assertion helper.
    with pytest.raises(AssertionError, match="fokker_planck"):
        sft.assert_marginals_consistent(_WrongG2(p), gm, t, x)


class _WrongG2(sf.AbstractScalarProcess):
    """A process with the kernel of `p` but 1.1 g^2 (an inconsistent declaration):
    a scalar process written by hand, as docs/concepts/extending.md shows."""

    p: sf.AbstractScalarProcess

    @property
    def t0(self):
        return self.p.t0

    @property
    def t1(self):
        return self.p.t1

    def alpha(self, t):
        return self.p.alpha(t)

    def sigma(self, t):
        return self.p.sigma(t)

    def alpha_dot(self, t):
        return self.p.alpha_dot(t)

    def sigma_dot(self, t):
        return self.p.sigma_dot(t)

    def g2(self, t):
        return 1.1 * self.p.g2(t)

    def as_sde(self):
        return self.p.as_sde()

    def as_interpolant(self):
        return self.p.as_interpolant()

    def __repr__(self):
        return f"_WrongG2({self.p!r})"


def test_strategy_rejects_unknown_family():
    with pytest.raises(ValueError, match="unknown"):
        sft.processes(families=["NoSuchProcess"]).example()


def _recipe_source() -> str:
    doc = sft.__doc__
    start = doc.index("```python") + len("```python")
    return doc[start : doc.index("```", start)]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_module_recipe_passes_verbatim(dtype):
    """The recipe in `scoreflow.testing`'s docstring, run as written, passes on a
    correct process in both dtypes (no tolerance to choose, no x64 to enable)."""
    import contextlib

    from float32 import float32

    ctx = float32() if dtype == "float32" else contextlib.nullcontext()
    with ctx:
        namespace: dict = {}
        exec(compile(_recipe_source(), "recipe", "exec"), namespace)
        namespace["test_symbolic"]()
        namespace["test_marginals"]()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_stationary_mixture_is_not_a_false_failure(dtype):
    """A standard normal under a variance-preserving process is stationary: the PF
    velocity vanishes by cancellation, every continuity term is rounding noise, and
    the residual used to be reported as 1.0 (issue 14, defect 5)."""
    import contextlib

    from float32 import float32

    ctx = float32() if dtype == "float32" else contextlib.nullcontext()
    with ctx:
        gm = toy.GaussianMixture(jnp.ones(1), jnp.zeros((1, 2)), jnp.eye(2)[None])
        for p in (sf.VP(), sf.CosineVP()):
            for t in (0.1, 0.5, 0.9):
                x = jnp.array([0.3, -1.2])
                sft.assert_marginals_consistent(p, gm, t, x)
            # ... and a wrong process still fails at the same points
            with pytest.raises(AssertionError, match="fokker_planck"):
                sft.assert_marginals_consistent(_WrongG2(p), gm, 0.5, x)
