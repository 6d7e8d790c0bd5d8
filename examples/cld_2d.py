"""Critically-damped Langevin diffusion (CLD) on a 2-D mixture, with the exact score.

Data: a ring of six Gaussians (radius 1.2, std 0.12) in 2-D. Process: sf.CLD() with
the paper's defaults (beta = 4, M^-1 = 4, critical damping Gamma = 2 sqrt(M) = 1,
initial velocity v0 ~ N(0, gamma M), gamma = 0.04). The state is the pair
(position x, velocity v), shape (2, 2); noise enters through v only. The kernel of a
Gaussian-mixture data set under a linear SDE is again a mixture, so the score is
exact (`process.mixture_score(data)`): no training.

The figure shows
- data, PF-ODE samples (Heun) and reverse-SDE samples (Euler-Maruyama), with their
  squared Fréchet distances to the exact data moments and the noise floor of as many
  exact samples;
- PF-ODE and reverse-SDE paths of one position coordinate and its velocity against t:
  positions move smoothly (noise reaches them only through v), velocities do not;
- the forward marginal in phase space (x_1, v_1) at several times: from the data line
  v = 0 (spread by the small initial velocity) to the equilibrium N(0, 1) x N(0, M);
- the standard deviations of x_1 and v_1 over the samples along the reverse paths,
  against the exact marginal's at every t, and the velocity marginal at t0 (close to
  the initial N(0, gamma M)) against the exact one.

    python examples/cld_2d.py [--smoke]

Figure: examples/figures/cld_2d.png (or $SCOREFLOW_FIGURES).
Measured with `time PYTHONPATH=. python examples/cld_2d.py [--smoke]` on the shared
2-core CPU machine (other jobs running): smoke 1 min 5 s - 2 min, full 44 s -
2 min 33 s (by load). Full run (num = 3000): squared Fréchet distance to the data moments
PF-ODE 4.2e-4, reverse SDE 2.7e-4, exact samples 4.9e-4. The committed figure is from
the full run.
"""

import os
import sys
import time
from pathlib import Path

import diffrax
import jax
import jax.numpy as jnp
import jax.random as jr
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

import scoreflow as sf

SMOKE = os.environ.get("SCOREFLOW_SMOKE") == "1" or "--smoke" in sys.argv
FIGURES = Path(os.environ.get("SCOREFLOW_FIGURES", Path(__file__).parent / "figures"))


def quadratic_grid(p, steps):
    """Decreasing times t0 + (t1 - t0) (i / steps)^2: dense near t0, where the
    velocity's score is stiff (its variance there is only about gamma M)."""
    return p.t0 + (p.t1 - p.t0) * jnp.linspace(1.0, 0.0, steps + 1) ** 2


def fd_to_exact(x, gm):
    mu, cov = jnp.mean(x, 0), jnp.cov(x.T)
    return float(sf.metrics.frechet_distance_gaussians(mu, cov, gm.mean(), gm.cov()))


def main():
    start = time.time()
    FIGURES.mkdir(parents=True, exist_ok=True)
    process = sf.CLD()
    data = sf.toy.ring_mixture(num_modes=6, radius=1.2, std=0.12)
    score = process.mixture_score(data)  # exact, a (t, u) callable on (2, 2) states
    pred = sf.Predictor(score, process, prediction="score")

    num = 300 if SMOKE else 3000
    ode_steps, sde_steps = (40, 100) if SMOKE else (100, 500)
    x_ode, info_ode = sf.sample(
        jr.key(0), process, pred, (2, 2), num=num, solver=diffrax.Heun(),
        time_grid=quadratic_grid(process, ode_steps), return_info=True,
        return_trajectory=True,
    )
    x_sde, info_sde = sf.sample(
        jr.key(1), process, pred, (2, 2), num=num, method="sde",
        solver=diffrax.Euler(), time_grid=quadratic_grid(process, sde_steps),
        return_info=True, return_trajectory=True,
    )
    ref = data.sample(jr.key(2), num)
    fd_ode = fd_to_exact(x_ode[:, 0], data)
    fd_sde = fd_to_exact(x_sde[:, 0], data)
    floor = float(np.mean([fd_to_exact(data.sample(jr.key(10 + i), num), data)
                           for i in range(5)]))
    print(f"squared Fréchet distance to the data moments (num = {num}): "
          f"PF-ODE {fd_ode:.2e}, reverse SDE {fd_sde:.2e}, exact samples {floor:.2e}")

    fig, axes = plt.subplots(2, 4, figsize=(20, 9.2))
    lim = 2.0
    for ax, x, title in [
        (axes[0, 0], ref, f"data ({num} exact samples), FD floor {floor:.1e}"),
        (axes[0, 1], x_ode[:, 0], f"PF-ODE, Heun, {ode_steps} steps: FD {fd_ode:.1e}"),
        (axes[0, 2], x_sde[:, 0], f"reverse SDE, EM, {sde_steps} steps: FD {fd_sde:.1e}"),
    ]:
        ax.scatter(*np.asarray(x).T, s=2, alpha=0.5)
        ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal", title=title,
               xlabel="$x_1$", ylabel="$x_2$")

    k = 12
    for info, ls, name in [(info_ode, "-", "PF-ODE"), (info_sde, "-", "reverse SDE")]:
        traj = np.asarray(info["trajectory"])[:k]  # (k, steps + 1, 2, 2)
        ts = np.asarray(info["ts"])
        ts = ts[0] if ts.ndim > 1 else ts
        ax = axes[1, 0] if name == "PF-ODE" else axes[1, 1]
        for i in range(k):
            ax.plot(ts, traj[i, :, 0, 0], color=f"C{i % 10}", lw=1.2, ls=ls)
            ax.plot(ts, traj[i, :, 1, 0], color=f"C{i % 10}", lw=0.6, alpha=0.5)
        ax.set(xlabel="t (0 = data)", ylim=(-3, 3),
               title=f"{name} paths: position $x_1$ (bold), velocity $v_1$ (thin)")

    # forward marginals in phase space (x_1, v_1)
    ax = axes[0, 3]
    n_fwd = 400 if SMOKE else 2000
    x0 = data.sample(jr.key(3), n_fwd)
    for j, t in enumerate([process.t0, 0.1, 1.0]):
        keys = jr.split(jr.fold_in(jr.key(4), j), n_fwd)
        u = jax.vmap(lambda kk, xx, t=t: process.sample_marginal(kk, xx, t)[0])(keys, x0)
        ax.scatter(u[:, 0, 0], u[:, 1, 0], s=2, alpha=0.4, label=f"t = {t:g}",
                   color=f"C{[0, 1, 3][j]}")
    ax.set(xlabel="position $x_1$", ylabel="velocity $v_1$", xlim=(-3, 3),
           ylim=(-1.8, 1.8), title="forward marginal in phase space")
    ax.legend(markerscale=4, fontsize=8, loc="upper right")

    # marginal standard deviations along the reverse paths vs the exact marginals
    ax = axes[1, 2]
    t_fine = jnp.linspace(process.t0, process.t1, 60)
    exact = jax.vmap(
        lambda t: jnp.sqrt(jnp.diag(process.mixture_marginal(data, t).cov()))
    )(t_fine)
    ax.plot(t_fine, exact[:, 0], "k-", lw=2, label="exact, $x_1$")
    ax.plot(t_fine, exact[:, 2], "k--", lw=2, label="exact, $v_1$")
    for info, c, name in [(info_ode, "C0", "PF-ODE"), (info_sde, "C3", "SDE")]:
        traj = np.asarray(info["trajectory"])
        ts = np.asarray(info["ts"])
        ts = ts[0] if ts.ndim > 1 else ts
        ax.plot(ts, traj[:, :, 0, 0].std(0), color=c, lw=1, label=f"{name}, $x_1$")
        ax.plot(ts, traj[:, :, 1, 0].std(0), color=c, lw=1, ls="--",
                label=f"{name}, $v_1$")
    ax.set(xlabel="t (0 = data)", ylabel="std over samples",
           title="marginal std along the reverse paths")
    ax.legend(fontsize=8)
    # the velocity marginal at t0: samples vs the exact mixture marginal
    ax = axes[1, 3]
    marg = process.mixture_marginal(data, process.t0)
    vs = np.linspace(-0.6, 0.6, 300)
    m, sd = np.asarray(marg.means[:, 2]), np.sqrt(np.asarray(marg.covs[:, 2, 2]))
    dens = (np.asarray(marg.weights)[:, None] * np.exp(-0.5 * ((vs - m[:, None]) / sd[:, None]) ** 2)
            / (sd[:, None] * np.sqrt(2 * np.pi))).sum(0)
    bins = np.linspace(-0.6, 0.6, 41)
    ax.hist(np.asarray(x_ode[:, 1, 0]), bins, density=True, alpha=0.5, label="PF-ODE")
    ax.hist(np.asarray(x_sde[:, 1, 0]), bins, density=True, alpha=0.5, color="C3",
            label="reverse SDE")
    ax.plot(vs, dens, "k-", lw=2, label="exact")
    ax.set(xlabel="velocity $v_1$ at $t_0$", title=f"velocity marginal at t0 = {process.t0:g}")
    ax.legend(fontsize=8)
    fig.suptitle("Critically-damped Langevin diffusion (sf.CLD()), exact score")
    fig.tight_layout()
    out = FIGURES / "cld_2d.png"
    fig.savefig(out, dpi=90 if SMOKE else 110)
    print(f"wrote {out} in {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
