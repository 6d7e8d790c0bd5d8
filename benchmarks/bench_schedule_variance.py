"""Does VDM's variance gradient for the schedule's shape lower the estimator's spread?

Run `python benchmarks/bench_schedule_variance.py` (about 2 min of CPU). The same MLP
is trained twice on the 8-Gaussian ring under `sf.elbo_loss` (uniform times, no
stratification, so the one-sample spread is what an optimiser sees) with the end
points of `sf.learned_schedule()` frozen at VDM's [-5, 13.3]: once with the shape
weights frozen, once with them trained for variance
(`sf.ScheduledModel(..., variance=("w1", "w2", "w3"))`). It prints the mean and the
standard deviation of the one-sample loss on 4000 held-out points (nats per dimension).
"""

import math

import jax.random as jr

import scoreflow as sf


def main():
    ring = sf.toy.ring_mixture()
    data, scaler = sf.standardize(ring.sample(jr.key(0), 20_000))
    test = scaler(ring.sample(jr.key(1), 4000))
    sched = sf.learned_schedule()
    loss = sf.elbo_loss(sched, stratified=False)
    shape, ends = ("w1", "w2", "w3"), ("log_snr_max", "log_range")
    runs = [
        ("shape fixed", dict(frozen=shape + ends)),
        ("shape trained for variance", dict(variance=shape, frozen=ends)),
    ]
    print("| shape | mean (nats/dim) | std of the one-sample loss | weights |")
    print("| --- | --- | --- | --- |")
    for name, kw in runs:
        model = sf.ScheduledModel(sf.nets.MLP(2, key=jr.key(2)), sched, **kw)
        fit = sf.train.fit(
            loss, model, data, key=jr.key(3), steps=3000, batch_size=512,
            learning_rate=2e-3, ema_decay=0.995, progress=False,
        )
        e = fit.ema
        per = loss.per_example(sf.ScheduledModel(e.model, e.process), test, jr.key(4))
        se = float(per.std()) / math.sqrt(per.shape[0])
        w = ", ".join(f"{float(e.params[k]):.2f}" for k in shape)
        print(f"| {name} | {float(per.mean()):.3f} ± {se:.3f} | {float(per.std()):.2f} | {w} |")


if __name__ == "__main__":
    main()
