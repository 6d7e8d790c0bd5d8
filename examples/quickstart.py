"""Quickstart: declare a process in two lines, let scoreflow derive the rest, train a
small network on a 2-D toy set and sample it with the probability-flow ODE and the
reverse SDE.

    python examples/quickstart.py            # full run
    python examples/quickstart.py --smoke    # seconds (or SCOREFLOW_SMOKE=1)

Figures (in examples/figures/, or $SCOREFLOW_FIGURES): quickstart_samples.png,
quickstart_trajectories.png.

Measured with `time PYTHONPATH=. python examples/quickstart.py [--smoke]` on the
shared 2-core CPU machine (other jobs running): smoke 38 s at load ~12 (13 s of CPU
time; timed with XLA_FLAGS=--xla_backend_optimization_level=0, as
tests/test_examples.py runs it); full 1 min 16 s at load ~3, 3 min 3 s at load ~8.
The committed figures come from the full run.
"""

import os
import sys
import time
from pathlib import Path

import diffrax
import jax.numpy as jnp
import jax.random as jr
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

import scoreflow as sf

SMOKE = os.environ.get("SCOREFLOW_SMOKE") == "1" or "--smoke" in sys.argv
FIGURES = Path(os.environ.get("SCOREFLOW_FIGURES", Path(__file__).parent / "figures"))


def main():
    start = time.time()
    FIGURES.mkdir(parents=True, exist_ok=True)

    # 1. Declare a forward process by its drift and diffusion (t = 0 is data). The
    #    drift is affine in x, so sympy derives the Gaussian kernel in closed form.
    t, x = sf.t, sf.x
    process = sf.SDE(drift=-2 * (1 + t) * x, diffusion=sf.sympy.sqrt(4 * (1 + t)))
    print(process.describe())  # kernel, reverse SDE, PF-ODE, and why t0/t1
    print()

    # 2. Data: two moons, standardised to roughly unit scale.
    key = jr.key(0)
    k_data, k_model, k_fit, k_ode, k_sde = jr.split(key, 5)
    n_data = 2_000 if SMOKE else 20_000
    data = sf.toy.two_moons(k_data, n_data)
    data = (data - data.mean(0)) / data.std(0)

    # 3. Train an eps-prediction MLP with denoising score matching.
    model = sf.nets.MLP(2, width=32 if SMOKE else 128, depth=1 if SMOKE else 3, key=k_model)
    loss = sf.dsm_loss(process, prediction="eps")
    steps = 50 if SMOKE else 3_000
    result = sf.train.fit(
        loss, model, data, key=k_fit, steps=steps, batch_size=256 if SMOKE else 512,
        learning_rate=2e-3, ema_decay=0.9 if SMOKE else 0.995, progress=not SMOKE,
    )
    print(f"trained {steps} steps, final loss {float(jnp.mean(result.losses[-20:])):.4f}")
    predictor = sf.Predictor(result.ema, process, prediction="eps")

    # 4. Sample: the probability-flow ODE (Heun) and the reverse SDE (Euler-Maruyama),
    #    on Karras et al.'s grid, which takes small steps where sigma(t) is small
    #    (t0 = 2.5e-7 here: a uniform grid's last step would be far too long there).
    num = 256 if SMOKE else 2_000
    n_steps = 8 if SMOKE else 64
    ode, info = sf.sample(
        k_ode, process, predictor, (2,), num=num, method="ode", solver=diffrax.Heun(),
        time_grid=sf.edm_grid(process, n_steps), return_info=True,
        return_trajectory=True,
    )
    sde = sf.sample(
        k_sde, process, predictor, (2,), num=num, method="sde", solver=diffrax.Euler(),
        time_grid=sf.edm_grid(process, 4 * n_steps),
    )
    for name, xs in (("ODE", ode), ("SDE", sde)):
        fd = float(sf.metrics.frechet_distance(xs, data[:num]))
        print(f"{name}: Frechet distance to the data = {fd:.4f}")

    # 5. Figures.
    lim = 3.0
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.8), sharex=True, sharey=True,
                             layout="constrained")
    panels = (
        (data[:num], "data (two moons, standardised)"),
        (ode, f"PF-ODE (Heun, {n_steps} steps)"),
        (sde, f"reverse SDE (Euler-Maruyama, {4 * n_steps} steps)"),
    )
    for ax, (pts, title) in zip(axes, panels):
        pts = np.asarray(pts)
        ax.scatter(pts[:, 0], pts[:, 1], s=2, alpha=0.5)
        ax.set_title(title, fontsize=11)
        ax.set(xlabel="$x_1$", xlim=(-lim, lim), ylim=(-lim, lim))
        ax.set_aspect("equal")
    axes[0].set_ylabel("$x_2$")
    fig.suptitle("quickstart samples, " + repr(process).split("\n")[0], fontsize=10)
    fig.savefig(FIGURES / "quickstart_samples.png", dpi=100)
    plt.close(fig)

    traj = np.asarray(info["trajectory"])  # (num, steps + 1, 2), from t1 down to t0
    if traj.shape[0] != num:
        traj = np.swapaxes(traj, 0, 1)
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    for i, path in enumerate(traj[:80]):
        ax.plot(path[:, 0], path[:, 1], lw=0.6, alpha=0.6, color="tab:blue")
        ax.scatter(*path[0], c="grey", s=6, label="start: noise at $t_1$" if i == 0 else None)
        ax.scatter(*path[-1], c="k", s=6, label="end: sample at $t_0$" if i == 0 else None)
    ax.set(title="PF-ODE trajectories, noise to data", xlabel="$x_1$", ylabel="$x_2$",
           xlim=(-lim, lim), ylim=(-lim, lim))
    ax.set_aspect("equal")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(FIGURES / "quickstart_trajectories.png", dpi=100)
    plt.close(fig)
    print(f"wrote {FIGURES}/quickstart_*.png in {time.time() - start:.1f} s")


if __name__ == "__main__":
    main()
