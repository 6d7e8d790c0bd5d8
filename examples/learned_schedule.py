"""A learned noise schedule (variational diffusion models) against a fixed one.

The same MLP is trained twice on the 8-Gaussian ring under the continuous-time
negative ELBO (sf.elbo_loss): once with sf.learned_schedule() held at its initial
value (VDM's log-SNR range [-5, 13.3]), once with the schedule's sympy constants
trained jointly with the network (sf.ScheduledModel). The schedule is monotone for every
parameter value, so training cannot make it invalid. Both bounds are evaluated on
held-out data with sf.elbo (nats per example, with standard errors) next to the true
negative log-likelihood of the ring (the data is an exact Gaussian mixture).

    python examples/learned_schedule.py [--smoke]

Figure: examples/figures/learned_schedule.png (or $SCOREFLOW_FIGURES): the initial
and learned log-SNR schedules, and the bound's three terms for both runs.
Run times: see docs/examples.md.
"""

import math
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


def bound(net, process, test, key, num_times):
    pred = sf.Predictor(net, process, prediction="eps")
    keys = jr.split(key, test.shape[0])
    fn = eqx.filter_jit(
        jax.vmap(lambda k, x: sf.elbo(k, process, pred, x, num_times=num_times))
    )
    return fn(keys, test)


def summary(res):
    n = res.total.shape[0]
    return (
        float(jnp.mean(res.total)),
        float(jnp.std(res.total)) / math.sqrt(n),
        {k: float(jnp.mean(getattr(res, k))) for k in ("reconstruction", "prior", "diffusion")},
    )


def main():
    start = time.time()
    FIGURES.mkdir(parents=True, exist_ok=True)
    steps = 300 if SMOKE else 6000
    n_test, num_times = (200, 16) if SMOKE else (4000, 64)

    ring = sf.toy.ring_mixture()
    data, scaler = sf.standardize(ring.sample(jr.key(0), 20_000))
    test = scaler(ring.sample(jr.key(1), n_test))
    # true NLL of the held-out points in standardized units (log-det of the scaler)
    true_nll = float(
        -jnp.mean(jax.vmap(ring.log_prob)(scaler.inverse(test)))
        - 2 * jnp.log(scaler.scale)
    )

    schedule = sf.learned_schedule()  # log-SNR from 13.3 (t = 0) down to -5 (t = 1)
    loss = sf.elbo_loss(schedule, prediction="eps")
    lr = 2e-3
    runs = {}
    for name in ("fixed", "learned"):
        net = sf.nets.MLP(2, key=jr.key(2))
        model = net if name == "fixed" else sf.ScheduledModel(net, schedule)
        fit = sf.train.fit(
            loss, model, data, key=jr.key(3), steps=steps, batch_size=512,
            learning_rate=lr, ema_decay=0.995, progress=not SMOKE,
        )
        m = fit.ema
        net, process = (m, schedule) if name == "fixed" else (m.model, m.process)
        res = bound(net, process, test, jr.key(4), num_times)
        runs[name] = (process, summary(res))
        mean, se, terms = runs[name][1]
        print(
            f"{name:8s} bound {mean:.4f} +- {se:.4f} nats/example "
            f"(recon {terms['reconstruction']:.3f}, prior {terms['prior']:.4f}, "
            f"diffusion {terms['diffusion']:.3f}); log-SNR range "
            f"[{float(process.log_snr(process.t1)):.2f}, "
            f"{float(process.log_snr(process.t0)):.2f}]"
        )
    print(f"true NLL {true_nll:.4f} nats/example")
    gain = runs["fixed"][1][0] - runs["learned"][1][0]
    print(f"learned improves the bound by {gain:.4f} nats/example")

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4.2))
    ts = jnp.linspace(0.0, 1.0, 201)
    for name, style in (("fixed", "--"), ("learned", "-")):
        process = runs[name][0]
        ax0.plot(ts, jax.vmap(process.log_snr)(ts), style, label=f"{name} schedule")
    ax0.set_xlabel("t (0 = data, 1 = prior)")
    ax0.set_ylabel(r"log-SNR $\lambda(t)$")
    ax0.set_title("Noise schedule: initial (= fixed) and learned")
    ax0.legend()
    names = ["reconstruction", "prior", "diffusion", "total"]
    width = 0.38
    for i, name in enumerate(("fixed", "learned")):
        mean, se, terms = runs[name][1]
        vals = [terms["reconstruction"], terms["prior"], terms["diffusion"], mean]
        ax1.bar(np.arange(4) + (i - 0.5) * width, vals, width, label=name)
    ax1.axhline(true_nll, color="k", lw=1, ls=":", label="true NLL")
    ax1.set_xticks(np.arange(4), names)
    ax1.set_ylabel("nats per example")
    ax1.set_title("Negative ELBO on held-out ring data")
    ax1.legend()
    fig.tight_layout()
    fig.savefig(FIGURES / "learned_schedule.png", dpi=110)
    print(f"wrote {FIGURES / 'learned_schedule.png'} in {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
