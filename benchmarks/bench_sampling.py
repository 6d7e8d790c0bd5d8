"""Sampling benchmarks (not a test): run `python benchmarks/bench_sampling.py`.

Reports, in one process, float32 on whatever `jax.devices()` gives:

(a) Frechet distance (to the exact mixture's mean and covariance) vs NFE in
    {5, 10, 20, 50} per sampler, with the exact Gaussian-mixture predictor (the only
    error is discretisation), on the 2-D 8-Gaussian ring and a 32-D mixture; the
    noise floor is the same FD for exact samples of the same size.
(b) wall time of `sf.sample` vs a hand-written jitted `lax.scan` of the same steps
    (same process functions, same MLP), and vs the `diffeqsolve` route.
(c) first-call (trace + compile) time of each.
(d) a trivial SDE (the reverse SDE of a stationary Ornstein-Uhlenbeck process is
    dx = -x ds + dW): loop and noise overhead of `sf.sample` next to hand-written
    `lax.scan` loops (pre-drawn increments, per-path `fold_in` keys, per-path
    `diffrax.UnsafeBrownianPath`) and plain `diffrax.diffeqsolve` with
    `UnsafeBrownianPath` / `VirtualBrownianTree` (diffrax#517's ~80x case); CPU time,
    median of interleaved repeats (`--only-trivial`).

Prints Markdown tables (pasted into docs/benchmarks.md). `--only-a NAME...` re-runs
table (a) for the named samplers only.
"""

import argparse
import time

import diffrax
import jax
import jax.numpy as jnp
import jax.random as jr
import lineax as lx
import numpy as np

import scoreflow as sf
from scoreflow import metrics, toy


def fd_truth(gm, xs):
    return float(
        metrics.frechet_distance_gaussians(
            jnp.mean(xs, 0), jnp.cov(xs.T), gm.mean(), gm.cov()
        )
    )


def mixture_32d(key, k=4, d=32):
    km, kc = jr.split(key)
    means = 2.0 * jr.normal(km, (k, d))
    a = 0.3 * jr.normal(kc, (k, d, d)) / jnp.sqrt(d)
    covs = jnp.einsum("kij,klj->kil", a, a) + 0.1 * jnp.eye(d)
    return toy.GaussianMixture(jnp.full((k,), 1 / k), means, covs)


def samplers(p):
    """name -> (kwargs for sf.sample given NFE)."""
    return {
        "Euler (PF-ODE)": lambda n: dict(solver=diffrax.Euler(), steps=n),
        "Heun (PF-ODE)": lambda n: dict(solver=diffrax.Heun(), steps=max(n // 2, 1)),
        "DDIM": lambda n: dict(solver=sf.DDIM(), time_grid=sf.log_snr_grid(p, n)),
        "DPM-Solver++(2M)": lambda n: dict(
            solver=sf.DPMSolverPP2M(), time_grid=sf.log_snr_grid(p, n)
        ),
        # 2N - 1 evaluations for N steps (the last step is Euler), as in EDM.
        "EDM Heun": lambda n: dict(
            solver=sf.EDMHeun(), time_grid=sf.edm_grid(p, max((n + 1) // 2, 1))
        ),
        "Euler-Maruyama (SDE)": lambda n: dict(
            method="sde", solver=diffrax.Euler(), steps=n
        ),
        "DDPM (ancestral)": lambda n: dict(
            method="sde", solver=sf.DDPM(), time_grid=sf.log_snr_grid(p, n)
        ),
    }


def table_a(p, gm, name, num, nfes, only=None):
    pred = sf.Predictor(lambda t, x: gm.eps(p)(t, x), p, prediction="eps")
    draw = jax.jit(lambda k, n: gm.sample(k, n), static_argnums=1)
    floor = [fd_truth(gm, draw(jr.key(100 + r), num)) for r in range(5)]
    rows = [
        f"\n**{name}** ({num} samples; exact-sample noise floor "
        f"{np.mean(floor):.4f} ± {np.std(floor):.4f})\n",
        "| sampler | " + " | ".join(f"NFE {n}" for n in nfes) + " |",
        "|---|" + "---|" * len(nfes),
    ]
    for sname, kw in samplers(p).items():
        if only is not None and sname not in only:
            continue
        cells = []
        for n in nfes:
            xs, info = sf.sample(
                jr.key(0), p, pred, (gm.dim,), num=num, return_info=True, **kw(n)
            )
            nfe = int(info["nfe"][0])
            cells.append(f"{fd_truth(gm, xs):.4f}" + ("" if nfe == n else f" ({nfe})"))
        rows.append(f"| {sname} | " + " | ".join(cells) + " |")
        print(rows[-1], flush=True)
    return rows


# ---- (b, c) an MLP model, sf.sample vs a hand-written scan ------------------


def mlp_init(key, d=2, width=256, depth=3, temb=32):
    sizes = [d + temb] + [width] * depth + [d]
    keys = jr.split(key, len(sizes))
    return [
        (jr.normal(k, (a, b)) / np.sqrt(a), jnp.zeros(b))
        for k, a, b in zip(keys, sizes[:-1], sizes[1:])
    ]


def mlp_apply(params, t, x, temb=32):
    freqs = jnp.exp(jnp.linspace(0.0, 6.0, temb // 2))
    h = jnp.concatenate([x, jnp.sin(t * freqs), jnp.cos(t * freqs)])
    for w, b in params[:-1]:
        h = jax.nn.silu(h @ w + b)
    w, b = params[-1]
    return h @ w + b


def interleaved(fns, reps, reduce=min):
    """First-call wall time of each, then the *minimum* (or `reduce`) over `reps`
    interleaved runs of the process CPU time and of the wall time. On a shared machine the CPU time
    (all threads of this process) measures the work done; wall time includes waiting
    for cores that other jobs hold."""
    first = []
    for fn in fns:
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        first.append(time.perf_counter() - t0)
    cpu = [[] for _ in fns]
    wall = [[] for _ in fns]
    for _ in range(reps):
        for fn, c, w in zip(fns, cpu, wall):
            c0, w0 = time.process_time(), time.perf_counter()
            jax.block_until_ready(fn())
            c.append(time.process_time() - c0)
            w.append(time.perf_counter() - w0)
    return [(f, reduce(c), reduce(w)) for f, c, w in zip(first, cpu, wall)]


def table_bc(p, num, steps, reps):
    params = mlp_init(jr.key(0))

    def model(t, x):
        return mlp_apply(params, t, x)

    pred = sf.Predictor(model, p, prediction="eps")
    grid = sf.uniform_grid(p, steps)

    def hand_ode(key):
        keys = jax.vmap(lambda i: jr.fold_in(key, i))(jnp.arange(num))
        x = jax.vmap(lambda k: p.sigma(grid[0]) * jr.normal(jr.split(k)[0], (2,)))(keys)

        def body(x, tt):
            ta, tb = tt
            eps = jax.vmap(model, (None, 0))(ta, x)
            score = -eps / p.sigma(ta)
            return x + (tb - ta) * (p.f(ta) * x - 0.5 * p.g2(ta) * score), None

        return jax.lax.scan(body, x, (grid[:-1], grid[1:]))[0]

    def hand_em(key):
        keys = jax.vmap(lambda i: jr.fold_in(key, i))(jnp.arange(num))
        x = jax.vmap(lambda k: p.sigma(grid[0]) * jr.normal(jr.split(k)[0], (2,)))(keys)
        bkeys = jax.vmap(lambda k: jr.split(k)[1])(keys)

        def body(x, tt):
            ta, tb, i = tt
            eps = jax.vmap(model, (None, 0))(ta, x)
            score = -eps / p.sigma(ta)
            dt = ta - tb
            z = jax.vmap(lambda k: jr.normal(jr.fold_in(k, i), (2,)))(bkeys)
            x = (
                x
                - dt * (p.f(ta) * x - p.g2(ta) * score)
                + p.diffusion(ta) * jnp.sqrt(dt) * z
            )
            return x, None

        return jax.lax.scan(body, x, (grid[:-1], grid[1:], jnp.arange(steps)))[0]

    hand_ode_j, hand_em_j = jax.jit(hand_ode), jax.jit(hand_em)
    key = jr.key(1)
    cases = {
        "PF-ODE, Euler": (
            lambda: hand_ode_j(key),
            lambda: sf.sample(
                key, p, pred, (2,), num=num, solver=diffrax.Euler(), steps=steps
            ),
            lambda: sf.sample(
                key,
                p,
                pred,
                (2,),
                num=num,
                solver=diffrax.Euler(),
                steps=steps,
                progress_meter=diffrax.NoProgressMeter(),
            ),
        ),
        "reverse SDE, Euler-Maruyama": (
            lambda: hand_em_j(key),
            lambda: sf.sample(
                key,
                p,
                pred,
                (2,),
                num=num,
                method="sde",
                solver=diffrax.Euler(),
                steps=steps,
            ),
            lambda: sf.sample(
                key,
                p,
                pred,
                (2,),
                num=num,
                method="sde",
                solver=diffrax.Euler(),
                steps=steps,
                progress_meter=diffrax.NoProgressMeter(),
            ),
        ),
    }
    # Same math: the hand-written Euler scan and sf.sample agree.
    a, b = hand_ode_j(key), cases["PF-ODE, Euler"][1]()
    agree = float(jnp.max(jnp.abs(a - b)))
    rows = [
        f"\nMLP eps-model (3 x 256 SiLU), VP, {num} samples, {steps} steps; min of "
        f"{reps} interleaved runs; max |hand - sf.sample| (Euler PF-ODE) = "
        f"{agree:.2e}\n",
        "| dynamics | hand-written scan: CPU / wall | sf.sample (scan path): CPU / "
        "wall | ratio CPU (wall) | sf.sample via diffeqsolve: CPU / wall | ratio CPU "
        "(wall) | first call: hand / sf.sample / diffeqsolve |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, fns in cases.items():
        (fh, ch, wh), (fo, co, wo), (fd, cd, wd) = interleaved(fns, reps)
        rows.append(
            f"| {name} | {ch * 1e3:.0f} / {wh * 1e3:.0f} ms | {co * 1e3:.0f} / "
            f"{wo * 1e3:.0f} ms | {co / ch:.3f} ({wo / wh:.2f}) | {cd * 1e3:.0f} / "
            f"{wd * 1e3:.0f} ms | {cd / ch:.3f} ({wd / wh:.2f}) | {fh:.2f} s / "
            f"{fo:.2f} s / {fd:.2f} s |"
        )
        print(rows[-1], flush=True)
    return rows


# ---- (d) a trivial SDE: loop and noise overhead, not model cost --------------


def _median_cpu(fns, reps):
    """As `interleaved`, with the median over the runs instead of the minimum."""
    return interleaved(fns, reps, reduce=np.median)


def trivial_sde_cases(num, steps, d=2):
    """The reverse SDE of an Ornstein-Uhlenbeck process at stationarity is itself
    trivial: forward $dx = -x\,dt + dW$ with data $N(0, I/2)$ has marginals
    $N(0, I/2)$ and score $-2x$, so in flipped time the reverse SDE is
    $dx = -x\,ds + dW_s$. Every variant integrates exactly that with
    Euler-Maruyama over the same `steps`-step grid, for `num` paths in `d`
    dimensions, and returns the end points `(num, d)`. All per-path variants derive
    path i's keys as `sf.sample` does (`fold_in(key, i)`, split into initial-noise
    and Brownian keys), so those that also use diffrax's `UnsafeBrownianPath` compute
    the same numbers as `sf.sample`."""
    # t1 = 4: the prior N(0, sigma(t1)^2) is the stationary N(0, 1/2) to 2e-4.
    p = sf.SDE(-sf.x, 1, t1=4.0)
    pred = sf.Predictor(lambda t, x: -2.0 * x, p, prediction="score")
    grid = sf.uniform_grid(p, steps)
    s_grid = p.t1 - grid  # flipped time, increasing
    key = jr.key(1)
    sigma1 = p.sigma(grid[0])

    def em(x, ds, dw):
        return x - x * ds + dw

    def path_keys(key):
        keys = jax.vmap(lambda i: jr.fold_in(key, i))(jnp.arange(num))
        nk, bk = jax.vmap(jr.split, out_axes=1)(keys)
        x = jax.vmap(lambda k: sigma1 * jr.normal(k, (d,)))(nk)
        return x, bk

    @jax.jit
    def hand_bulk(key):
        # One vectorised draw of every increment, then the loop: diffrax#517's
        # baseline. The noise of path i depends on the batch size.
        kx, kz = jr.split(key)
        x = sigma1 * jr.normal(kx, (num, d))
        zs = jr.normal(kz, (steps, num, d))

        def body(x, inp):
            ds, z = inp
            return em(x, ds, jnp.sqrt(ds) * z), None

        return jax.lax.scan(body, x, (jnp.diff(s_grid), zs))[0]

    @jax.jit
    def hand_fold_in(key):
        # Per-path keys (path i depends on its own key only), one fold_in + normal
        # per step: the cheapest noise with sf.sample's reproducibility contract.
        x, bk = path_keys(key)

        def body(x, inp):
            ds, i = inp
            z = jax.vmap(lambda k: jr.normal(jr.fold_in(k, i), (d,)))(bk)
            return em(x, ds, jnp.sqrt(ds) * z), None

        return jax.lax.scan(body, x, (jnp.diff(s_grid), jnp.arange(steps)))[0]

    @jax.jit
    def hand_diffrax_noise(key):
        # The same loop, increments from diffrax.UnsafeBrownianPath (what sf.sample
        # uses with brownian="increments").
        x, bk = path_keys(key)
        bms = jax.vmap(lambda k: diffrax.UnsafeBrownianPath((d,), k))(bk)

        def body(x, ss):
            s0, s1 = ss
            dw = jax.vmap(lambda bm: bm.evaluate(s0, s1))(bms)
            return em(x, s1 - s0, dw), None

        return jax.lax.scan(body, x, (s_grid[:-1], s_grid[1:]))[0]

    kw = dict(num=num, method="sde", solver=diffrax.Euler(), time_grid=grid)

    def sf_scan():
        return sf.sample(key, p, pred, (d,), **kw)

    sf_jitted = jax.jit(lambda key: sf.sample(key, p, pred, (d,), **kw))

    def sf_diffeqsolve():
        return sf.sample(
            key, p, pred, (d,), progress_meter=diffrax.NoProgressMeter(), **kw
        )

    def plain(tree: bool):
        # What a diffrax user writes: terms, a Brownian path per path, diffeqsolve
        # over the fixed grid (StepTo), vmapped over paths.
        def one(x0, kb):
            s0, s1 = s_grid[0], s_grid[-1]
            if tree:
                bm = diffrax.VirtualBrownianTree(
                    s0, s1, tol=(s1 - s0) / steps / 4, shape=(d,), key=kb
                )
            else:
                bm = diffrax.UnsafeBrownianPath(shape=(d,), key=kb)
            terms = diffrax.MultiTerm(
                diffrax.ODETerm(lambda s, y, args: -y),
                diffrax.ControlTerm(
                    lambda s, y, args: lx.DiagonalLinearOperator(jnp.ones_like(y)), bm
                ),
            )
            sol = diffrax.diffeqsolve(
                terms,
                diffrax.Euler(),
                s0,
                s1,
                None,
                x0,
                saveat=diffrax.SaveAt(t1=True),
                stepsize_controller=diffrax.StepTo(ts=s_grid),
                # UnsafeBrownianPath needs a non-checkpointing adjoint.
                adjoint=(
                    diffrax.RecursiveCheckpointAdjoint()
                    if tree
                    else diffrax.ForwardMode()
                ),
                max_steps=steps,
            )
            return sol.ys[-1]

        fn = jax.jit(lambda key: jax.vmap(one)(*path_keys(key)))
        return lambda: fn(key)

    return {
        "hand-written `lax.scan`, all increments pre-drawn in one call": (
            lambda: hand_bulk(key)
        ),
        "hand-written `lax.scan`, per-path keys, `fold_in` + `normal` per step": (
            lambda: hand_fold_in(key)
        ),
        "hand-written `lax.scan`, per-path `diffrax.UnsafeBrownianPath`": (
            lambda: hand_diffrax_noise(key)
        ),
        "`sf.sample` (fixed-grid scan path)": sf_scan,
        "`jax.jit(sf.sample)`": lambda: sf_jitted(key),
        "`sf.sample` via `diffeqsolve` (`progress_meter=`)": sf_diffeqsolve,
        "plain `diffeqsolve` + `UnsafeBrownianPath` (StepTo)": plain(False),
        "plain `diffeqsolve` + `VirtualBrownianTree` (StepTo)": plain(True),
    }


def table_d(num, steps, reps):
    names = list(trivial_sde_cases(num, steps))
    cases = trivial_sde_cases(num, steps)
    res = _median_cpu(list(cases.values()), reps)
    ends = {k: f() for k, f in cases.items()}
    ref = ends["`sf.sample` (fixed-grid scan path)"]
    bulk, fold = res[0][1], res[1][1]
    rows = [
        f"\nTrivial SDE $dx = -x\\,ds + dW$ ($d = 2$), {num} path(s), {steps} "
        f"Euler-Maruyama steps, float32; median of {reps} interleaved runs\n",
        "| variant | CPU / wall per call | CPU vs pre-drawn scan | CPU vs `fold_in` "
        "scan | first call | max abs diff to `sf.sample` |",
        "|---|---|---|---|---|---|",
    ]
    for name, (first, c, w) in zip(names, res):
        diff = float(jnp.max(jnp.abs(ends[name] - ref)))
        rows.append(
            f"| {name} | {c * 1e3:.2f} / {w * 1e3:.2f} ms | {c / bulk:.2f} | "
            f"{c / fold:.2f} | {first:.2f} s | {diff:.1e} |"
        )
        print(rows[-1], flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--num", type=int, default=2000)
    ap.add_argument("--skip-a", action="store_true")
    ap.add_argument("--bench-num", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--only-trivial", action="store_true", help="only table (d)")
    ap.add_argument(
        "--only-a", nargs="+", default=None, help="only table (a), these samplers"
    )
    ap.add_argument("--trivial-num", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--trivial-steps", type=int, default=1000)
    ap.add_argument("--trivial-reps", type=int, default=21)
    args = ap.parse_args()
    print(
        f"jax {jax.__version__}, diffrax {diffrax.__version__}, devices "
        f"{jax.devices()}, float32",
        flush=True,
    )
    p = sf.VP()
    out = []
    if args.only_a:
        nfes = (5, 10, 20, 50)
        ring, mix = toy.ring_mixture(), mixture_32d(jr.key(3))
        out += table_a(p, ring, "2-D ring (8 Gaussians)", args.num, nfes, args.only_a)
        out += table_a(p, mix, "32-D mixture", args.num, nfes, args.only_a)
        print("\n".join(out))
        return
    for num in args.trivial_num:
        out += table_d(num, args.trivial_steps, args.trivial_reps)
    if args.only_trivial:
        print("\n".join(out))
        return
    out += table_bc(p, args.bench_num, args.steps, args.reps)
    if not args.skip_a:
        nfes = (5, 10, 20, 50)
        out += table_a(p, toy.ring_mixture(), "2-D ring (8 Gaussians)", args.num, nfes)
        out += table_a(
            p,
            mixture_32d(jr.key(3)),
            "32-D mixture (4 full-covariance Gaussians)",
            args.num,
            nfes,
            only=("Euler (PF-ODE)", "Heun (PF-ODE)", "DDIM", "DPM-Solver++(2M)"),
        )
    print("\n".join(out))


if __name__ == "__main__":
    main()
