"""Processes beyond closed forms, and schedules you can differentiate.

1. sf.SDE(-exp(sin 3t) x, 1 + t): a decay rate that oscillates in time. The drift
   is affine in x, so the kernel is Gaussian, but alpha(t) = exp(-int_0^t exp(sin 3s)
   ds) has no closed form (exp(sin s) has no elementary antiderivative), and neither
   has sigma(t)^2. sympy gives up within a second and scoreflow falls back to numeric
   moment ODEs (diffrax); we check them against a Monte Carlo simulation of the
   forward SDE (Euler-Maruyama paths from x0 = 1: mean alpha(t), std sigma(t)).
   (A drift such as -sqrt(1 + t^3) x takes the same path, but only after sympy has
   spent its time limits: alpha has a hypergeometric closed form, sigma^2 none.)
2. A trainable schedule: sf.SDE(-b x, sqrt(2 b), params={b: 1.5}) keeps b as an
   array leaf, so any loss is differentiable with respect to it. We take the DSM loss
   of a fixed denoiser (the exact eps of a 1-D mixture under b = 1.5) as a function
   of b, and compare jax.grad with a central finite difference.

    python examples/custom_process.py [--smoke]

Figure: examples/figures/custom_process.png (or $SCOREFLOW_FIGURES). sympy gives up on
the kernel integrals in about a second (no time limit is reached); most of the rest is
compiling the moment-ODE solve. Measured with `time PYTHONPATH=. python
examples/custom_process.py [--smoke]` on the shared 2-core CPU machine (other jobs
running), cold derivation cache: smoke 33 s at load ~11 (12 s of CPU time; timed with
XLA_FLAGS=--xla_backend_optimization_level=0, as tests/test_examples.py runs it), full
48 s at load ~14 (13 s of CPU time). The committed figure is from the full run.
"""

import os
import sys
import time
from pathlib import Path

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


def main():
    start = time.time()
    FIGURES.mkdir(parents=True, exist_ok=True)
    t, x, sympy = sf.t, sf.x, sf.sympy

    # --- 1. no closed form: numeric moment ODEs ------------------------------------
    import warnings

    with warnings.catch_warnings():  # alpha(1) > 0: the prior mismatch is reported
        warnings.simplefilter("ignore", sf.PriorMismatchWarning)
        process = sf.SDE(-sympy.exp(sympy.sin(3 * t)) * x, 1 + t)
    print(process.describe())
    print(f"({time.time() - start:.1f} s to declare)\n")

    # One scalar at a time: this reuses the moment-ODE solve compiled while declaring
    # the process (jax.vmap(process.alpha) would compile a batched one, ~3 s).
    ts = np.linspace(0.0, process.t1, 50, dtype=np.float32)
    alpha = np.array([float(process.alpha(jnp.asarray(tt))) for tt in ts])
    sigma = np.array([float(process.sigma(jnp.asarray(tt))) for tt in ts])
    n_paths = 400 if SMOKE else 4000
    mc_ts = jnp.linspace(0.1, process.t1, 4 if SMOKE else 10)

    @jax.jit
    def paths(keys, tt):
        return jax.vmap(lambda k: sf.internal.simulate_forward(process, k, jnp.ones(1), tt,
                                                      num_steps=64 if SMOKE else 400))(keys)

    mc = [np.asarray(paths(jr.split(jr.fold_in(jr.key(1), i), n_paths), tt))[:, 0]
          for i, tt in enumerate(mc_ts)]
    mc_mean = np.array([m.mean() for m in mc])
    mc_std = np.array([m.std() for m in mc])
    se = mc_std / np.sqrt(n_paths)
    for tt, m, s, e in zip(np.asarray(mc_ts), mc_mean, mc_std, se):
        print(f"t = {tt:.2f}: MC mean {m:.4f} +- {e:.4f} vs alpha {float(process.alpha(tt)):.4f}; "
              f"MC std {s:.4f} vs sigma {float(process.sigma(tt)):.4f}")

    # --- 2. a trainable schedule --------------------------------------------------
    b = sympy.Symbol("b", positive=True)
    ou = sf.SDE(-b * x, sympy.sqrt(2 * b), params={b: 1.5})
    data = sf.toy.GaussianMixture(jnp.array([0.5, 0.5]), jnp.array([[-1.0], [1.0]]),
                                  jnp.full((2, 1, 1), 0.1))
    denoiser = data.eps(ou)  # exact for b = 1.5, then held fixed
    x0 = data.sample(jr.key(2), 512 if SMOKE else 4096)
    key = jr.key(3)

    def loss_at(bv):
        p = eqx.tree_at(lambda p: p.params["b"], ou, jnp.asarray(bv, jnp.float32))
        return sf.dsm_loss(p, prediction="eps", check_scale=False)(denoiser, x0, key)

    # compiled once: every call below passes a float32 array of the same shape
    value_and_grad = jax.jit(jax.value_and_grad(loss_at))
    bs = np.linspace(0.5, 4.0, 12 if SMOKE else 36, dtype=np.float32)
    curve = np.array([float(value_and_grad(bv)[0]) for bv in bs])
    checks = []
    for bv in np.array([0.8, 1.5, 3.0], np.float32):
        val, grad = value_and_grad(bv)
        h = np.float32(1e-2)
        lo, hi = (float(value_and_grad(bv + d)[0]) for d in (-h, h))
        fd = (hi - lo) / (2 * h)
        checks.append((bv, float(val), float(grad), fd))
        print(f"b = {bv:g}: loss {float(val):.4f}, d loss / d b = {float(grad):+.4f} "
              f"(autodiff) vs {fd:+.4f} (central difference)")

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    ax = axes[0]
    ax.plot(ts, alpha, label=r"$\alpha(t)$, numeric moment ODE")
    ax.plot(ts, sigma, label=r"$\sigma(t)$, numeric moment ODE")
    ax.errorbar(mc_ts, mc_mean, yerr=2 * se, fmt="o", ms=4, capsize=2,
                label="MC mean of $x_t$ ($x_0 = 1$), 2 s.e.")
    ax.errorbar(mc_ts, mc_std, yerr=2 * mc_std / np.sqrt(2 * n_paths), fmt="s", ms=4,
                capsize=2, label="MC std of $x_t$, 2 s.e.")
    ax.set(xlabel="t  (0 = data)", ylabel="value",
           title=r"$dx = -e^{\sin 3t}\,x\,dt + (1+t)\,dW$: no closed form")
    ax.legend(fontsize=8)

    ax = axes[1]
    ax.plot(bs, curve, "k", label="DSM loss of a fixed denoiser")
    for bv, val, grad, fd in checks:
        span = np.array([-0.4, 0.4])
        ax.plot(bv + span, val + grad * span, lw=2,
                label=f"autodiff tangent at b = {bv:g} (slope {grad:+.3f}, FD {fd:+.3f})")
    ax.axvline(1.5, color="grey", ls=":", label="b the denoiser is exact for")
    ax.set(xlabel="schedule constant b", ylabel="loss",
           title=r"trainable schedule: $dx = -b\,x\,dt + \sqrt{2b}\,dW$")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(FIGURES / "custom_process.png", dpi=100)
    plt.close(fig)
    print(f"wrote {FIGURES}/custom_process.png in {time.time() - start:.1f} s")


if __name__ == "__main__":
    main()
