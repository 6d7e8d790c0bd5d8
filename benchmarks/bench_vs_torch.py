r"""scoreflow's samplers next to diffusers' and k-diffusion's, all driven by the same
exact model (not a test): run `python benchmarks/bench_vs_torch.py`.

Needs the `bench` extra (`pip install -e .[bench]`: torch, diffusers, torchsde,
torchdiffeq) and k-diffusion installed **without its dependencies**
(`pip install --no-deps k-diffusion`; its own requirements are training and
evaluation tools -- wandb, clip, kornia, torchvision, clean-fid -- that pin old
numpy/torch). Only `k_diffusion.sampling` is used: if the package's `__init__`
cannot be imported, `k_diffusion/sampling.py` is loaded from the installed package
with a stub `k_diffusion.utils` holding the one helper it uses (`append_dims`,
copied verbatim).

What it reports, in one process, float32 on the CPU (torch) and on
`jax.devices()` (JAX):

1. Fréchet distance (sample mean/covariance against the mixture's exact ones) vs
   NFE in {5, 10, 20, 50} for every sampler, on the 2-D 8-Gaussian ring and a 32-D
   mixture (the same data as `bench_sampling.py`), next to the exact-sample noise
   floor (the same FD for exact samples of the same size, mean ± std of 5 draws).
2. A cross-check: scoreflow configured to take exactly the library's steps (same
   noise levels, same initial points, final step to $\tilde\sigma = 0$ as a Tweedie
   denoise) must give the library's samples; the table shows
   $\max_i \lVert x^\text{sf}_i - x^\text{lib}_i\rVert_\infty$.

The exact model, and each library's convention
----------------------------------------------
`sf.toy.GaussianMixture` gives the exact $\hat\varepsilon$ and $\hat x_0$ under any
process with a Gaussian kernel $x_t = \alpha(t) x_0 + \sigma(t)\varepsilon$. All
three libraries index noise by the same invariant, the scaled level
$\tilde\sigma = \sigma/\alpha = e^{-\lambda/2}$ ($\lambda$ the log-SNR), so every
model call is mapped to scoreflow time by
$t = $ `p.t_from_log_snr(-2 log sigma~)` (clipped to $[t_0, t_1]$) and the
exact prediction is evaluated there:

- **diffusers** (process `sf.VP()`): a discrete schedule of 1000 training
  timesteps $u = 0..999$ with `trained_betas` chosen so that
  `alphas_cumprod[u]` $= \alpha_\text{VP}(t_u)^2$, $t_u = (u + 1)/1000$ (the
  continuous VP with $\beta \in [0.1, 20]$ is the limit of DDPM's linear betas
  $10^{-4}..0.02$). The eps-model is called as `model(x_in, u)`; its noise level is
  the scheduler's own,
  $\tilde\sigma(u) = \sqrt{(1 - \bar\alpha_u)/\bar\alpha_u}$ (linearly interpolated
  in $u$ for fractional timesteps, as Euler/Heun do), and `x_in` is the VP-scaled
  state ($=x$ for DDIM/DDPM/DPM-Solver, `scale_model_input(x)` $= x/\sqrt{1 +
  \tilde\sigma^2}$ for Euler/Heun, whose state is $\tilde x = x/\alpha$). So
  `model(x_in, u) = gm.eps(VP)(t(sigma~(u)), x_in)`. All schedulers use
  `timestep_spacing="trailing"` (the first step starts at $u = 999$, i.e. at
  $t_1$: the default "leading" spacing of DDIM starts at $u = 1000 - 1000/n$
  while the initial noise is pure) and `clip_sample=False` (the default clips $\hat x_0$ to
  $[-1, 1]$, meant for images); everything else is the scheduler's default
  (DPM-Solver: `dpmsolver++`, order 2, `lower_order_final=True`,
  `final_sigmas_type="zero"`; DDPM: `fixed_small` variance). Initial points:
  `z * scheduler.init_noise_sigma`, one fixed `z`.
- **k-diffusion** (process `sf.EDM()`, $\tilde\sigma = \sigma = 80 t$): the
  denoiser $D(\tilde x; \tilde\sigma)$ in the variance-exploding variables,
  `model(x, sigma) = gm.x0(EDM)(t(sigma), alpha(t) * x)` ($\alpha = 1$ here); noise
  levels `get_sigmas_karras(n, 0.002, 80, rho=7)` (which appends $\tilde\sigma = 0$).
  Initial points: `z * 80`.
- **scoreflow**: `sf.Predictor(gm.eps(p), p, prediction="eps")` and `sf.sample`
  on scoreflow's own grids (VP: log-SNR-uniform for DDIM, DPM-Solver++(2M) and
  DDPM, uniform in $t$ for the diffrax solvers, EDM $\rho = 7$ for EDM Heun; EDM:
  the EDM grid for all), ending at $t_0$ without a final denoise. These are
  scoreflow's defaults as a user would call them, not tuned to the libraries'
  grids; the cross-check (2) is the like-for-like comparison.

Every deterministic sampler, in every library, starts from the same standard normal
`z` (times the prior std: 1 for diffusers' VP, $\sigma(t_1)$ for scoreflow, 80 for
EDM), so at high NFE they all converge to the same probability-flow map of `z`, and
their FDs to the same number; that number differs from the noise floor (another
draw) by sampling noise of the size of the floor's spread.

NFE: each entry is the number of model calls actually made; when a sampler cannot
hit the budget exactly (2 calls per step, or a last step that takes 1), the
actual count is shown in brackets. The libraries' second-order samplers (Heun,
DPM2) end with an Euler step to $\tilde\sigma = 0$, so $k$ noise levels cost
$2k - 1$ calls.

Caveats: diffusers works on a discrete timestep index and its smallest noise level
is $\tilde\sigma(u{=}0) \approx 0.01$ ($t = 10^{-3}$); its final step goes to
$\tilde\sigma = 0$ from the last grid level (at NFE 50 with "trailing" spacing,
$u = 19$), scoreflow's to $t_0$ ($\tilde\sigma \approx 10^{-3}$ for VP). Stochastic
samplers use different random numbers in each library (compare their FD, not their
samples).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import inspect
import pathlib
import sys
import time
import types

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

import scoreflow as sf
from scoreflow import toy

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import bench_sampling  # noqa: E402  (the shared setup, from this folder)

try:
    import diffusers
    import torch
except ImportError as e:  # pragma: no cover
    raise SystemExit(
        f"{e}: this benchmark needs the `bench` extra: pip install -e .[bench] "
        "&& pip install --no-deps k-diffusion"
    ) from None

NFES = [5, 10, 20, 50]
N_TRAIN = 1000


# ---- data (as in bench_sampling.py) -------------------------------------------


# the same exact-moment Frechet distance and 32-D mixture as bench_sampling.py
fd_truth, mixture_32d = bench_sampling.fd_truth, bench_sampling.mixture_32d


# ---- k-diffusion: import only the sampling module ---------------------------


def _append_dims(x, target_dims):
    """Verbatim from k_diffusion.utils (k-diffusion 0.1.1)."""
    dims_to_append = target_dims - x.ndim
    if dims_to_append < 0:
        raise ValueError(
            f"input has {x.ndim} dims but target_dims is {target_dims}, which is less"
        )
    return x[(...,) + (None,) * dims_to_append]


def load_k_sampling():
    try:
        import k_diffusion.sampling as ks

        return ks, "full package"
    except ImportError:
        pass
    for name in [m for m in sys.modules if m.split(".")[0] == "k_diffusion"]:
        del sys.modules[name]
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None:
        raise SystemExit(
            "k-diffusion is not installed: pip install --no-deps k-diffusion"
        )
    pkg = types.ModuleType("k_diffusion")
    pkg.__path__ = list(spec.submodule_search_locations)
    utils = types.ModuleType("k_diffusion.utils")
    utils.append_dims = _append_dims
    pkg.utils = utils
    sys.modules["k_diffusion"] = pkg
    sys.modules["k_diffusion.utils"] = utils
    return importlib.import_module("k_diffusion.sampling"), "sampling.py only"


# ---- the exact model in each convention -----------------------------------------


def _t_of(p, lo, hi, tol, sig):
    # Noise levels at (or, by float rounding, just past) the ends of the process's
    # range map to t1 / t0; the inversion only sees safe values.
    lam = -2 * jnp.log(sig)
    t = p.t_from_log_snr(jnp.clip(lam, lo + tol, hi - tol))
    return jnp.where(lam <= lo + tol, p.t1, jnp.where(lam >= hi - tol, p.t0, t))


def _eps(p, gm, t, x):
    return jax.vmap(gm.eps(p), (None, 0))(t, x)


def _x0(p, gm, t, x_tilde):
    return jax.vmap(gm.x0(p), (None, 0))(t, p.alpha(t) * x_tilde)


class Exact:
    """Exact predictions of `gm` under `p` (compiled once per shape), numpy in/out.
    (The process and mixture are passed as arguments, not closed over.)"""

    def __init__(self, p, gm):
        self.p, self.gm = p, gm
        lo, hi = (
            float(p.log_snr(jnp.asarray(p.t1))),
            float(p.log_snr(jnp.asarray(p.t0))),
        )
        self.bounds = (lo, hi, 1e-5 * max(abs(lo), abs(hi), 1.0))
        self.calls = 0

    def t(self, sigma_tilde):
        sig = jnp.asarray(sigma_tilde, jnp.float32)
        return _T_OF(self.p, *self.bounds, sig)

    def eps(self, sigma_tilde, x_vp):
        """eps-hat at the time of noise level sigma~, for a VP-scaled state."""
        self.calls += 1
        return np.array(_EPS(self.p, self.gm, self.t(sigma_tilde), jnp.asarray(x_vp)))

    def denoiser(self, sigma_tilde, x_tilde):
        """k-diffusion's D(x~; sigma~): x0-hat for the VE-scaled state x~ = x/alpha."""
        self.calls += 1
        return np.array(_X0(self.p, self.gm, self.t(sigma_tilde), jnp.asarray(x_tilde)))


_T_OF = eqx.filter_jit(_t_of)
_EPS = eqx.filter_jit(_eps)
_X0 = eqx.filter_jit(_x0)


# ---- diffusers --------------------------------------------------------------


def vp_trained_betas(p):
    tu = (np.arange(N_TRAIN) + 1.0) / N_TRAIN
    ac = np.asarray(jax.vmap(p.alpha)(jnp.asarray(tu)), np.float64) ** 2
    ac_prev = np.concatenate([[1.0], ac[:-1]])
    return 1.0 - ac / ac_prev


DIFFUSERS = {
    # name: (scheduler class, extra config, NFE budget -> num_inference_steps)
    "DDIMScheduler": ("DDIMScheduler", {}, lambda n: n),
    "DPMSolverMultistepScheduler (2M, dpmsolver++)": (
        "DPMSolverMultistepScheduler",
        {},
        lambda n: n,
    ),
    "EulerDiscreteScheduler": ("EulerDiscreteScheduler", {}, lambda n: n),
    "HeunDiscreteScheduler": ("HeunDiscreteScheduler", {}, lambda n: (n + 1) // 2),
    "DDPMScheduler (ancestral)": ("DDPMScheduler", {}, lambda n: n),
    "EulerAncestralDiscreteScheduler": (
        "EulerAncestralDiscreteScheduler",
        {},
        lambda n: n,
    ),
}


def make_scheduler(cls_name, betas, **extra):
    cls = getattr(diffusers, cls_name)
    params = inspect.signature(cls.__init__).parameters
    cfg = dict(
        num_train_timesteps=N_TRAIN,
        trained_betas=betas.tolist(),
        timestep_spacing="trailing",
        prediction_type="epsilon",
    )
    if "clip_sample" in params:
        cfg["clip_sample"] = False
    cfg.update(extra)
    return cls(**cfg)


def sched_sigma(sched, u):
    """The scheduler's own sigma~ at (possibly fractional) timestep u."""
    ac = sched.alphas_cumprod.double().numpy()
    sig = np.sqrt((1 - ac) / ac)
    return float(np.interp(float(u), np.arange(len(sig)), sig))


def run_diffusers(sched, ex, z, steps, seed=0):
    sched.set_timesteps(steps)
    gen = torch.Generator().manual_seed(seed)
    takes_gen = "generator" in inspect.signature(sched.step).parameters
    x = torch.from_numpy(z) * sched.init_noise_sigma
    ex.calls = 0
    for u in sched.timesteps:
        x_in = sched.scale_model_input(x, u)
        eps = ex.eps(sched_sigma(sched, u), x_in.numpy())
        kw = dict(generator=gen) if takes_gen else {}
        x = sched.step(torch.from_numpy(eps), u, x, **kw).prev_sample
    return x.numpy(), ex.calls


def diffusers_grid(sched, ex, steps):
    """The distinct noise levels of the scheduler's timesteps, as scoreflow times."""
    sched.set_timesteps(steps)
    us = []
    for u in sched.timesteps.tolist():
        if u not in us:
            us.append(u)
    return ex.t(np.array([sched_sigma(sched, u) for u in us]))


# ---- k-diffusion ------------------------------------------------------------

KDIFF = {
    # name: (function name, NFE budget -> number of nonzero sigmas)
    "sample_euler": ("sample_euler", lambda n: n),
    "sample_heun": ("sample_heun", lambda n: (n + 1) // 2),
    "sample_dpm_2": ("sample_dpm_2", lambda n: (n + 1) // 2),
    "sample_lms": ("sample_lms", lambda n: n),
    "sample_dpmpp_2m": ("sample_dpmpp_2m", lambda n: n),
    "sample_euler_ancestral": ("sample_euler_ancestral", lambda n: n),
}


def karras(ks, p, k):
    smin = float(jnp.exp(-p.log_snr(p.t0) / 2))
    smax = float(jnp.exp(-p.log_snr(p.t1) / 2))
    return ks.get_sigmas_karras(k, smin, smax, rho=7.0)


def run_kdiff(ks, fn_name, ex, z, sigmas, seed=0):
    torch.manual_seed(seed)

    def model(x, sigma):
        s = float(sigma.reshape(-1)[0])
        return torch.from_numpy(ex.denoiser(s, x.numpy()))

    ex.calls = 0
    x = torch.from_numpy(z) * sigmas[0]
    out = getattr(ks, fn_name)(model, x, sigmas, disable=True)
    return out.numpy(), ex.calls


# ---- scoreflow --------------------------------------------------------------


def _no_lower_order_final(cls):
    """The solver without a lower-order final step (as the libraries step to
    sigma~ = 0 with their own final step, which scoreflow's `denoise` reproduces)."""
    try:
        return cls(lower_order_final=False)
    except TypeError:  # a scoreflow without the option has none
        return cls()


def _heun_steps(n):
    """EDM Heun steps for an NFE budget: 2 calls a step, 1 on a lower-order final
    step (where this scoreflow has one)."""
    lof = getattr(sf.EDMHeun(), "lower_order_final", False)
    return max((n + 1) // 2 if lof else n // 2, 1)


def sf_samplers(p, edm_only):
    if edm_only:
        g = sf.edm_grid
        return {
            "DDIM (EDM grid)": lambda n: dict(solver=sf.DDIM(), time_grid=g(p, n)),
            "DPM-Solver++(2M) (EDM grid)": lambda n: dict(
                solver=sf.DPMSolverPP2M(), time_grid=g(p, n)
            ),
            "EDM Heun (EDM grid)": lambda n: dict(
                solver=sf.EDMHeun(), time_grid=g(p, _heun_steps(n))
            ),
            "DDPM ancestral (EDM grid)": lambda n: dict(
                method="sde", solver=sf.DDPM(), time_grid=g(p, n)
            ),
        }
    return {
        "Euler PF-ODE (uniform t)": lambda n: dict(solver=diffrax.Euler(), steps=n),
        "Heun PF-ODE (uniform t)": lambda n: dict(
            solver=diffrax.Heun(), steps=max(n // 2, 1)
        ),
        "DDIM (log-SNR grid)": lambda n: dict(
            solver=sf.DDIM(), time_grid=sf.log_snr_grid(p, n)
        ),
        "DPM-Solver++(2M) (log-SNR grid)": lambda n: dict(
            solver=sf.DPMSolverPP2M(), time_grid=sf.log_snr_grid(p, n)
        ),
        "EDM Heun (EDM grid)": lambda n: dict(
            solver=sf.EDMHeun(), time_grid=sf.edm_grid(p, _heun_steps(n))
        ),
        "DDPM ancestral (log-SNR grid)": lambda n: dict(
            method="sde", solver=sf.DDPM(), time_grid=sf.log_snr_grid(p, n)
        ),
    }


def run_sf(p, pred, gm, num, z=None, **kw):
    """`sf.sample`; with `z`, from the initial points sigma(t_start) z (the same `z`
    as the libraries' runs), else from the key's own noise."""
    if z is not None:
        grid = kw.get("time_grid")
        t_start = p.t1 if grid is None else grid[0]
        kw["noise"] = jnp.asarray(z) * p.sigma(jnp.asarray(t_start))
    xs, info = sf.sample(jr.key(0), p, pred, (gm.dim,), num=num, return_info=True, **kw)
    return np.asarray(xs), int(info["nfe"][0])


def agreement(xs, xl, nfe_s, nfe_l):
    """max |x_sf - x_lib| over samples and coordinates, and that over max |x_lib|."""
    d = float(np.max(np.abs(xs - xl)))
    c = f"{d:.1e} / {d / float(np.max(np.abs(xl))):.0e}"
    return c if nfe_s == nfe_l else c + f" (NFE {nfe_s} vs {nfe_l})"


def cell(fd, nfe, budget):
    return f"{fd:.4f}" + ("" if nfe == budget else f" ({nfe})")


# ---- tables -------------------------------------------------------------------


def header(title, num, floor):
    return [
        f"\n**{title}** ({num} samples; exact-sample noise floor "
        f"{np.mean(floor):.4f} ± {np.std(floor):.4f})\n",
        "| sampler | " + " | ".join(f"NFE {n}" for n in NFES) + " |",
        "|---|" + "---|" * len(NFES),
    ]


def emit(rows, line):
    rows.append(line)
    print(line, flush=True)


def scoreflow_rows(out, p, pred, gm, num, z, *, edm_only):
    """One table row per scoreflow sampler: FD vs NFE from the same initial noise."""
    for sname, kw in sf_samplers(p, edm_only=edm_only).items():
        cells = []
        for n in NFES:
            xs, nfe = run_sf(p, pred, gm, num, z, **kw(n))
            cells.append(cell(fd_truth(gm, xs), nfe, n))
        emit(out, f"| scoreflow {sname} | " + " | ".join(cells) + " |")


def tables_for(gm, name, num, ks):
    draw = jax.jit(lambda k, n: gm.sample(k, n), static_argnums=1)
    floor = [fd_truth(gm, draw(jr.key(100 + r), num)) for r in range(5)]
    z = np.array(jr.normal(jr.key(7), (num, gm.dim)), np.float32)
    out, checks = [], []

    # -- VP: diffusers vs scoreflow
    p = sf.VP()
    ex = Exact(p, gm)
    pred = sf.Predictor(lambda t, x: gm.eps(p)(t, x), p, prediction="eps")
    betas = vp_trained_betas(p)
    out += header(f"{name}, `sf.VP()`: diffusers and scoreflow", num, floor)
    print("\n".join(out[-3:]), flush=True)
    for lname, (cls, extra, steps_of) in DIFFUSERS.items():
        cells = []
        for n in NFES:
            xs, nfe = run_diffusers(
                make_scheduler(cls, betas, **extra), ex, z, steps_of(n)
            )
            cells.append(cell(fd_truth(gm, xs), nfe, n))
        emit(out, f"| diffusers {lname} | " + " | ".join(cells) + " |")
    scoreflow_rows(out, p, pred, gm, num, z, edm_only=False)

    # cross-check: scoreflow on the scheduler's own levels, from the same z
    pairs = {
        "DDIMScheduler ↔ sf.DDIM": ("DDIMScheduler", {}, sf.DDIM(), lambda n: n),
        "EulerDiscreteScheduler ↔ sf.DDIM": (
            "EulerDiscreteScheduler",
            {},
            sf.DDIM(),
            lambda n: n,
        ),
        "DPMSolverMultistepScheduler(lower_order_final=False) ↔ sf.DPMSolverPP2M": (
            "DPMSolverMultistepScheduler",
            {"lower_order_final": False},
            _no_lower_order_final(sf.DPMSolverPP2M),
            lambda n: n,
        ),
        "HeunDiscreteScheduler ↔ sf.EDMHeun": (
            "HeunDiscreteScheduler",
            {},
            _no_lower_order_final(sf.EDMHeun),
            lambda n: (n + 1) // 2,
        ),
    }
    checks += [
        f"\n**{name}, `sf.VP()`**: max |x_sf - x_diffusers| / relative\n",
        "| pair | " + " | ".join(f"NFE {n}" for n in NFES) + " |",
        "|---|" + "---|" * len(NFES),
    ]
    for pname, (cls, extra, solver, steps_of) in pairs.items():
        cells = []
        for n in NFES:
            sched = make_scheduler(cls, betas, **extra)
            xl, nfe_l = run_diffusers(sched, ex, z, steps_of(n))
            grid = diffusers_grid(sched, ex, steps_of(n))
            xs, nfe_s = run_sf(
                p,
                pred,
                gm,
                num,
                solver=solver,
                time_grid=grid,
                denoise=True,
                noise=jnp.asarray(z),
            )
            cells.append(agreement(xs, xl, nfe_s, nfe_l))
        emit(checks, f"| {pname} | " + " | ".join(cells) + " |")

    # -- EDM: k-diffusion vs scoreflow
    p = sf.EDM()
    ex = Exact(p, gm)
    pred = sf.Predictor(lambda t, x: gm.eps(p)(t, x), p, prediction="eps")
    out += header(f"{name}, `sf.EDM()`: k-diffusion and scoreflow", num, floor)
    print("\n".join(out[-3:]), flush=True)
    for lname, (fn, k_of) in KDIFF.items():
        cells = []
        for n in NFES:
            xs, nfe = run_kdiff(ks, fn, ex, z, karras(ks, p, k_of(n)))
            cells.append(cell(fd_truth(gm, xs), nfe, n))
        emit(out, f"| k-diffusion {lname} | " + " | ".join(cells) + " |")
    scoreflow_rows(out, p, pred, gm, num, z, edm_only=True)

    kpairs = {
        "sample_euler ↔ sf.DDIM": ("sample_euler", sf.DDIM(), lambda n: n),
        "sample_heun ↔ sf.EDMHeun": (
            "sample_heun",
            _no_lower_order_final(sf.EDMHeun),
            lambda n: (n + 1) // 2,
        ),
        "sample_dpmpp_2m ↔ sf.DPMSolverPP2M": (
            "sample_dpmpp_2m",
            _no_lower_order_final(sf.DPMSolverPP2M),
            lambda n: n,
        ),
    }
    checks += [
        f"\n**{name}, `sf.EDM()`**: max |x_sf - x_k-diffusion| / relative\n",
        "| pair | " + " | ".join(f"NFE {n}" for n in NFES) + " |",
        "|---|" + "---|" * len(NFES),
    ]
    for pname, (fn, solver, k_of) in kpairs.items():
        cells = []
        for n in NFES:
            sig = karras(ks, p, k_of(n))
            xl, nfe_l = run_kdiff(ks, fn, ex, z, sig)
            grid = ex.t(sig[:-1].numpy())  # drop the appended 0
            xs, nfe_s = run_sf(
                p,
                pred,
                gm,
                num,
                solver=solver,
                time_grid=grid,
                denoise=True,
                noise=jnp.asarray(z) * float(sig[0]),
            )
            cells.append(agreement(xs, xl, nfe_s, nfe_l))
        emit(checks, f"| {pname} | " + " | ".join(cells) + " |")
    return out, checks


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--num", type=int, default=2000)
    ap.add_argument("--only", choices=("ring", "32d"), default=None)
    ap.add_argument("--nfes", type=int, nargs="+", default=list(NFES))
    args = ap.parse_args()
    NFES[:] = args.nfes
    torch.set_num_threads(1)
    ks, how = load_k_sampling()
    print(
        f"jax {jax.__version__}, diffrax {diffrax.__version__}, torch "
        f"{torch.__version__}, diffusers {diffusers.__version__}, k-diffusion "
        f"{importlib.metadata.version('k-diffusion')} ({how}); JAX devices "
        f"{jax.devices()}; float32",
        flush=True,
    )
    t_start = time.perf_counter()
    out, checks = [], []
    if args.only in (None, "ring"):
        o, c = tables_for(toy.ring_mixture(), "2-D ring (8 Gaussians)", args.num, ks)
        out += o
        checks += c
    if args.only in (None, "32d"):
        o, c = tables_for(
            mixture_32d(jr.key(3)),
            "32-D mixture (4 full-covariance Gaussians)",
            args.num,
            ks,
        )
        out += o
        checks += c
    print("\n".join(out + checks))
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
