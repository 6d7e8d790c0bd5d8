"""One- and few-step generation: the consistency parametrisation, the MeanFlow identity,
the distillation targets and the few-step sampler, each against an independent oracle."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from helpers import BUILTIN_NAMES, builtin, to_float32

import scoreflow as sf


def gaussian_data():
    """A 2-D Gaussian data set N(m, C) as an exact one-component mixture."""
    cov = jnp.array([[[0.5, 0.1], [0.1, 0.3]]])
    return sf.toy.GaussianMixture(jnp.array([1.0]), jnp.array([[1.0, -0.5]]), cov)


def exact_flow(process, data, t, s, x):
    """The exact PF-ODE from (t, x) to time s, integrated with diffrax in process time
    (forward mode, so `jax.jvp` goes through it)."""
    term = diffrax.ODETerm(lambda t, y, args: data.velocity(process)(t, y))
    sol = diffrax.diffeqsolve(
        term, diffrax.Tsit5(), t, s, (s - t) / 20, x,
        stepsize_controller=diffrax.PIDController(rtol=1e-12, atol=1e-12),
        adjoint=diffrax.ForwardMode(), max_steps=4096,
    )
    return sol.ys[-1]


# ---- the consistency parametrisation -----------------------------------------------


@pytest.mark.parametrize("name", BUILTIN_NAMES)
@pytest.mark.parametrize("x64", [True, False], ids=["f64", "f32"])
def test_consistency_boundary_is_exact(name, x64, getkey):
    p = builtin(name)
    net = sf.nets.MLP(2, width=16, depth=1, key=getkey())
    f = sf.ConsistencyModel(net, p)
    x = jr.normal(getkey(), (2,))
    if not x64:
        f, x = to_float32(f), x.astype(jnp.float32)
    t0 = jnp.asarray(p.t0, x.dtype)
    c_skip, c_out, _ = f.coefficients(t0)
    assert float(c_skip) == 1.0 and float(c_out) == 0.0
    assert np.array_equal(f(t0, x), x)
    # away from t0 the network matters
    t = jnp.asarray(0.5 * (p.t0 + p.t1), x.dtype)
    assert not np.allclose(f(t, x), f.coefficients(t)[0] * x)


@pytest.mark.parametrize("name", ["EDM", "VE"])
def test_consistency_coefficients_are_songs_for_unit_alpha(name):
    # Song et al. (2023), appendix C, with t = sigma and epsilon = sigma(t0).
    p = builtin(name)
    f = sf.ConsistencyModel(lambda t, x: x, p)
    sd, eps = f.sigma_data, float(p.sigma(p.t0))
    for t in np.linspace(p.t0, p.t1, 7):
        s = float(p.sigma(t))
        c_skip, c_out, c_in = f.coefficients(jnp.asarray(t))
        np.testing.assert_allclose(c_skip, sd**2 / ((s - eps) ** 2 + sd**2), rtol=1e-12)
        np.testing.assert_allclose(c_out, sd * (s - eps) / np.sqrt(sd**2 + s**2),
                                   rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(c_in, 1 / np.sqrt(s**2 + sd**2), rtol=1e-12)


# ---- MeanFlow -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["RectifiedFlow", "VP"])
def test_meanflow_identity_for_exact_average_velocity(name):
    p, data = builtin(name), gaussian_data()

    def u(t, r, x):  # the exact average velocity over [r, t]
        return (x - exact_flow(p, data, t, r, x)) / (t - r)

    @jax.jit
    @jax.vmap
    def check(t, r, x):
        v = data.velocity(p)(t, x)
        return (v,) + sf.internal.meanflow_target(u, t, r, x, v)

    t, r = jnp.array([0.7, 0.9, 0.4]), jnp.array([0.2, 0.05, 0.35])
    x = jnp.array([[0.3, -1.2], [2.0, 0.5], [-1.0, 1.0]])
    v, out, target = check(t, r, x)
    np.testing.assert_allclose(target, out, rtol=1e-5)
    # the identity is not trivial: without the du/dt term it fails
    assert not np.allclose(v, out, rtol=1e-3)


def test_meanflow_one_step_sampling_is_the_ode_solution(getkey):
    p, data = sf.RectifiedFlow(), gaussian_data()

    def u(t, r, x):
        return (x - exact_flow(p, data, t, r, x)) / (t - r)

    model = sf.MeanFlowModel(u, p)
    key = getkey()
    xs, info = sf.few_step_sample(key, p, model, (2,), num=4, steps=1, return_info=True)
    want = sf.sample(key, p, sf.Predictor(data.eps(p), p, "eps"), (2,), num=4,
                     solver=diffrax.Tsit5(),
                     stepsize_controller=diffrax.PIDController(rtol=1e-10, atol=1e-10))
    np.testing.assert_allclose(xs, want, rtol=1e-6, atol=1e-6)
    assert np.all(info["nfe"] == 1)


# ---- consistency distillation and training targets -----------------------------------


@pytest.mark.parametrize("name", ["VP", "EDM"])
def test_distillation_target_is_one_heun_step_of_the_teacher(name, getkey):
    p, data = builtin(name), gaussian_data()
    teacher = sf.Predictor(data.eps(p), p, "eps")
    loss = sf.consistency_loss(p, teacher=teacher, solver=diffrax.Heun())
    v = data.velocity(p)
    x0, eps = jnp.array([0.2, 0.4]), jr.normal(getkey(), (2,))
    t, s = jnp.asarray(0.6), jnp.asarray(0.45)
    x = p.alpha(t) * x0 + p.sigma(t) * eps
    # Heun's method on dx/dt = v(t, x) from t down to s, by hand
    h = s - t
    k1 = v(t, x)
    k2 = v(s, x + h * k1)
    want = x + h / 2 * (k1 + k2)
    np.testing.assert_allclose(loss.target_point(t, s, x, x0, eps), want, rtol=1e-10)


def test_distillation_target_with_ddim_is_the_ddim_formula(getkey):
    p, data = sf.VP(), gaussian_data()
    teacher = sf.Predictor(data.eps(p), p, "eps")
    loss = sf.consistency_loss(p, teacher=teacher, solver=sf.DDIM())
    x = jr.normal(getkey(), (2,))
    t, s = jnp.asarray(0.7), jnp.asarray(0.5)
    x0_hat, eps_hat = data.x0(p)(t, x), data.eps(p)(t, x)
    want = p.alpha(s) * x0_hat + p.sigma(s) * eps_hat
    np.testing.assert_allclose(loss.target_point(t, s, x, None, None), want, rtol=1e-10)


def test_training_target_is_the_kernel_point(getkey):
    p = sf.VE()
    loss = sf.consistency_loss(p)
    x0, eps = jr.normal(getkey(), (2,)), jr.normal(getkey(), (2,))
    t, s = jnp.asarray(0.6), jnp.asarray(0.3)
    x = p.alpha(t) * x0 + p.sigma(t) * eps
    np.testing.assert_allclose(loss.target_point(t, s, x, x0, eps),
                               p.alpha(s) * x0 + p.sigma(s) * eps, rtol=1e-12)


@pytest.mark.parametrize("teach", [False, True], ids=["training", "distillation"])
def test_continuous_tangent_is_the_derivative_along_the_path(teach, getkey):
    p, data = sf.RectifiedFlow(), gaussian_data()
    w, b = jr.normal(getkey(), (2, 2)), jr.normal(getkey(), (2,))
    f = sf.ConsistencyModel(lambda t, x: jnp.tanh(w @ x + t * b), p)  # smooth in t
    teacher = sf.Predictor(data.eps(p), p, "eps") if teach else None
    loss = sf.consistency_loss(p, teacher=teacher, continuous=True)
    x0, eps = jr.normal(getkey(), (2,)), jr.normal(getkey(), (2,))
    t = jnp.asarray(0.5)

    def point(s):  # the path the tangent follows: conditional path or teacher ODE
        if teach:
            return exact_flow(p, data, t, s, p.alpha(t) * x0 + p.sigma(t) * eps)
        return p.alpha(s) * x0 + p.sigma(s) * eps

    h = 1e-4
    fd = (f(t + h, point(t + h)) - f(t - h, point(t - h))) / (2 * h)
    val, g = loss.tangent(f, t, point(t), x0, eps)
    np.testing.assert_allclose(val, f(t, point(t)), rtol=1e-12)
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-8)


def test_continuous_loss_value_and_gradient(getkey):
    # value = mean ||df/dt||^2; gradient = 2 <grad f, df/dt> (the tangent held fixed)
    p = sf.RectifiedFlow()
    f = sf.ConsistencyModel(sf.nets.MLP(2, width=16, depth=1, key=getkey()), p)
    loss = sf.consistency_loss(p, continuous=True, check_scale=False)
    x0, key = jr.normal(getkey(), (3, 2)), getkey()
    k_t, k_eps = jr.split(key)
    t, _ = loss.time_sampler.sample(k_t, p, 3, x0.dtype)
    eps = jr.normal(k_eps, x0.shape, x0.dtype)
    xt = jax.vmap(lambda a, b, s: p.alpha(s) * a + p.sigma(s) * b)(x0, eps, t)
    _, g = jax.vmap(lambda s, x, a, b: loss.tangent(f, s, x, a, b))(t, xt, x0, eps)
    np.testing.assert_allclose(loss(f, x0, key), jnp.mean(g**2), rtol=1e-10)

    def surrogate(f):
        out = jax.vmap(f)(t, xt)
        return jnp.mean(jnp.sum(2 * out * g, -1) / 2)

    want = eqx.filter_grad(surrogate)(f)
    got = eqx.filter_grad(loss)(f, x0, key)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-12)


# ---- progressive distillation -------------------------------------------------------


def test_progressive_target_lands_on_two_teacher_ddim_steps(getkey):
    p, data = sf.VP(), gaussian_data()
    teacher = sf.Predictor(data.eps(p), p, "eps")
    grid = sf.uniform_grid(p, 4)
    loss = sf.progressive_loss(p, teacher, grid)
    x = jr.normal(getkey(), (2,))
    x0 = loss.target(2, x)
    # oracle: the teacher's two DDIM steps through sf.sample, and one DDIM step
    two = sf.sample(getkey(), p, teacher, (2,), num=1, solver=sf.DDIM(),
                    time_grid=grid[2:], noise=x[None])[0]
    t, s = grid[2], grid[4]
    one = p.alpha(s) * x0 + p.sigma(s) * (x - p.alpha(t) * x0) / p.sigma(t)
    np.testing.assert_allclose(one, two, rtol=1e-10)
    np.testing.assert_allclose(loss.student_grid, grid[::2])


# ---- the losses run, jit and differentiate; errors name the fix ---------------------


def test_losses_are_finite_and_differentiable(getkey):
    p = sf.EDM()  # not VP-like: alpha = 1, sigma up to 80
    data = sf.toy.GaussianMixture(jnp.array([0.5, 0.5]), jnp.array([[-0.4, 0.0], [0.4, 0.0]]),
                                  jnp.stack([0.05 * jnp.eye(2)] * 2))
    x0 = data.sample(getkey(), 8)
    teacher = sf.Predictor(data.eps(p), p, "eps")
    cm = sf.ConsistencyModel(sf.nets.MLP(2, width=16, depth=1, key=getkey()), p)
    mf = sf.MeanFlowModel(sf.MeanFlowMLP(2, width=16, depth=1, key=getkey()), p)
    cases = [
        (sf.consistency_loss(p, teacher=teacher, steps=8), cm),
        (sf.consistency_loss(p, steps=8, metric="l2", weighting="inverse_gap",
                             index_sampler="log_normal"), cm),
        (sf.consistency_loss(p, continuous=True, tangent_normalisation=0.1), cm),
        (sf.meanflow_loss(p), mf),
        (sf.meanflow_loss(p, teacher=teacher), mf),
        (sf.progressive_loss(p, teacher, sf.uniform_grid(p, 4)),
         sf.nets.MLP(2, width=16, depth=1, key=getkey())),
    ]
    for loss, model in cases:
        value, grads = eqx.filter_value_and_grad(loss)(model, x0, getkey())
        assert np.isfinite(value)
        assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


def test_errors_name_the_fix(getkey):
    p = sf.RectifiedFlow()
    net = sf.nets.MLP(2, width=8, depth=1, key=getkey())
    x0 = jr.normal(getkey(), (4, 2))
    with pytest.raises(TypeError, match="sf.ConsistencyModel"):
        sf.consistency_loss(p)(net, x0, getkey())
    with pytest.raises(TypeError, match="sf.MeanFlowModel"):
        sf.meanflow_loss(p)(net, x0, getkey())
    with pytest.raises(TypeError, match="sf.Predictor"):
        sf.consistency_loss(p, teacher=net)
    with pytest.raises(ValueError, match="even number of steps"):
        sf.progressive_loss(p, sf.Predictor(net, p), sf.uniform_grid(p, 3))
    with pytest.raises(TypeError, match="use `sf.sample`"):
        sf.few_step_sample(getkey(), p, sf.Predictor(net, p), (2,), num=2)
    with pytest.raises(ValueError, match="differs from the model"):
        sf.few_step_sample(getkey(), sf.VP(), sf.ConsistencyModel(net, p), (2,), num=2)


def test_consistency_sampler_one_step_is_deterministic_and_multistep_renoises(getkey):
    p = sf.VP()
    f = sf.ConsistencyModel(sf.nets.MLP(2, width=16, depth=1, key=getkey()), p)
    noise = jr.normal(getkey(), (4, 2))
    a = sf.few_step_sample(getkey(), p, f, (2,), num=4, noise=noise)
    b = sf.few_step_sample(getkey(), p, f, (2,), num=4, noise=noise)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, jax.vmap(lambda x: f(p.t1, x))(noise), rtol=1e-12)
    c, info = sf.few_step_sample(getkey(), p, f, (2,), num=4, noise=noise, steps=2,
                                 return_info=True)
    d = sf.few_step_sample(getkey(), p, f, (2,), num=4, noise=noise, steps=2)
    assert not np.allclose(c, d)  # fresh noise between the two jumps
    assert np.all(info["nfe"] == 2)


def test_training_leaves_the_declared_process_alone(getkey):
    # sf.train.fit trains every inexact array of the model; a declared process keeps
    # its sympy constants as leaves, and the parametrisation must not move them.
    p = sf.SDE(-1.5 * sf.sympy.exp(2 * sf.t) * sf.x, 2 * sf.sympy.exp(sf.t), t0=1e-4)
    assert jax.tree.leaves(eqx.filter(p, eqx.is_inexact_array))  # it has leaves
    f = sf.ConsistencyModel(sf.nets.MLP(2, width=8, depth=1, key=getkey()), p)
    x0 = jr.normal(getkey(), (8, 2))
    grads = eqx.filter_grad(sf.consistency_loss(p, steps=4, check_scale=False))(
        f, x0, getkey())
    for g in jax.tree.leaves(eqx.filter(grads.process, eqx.is_inexact_array)):
        assert np.all(g == 0)
    assert any(np.any(g != 0) for g in jax.tree.leaves(grads.net))


# ---- the few-step grid ----------------------------------------------------------


def rho_grid_rf(t1, t0, k, rho=7.0):
    """Karras's rho-spacing of sigma~ = t / (1 - t) for the rectified flow, in numpy."""
    smax, smin = t1 / (1 - t1), t0 / (1 - t0)
    u = np.arange(k + 1) / k
    s = (smax ** (1 / rho) + u * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    return s / (1 + s)


def test_consistency_default_grid_is_the_training_rho_schedule(getkey):
    p = sf.RectifiedFlow()
    f = sf.ConsistencyModel(sf.nets.MLP(2, width=8, depth=1, key=getkey()), p)
    loss = sf.consistency_loss(p, teacher=sf.Predictor(f.net, p, "x0"))
    train = np.asarray(loss.grid)[::-1]  # t1 ... t0
    np.testing.assert_allclose(train, rho_grid_rf(p.t1, p.t0, 16), rtol=1e-10)
    for k in (1, 2, 4, 8, 16):
        _, info = sf.few_step_sample(getkey(), p, f, (2,), num=2, steps=k,
                                     return_info=True)
        np.testing.assert_allclose(info["ts"], rho_grid_rf(p.t1, p.t0, k), rtol=1e-10)
        # every jump starts on a training level
        np.testing.assert_allclose(loss.sampling_grid(k), train[:: 16 // k], rtol=1e-12)
        np.testing.assert_allclose(loss.sampling_grid(k), info["ts"], rtol=1e-10)
    np.testing.assert_allclose(f.sampling_grid(2)[1], 0.9510014, rtol=1e-6)


def test_consistency_loss_sampling_grid_picks_training_levels():
    p = sf.VP()
    loss = sf.consistency_loss(p, steps=6, grid="uniform")
    train = np.asarray(loss.grid)[::-1]
    np.testing.assert_array_equal(loss.sampling_grid(4), train[[0, 2, 3, 4, 6]])
    with pytest.raises(ValueError, match="train with more `steps`"):
        loss.sampling_grid(7)
    with pytest.raises(ValueError, match="no training grid"):
        sf.consistency_loss(p, continuous=True).sampling_grid(2)


def test_meanflow_default_grid_stays_uniform_and_time_grid_overrides(getkey):
    p = sf.RectifiedFlow()
    u = sf.MeanFlowModel(sf.MeanFlowMLP(2, width=8, depth=1, key=getkey()), p)
    _, info = sf.few_step_sample(getkey(), p, u, (2,), num=2, steps=4, return_info=True)
    np.testing.assert_allclose(info["ts"], np.linspace(p.t1, p.t0, 5), rtol=1e-12)
    f = sf.ConsistencyModel(sf.nets.MLP(2, width=8, depth=1, key=getkey()), p)
    grid = sf.uniform_grid(p, 2)
    _, info = sf.few_step_sample(getkey(), p, f, (2,), num=2, time_grid=grid,
                                 return_info=True)
    np.testing.assert_array_equal(info["ts"], grid)
    with pytest.raises(ValueError, match="int >= 1"):
        sf.few_step_sample(getkey(), p, f, (2,), num=2, steps=0)


def _fd_scipy(x, y):
    """The Frechet distance of Gaussian fits, written with scipy (independent of
    sf.metrics)."""
    import scipy.linalg

    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    m1, m2 = x.mean(0), y.mean(0)
    c1, c2 = np.cov(x.T), np.cov(y.T)
    root = scipy.linalg.sqrtm(c1 @ c2).real
    return float(np.sum((m1 - m2) ** 2) + np.trace(c1 + c2 - 2 * root))


def test_few_step_grid_is_the_greedy_fd_search(getkey):
    """`sf.few_step_grid` picks each intermediate time as the candidate whose samples
    (the same noise for every candidate) are closest to the data in Frechet
    distance, one at a time (Song et al. 2023): the two-step choice is the argmin of
    an FD computed here with scipy; the three-step grid keeps that first time (greedy),
    is strictly decreasing and takes its times from the candidates."""
    p = sf.RectifiedFlow()
    cm = sf.ConsistencyModel(sf.nets.MLP(2, width=8, depth=1, key=getkey()), p)
    data = jr.normal(getkey(), (512, 2)) * jnp.array([1.0, 0.3]) + 0.5
    cands = sf.edm_grid(p, 8)[1:-1]
    key = getkey()
    kw = dict(candidates=cands, num=256)
    one = sf.few_step_grid(key, p, cm, data, 1, **kw)
    np.testing.assert_array_equal(one, cm.sampling_grid(1))
    two = sf.few_step_grid(key, p, cm, data, 2, **kw)
    start, end = float(one[0]), float(one[-1])
    fds = []
    for c in np.asarray(cands):
        grid = jnp.asarray([start, c, end])
        xs = sf.few_step_sample(key, p, cm, (2,), num=256, time_grid=grid)
        fds.append(_fd_scipy(xs, data))
    assert float(two[1]) == float(np.asarray(cands)[int(np.argmin(fds))])
    three = sf.few_step_grid(key, p, cm, data, 3, **kw)
    assert three.shape == (4,) and float(three[1]) == float(two[1])
    assert np.all(np.diff(np.asarray(three)) < 0)
    assert float(three[2]) in set(np.asarray(cands).tolist())
    with pytest.raises(ValueError, match="steps"):
        sf.few_step_grid(key, p, cm, data, 0)
    with pytest.raises(ValueError, match="candidates give 1"):
        sf.few_step_grid(key, p, cm, data, 3, candidates=cands[:1])
    with pytest.raises(ValueError, match=r"\(n, \*shape\)"):
        sf.few_step_grid(key, p, cm, data[0], 2)
