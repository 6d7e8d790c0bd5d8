"""The 1-D world with two data points (the lecture notes' picture), exactly.

Data: two points, x0 = -1 and x0 = +1 (a Gaussian mixture with two tiny-variance
components, so every prediction is known in closed form: no training). Process:
rectified flow, x_t = (1 - t) x0 + t eps, with scoreflow's time (t = 0 data, t = 1
noise; the lecture's flow-matching time is u = 1 - t, see sf.FlowMatchingTime).

The figure shows, over the (t, x) plane,
- the exact denoiser E[x0 | x_t = x]: at pure noise (t -> 1) it is the average of the
  two data points, 0, for every x; as t moves towards the data it bends towards the
  nearer data point, and at t -> 0 it is a step function;
- the exact PF-ODE trajectories, integrated from noise (t1) to data (t0) with sf.sample:
  each ends on one of the two data points;
- the exact velocity dx/dt = E[eps - x0 | x_t = x] (the lecture's target
  x_clean - x_noise is minus this, in u = 1 - t).

    python examples/two_points_1d.py [--smoke]

Figure: examples/figures/two_points_1d.png (or $SCOREFLOW_FIGURES).
Measured with `time PYTHONPATH=. python examples/two_points_1d.py [--smoke]` on the
shared 2-core CPU machine (other jobs running): smoke 20 s at load ~14 (6 s of CPU
time; timed with XLA_FLAGS=--xla_backend_optimization_level=0, as
tests/test_examples.py runs it), full 24 s at load ~9 (7 s of CPU time). Exact, so
full and smoke differ only in grid sizes. The committed figure is from the full run.
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


def main():
    start = time.time()
    FIGURES.mkdir(parents=True, exist_ok=True)
    process = sf.RectifiedFlow()
    data = sf.toy.GaussianMixture(
        weights=jnp.array([0.5, 0.5]),
        means=jnp.array([[-1.0], [1.0]]),
        covs=jnp.full((2, 1, 1), 1e-6),  # std 0.001: "two data points"
    )
    x0_hat = data.x0(process)  # exact E[x0 | x_t = x], a (t, x) callable
    velocity = data.velocity(process)  # exact dx/dt of the probability-flow ODE

    n_t, n_x = (40, 40) if SMOKE else (200, 240)
    ts = jnp.linspace(process.t0, process.t1, n_t)
    xs = jnp.linspace(-2.5, 2.5, n_x)

    @jax.jit
    def on_grid(ts, xs):  # both fields at every (t, x): one compile
        def field(fn):
            return jax.vmap(lambda t: jax.vmap(lambda x: fn(t, x[None])[0])(xs))(ts)

        return field(x0_hat), field(velocity)

    grid, vel = on_grid(ts, xs)

    # the prediction at pure noise is the average of the data points, for every x
    print(f"max |E[x0 | x_t]| at t = t1 = {process.t1}: {float(jnp.abs(grid[-1]).max()):.2e}")

    # PF-ODE paths from noise to data with the exact model
    predictor = sf.Predictor(x0_hat, process, prediction="x0")
    num = 12 if SMOKE else 40
    end, info = sf.sample(
        jr.key(0), process, predictor, (1,), num=num, solver=diffrax.Heun(),
        steps=20 if SMOKE else 200, return_info=True, return_trajectory=True,
    )
    traj = np.asarray(info["trajectory"])[..., 0]  # (num, steps + 1)
    path_ts = np.asarray(info["ts"])
    if path_ts.ndim > 1:
        path_ts = path_ts[0]
    print("PF-ODE end points:", np.round(np.sort(np.asarray(end[:, 0])), 3))

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    ax = axes[0]
    mesh = ax.pcolormesh(np.asarray(ts), np.asarray(xs), np.asarray(grid).T,
                         cmap="coolwarm", vmin=-1, vmax=1, shading="auto")
    fig.colorbar(mesh, ax=ax, label=r"$E[x_0 \mid x_t = x]$")
    for i, path in enumerate(traj):
        ax.plot(path_ts, path, color="k", lw=0.7, alpha=0.7,
                label="exact PF-ODE paths" if i == 0 else None)
    ax.scatter([0, 0], [-1, 1], c="gold", edgecolors="k", zorder=3, s=40,
               label="data points")
    ax.set(xlabel="t  (0 = data, 1 = noise)", ylabel="x", ylim=(-2.5, 2.5),
           title="denoiser over (t, x) and PF-ODE paths")
    ax.legend(loc="lower left", fontsize=8)

    ax = axes[1]
    t_cuts = (0.999, 0.9, 0.7, 0.5, 0.3, 0.1)
    cuts, _ = on_grid(jnp.array(t_cuts), xs)
    for tv, col in zip(t_cuts, cuts):
        ax.plot(xs, col, label=f"t = {tv}")
    ax.axhline(0, color="grey", lw=0.5, ls="--")
    ax.set(xlabel="$x_t$", ylabel=r"$E[x_0 \mid x_t]$",
           title="prediction: average at noise, a data point near data")
    ax.legend(fontsize=8)

    ax = axes[2]
    # streamlines of the generating (reverse-time) flow in the (t, x) plane:
    # direction (dt, dx) = (-1, -v(t, x)), coloured by the speed |v|
    V = np.asarray(vel).T  # (n_x, n_t)
    speed = np.log10(np.abs(V) + 1e-3)
    t_axis = np.linspace(float(ts[0]), float(ts[-1]), n_t)  # float64: exactly even
    x_axis = np.linspace(float(xs[0]), float(xs[-1]), n_x)
    strm = ax.streamplot(t_axis, x_axis, -np.ones_like(V), -V,
                         color=speed, cmap="viridis", density=1.3, linewidth=0.8,
                         arrowsize=0.8)
    fig.colorbar(strm.lines, ax=ax, label=r"$\log_{10} |dx/dt|$")
    ax.scatter([0, 0], [-1, 1], c="gold", edgecolors="k", zorder=3, s=40,
               label="data points")
    ax.set(xlabel="t  (0 = data, 1 = noise)", ylabel="x", xlim=(0, 1), ylim=(-2.5, 2.5),
           title="exact flow field, generating direction (t decreasing)")
    ax.legend(loc="lower left", fontsize=8)
    fig.suptitle("The 1-D world with two data points (rectified flow, exact predictions)")
    fig.tight_layout()
    fig.savefig(FIGURES / "two_points_1d.png", dpi=100)
    plt.close(fig)
    print(f"wrote {FIGURES}/two_points_1d.png in {time.time() - start:.1f} s")


if __name__ == "__main__":
    main()
