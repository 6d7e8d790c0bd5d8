"""diffusers, reproduced exactly (issue 15, item 3).

The oracles below are written in NumPy from diffusers' scheduler code
(`src/diffusers/schedulers/scheduling_{ddim,ddpm,euler_discrete,dpmsolver_multistep}.py`:
`__init__`'s betas, `set_timesteps`, `step`), in float64, independently of
scoreflow. Each recipe of `sf.peers` must match its oracle to rtol 1e-6 on the same
initial noise, the same per-step normals and the same closed-form model: the exact
eps-prediction for Gaussian data N(M, S^2 I), a function of the timestep only through
diffusers' own noise level sigma(u) = np.interp(u, arange(N), sqrt((1 - a)/a)).

The tests marked `peers` run the same checks against the real diffusers schedulers
(`pip install -e .[bench]`; `pytest -m peers tests/test_peer_diffusers.py`).
"""

import functools
import warnings

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import scoreflow as sf

T = 1000
M = np.array([0.3, -0.5, 1.0])
S = 0.7
SHAPE = (3,)


# --------------------------------------------------------------------------- #
# Oracles, from diffusers' code
# --------------------------------------------------------------------------- #


def np_alphas_cumprod(kind="linear", n=T, beta_start=1e-4, beta_end=0.02):
    if kind == "linear":
        betas = np.linspace(beta_start, beta_end, n)
    elif kind == "scaled_linear":
        betas = np.linspace(beta_start**0.5, beta_end**0.5, n) ** 2
    else:  # betas_for_alpha_bar, "cosine"

        def abar(s):
            return np.cos((s + 0.008) / 1.008 * np.pi / 2) ** 2

        betas = np.array(
            [min(1 - abar((i + 1) / n) / abar(i / n), 0.999) for i in range(n)]
        )
    return np.cumprod(1.0 - betas)


def np_timesteps(scheduler, n, spacing, offset=0, T=T):
    """`set_timesteps(n)` of DDIMScheduler / DDPMScheduler ("ddim"),
    EulerDiscreteScheduler ("euler"), DPMSolverMultistepScheduler ("dpm")."""
    if scheduler in ("ddim", "euler"):
        if spacing == "linspace":
            ts = np.linspace(0, T - 1, n)[::-1]
            return ts if scheduler == "euler" else ts.round().astype(np.int64)
        if spacing == "leading":
            ratio = T // n
            return (np.arange(0, n) * ratio).round()[::-1].astype(np.int64) + offset
        return np.round(np.arange(T, 0, -T / n)).astype(np.int64) - 1
    # DPMSolverMultistepScheduler, lambda_min_clipped = -inf: last_timestep = T
    if spacing == "linspace":
        return np.linspace(0, T - 1, n + 1).round()[::-1][:-1].astype(np.int64)
    if spacing == "leading":
        ratio = T // (n + 1)
        ts = (np.arange(0, n + 1) * ratio).round()[::-1][:-1].astype(np.int64)
        return ts + offset
    return np.arange(T, 0, -T / n).round().astype(np.int64) - 1


def sigma_table(ac):
    return np.sqrt((1 - ac) / ac)


def np_eps(ab, x):
    """E[eps | x] for x = sqrt(ab) x0 + sqrt(1 - ab) eps, x0 ~ N(M, S^2 I)."""
    return np.sqrt(1 - ab) * (x - np.sqrt(ab) * M) / (ab * S**2 + 1 - ab)


def np_model(ac):
    sig = sigma_table(ac)

    def eps(u, x):
        s = np.interp(u, np.arange(len(ac)), sig)
        return np_eps(1 / (1 + s**2), x)

    return eps


def sf_model(conv, ac):
    """The same model for scoreflow, through the convention (time -> timestep)."""
    sig = jnp.asarray(sigma_table(ac))
    idx = jnp.arange(len(ac), dtype=sig.dtype)
    m = jnp.asarray(M)

    def eps(u, x):
        s = jnp.interp(u, idx, sig)
        ab = 1 / (1 + s**2)
        return jnp.sqrt(1 - ab) * (x - jnp.sqrt(ab) * m) / (ab * S**2 + 1 - ab)

    return sf.Predictor(conv.wrap_model(eps), conv.process, prediction="eps")


def np_ddim(ac, ts, x, eps_fn, *, eta=0.0, zs=None, final=1.0):
    """DDIMScheduler.step, looped (clip_sample=False)."""
    n = len(ts)
    for k, t in enumerate(ts):
        prev = t - T // n
        a_t = ac[t]
        a_prev = ac[prev] if prev >= 0 else final
        e = eps_fn(t, x)
        x0 = (x - (1 - a_t) ** 0.5 * e) / a_t**0.5
        var = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
        std = eta * var**0.5
        x = a_prev**0.5 * x0 + (1 - a_prev - std**2) ** 0.5 * e
        if eta > 0:
            x = x + std * zs[k]
    return x


def np_ddpm(ac, ts, x, eps_fn, zs):
    """DDPMScheduler.step (fixed_small, clip_sample=False), looped."""
    n = len(ts)
    for k, t in enumerate(ts):
        prev = ts[k + 1] if k < n - 1 else -1
        a_t = ac[t]
        a_prev = ac[prev] if prev >= 0 else 1.0
        e = eps_fn(t, x)
        x0 = (x - (1 - a_t) ** 0.5 * e) / a_t**0.5
        cur_alpha = a_t / a_prev
        cur_beta = 1 - cur_alpha
        mean = (a_prev**0.5 * cur_beta / (1 - a_t)) * x0 + (
            cur_alpha**0.5 * (1 - a_prev) / (1 - a_t)
        ) * x
        if t > 0:
            var = max((1 - a_prev) / (1 - a_t) * cur_beta, 1e-20)
            mean = mean + var**0.5 * zs[k]
        x = mean
    return x


def np_euler_sigmas(ac, ts, final="zero"):
    sig = np.interp(ts, np.arange(len(ac)), sigma_table(ac))
    last = 0.0 if final == "zero" else sigma_table(ac)[0]
    return np.concatenate([sig, [last]])


def np_euler(ac, ts, x, eps_fn, final="zero"):
    """EulerDiscreteScheduler: scale_model_input + step (s_churn = 0), looped. `x`
    (scoreflow's variable) enters as x~ = x sqrt(sigma^2 + 1); returns x = x~ alpha
    at the last sigma."""
    sigmas = np_euler_sigmas(ac, ts, final)
    xt = x * np.sqrt(sigmas[0] ** 2 + 1)
    for k, u in enumerate(ts):
        s = sigmas[k]
        e = eps_fn(u, xt / np.sqrt(s**2 + 1))
        x0 = xt - s * e
        d = (xt - x0) / s
        xt = xt + d * (sigmas[k + 1] - s)
    return xt / np.sqrt(sigmas[-1] ** 2 + 1)


def np_dpmpp_2m(ac, ts, x, eps_fn):
    """DPMSolverMultistepScheduler (order 2, dpmsolver++, midpoint,
    lower_order_final, final sigma 0), looped."""
    sigmas = np.concatenate([sigma_table(ac)[ts], [0.0]])
    n = len(ts)

    def a_s(s):
        a = 1 / np.sqrt(s**2 + 1)
        return a, s * a

    prev_x0 = None
    for k, t in enumerate(ts):
        a0, s0 = a_s(sigmas[k])
        x0 = (x - s0 * eps_fn(t, x)) / a0
        a1, s1 = a_s(sigmas[k + 1])
        if sigmas[k + 1] == 0:  # lambda = inf: x = x0
            x = x0
        else:
            lam0, lam1 = np.log(a0) - np.log(s0), np.log(a1) - np.log(s1)
            h = lam1 - lam0
            if k == 0 or k == n - 1:
                x = (s1 / s0) * x - a1 * (np.exp(-h) - 1) * x0
            else:
                am, sm = a_s(sigmas[k - 1])
                h0 = lam0 - (np.log(am) - np.log(sm))
                r0 = h0 / h
                d0, d1 = x0, (x0 - prev_x0) / r0
                x = (
                    (s1 / s0) * x
                    - a1 * (np.exp(-h) - 1) * d0
                    - 0.5 * a1 * (np.exp(-h) - 1) * d1
                )
        prev_x0 = x0
    return x


# --------------------------------------------------------------------------- #
# scoreflow's per-step normals (its Brownian increments), to feed the oracles
# --------------------------------------------------------------------------- #


def sf_normals(key, num, cfg):
    """The standard normal each step of `sf.sample(key, ..., method="sde")` draws,
    per sample: sample j's Brownian path has key split(fold_in(key, j))[1], and a
    step over [s_a, s_b] of the flipped time reads (W(s_b) - W(s_a)) / sqrt(h)."""
    grid = jnp.asarray(cfg.time_grid)
    s = (cfg.process.t1 - grid).astype(grid.dtype)
    out = []
    for j in range(num):
        _, bkey = jr.split(jr.fold_in(key, j))
        bm = diffrax.UnsafeBrownianPath(
            SHAPE, bkey, levy_area=diffrax.BrownianIncrement
        )
        zs = []
        for a, b in zip(s[:-1], s[1:]):
            h = b - a
            zs.append(np.asarray(bm.evaluate(a, a + h) / jnp.sqrt(h)))
        out.append(zs)
    return out


@functools.cache
def setup(interpolation="log_snr"):
    """The linear table, its schedule and the model (built once, so that runs with
    the same solver and grid length share one compilation)."""
    ac = np_alphas_cumprod()
    conv = sf.peers.diffusers_schedule(interpolation=interpolation)
    return ac, conv, sf_model(conv, ac)


def _x_init(num=3, seed=0):
    return np.random.default_rng(seed).standard_normal((num, *SHAPE))


# --------------------------------------------------------------------------- #
# Timestep spacings and the Euler sigma grid
# --------------------------------------------------------------------------- #


def test_lin_et_al_table_2():
    """Lin et al. 2024, Table 2 (T = 1000, 10 steps), DDIM / DDPM."""
    want = {
        "leading": [900, 800, 700, 600, 500, 400, 300, 200, 100, 0],
        "trailing": [999, 899, 799, 699, 599, 499, 399, 299, 199, 99],
        "linspace": [999, 888, 777, 666, 555, 444, 333, 222, 111, 0],
    }
    for spacing, ts in want.items():
        got = sf.peers.diffusers_timesteps(10, timestep_spacing=spacing)
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, ts)


@pytest.mark.parametrize("scheduler", ["ddim", "ddpm", "euler", "dpmsolver"])
def test_timestep_spacings(scheduler):
    fam = {"ddpm": "ddim", "dpmsolver": "dpm"}.get(scheduler, scheduler)
    for spacing in ("leading", "trailing", "linspace"):
        for n in (1, 3, 7, 10, 25, 50, 999):
            offsets = (0, 1) if spacing == "leading" and n < 999 else (0,)
            for off in offsets:
                got = sf.peers.diffusers_timesteps(
                    n, scheduler=scheduler, timestep_spacing=spacing, steps_offset=off
                )
                want = np_timesteps(fam, n, spacing, off)
                np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)
    # the scheduler's default spacing
    default = "leading" if fam == "ddim" else "linspace"
    np.testing.assert_allclose(
        sf.peers.diffusers_timesteps(10, scheduler=scheduler),
        np_timesteps(fam, 10, default),
    )


def test_timestep_errors():
    with pytest.raises(ValueError, match="scheduler"):
        sf.peers.diffusers_timesteps(10, scheduler="pndm")
    with pytest.raises(ValueError, match="spacing"):
        sf.peers.diffusers_timesteps(10, timestep_spacing="middle")
    with pytest.raises(ValueError, match=r"\[0, 999\]"):
        sf.peers.diffusers_timesteps(10, steps_offset=100)
    with pytest.raises(ValueError, match="exceeds"):
        sf.peers.diffusers_timesteps(1001)


@eqx.filter_jit
def _sigma_and_timestep(conv, grid):
    """sigma~ = sigma/alpha at the grid's times, and the timesteps the model sees."""
    return jnp.exp(-conv.process.log_snr(grid) / 2), conv.from_t(grid)


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize("final", ["zero", "sigma_min"])
def test_euler_sigma_grid(spacing, final):
    """EulerDiscreteScheduler's sigmas (np.interp in the timestep, then the final
    sigma) are the recipe's grid: sigma~ = sigma/alpha at its times, then the final
    denoise (sigma 0)."""
    ac, conv, _ = setup("sigma")
    for n in (7, 10):
        ts = np_timesteps("euler", n, spacing, 1 if spacing == "leading" else 0)
        off = 1 if spacing == "leading" else 0
        cfg = sf.peers.diffusers_euler(
            conv, n, timestep_spacing=spacing, steps_offset=off, final_sigmas_type=final
        )
        want = np_euler_sigmas(ac, ts, final)
        grid = cfg.time_grid
        got, u = _sigma_and_timestep(conv, grid)
        if final == "zero":
            assert cfg.denoise and len(grid) == n
            got = np.concatenate([got, [0.0]])
        else:  # a last step to timestep 0 (none when the grid ends there)
            assert not cfg.denoise and len(grid) == n + int(ts[-1] > 0)
            if ts[-1] == 0:  # diffusers' last step then has length 0
                assert want[-1] == want[-2]
                want = want[:-1]
        np.testing.assert_allclose(got, want, rtol=1e-12)
        # the model is called at diffusers' (fractional) timesteps
        np.testing.assert_allclose(u[:n], ts, rtol=0, atol=1e-9)
        assert cfg.nfe == len(grid) - 1 + cfg.denoise
        assert isinstance(cfg.solver, sf.DDIM)


def test_euler_needs_sigma_interpolation_for_fractional_timesteps():
    conv = sf.peers.diffusers_schedule()  # interpolates the log-SNR
    with pytest.raises(ValueError, match="interpolation='sigma'"):
        sf.peers.diffusers_euler(conv, 7)  # "linspace": 0, 166.5, 333, ...
    sf.peers.diffusers_euler(conv, 10, timestep_spacing="trailing")  # integers: fine


def test_schedules_match_diffusers_betas():
    for kind in ("linear", "scaled_linear", "squaredcos_cap_v2"):
        kw = dict(beta_start=0.00085, beta_end=0.012) if kind == "scaled_linear" else {}
        conv = sf.peers.diffusers_schedule(beta_schedule=kind, **kw)
        want = np_alphas_cumprod(kind, **kw)
        np.testing.assert_allclose(conv.alphas_cumprod, want, rtol=1e-12)
        t = conv.to_t(jnp.arange(T))
        np.testing.assert_allclose(conv.process.alpha(t) ** 2, want, rtol=1e-12)
    with pytest.raises(ValueError, match="beta_schedule"):
        sf.peers.diffusers_schedule(beta_schedule="sigmoid")


# --------------------------------------------------------------------------- #
# Every integer timestep of the table is a time of the process (996-999)
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("kind", ["linear", "squaredcos_cap_v2"])
@pytest.mark.parametrize("interpolation", ["log_snr", "sigma"])
def test_every_timestep_maps_to_a_time_and_back(kind, interpolation):
    ac = np_alphas_cumprod("linear" if kind == "linear" else "cosine")
    conv = sf.DDPMTimesteps.table(ac, interpolation=interpolation)
    p = conv.process
    i = jnp.arange(T)
    t = conv.to_t(i)
    assert np.all(np.isfinite(t)) and float(t[0]) >= p.t0 and float(t[-1]) <= p.t1
    np.testing.assert_allclose(t, np.arange(T) / (T - 1), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(conv.from_t(t), np.arange(T), rtol=0, atol=1e-9)
    np.testing.assert_allclose(p.alpha(t) ** 2, ac, rtol=1e-11)
    np.testing.assert_allclose(p.alpha(t) ** 2 + p.sigma(t) ** 2, 1.0, rtol=1e-14)
    # fractional timesteps too: t = u / (N - 1) under the matching process
    u = jnp.linspace(0.0, T - 1.0, 37)
    np.testing.assert_allclose(conv.to_t(u), u / (T - 1), rtol=1e-12, atol=1e-15)


def test_builtin_processes_refuse_the_last_timesteps_with_the_fix():
    """sf.VP() ends at alpha(1)^2 = 4.32e-5 > alphas_cumprod[999] = 4.04e-5 (so
    timesteps 996-999 have no time), sf.CosineVP() before diffusers' timestep 999;
    the error names the table-built process."""
    lin = sf.DDPMTimesteps(sf.VP(), np_alphas_cumprod())
    assert np.isfinite(float(lin.to_t(995)))
    for i in (996, 999):
        with pytest.raises(Exception, match="DDPMTimesteps.table"):
            jax.block_until_ready(lin.to_t(i))
    cos = sf.DDPMTimesteps(sf.CosineVP(), np_alphas_cumprod("cosine"))
    with pytest.raises(Exception, match="DDPMTimesteps.table"):
        jax.block_until_ready(cos.to_t(999))
    with pytest.raises(Exception, match=r"outside \[0, N - 1\]"):
        jax.block_until_ready(sf.DDPMTimesteps.linear().to_t(1000))
    with pytest.raises(ValueError, match="interpolation"):
        sf.DDPMTimesteps.linear(interpolation="cubic")


def test_grids_that_start_at_999_sample():
    """diffusers' "trailing" spacing and DPM-Solver's default grid start at timestep
    999: with the table's process they sample (they failed under sf.VP())."""
    _, conv, pred = setup()
    for cfg in (
        sf.peers.diffusers_ddim(conv, 10, timestep_spacing="trailing"),
        sf.peers.diffusers_dpm_solver(conv, 10),
    ):
        assert float(cfg.time_grid[0]) == conv.process.t1 == 1.0
        xs = cfg.sample(jr.key(0), pred, SHAPE, num=4)
        assert np.all(np.isfinite(xs))
    g = sf.diffusers_grid(conv.process, 10, spacing="trailing", convention=conv)
    np.testing.assert_allclose(
        g, np.r_[np_timesteps("ddim", 10, "trailing") / (T - 1), 0.0], atol=1e-15
    )
    g = sf.diffusers_grid(conv.process, 10, spacing="leading", convention=conv)
    assert g.shape == (10,) and float(g[-1]) == 0.0  # timestep 0 is t0


# --------------------------------------------------------------------------- #
# The process built from the table is a valid scalar process
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("interpolation", ["log_snr", "sigma"])
def test_tabulated_process_is_consistent(interpolation):
    ac = np_alphas_cumprod()
    p = sf.DDPMTimesteps.table(ac, interpolation=interpolation).process
    assert isinstance(p, sf.AbstractScalarProcess)
    # off the knots (where the piecewise-linear table has a kink)
    ts = jnp.asarray((np.arange(0, 999, 37) + 0.3) / 999)
    np.testing.assert_allclose(
        p.alpha_dot(ts), jax.vmap(jax.grad(p.alpha))(ts), rtol=1e-10
    )
    np.testing.assert_allclose(
        p.sigma_dot(ts), jax.vmap(jax.grad(p.sigma))(ts), rtol=1e-10
    )
    s2dot = jax.vmap(jax.grad(lambda t: p.sigma(t) ** 2))(ts)
    np.testing.assert_allclose(
        p.g2(ts), s2dot - 2 * p.f(ts) * p.sigma(ts) ** 2, rtol=1e-9
    )
    assert np.all(np.asarray(p.g2(ts)) > 0)
    # between knots the transition is DDPM's: alpha(t_i)/alpha(t_{i-1}) = sqrt(1-b_i)
    i = np.arange(1, T)
    ratio = p.alpha(i / (T - 1)) / p.alpha((i - 1) / (T - 1))
    betas = np.linspace(1e-4, 0.02, T)
    np.testing.assert_allclose(ratio**2, 1 - betas[1:], rtol=1e-11)
    # t_from_log_snr is the exact inverse, and refuses the outside
    np.testing.assert_allclose(p.t_from_log_snr(p.log_snr(ts)), ts, rtol=1e-12)
    with pytest.raises(Exception, match="outside the process's range"):
        jax.block_until_ready(p.t_from_log_snr(p.log_snr(1.0) - 1.0))
    # Fokker-Planck: the exact Gaussian-mixture marginals solve the forward equation
    gm = sf.toy.GaussianMixture(
        jnp.array([0.4, 0.6]),
        jnp.array([[1.0, -0.5], [-1.0, 0.5]]),
        jnp.stack([0.3 * jnp.eye(2), 0.5 * jnp.eye(2)]),
    )
    xs = jr.normal(jr.key(1), (ts.shape[0], 2))
    r = jax.jit(
        jax.vmap(
            lambda t, x: sf.checks.fokker_planck_residual(
                p, lambda t, x: gm.marginal(p, t).log_prob(x), t, x
            )
        )
    )(ts, xs)
    assert float(jnp.max(jnp.abs(r))) < 1e-9


def test_tabulated_process_float32_finite():
    with jax.enable_x64(False):
        for kind in ("linear", "cosine"):
            p = sf.DDPMTimesteps.table(np_alphas_cumprod(kind)).process
            p = jax.tree_util.tree_map(
                lambda a: (
                    a.astype(jnp.float32)
                    if jnp.issubdtype(a.dtype, jnp.floating)
                    else a
                ),
                p,
            )
            ts = jnp.concatenate(
                [jnp.linspace(0.0, 1.0, 4001, dtype=jnp.float32), jnp.array([0.0, 1.0])]
            )
            for fn in (
                p.alpha,
                p.sigma,
                p.alpha_dot,
                p.sigma_dot,
                p.log_snr,
                p.f,
                p.g2,
            ):
                v = jax.vmap(fn)(ts)
                assert v.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(v))), fn
            assert bool(jnp.all(jax.vmap(p.g2)(ts) > 0))


# --------------------------------------------------------------------------- #
# Sampler runs against the oracles (10 steps throughout: one compilation per solver)
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    "spacing, offset, set_alpha_to_one",
    [
        ("leading", 0, True),
        ("leading", 1, True),
        ("trailing", 0, True),
        ("trailing", 0, False),
        ("leading", 0, False),  # the last step (timestep 0 -> alpha_0) is a no-op
    ],
)
def test_ddim_eta0_matches_oracle(spacing, offset, set_alpha_to_one):
    ac, conv, pred = setup()
    n = 10
    cfg = sf.peers.diffusers_ddim(
        conv,
        n,
        timestep_spacing=spacing,
        steps_offset=offset,
        set_alpha_to_one=set_alpha_to_one,
    )
    noop = not set_alpha_to_one and spacing == "leading" and not offset
    assert cfg.method == "ode" and cfg.nfe == n - int(noop)
    x = _x_init()
    got = cfg.sample(jr.key(0), pred, SHAPE, num=3, noise=x)
    ts = np_timesteps("ddim", n, spacing, offset)
    final = 1.0 if set_alpha_to_one else ac[0]
    want = np.stack([np_ddim(ac, ts, xi, np_model(ac), final=final) for xi in x])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-12)
    assert np.abs(got - x).max() > 0.1  # it moved


@pytest.mark.parametrize("eta", [0.3, 1.0])
def test_ddim_eta_matches_oracle(eta):
    ac, conv, pred = setup()
    n = 10
    cfg = sf.peers.diffusers_ddim(conv, n, eta=eta, timestep_spacing="trailing")
    assert cfg.method == "sde"
    key = jr.key(3)
    x = _x_init(seed=1)
    got = cfg.sample(key, pred, SHAPE, num=3, noise=x)
    zs = sf_normals(key, 3, cfg)
    ts = np_timesteps("ddim", n, "trailing")
    want = np.stack(
        [
            # the last step goes to alpha = 1, where the DDIM variance is 0
            np_ddim(ac, ts, x[j], np_model(ac), eta=eta, zs=zs[j] + [0 * x[j]])
            for j in range(3)
        ]
    )
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-12)


def test_ddim_warns_where_diffusers_leaves_its_grid():
    _, conv, _ = setup()
    with pytest.warns(UserWarning, match="999 to 899"):
        sf.peers.diffusers_ddim(conv, 10, timestep_spacing="linspace")
    with pytest.warns(UserWarning, match="999 to 857"):
        sf.peers.diffusers_ddim(conv, 7, timestep_spacing="trailing")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sf.peers.diffusers_ddim(conv, 10, timestep_spacing="trailing")
        sf.peers.diffusers_ddim(conv, 7)


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_ddpm_matches_oracle(spacing):
    ac, conv, pred = setup()
    n = 10
    cfg = sf.peers.diffusers_ddpm(conv, n, timestep_spacing=spacing)
    assert cfg.method == "sde" and cfg.denoise and cfg.nfe == n
    key = jr.key(5)
    x = _x_init(seed=2)
    got = cfg.sample(key, pred, SHAPE, num=3, noise=x)
    zs = sf_normals(key, 3, cfg)
    ts = np_timesteps("ddim", n, spacing)
    # diffusers' last step (t > 0 for "trailing") adds noise of std 1e-10 only
    want = np.stack(
        [np_ddpm(ac, ts, x[j], np_model(ac), zs[j] + [0 * x[j]]) for j in range(3)]
    )
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)
    full = sf.peers.diffusers_ddpm(conv)  # every timestep, 999..0
    np.testing.assert_allclose(full.time_grid, np.arange(T)[::-1] / (T - 1))


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
def test_euler_matches_oracle(spacing):
    ac, conv, pred = setup("sigma")
    n = 10 if spacing != "linspace" else 7  # 7 "linspace" timesteps are fractional
    cfg = sf.peers.diffusers_euler(conv, n, timestep_spacing=spacing)
    x = _x_init(seed=3)
    got = cfg.sample(jr.key(0), pred, SHAPE, num=3, noise=x)
    ts = np_timesteps("euler", n, spacing)
    want = np.stack([np_euler(ac, ts, xi, np_model(ac)) for xi in x])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-12)


def test_euler_sigma_min_matches_oracle():
    ac, conv, pred = setup("sigma")
    cfg = sf.peers.diffusers_euler(
        conv, 10, timestep_spacing="trailing", final_sigmas_type="sigma_min"
    )
    x = _x_init(seed=4)
    got = cfg.sample(jr.key(0), pred, SHAPE, num=3, noise=x)
    ts = np_timesteps("euler", 10, "trailing")
    want = np.stack([np_euler(ac, ts, xi, np_model(ac), "sigma_min") for xi in x])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("spacing", ["linspace", "trailing", "leading"])
def test_dpm_solver_2m_matches_oracle(spacing):
    ac, conv, pred = setup()
    n = 10
    cfg = sf.peers.diffusers_dpm_solver(conv, n, timestep_spacing=spacing)
    assert cfg.nfe == n
    x = _x_init(seed=5)
    got = cfg.sample(jr.key(0), pred, SHAPE, num=3, noise=x)
    ts = np_timesteps("dpm", n, spacing)
    want = np.stack([np_dpmpp_2m(ac, ts, xi, np_model(ac)) for xi in x])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-12)


def test_recipe_errors():
    with pytest.raises(TypeError, match="DDPMTimesteps"):
        sf.peers.diffusers_ddim(sf.VP(), 10)
    _, conv, _ = setup()
    with pytest.raises(ValueError, match="only step"):
        sf.peers.diffusers_dpm_solver(conv, 1)
    with pytest.raises(ValueError, match="final_sigmas_type"):
        sf.peers.diffusers_euler(conv, 10, final_sigmas_type="one")


# --------------------------------------------------------------------------- #
# DDPM's discrete training times
# --------------------------------------------------------------------------- #


def test_discrete_time_sampler_distribution():
    conv = sf.DDPMTimesteps.linear()
    p = conv.process
    s = conv.time_sampler()
    t, w = s.sample(jr.key(0), p, 20000)
    assert np.all(np.asarray(w) == 1.0)
    i = np.asarray(conv.from_t(t))
    np.testing.assert_allclose(i, np.round(i), atol=1e-9)  # integer timesteps
    i = np.round(i).astype(int)
    assert i.min() >= 0 and i.max() <= T - 1
    # U{0..999}: mean 499.5, sd 288.7; 4 standard errors
    assert abs(i.mean() - 499.5) < 4 * 288.7 / np.sqrt(20000)
    # a small range: chi-square over the 10 values (9 dof, p = 1e-4 at 33.7)
    s10 = conv.time_sampler(low=1, high=10)
    t10, _ = s10.sample(jr.key(1), p, 20000)
    i10 = np.round(np.asarray(conv.from_t(t10))).astype(int)
    counts = np.bincount(i10, minlength=11)[1:]
    assert counts.sum() == 20000
    chi2 = np.sum((counts - 2000.0) ** 2 / 2000.0)
    assert chi2 < 33.7, counts
    np.testing.assert_allclose(s10.support(), conv.to_t(jnp.arange(1, 11)))
    np.testing.assert_allclose(s10.importance(p, t10), 1.0)
    with pytest.raises(ValueError, match="no density"):
        s10.density(p, t10)
    with pytest.raises(ValueError, match="low <= high"):
        conv.time_sampler(low=5, high=1000)


def test_discrete_time_sampler_in_a_loss():
    """DDPM's L_simple: eps-MSE at uniformly drawn timesteps, through dsm_loss."""
    conv = sf.DDPMTimesteps.linear()
    loss = sf.dsm_loss(conv.process, prediction="eps", time_sampler=conv.time_sampler())
    ac = np_alphas_cumprod()
    pred = sf_model(conv, ac)  # the exact eps: the loss is the irreducible part
    x0 = jnp.asarray(M + S * np.random.default_rng(0).standard_normal((512, 3)))
    value = jax.jit(lambda x, k: loss(pred.model, x, k))(x0, jr.key(0))
    # E||eps - E[eps|x]||^2 / D = E[Var(eps|x)] = E_t[ab S^2 / (ab S^2 + 1 - ab)]
    want = np.mean(ac * S**2 / (ac * S**2 + 1 - ac))
    assert abs(float(value) - want) < 0.05, (float(value), want)
    with pytest.raises(ValueError, match="no density"):
        loss.implied_weighting(jnp.array([0.5]))


# --------------------------------------------------------------------------- #
# Against the real diffusers (pytest -m peers; needs the bench extra)
# --------------------------------------------------------------------------- #


def _diffusers():
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    return torch, diffusers


def _torch_model(torch, ac):
    eps = np_model(ac)

    def model(x, u):  # x: a batch of one, (1, 3) (DDPMScheduler reads shape[1])
        return torch.from_numpy(eps(float(u), x.numpy()))

    return model


@pytest.mark.peers
def test_real_diffusers_timesteps_and_euler_sigmas():
    torch, diffusers = _diffusers()
    classes = {
        "ddim": diffusers.DDIMScheduler,
        "ddpm": diffusers.DDPMScheduler,
        "euler": diffusers.EulerDiscreteScheduler,
        "dpmsolver": diffusers.DPMSolverMultistepScheduler,
    }
    for name, cls in classes.items():
        for spacing in ("leading", "trailing", "linspace"):
            for n in (7, 10, 50):
                off = 1 if spacing == "leading" else 0
                sched = cls(timestep_spacing=spacing, steps_offset=off)
                sched.set_timesteps(n)
                ours = sf.peers.diffusers_timesteps(
                    n, scheduler=name, timestep_spacing=spacing, steps_offset=off
                )
                np.testing.assert_allclose(
                    sched.timesteps.double().numpy(), ours, rtol=1e-6
                )
                if name == "euler":
                    conv = sf.DDPMTimesteps.table(
                        sched.alphas_cumprod.double().numpy(), interpolation="sigma"
                    )
                    cfg = sf.peers.diffusers_euler(
                        conv, n, timestep_spacing=spacing, steps_offset=off
                    )
                    sig = np.exp(-np.asarray(conv.process.log_snr(cfg.time_grid)) / 2)
                    np.testing.assert_allclose(
                        sched.sigmas.double().numpy(), np.r_[sig, 0.0], rtol=1e-6
                    )


@pytest.mark.peers
@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_real_diffusers_ddim(eta):
    torch, diffusers = _diffusers()
    sched = diffusers.DDIMScheduler(clip_sample=False, timestep_spacing="trailing")
    # diffusers keeps its table in float32; run its arithmetic in float64
    sched.alphas_cumprod = sched.alphas_cumprod.double()
    sched.final_alpha_cumprod = sched.final_alpha_cumprod.double()
    ac = sched.alphas_cumprod.numpy()
    conv = sf.DDPMTimesteps.table(ac)
    n = 10
    cfg = sf.peers.diffusers_ddim(conv, n, eta=eta, timestep_spacing="trailing")
    key, x = jr.key(7), _x_init(seed=6)
    got = cfg.sample(key, sf_model(conv, ac), SHAPE, num=3, noise=x)
    zs = sf_normals(key, 3, cfg) if eta > 0 else [[0 * x[0]] * n] * 3
    model = _torch_model(torch, ac)
    sched.set_timesteps(n)
    for j in range(3):
        xt = torch.from_numpy(x[j][None])
        for k, u in enumerate(sched.timesteps):
            z = zs[j][k] if k < n - 1 else 0 * x[j]
            xt = sched.step(
                model(xt, u), u, xt, eta=eta, variance_noise=torch.from_numpy(z[None])
            ).prev_sample
        np.testing.assert_allclose(got[j], xt.numpy()[0], rtol=1e-6, atol=1e-12)


@pytest.mark.peers
def test_real_diffusers_ddpm(monkeypatch):
    torch, diffusers = _diffusers()
    import diffusers.schedulers.scheduling_ddpm as ddpm_module

    sched = diffusers.DDPMScheduler(clip_sample=False)
    sched.alphas_cumprod = sched.alphas_cumprod.double()
    sched.one = sched.one.double()
    ac = sched.alphas_cumprod.numpy()
    conv = sf.DDPMTimesteps.table(ac)
    n = 10
    cfg = sf.peers.diffusers_ddpm(conv, n)
    key, x = jr.key(8), _x_init(seed=7)
    got = cfg.sample(key, sf_model(conv, ac), SHAPE, num=3, noise=x)
    zs = sf_normals(key, 3, cfg)
    model = _torch_model(torch, ac)
    sched.set_timesteps(n)
    for j in range(3):
        draws = iter([torch.from_numpy(z[None]) for z in zs[j]])
        monkeypatch.setattr(
            ddpm_module,
            "randn_tensor",
            lambda *a, **k: next(draws, torch.zeros((1, *SHAPE))).double(),
        )
        xt = torch.from_numpy(x[j][None])
        for u in sched.timesteps:
            xt = sched.step(model(xt, u), u, xt).prev_sample
        np.testing.assert_allclose(got[j], xt.numpy()[0], rtol=1e-6, atol=1e-9)


@pytest.mark.peers
@pytest.mark.parametrize("name", ["euler", "dpmsolver"])
def test_real_diffusers_euler_and_dpm_solver(name):
    """These two step in float32 internally (`sample.to(torch.float32)`): agreement
    to float32 accuracy."""
    torch, diffusers = _diffusers()
    if name == "euler":
        sched = diffusers.EulerDiscreteScheduler()
        conv = sf.DDPMTimesteps.table(
            sched.alphas_cumprod.double().numpy(), interpolation="sigma"
        )
        recipe = sf.peers.diffusers_euler
    else:
        sched = diffusers.DPMSolverMultistepScheduler()
        conv = sf.DDPMTimesteps.table(sched.alphas_cumprod.double().numpy())
        recipe = sf.peers.diffusers_dpm_solver
    ac = sched.alphas_cumprod.double().numpy()
    n = 10
    cfg = recipe(conv, n)
    sched.set_timesteps(n)
    z = _x_init(seed=8)
    model = _torch_model(torch, ac)
    outs = []
    for j in range(3):
        xt = torch.from_numpy(z[j][None]) * sched.init_noise_sigma
        for u in sched.timesteps:
            x_in = sched.scale_model_input(xt, u)
            xt = sched.step(model(x_in, u), u, xt).prev_sample.double()
        outs.append(xt.numpy()[0])
    # the same start in scoreflow's variable x (Euler's sample is x~ = x / alpha)
    x0 = z * float(sched.init_noise_sigma)
    if name == "euler":
        x0 = x0 * np.asarray(conv.process.alpha(cfg.time_grid[0]))
    got = cfg.sample(jr.key(0), sf_model(conv, ac), SHAPE, num=3, noise=x0)
    np.testing.assert_allclose(got, np.stack(outs), rtol=1e-4, atol=1e-5)
