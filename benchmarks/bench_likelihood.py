"""Cost of `sf.log_likelihood` versus dimension, for exact and stochastic traces.

The model is the exact noise prediction of a Gaussian mixture (K components, full
covariances) under VP, so the error against the exact marginal log-density
`gm.marginal(p, t0).log_prob(x)` is also reported (with the exact terminal density,
so only the solve and the trace estimate contribute).

    python benchmarks/bench_likelihood.py                 # float32, d = 2, 16, 64
    python benchmarks/bench_likelihood.py --x64 --dims 2 10 --rtol 1e-8

Columns: d, trace, probes, compile (s), run (ms per example, median of --reps
calls on a batch of --batch examples, divided by the batch), steps (solver steps),
JVPs per velocity evaluation, error (|ll - exact| in nats, mean over the batch), and for
stochastic traces the standard deviation of the estimate over the batch's probe
keys relative to the exact-trace value (one estimate per example).
"""

import argparse
import time

import jax


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dims", type=int, nargs="+", default=[2, 16, 64])
    ap.add_argument("--components", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--rtol", type=float, default=1e-5)
    ap.add_argument("--atol", type=float, default=1e-5)
    ap.add_argument("--x64", action="store_true")
    ap.add_argument(
        "--traces",
        nargs="+",
        default=["exact", "hutchinson:1"],
    )
    args = ap.parse_args()
    jax.config.update("jax_enable_x64", args.x64)

    import equinox as eqx
    import jax.numpy as jnp
    import jax.random as jr
    import numpy as np

    import scoreflow as sf
    from scoreflow import toy

    p = sf.VP()
    dtype = jnp.float64 if args.x64 else jnp.float32
    print(
        f"# VP, GaussianMixture K={args.components}, batch={args.batch}, "
        f"rtol={args.rtol}, atol={args.atol}, {jnp.dtype(dtype).name}, "
        f"backend={jax.default_backend()}, devices={jax.devices()}"
    )
    header = (
        f"| {'d':>4} | {'trace':<10} | {'probes':>6} | {'compile s':>9} | "
        f"{'run ms/ex':>9} | {'steps':>5} | {'JVP/eval':>8} | {'err nats':>10} | "
        f"{'std est':>8} |"
    )
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for d in args.dims:
        rng = np.random.default_rng(d)
        K = args.components
        w = rng.uniform(0.5, 1.5, K)
        a = rng.normal(size=(K, d, d))
        covs = a @ np.swapaxes(a, -1, -2) / d * 0.3 + 0.2 * np.eye(d)
        gm = toy.GaussianMixture(
            jnp.asarray(w / w.sum(), dtype),
            jnp.asarray(rng.normal(size=(K, d)), dtype),
            jnp.asarray(covs, dtype),
        )
        pred = sf.Predictor(gm.eps(p), p, prediction="eps")
        xs = gm.sample(jr.key(0), args.batch).astype(dtype)
        exact = jax.vmap(gm.marginal(p, p.t0).log_prob)(xs)
        terminal = gm.marginal(p, p.t1).log_prob
        keys = jr.split(jr.key(1), args.batch)
        for spec in args.traces:
            trace, _, m = spec.partition(":")
            m = int(m) if m else 1

            @eqx.filter_jit
            def run(keys, xs, trace=trace, m=m):
                def one(k, x):
                    return sf.log_likelihood(
                        k if trace != "exact" else None,
                        p,
                        pred,
                        x,
                        trace=trace,
                        num_probes=m,
                        rtol=args.rtol,
                        atol=args.atol,
                        prior_log_prob=terminal,
                        return_info=True,
                        max_steps=16384,
                    )

                return jax.vmap(one)(keys, xs)

            t = time.perf_counter()
            ll, info = jax.block_until_ready(run(keys, xs))
            compile_s = time.perf_counter() - t
            times = []
            for _ in range(args.reps):
                t = time.perf_counter()
                jax.block_until_ready(run(keys, xs))
                times.append(time.perf_counter() - t)
            run_ms = 1e3 * float(np.median(times)) / args.batch
            err = float(jnp.mean(jnp.abs(ll - exact)))
            std = float(jnp.std(ll - exact)) if trace != "exact" else float("nan")
            print(
                f"| {d:>4} | {trace:<10} | {m if trace != 'exact' else d:>6} | "
                f"{compile_s:>9.2f} | {run_ms:>9.2f} | {int(jnp.max(info.num_steps)):>5} | "
                f"{info.num_jvp_per_eval:>8} | {err:>10.2e} | {std:>8.3f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
