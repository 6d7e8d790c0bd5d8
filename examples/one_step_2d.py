"""One- and few-step generation on a ring of 8 Gaussians, derived from the process.

A teacher flow model is trained on sf.RectifiedFlow; three one-step generators are
built on the same process: a consistency model distilled from the teacher's PF-ODE
(sf.consistency_loss(p, teacher=...)), one trained without a teacher
(sf.consistency_loss(p)), and a MeanFlow average-velocity model (sf.meanflow_loss(p)).
Each student takes as many optimiser steps as the teacher, with the same 3x256 MLP.
The figure shows the students at 1, 2 and 4 network evaluations
(sf.few_step_sample) beside the teacher's Heun PF-ODE at 10 and 50 (sf.sample), with
each panel's Frechet distance to exact samples. The same code runs on any declared
process with a scalar Gaussian kernel: swap `process` below.

Data: 8 modes of std 0.3 on a circle of radius 4, weights proportional to 1..8
(sf.toy.GaussianMixture), standardised to unit std for training.

    python examples/one_step_2d.py [--smoke]

Figures: examples/figures/one_step_2d.png and docs/figures/one_step_2d.png (or
$SCOREFLOW_FIGURES). Smoke mode trains tiny networks for a handful of steps (it
checks that the pipeline runs, not the quality).
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
ROOT = Path(__file__).resolve().parents[1]
FIGURES = [Path(os.environ["SCOREFLOW_FIGURES"])] if "SCOREFLOW_FIGURES" in os.environ \
    else [ROOT / "examples" / "figures", ROOT / "docs" / "figures"]
STEPS = 6 if SMOKE else 3000
WIDTH, DEPTH = (16, 1) if SMOKE else (256, 3)
NUM = 300 if SMOKE else 5000


def ring():
    angles = 2 * jnp.pi * jnp.arange(8) / 8
    means = 4.0 * jnp.stack([jnp.cos(angles), jnp.sin(angles)], -1)
    weights = jnp.arange(1.0, 9.0) / 36.0
    return sf.toy.GaussianMixture(weights, means, jnp.broadcast_to(0.09 * jnp.eye(2),
                                                                   (8, 2, 2)))


def main():
    start = time.perf_counter()
    process = sf.RectifiedFlow()
    data = ring()
    key = jr.key(0)
    k_data, k_exact, k_sample, *ks = jr.split(key, 11)
    scale = float(jnp.sqrt(jnp.trace(data.cov()) / 2))
    x = data.sample(k_data, 20_000) / scale

    def fit(loss, model, k):
        return sf.train.fit(loss, model, x, key=k, steps=STEPS, ema_decay=0.995,
                            progress=False).ema

    def mlp(k):
        return sf.nets.MLP(2, width=WIDTH, depth=DEPTH, key=k)

    # the teacher: an EDM-preconditioned denoiser, sampled along its PF-ODE
    teacher_loss = sf.dsm_loss(process, prediction="x0", precondition="edm",
                               weighting="edm", time_sampler="log_normal")
    teacher = sf.Predictor(fit(teacher_loss, mlp(ks[0]), ks[1]), process, "x0",
                           precondition="edm")
    students = {
        "consistency distillation": fit(
            sf.consistency_loss(process, teacher=teacher, solver=diffrax.Heun(),
                                steps=16),
            sf.ConsistencyModel(mlp(ks[2]), process), ks[3]),
        "consistency training": fit(
            sf.consistency_loss(process, steps=16),
            sf.ConsistencyModel(mlp(ks[4]), process), ks[5]),
        "MeanFlow": fit(
            sf.meanflow_loss(process),
            sf.MeanFlowModel(sf.MeanFlowMLP(2, width=WIDTH, depth=DEPTH, key=ks[6]),
                             process), ks[7]),
    }
    exact = np.asarray(data.sample(k_exact, NUM))

    fig, axes = plt.subplots(4, 3, figsize=(9, 12), sharex=True, sharey=True)
    panels = [("teacher PF-ODE (Heun)", None, nfe) for nfe in (10, 50)]
    panels += [(name, model, k) for name, model in students.items() for k in (1, 2, 4)]
    axes[0, 2].scatter(*exact.T, s=1, alpha=0.3, c="k")
    axes[0, 2].set_title("exact samples", fontsize=9)
    for ax, (name, model, n) in zip([axes[0, 0], axes[0, 1], *axes[1:].ravel()], panels):
        if model is None:
            xs = sf.sample(k_sample, process, teacher, (2,), num=NUM,
                           solver=diffrax.Heun(), time_grid=sf.edm_grid(process, n // 2))
        else:
            xs = sf.few_step_sample(k_sample, process, model, (2,), num=NUM, steps=n)
        xs = np.asarray(xs) * scale
        fd = float(sf.metrics.frechet_distance(xs, exact))
        ax.scatter(*xs.T, s=1, alpha=0.3)
        ax.set_title(f"{name}\n{n} NFE, FD {fd:.3f}", fontsize=9)
        print(f"{name:>26s} {n:3d} NFE  FD {fd:.4f}")
    for ax in axes.ravel():
        ax.set_xlim(-6, 6)
        ax.set_ylim(-6, 6)
        ax.set_aspect("equal")
    fig.tight_layout()
    for folder in FIGURES:
        folder.mkdir(parents=True, exist_ok=True)
        fig.savefig(folder / "one_step_2d.png", dpi=110)
    print(f"done in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
