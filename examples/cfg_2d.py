"""Classifier-free guidance in a 2-D world with three classes, exactly.

Each class is a small Gaussian mixture, so the conditional model is exact: the
"network" model(t, x, c) returns class c's exact eps-prediction, and the null label
c = 3 returns the exact eps of the full (unconditional) mixture. sf.cfg then forms
uncond + s (cond - uncond) with s = 1 + w (Ho & Salimans' weight w; w = 0 is the
plain conditional model). Larger w pushes samples away from the other classes:
tighter, over-separated clusters, and less of each class's spread.

    python examples/cfg_2d.py [--smoke]

Figure: examples/figures/cfg_2d.png (or $SCOREFLOW_FIGURES). No training, so full and
smoke differ only in sample counts and steps. Measured with `time PYTHONPATH=. python
examples/cfg_2d.py [--smoke]` on the shared 2-core CPU machine (other jobs running):
smoke 38 s at load ~14 (9 s of CPU time; timed with
XLA_FLAGS=--xla_backend_optimization_level=0, as tests/test_examples.py runs it), full
1 min 36 s. The committed figure is from the full run.
"""

import os
import sys
import time
from pathlib import Path

import diffrax
import equinox as eqx
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
NUM_CLASSES = 3
NULL = NUM_CLASSES  # the label meaning "no label"
COLORS = ("tab:blue", "tab:orange", "tab:green")


def class_mixtures():
    """Three classes, each two isotropic blobs; the classes overlap a little."""
    centres = jnp.array([
        [[-2.0, 1.5], [-1.0, 2.2]],
        [[2.0, 1.5], [1.0, 2.2]],
        [[-0.6, -1.8], [0.6, -1.8]],
    ])
    cov = 0.35**2 * jnp.eye(2)
    per_class = [
        sf.toy.GaussianMixture(jnp.array([0.5, 0.5]), c, jnp.stack([cov, cov]))
        for c in centres
    ]
    full = sf.toy.GaussianMixture(
        jnp.full(6, 1 / 6), centres.reshape(6, 2), jnp.stack([cov] * 6)
    )
    return per_class, full


class ExactConditionalEps(eqx.Module):
    """model(t, x, c): class c's exact eps under `process`; c = NULL: the full mixture."""

    fields: tuple

    def __call__(self, t, x, c):
        return jax.lax.switch(c, [lambda t, x, f=f: f(t, x) for f in self.fields], t, x)


def main():
    start = time.time()
    FIGURES.mkdir(parents=True, exist_ok=True)
    process = sf.RectifiedFlow()
    per_class, full = class_mixtures()
    model = ExactConditionalEps(tuple(m.eps(process) for m in per_class) + (full.eps(process),))
    predictor = sf.Predictor(model, process, prediction="eps", null_cond=NULL)

    per = 60 if SMOKE else 300
    steps = 16 if SMOKE else 60
    labels = jnp.repeat(jnp.arange(NUM_CLASSES), per)
    num = labels.shape[0]
    key = jr.key(0)  # same key everywhere: the same initial noise, path by path
    kw = dict(num=num, solver=diffrax.Heun(), steps=steps)

    uncond = sf.sample(key, process, predictor, (2,), **kw)  # cond=None: the null label
    weights = (0.0, 1.0, 3.0) if SMOKE else (0.0, 1.0, 3.0, 8.0)
    guided = {w: sf.sample(key, process, sf.cfg(predictor, weight=w), (2,), cond=labels, **kw)
              for w in weights}
    for w, xs in guided.items():
        spread = float(jnp.mean(jnp.stack(
            [jnp.trace(jnp.cov(xs[labels == c].T)) for c in range(NUM_CLASSES)])))
        print(f"w = {w}: mean per-class total variance {spread:.3f}")

    panels = [("data (exact samples), by class", None, None),
              ("unconditional (null label)", uncond, None)]
    panels += [(f"w = {w:g}  (scale s = {1 + w:g})" + ("  = conditional" if w == 0 else ""),
                xs, labels) for w, xs in guided.items()]
    ncols = 3
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(11, 3.9 * nrows), sharex=True,
                             sharey=True, layout="constrained", squeeze=False)
    axes = axes.ravel()
    for ax in axes[len(panels):]:
        ax.set_axis_off()
    for ax, (title, xs, lab) in zip(axes, panels):
        if xs is None:
            for c, m in enumerate(per_class):
                pts = np.asarray(m.sample(jr.key(c), per))
                ax.scatter(pts[:, 0], pts[:, 1], s=3, alpha=0.6, c=COLORS[c],
                           label=f"class {c}")
            ax.legend(fontsize=7, loc="lower left", markerscale=3)
        elif lab is None:
            pts = np.asarray(xs)
            ax.scatter(pts[:, 0], pts[:, 1], s=3, alpha=0.6, c="grey")
        else:
            pts, lab = np.asarray(xs), np.asarray(lab)
            for c in range(NUM_CLASSES):
                ax.scatter(pts[lab == c, 0], pts[lab == c, 1], s=3, alpha=0.6,
                           c=COLORS[c], label=f"cond = {c}")
            ax.legend(fontsize=7, loc="lower left", markerscale=3)
        ax.set(title=title, xlabel="$x_1$", ylabel="$x_2$", xlim=(-4, 4), ylim=(-4, 4))
        ax.set_aspect("equal")
        ax.xaxis.set_tick_params(labelbottom=True)
        ax.yaxis.set_tick_params(labelleft=True)
    fig.suptitle("Classifier-free guidance, exact per-class models "
                 f"(rectified flow, Heun PF-ODE, {steps} steps)")
    fig.savefig(FIGURES / "cfg_2d.png", dpi=100)
    plt.close(fig)
    print(f"wrote {FIGURES}/cfg_2d.png in {time.time() - start:.1f} s")


if __name__ == "__main__":
    main()
