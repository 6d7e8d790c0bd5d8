"""EDM's `edm_sampler` (NVlabs/edm, `generate.py`; Karras et al. 2022, Algorithm 2)
and k-diffusion's `get_sigmas_karras` + `sample_heun`, which run the same loop,
reproduced by `sf.peers.edm_sampler` in float64. The oracle below is written from
the paper's algorithm, with an exact Gaussian-mixture denoiser in numpy."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

import scoreflow as sf

W = np.array([0.3, 0.7])
M = np.array([[-1.0, 0.5], [1.0, -0.5]])
C = np.stack([0.1 * np.eye(2), np.array([[0.2, 0.05], [0.05, 0.1]])])
DATA = sf.toy.GaussianMixture(jnp.asarray(W), jnp.asarray(M), jnp.asarray(C))


def denoiser(x, sigma):
    """E[x0 | x0 + sigma eps = x] for the mixture (numpy, independent of sf)."""
    logs, means = [], []
    for w, m, c in zip(W, M, C):
        s = c + sigma**2 * np.eye(2)
        r = x - m
        sol = np.linalg.solve(s, r)
        logs.append(np.log(w) - 0.5 * r @ sol - 0.5 * np.linalg.slogdet(s)[1])
        means.append(m + c @ sol)
    logs = np.array(logs)
    p = np.exp(logs - logs.max())
    p /= p.sum()
    return np.einsum("k,kd->d", p, np.array(means))


def edm_oracle(
    latents,
    randn,
    n,
    smin,
    smax,
    rho=7.0,
    churn=0.0,
    s_min=0.0,
    s_max=float("inf"),
    s_noise=1.0,
):
    i = np.arange(n)
    t = (
        smax ** (1 / rho) + i / (n - 1) * (smin ** (1 / rho) - smax ** (1 / rho))
    ) ** rho
    t = np.append(t, 0.0)
    x = latents * t[0]
    for i in range(n):
        tc, tn = t[i], t[i + 1]
        gamma = min(churn / n, math.sqrt(2) - 1) if s_min <= tc <= s_max else 0.0
        th = tc + gamma * tc
        xh = x + math.sqrt(th**2 - tc**2) * s_noise * randn[i]
        d = (xh - denoiser(xh, th)) / th
        x = xh + (tn - th) * d
        if i < n - 1:
            d2 = (x - denoiser(x, tn)) / tn
            x = xh + (tn - th) * (0.5 * d + 0.5 * d2)
    return x


LATENTS = np.random.default_rng(0).standard_normal((3, 2))
RANDN = np.random.default_rng(1).standard_normal((3, 8, 2))


@pytest.mark.parametrize(
    "churn",
    [dict(), dict(churn=40.0, s_min=0.05, s_max=50.0, s_noise=1.003)],
    ids=["deterministic", "imagenet-churn"],
)
def test_edm_sampler_on_edm(churn):
    p = sf.EDM()
    n = 8
    kw = dict(
        S_churn=churn.get("churn", 0.0),
        S_min=churn.get("s_min", 0.0),
        S_max=churn.get("s_max", float("inf")),
        S_noise=churn.get("s_noise", 1.0),
    )
    cfg = sf.peers.edm_sampler(p, n, **kw)
    assert cfg.nfe == 2 * n - 1
    pred = sf.Predictor(DATA.x0(p), p, "x0")
    extra = {"normals": jnp.asarray(RANDN[:, : n - 1])} if churn else {}
    xs, info = sf.sample(
        None,
        p,
        pred,
        (2,),
        num=3,
        noise=jnp.asarray(LATENTS) * 80.0,
        return_info=True,
        **cfg.kwargs(),
        **extra,
    )
    for b in range(3):
        want = edm_oracle(LATENTS[b], RANDN[b], n, 0.002, 80.0, **churn)
        np.testing.assert_allclose(xs[b], want, rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(info["nfe"], 2 * n - 1)


def test_karras_heun_on_vp():
    """k-diffusion's `sample_heun` on a VP model, in its variables x~ = x / alpha,
    sigma~ = sigma / alpha."""
    p = sf.VP()
    n = 6
    conv = sf.SigmaTime(p)
    smin, smax = 0.05, 20.0
    cfg = sf.peers.edm_sampler(p, n, sigma_min=smin, sigma_max=smax)
    pred = sf.Predictor(DATA.x0(p), p, "x0")
    t_start = conv.to_t(smax)
    noise = jnp.asarray(LATENTS) * smax * p.alpha(t_start)
    xs = sf.sample(None, p, pred, (2,), num=3, noise=noise, **cfg.kwargs())
    for b in range(3):
        want = edm_oracle(LATENTS[b], RANDN[b], n, smin, smax)
        np.testing.assert_allclose(xs[b], want, rtol=1e-6, atol=1e-9)


def test_default_edm_heun_is_not_the_recipe():
    """The documented difference: `sf.EDMHeun()` on `sf.edm_grid(p, n - 1)` takes
    an Euler last step and no denoise."""
    p = sf.EDM()
    pred = sf.Predictor(DATA.x0(p), p, "x0")
    noise = jnp.asarray(LATENTS) * 80.0
    a = sf.sample(
        None, p, pred, (2,), num=3, noise=noise, **sf.peers.edm_sampler(p, 8).kwargs()
    )
    b = sf.sample(
        None,
        p,
        pred,
        (2,),
        num=3,
        noise=noise,
        solver=sf.EDMHeun(),
        time_grid=sf.edm_grid(p, 7),
    )
    assert np.max(np.abs(a - b)) > 1e-5  # EDM's Heun last step vs an Euler one


def test_edm_sampler_bad_input():
    with pytest.raises(ValueError, match="num_steps"):
        sf.peers.edm_sampler(sf.EDM(), 1)
    with pytest.raises(ValueError, match="S_churn"):
        sf.peers.edm_sampler(sf.EDM(), 8, S_churn=-1.0)


@pytest.mark.peers
def test_against_k_diffusion():
    torch = pytest.importorskip("torch")
    kd = pytest.importorskip("k_diffusion")
    torch.set_default_dtype(torch.float64)
    n = 8
    sigmas = kd.sampling.get_sigmas_karras(n, 0.002, 80.0, rho=7.0)

    class Model(torch.nn.Module):
        def forward(self, x, sigma, **kw):
            out = [denoiser(xi.numpy(), float(sigma[0])) for xi in x]
            return torch.tensor(np.array(out))

    x = torch.tensor(LATENTS) * sigmas[0]
    want = kd.sampling.sample_heun(Model(), x, sigmas, disable=True).numpy()
    p = sf.EDM()
    pred = sf.Predictor(DATA.x0(p), p, "x0")
    xs = sf.sample(
        None,
        p,
        pred,
        (2,),
        num=3,
        noise=jnp.asarray(LATENTS) * 80.0,
        **sf.peers.edm_sampler(p, n).kwargs(),
    )
    np.testing.assert_allclose(xs, want, rtol=1e-6, atol=1e-9)
