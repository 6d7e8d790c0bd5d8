"""`scoreflow demo`: declare a process, train a small model on a 2-D toy set, sample
with the probability-flow ODE and the reverse SDE, and write figures and metrics."""

import json
import math
import os
import time


def run_demo(
    out: str = "scoreflow-demo",
    steps: int | None = None,
    smoke: bool = False,
    seed: int = 0,
) -> int:
    import diffrax
    import jax
    import jax.numpy as jnp
    import jax.random as jr

    import scoreflow as sf

    os.makedirs(out, exist_ok=True)
    steps = steps if steps is not None else (60 if smoke else 4000)
    n_data, n_samples = (2048, 512) if smoke else (20_000, 4000)
    sample_steps = 8 if smoke else 64
    t_start = time.time()

    # 1. A process in one line, and what scoreflow derives from it.
    process = sf.RectifiedFlow()
    print(process.describe())
    print()

    # 2. Data: the ring of 8 Gaussians, whose exact mixture is known.
    key = jr.key(seed)
    k_data, k_model, k_fit, k_ode, k_sde, k_ref = jr.split(key, 6)
    mixture = sf.toy.ring_mixture()
    data = mixture.sample(k_data, n_data)

    # 3. Train an MLP on the conditional flow-matching loss (optax + EMA, tqdm bar).
    model = sf.nets.MLP(
        2, width=128 if not smoke else 32, depth=3 if not smoke else 1, key=k_model
    )
    loss = sf.cfm_loss(process, check_scale=False)
    result = sf.train.fit(
        loss,
        model,
        data,
        key=k_fit,
        steps=steps,
        batch_size=512,
        learning_rate=2e-3,
        ema_decay=0.995 if not smoke else 0.9,
    )
    predictor = sf.Predictor(result.ema, process, prediction="velocity")

    # 4. Sample: PF-ODE (Heun) and reverse SDE (Euler-Maruyama).
    ode, ode_info = sf.sample(
        k_ode,
        process,
        predictor,
        (2,),
        num=n_samples,
        method="ode",
        solver=diffrax.Heun(),
        steps=sample_steps,
        return_info=True,
        return_trajectory=True,
    )
    sde = sf.sample(
        k_sde,
        process,
        predictor,
        (2,),
        num=n_samples,
        method="sde",
        solver=diffrax.Euler(),
        steps=4 * sample_steps,
    )

    # 5. Metrics against the exact mixture; the noise floor is the distance between
    #    two exact samples of the same size.
    ref = mixture.sample(k_ref, n_samples)
    floor = float(
        sf.metrics.frechet_distance(
            mixture.sample(jr.fold_in(k_ref, 1), n_samples), ref
        )
    )
    metrics = {
        "process": repr(process),
        "train_steps": steps,
        "final_loss": float(jnp.mean(result.losses[-50:])),
        "frechet_ode": float(sf.metrics.frechet_distance(ode, ref)),
        "frechet_sde": float(sf.metrics.frechet_distance(sde, ref)),
        "frechet_noise_floor": floor,
        "sliced_wasserstein_ode": float(sf.metrics.sliced_wasserstein(k_ref, ode, ref)),
        "ode_model_evaluations_per_sample": int(jnp.max(ode_info["nfe"])),
        "seconds": round(time.time() - t_start, 1),
    }
    for name, xs in (("ode", ode), ("sde", sde)):
        in_mode, tv = _mode_stats(xs, mixture)
        metrics[f"in_mode_fraction_{name}"] = in_mode
        metrics[f"mode_weight_tv_{name}"] = tv
    with open(os.path.join(out, "metrics.json"), "w") as fh:
        json.dump(metrics, fh, indent=2)

    _figure(out, data, ode, sde, ode_info, mixture, process)
    print()
    for k, v in metrics.items():
        print(f"{k:24s} {v}")
    print(f"\nwrote {out}/samples.png, {out}/trajectories.png, {out}/metrics.json")
    jax.clear_caches()
    return (
        0
        if all(math.isfinite(metrics[k]) for k in ("frechet_ode", "frechet_sde"))
        else 1
    )


def _mode_stats(xs, mixture, radius_in_std: float = 3.0):
    """Fraction of samples within `radius_in_std` standard deviations of their nearest
    mode, and the total-variation distance between the modes' sample frequencies and
    the mixture weights (samples outside every mode count for no mode)."""
    import numpy as np

    xs = np.asarray(xs)
    means = np.asarray(mixture.means)
    std = float(np.sqrt(np.asarray(mixture.covs)[0, 0, 0]))
    d = np.linalg.norm(xs[:, None, :] - means[None], axis=-1)
    nearest = d.argmin(1)
    inside = d.min(1) < radius_in_std * std
    freq = np.bincount(nearest[inside], minlength=len(means)) / len(xs)
    tv = 0.5 * float(
        np.abs(freq - np.asarray(mixture.weights)).sum() + (1 - inside.mean())
    )
    return float(inside.mean()), tv


def _figure(out, data, ode, sde, ode_info, mixture, process):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    lim = 6.5
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.9), sharex=True, sharey=True)
    for ax, pts, title in zip(
        axes,
        (data[: len(ode)], ode, sde),
        (
            "data (ring of 8 Gaussians)",
            "samples: probability-flow ODE",
            "samples: reverse SDE",
        ),
    ):
        pts = np.asarray(pts)
        ax.scatter(pts[:, 0], pts[:, 1], s=2, alpha=0.5)
        means = np.asarray(mixture.means)
        ax.scatter(
            means[:, 0], means[:, 1], marker="x", c="k", s=30, label="mode centres"
        )
        ax.set_title(title)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_xlabel("$x_1$")
        ax.set_aspect("equal")
    axes[0].set_ylabel("$x_2$")
    axes[0].legend(loc="upper right", fontsize=8)
    fig.suptitle(f"scoreflow demo: {process!r}")
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(os.path.join(out, "samples.png"), dpi=110)
    plt.close(fig)

    traj = np.asarray(ode_info.get("trajectory")) if "trajectory" in ode_info else None
    if traj is not None and traj.ndim == 3:
        fig, ax = plt.subplots(figsize=(5.5, 5.5))
        # trajectory: (num, steps+1, 2) or (steps+1, num, 2)
        if traj.shape[0] != len(ode):
            traj = np.swapaxes(traj, 0, 1)
        for path in traj[:60]:
            path = path[np.all(np.isfinite(path), axis=-1)]
            ax.plot(path[:, 0], path[:, 1], lw=0.6, alpha=0.7)
            ax.scatter(path[0, 0], path[0, 1], c="grey", s=6)
            ax.scatter(path[-1, 0], path[-1, 1], c="k", s=6)
        ax.set_title("PF-ODE trajectories: noise (grey) to data (black)")
        ax.set_xlabel("$x_1$")
        ax.set_ylabel("$x_2$")
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        fig.tight_layout()
        fig.savefig(os.path.join(out, "trajectories.png"), dpi=110)
        plt.close(fig)
