"""Exact vs Hutchinson log-likelihoods against the true density of a mixture.

The model is the exact eps-prediction of a 2-D Gaussian mixture under VP, so the
probability-flow ODE transports the prior exactly onto the mixture's marginal at t0,
and sf.log_likelihood (instantaneous change of variables, integrated by diffrax) must
reproduce the true log-density log p_t0(x) = data.marginal(process, t0).log_prob(x):
- trace="exact": the divergence by d JVPs; the error is the ODE tolerance's;
- trace="hutchinson": an unbiased stochastic estimate (Rademacher probes, fixed per
  solve); its error is random, with mean ~0 and a spread that shrinks like
  1/sqrt(num_probes).

    python examples/likelihood.py [--smoke]

Figure: examples/figures/likelihood.png (or $SCOREFLOW_FIGURES). No training. Smoke
mode: 24 points, tolerance 1e-4 and Heun (a much smaller compile than Tsit5).
Measured with `time PYTHONPATH=. python examples/likelihood.py [--smoke]` on the shared
2-core CPU machine (other jobs running): smoke 51 s at load ~13 (13 s of CPU time;
timed with XLA_FLAGS=--xla_backend_optimization_level=0, as tests/test_examples.py
runs it), full 1 min 2 s at load ~10 (16 s of CPU time; an earlier session measured 4 min 2 s
at load ~7). The committed figure is from the full run.
"""

import functools
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
    process = sf.VP()
    c = 0.6
    data = sf.toy.GaussianMixture(
        weights=jnp.array([0.3, 0.3, 0.4]),
        means=jnp.array([[-1.0, -0.5], [1.0, -0.5], [0.0, 1.0]]),
        covs=jnp.stack([0.15 * jnp.eye(2), jnp.array([[0.2, 0.1], [0.1, 0.2]]),
                        jnp.array([[0.3, 0.0], [0.0, 0.05]])]) * c,
    )
    predictor = sf.Predictor(data.eps(process), process, prediction="eps")
    truth_at_t0 = data.marginal(process, process.t0)

    n = 24 if SMOKE else 200
    k_x, k_h1, k_h8 = jr.split(jr.key(0), 3)
    xs = data.sample(k_x, n)
    true_log_prob = jax.jit(jax.vmap(truth_at_t0.log_prob))
    true = true_log_prob(xs)

    rtol = atol = 1e-4 if SMOKE else 1e-5
    # smoke: Heun (2 stages) compiles much faster than Tsit5 (6 stages)
    solver = diffrax.Heun() if SMOKE else diffrax.Tsit5()
    solver_name = type(solver).__name__

    @jax.jit
    def exact(xs):
        return jax.vmap(lambda x: sf.log_likelihood(
            None, process, predictor, x, trace="exact", solver=solver, rtol=rtol,
            atol=atol))(xs)

    @functools.partial(jax.jit, static_argnums=2)
    def hutch(keys, xs, probes):
        return jax.vmap(lambda k, x: sf.log_likelihood(
            k, process, predictor, x, trace="hutchinson", num_probes=probes,
            solver=solver, rtol=rtol, atol=atol))(keys, xs)

    ll_exact = exact(xs)
    ll_h1 = hutch(jr.split(k_h1, n), xs, 1)
    ll_h8 = hutch(jr.split(k_h8, n), xs, 8)
    rows = (("exact trace", ll_exact), ("Hutchinson, 1 probe", ll_h1),
            ("Hutchinson, 8 probes", ll_h8))
    for name, ll in rows:
        err = np.asarray(ll - true)
        print(f"{name:22s} error vs true log p: mean {err.mean():+.4f}, std {err.std():.4f}, "
              f"max |.| {np.abs(err).max():.4f}")

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    ax = axes[0]
    g = np.linspace(-2.5, 2.5, 60 if SMOKE else 150)
    X, Y = np.meshgrid(g, g)
    logp = true_log_prob(jnp.stack([X.ravel(), Y.ravel()], -1))
    cs = ax.contourf(X, Y, np.asarray(logp).reshape(X.shape).clip(-8), levels=20,
                     cmap="viridis")
    fig.colorbar(cs, ax=ax, label="true log p_t0(x)")
    ax.scatter(np.asarray(xs)[:, 0], np.asarray(xs)[:, 1], s=4, c="w",
               label="evaluation points")
    ax.set(title="mixture density (VP, t = t0)", xlabel="$x_1$", ylabel="$x_2$")
    ax.set_aspect("equal")
    ax.legend(fontsize=8, loc="lower left")

    ax = axes[1]
    lo, hi = float(true.min()) - 0.5, float(true.max()) + 0.5
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="y = x")
    markers = ("o", "x", "+")
    for (name, ll), m in zip(rows, markers):
        ax.scatter(np.asarray(true), np.asarray(ll), s=12, marker=m, label=name, alpha=0.7)
    ax.set(xlabel="true log p_t0(x)", ylabel="sf.log_likelihood (PF-ODE)",
           title="model log-likelihood vs true density")
    ax.legend(fontsize=8)

    ax = axes[2]
    errs = [np.asarray(ll - true) for _, ll in rows]
    width = max(np.abs(e).max() for e in errs)
    bins = np.linspace(-width, width, 41)
    for (name, _), e in zip(rows, errs):
        ax.hist(e, bins=bins, alpha=0.5, label=f"{name} (std {e.std():.3f})")
    ax.set(xlabel="estimate - true (nats)", ylabel="count", yscale="log",
           title="errors: exact trace vs Hutchinson")
    ax.legend(fontsize=8)
    fig.suptitle(f"Exact vs Hutchinson log-likelihood, {n} points, {solver_name} "
                 f"rtol = atol = {rtol:g}")
    fig.tight_layout()
    fig.savefig(FIGURES / "likelihood.png", dpi=100)
    plt.close(fig)
    print(f"wrote {FIGURES}/likelihood.png in {time.time() - start:.1f} s")


if __name__ == "__main__":
    main()
