"""Few-step sampling benchmark (issue 13; not a test): `python benchmarks/bench_fewstep.py`.

The exact Gaussian-mixture model (so the only error is discretisation), one trained
process (VP, eps-prediction), the same initial noise for every configuration:

- problem A: 2-D ring, 8 Gaussians of std 0.3 at radius 4, weights proportional to
  1..8 (50 000 samples);
- problem B: 32-D mixture of 10 full-covariance Gaussians, means ~ N(0, 0.5 I),
  eigenvalues log-uniform in [0.02, 0.5] (20 000 samples).

Metrics per row: Frechet distance to the exact mixture's moments (`bench_sampling`'s
`fd_truth`), the mode-weight total variation (A: each sample assigned to its most
responsible component), and the log-density gap (mean -log p of the samples minus that
of exact samples, nats; > 0 is too spread, < 0 too concentrated). The floor is the
same FD for exact samples. NFE is the measured `info["nfe"]`.

Configurations are named in one call each (path, solver, grid, final denoise); the
optimised grids (`sf.optimised_grid`) use pilot noise from a different key than the
evaluation noise.
"""

import argparse
import time

import diffrax
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from bench_sampling import fd_truth

import scoreflow as sf
from scoreflow import toy

# --------------------------------------------------------------------------- #
# Problems
# --------------------------------------------------------------------------- #


def problem_a():
    k = 8
    ang = 2 * jnp.pi * jnp.arange(k) / k
    means = 4.0 * jnp.stack([jnp.cos(ang), jnp.sin(ang)], -1)
    covs = jnp.broadcast_to(0.3**2 * jnp.eye(2), (k, 2, 2))
    w = jnp.arange(1, k + 1, dtype=means.dtype)
    return toy.GaussianMixture(w / w.sum(), means, covs)


def problem_b(key=jr.key(13), k=10, d=32):
    km, kq, ke = jr.split(key, 3)
    means = jnp.sqrt(0.5) * jr.normal(km, (k, d))
    q, _ = jnp.linalg.qr(jr.normal(kq, (k, d, d)))
    eig = jnp.exp(jr.uniform(ke, (k, d), minval=jnp.log(0.02), maxval=jnp.log(0.5)))
    covs = jnp.einsum("kij,kj,klj->kil", q, eig, q)
    covs = (covs + jnp.swapaxes(covs, 1, 2)) / 2
    return toy.GaussianMixture(jnp.full((k,), 1 / k), means, covs)


def _component_logp(gm, xs):
    """(n, K) log w_k N(x; m_k, C_k)."""
    chol = jnp.linalg.cholesky(gm.covs)
    d = xs[:, None, :] - gm.means[None]
    z = jax.vmap(
        lambda L, dd: jax.scipy.linalg.solve_triangular(L, dd.T, lower=True).T,
        in_axes=(0, 1),
        out_axes=1,
    )(chol, d)
    logdet = jnp.sum(jnp.log(jnp.diagonal(chol, axis1=1, axis2=2)), -1)
    dim = xs.shape[-1]
    return (
        jnp.log(gm.weights)
        - 0.5 * jnp.sum(z**2, -1)
        - logdet
        - 0.5 * dim * jnp.log(2 * jnp.pi)
    )


_component_logp = jax.jit(_component_logp)


def metrics(gm, xs, nll_data):
    xs = jnp.asarray(xs, jnp.float32)
    lp = _component_logp(gm, xs)
    nll = -float(jnp.mean(jax.scipy.special.logsumexp(lp, -1)))
    counts = jnp.bincount(jnp.argmax(lp, -1), length=gm.weights.shape[0])
    tv = 0.5 * float(jnp.sum(jnp.abs(counts / xs.shape[0] - gm.weights)))
    return dict(fd=fd_truth(gm, xs), tv=tv, gap=nll - nll_data)


# --------------------------------------------------------------------------- #
# Configurations: name -> f(nfe) -> (process, predictor, sample kwargs)
# --------------------------------------------------------------------------- #


def configs(vp, pred, pp, nfe, opt):
    """Each entry: kwargs for sf.sample and which (process, predictor) to use."""
    rf = pp.process
    half = max(nfe // 2, 1)
    odd = nfe % 2 == 1
    c = {
        "VP Heun, uniform t (old default)": (
            vp,
            pred,
            dict(solver=diffrax.Heun(), steps=half),
        ),
        "VP DPM++(2M), log-SNR": (
            vp,
            pred,
            dict(solver=sf.DPMSolverPP2M(), time_grid=sf.log_snr_grid(vp, nfe)),
        ),
        "VP DPM++(3M), log-SNR": (
            vp,
            pred,
            dict(solver=sf.DPMSolverPP3M(), time_grid=sf.log_snr_grid(vp, nfe)),
        ),
        "VP UniPC-2 bh2, log-SNR": (
            vp,
            pred,
            dict(solver=sf.UniPC(2), time_grid=sf.log_snr_grid(vp, nfe)),
        ),
        "VP UniPC-3 bh2, log-SNR": (
            vp,
            pred,
            dict(solver=sf.UniPC(3), time_grid=sf.log_snr_grid(vp, nfe)),
        ),
        "VP UniPC-2 bh1, log-SNR": (
            vp,
            pred,
            dict(solver=sf.UniPC(2, "bh1"), time_grid=sf.log_snr_grid(vp, nfe)),
        ),
        "VP UniPC-2 bh2, trailing": (
            vp,
            pred,
            dict(
                solver=sf.UniPC(2),
                time_grid=sf.diffusers_grid(vp, nfe, spacing="trailing"),
            ),
        ),
        "VP iPNDM, EDM rho=7": (
            vp,
            pred,
            dict(solver=sf.IPNDM(), time_grid=sf.edm_grid(vp, nfe)),
        ),
        "VP LMS, EDM rho=7": (
            vp,
            pred,
            dict(solver=sf.LMS(), time_grid=sf.edm_grid(vp, nfe)),
        ),
        "straight Heun, uniform u": (
            rf,
            pp,
            dict(solver=diffrax.Heun(), steps=half),
        ),
        "straight Midpoint, uniform u": (
            rf,
            pp,
            dict(solver=diffrax.Midpoint(), steps=half),
        ),
        "straight Midpoint, uniform u + denoise" + (" (odd NFE)" if odd else ""): (
            rf,
            pp,
            dict(
                solver=diffrax.Midpoint(),
                time_grid=sf.denoise_grid(rf, half)
                if odd
                else sf.denoise_grid(rf, max(half - 1, 1)),
                denoise=True,
            ),
        ),
        "straight UniPC-2, uniform u": (
            rf,
            pp,
            dict(solver=sf.UniPC(2), steps=nfe),
        ),
    }
    for name, val in opt.items():
        c[name] = val
    d = sf.default_sampler(vp, nfe)
    c[f"sf.default_sampler: {d.label}"] = ("default", d, {})
    return c


ITERS = 100


def optimised(
    key,
    vp,
    pred,
    pp,
    nfe,
    shape,
    pilot,
    which=("unipc2", "unipc3", "midpoint", "learned"),
):
    """Optimised grids for the solvers that matter at few steps."""
    rf = pp.process
    half = max(nfe // 2, 1)
    out = {}
    t = time.perf_counter()
    g = None
    if "unipc2" in which:
        g = sf.optimised_grid(
            key,
            vp,
            pred,
            nfe,
            solver=sf.UniPC(2),
            shape=shape,
            num=pilot,
            iters=ITERS,
            init=sf.log_snr_grid(vp, nfe),
        )
        out["VP UniPC-2 bh2, optimised"] = (
            vp,
            pred,
            dict(solver=sf.UniPC(2), time_grid=g),
        )
    if "unipc3" in which:
        g3 = sf.optimised_grid(
            key,
            vp,
            pred,
            nfe,
            solver=sf.UniPC(3),
            shape=shape,
            num=pilot,
            iters=ITERS,
            init=sf.log_snr_grid(vp, nfe),
        )
        out["VP UniPC-3 bh2, optimised"] = (
            vp,
            pred,
            dict(solver=sf.UniPC(3), time_grid=g3),
        )
    if "midpoint" in which:
        gm_ = sf.optimised_grid(
            key,
            rf,
            pp,
            half,
            solver=diffrax.Midpoint(),
            shape=shape,
            num=pilot,
            iters=ITERS,
            init=sf.uniform_grid(rf, half),
        )
        out["straight Midpoint, optimised"] = (
            rf,
            pp,
            dict(solver=diffrax.Midpoint(), time_grid=gm_),
        )
    if "learned" in which:  # its own defaults: 512 pilot samples, 400 iterations
        t_l = time.perf_counter()
        cfg = sf.optimised_sampler(key, pred, nfe, shape=shape)
        print(
            f"  sf.optimised_sampler(NFE {nfe}) fitted in "
            f"{time.perf_counter() - t_l:.1f}s: grid "
            f"{np.round(np.asarray(cfg.time_grid), 4).tolist()}",
            flush=True,
        )
        out["sf.optimised_sampler (straight, learned Adams)"] = ("default", cfg, {})
    print(
        f"  optimised grids for NFE {nfe} in {time.perf_counter() - t:.1f}s: "
        f"UniPC-2 {None if g is None else np.round(np.asarray(g), 4).tolist()}",
        flush=True,
    )
    return out


def run(problem, gm, num, nfes, pilot, only=None, opt_nfe=(5, 10), which=None):
    vp = sf.VP()
    pred = sf.Predictor(gm.eps(vp), vp, prediction="eps")
    pp = sf.on_path(pred)
    shape = (gm.dim,)
    data = gm.sample(jr.key(100), num)
    nll_data = -float(
        jnp.mean(jax.scipy.special.logsumexp(_component_logp(gm, data), -1))
    )
    floors = [fd_truth(gm, gm.sample(jr.key(200 + r), num)) for r in range(3)]
    print(
        f"\n### Problem {problem} ({num} samples; exact-sample FD floor "
        f"{np.mean(floors):.4f} ± {np.std(floors):.4f})\n",
        flush=True,
    )
    results = {}
    for nfe in nfes:
        kw = {} if which is None else dict(which=which)
        opt = (
            optimised(jr.key(7), vp, pred, pp, nfe, shape, pilot, **kw)
            if nfe in opt_nfe
            else {}
        )
        for name, (proc, pr, kw) in configs(vp, pred, pp, nfe, opt).items():
            if only and not any(o in name for o in only):
                continue
            if proc == "default":  # pr is a SamplerConfig
                xs, info = pr.sample(jr.key(0), pred, shape, num=num, return_info=True)
            else:
                xs, info = sf.sample(
                    jr.key(0), proc, pr, shape, num=num, return_info=True, **kw
                )
            m = metrics(gm, xs, nll_data)
            m["nfe"] = int(info["nfe"][0])
            results.setdefault(name, {})[nfe] = m
            print(
                f"  NFE {nfe:>2} ({m['nfe']:>2}) {name:<45} FD {m['fd']:.4f}  "
                f"TV {m['tv']:.4f}  gap {m['gap']:+.3f}",
                flush=True,
            )
    return results, float(np.mean(floors))


def table(problem, results, floor, nfes, with_tv):
    lines = [
        f"\n**Problem {problem}** (FD floor {floor:.4f}; cells: FD / "
        + ("mode TV / " if with_tv else "")
        + "log-density gap in nats; measured NFE in brackets when it differs)\n",
        "| configuration | " + " | ".join(f"NFE {n}" for n in nfes) + " |",
        "|---|" + "---|" * len(nfes),
    ]
    for name, row in results.items():
        cells = []
        for n in nfes:
            m = row.get(n)
            if m is None:
                cells.append("")
                continue
            s = f"{m['fd']:.4f}"
            if with_tv:
                s += f" / {m['tv']:.3f}"
            s += f" / {m['gap']:+.2f}"
            if m["nfe"] != n:
                s += f" ({m['nfe']})"
            cells.append(s)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


DENOISE_AT = (1 / 3, 0.2, 0.1, 0.05, 0.02)


def denoise_sweep(num_a, num_b):
    """NFE 5 on the straight path: two Midpoint steps from u(t1) to u2 (the inner
    time halfway) and a final denoise at u2, for each u2 in `DENOISE_AT`, beside
    the default (two Midpoint steps to u(t0), 4 NFE). u2 = 1/3 is
    `sf.denoise_grid`. One parameter of a fixed configuration, measured on both
    problems: does any value serve both?"""
    cells = {}
    for name, gm, num in (("A", problem_a(), num_a), ("B", problem_b(), num_b)):
        vp = sf.VP()
        pred = sf.Predictor(gm.eps(vp), vp, prediction="eps")
        pp = sf.on_path(pred)
        rf = pp.process
        data = gm.sample(jr.key(100), num)
        nll_data = -float(
            jnp.mean(jax.scipy.special.logsumexp(_component_logp(gm, data), -1))
        )
        rows = {"default (2 Midpoint steps to u(t0), 4 NFE)": (vp, pred, {})}
        for u2 in DENOISE_AT:
            grid = jnp.array([rf.t1, u2 + 0.5 * (rf.t1 - u2), u2])
            rows[f"2 Midpoint steps to u = {u2:.3g}, then denoise"] = (
                rf,
                pp,
                dict(solver=diffrax.Midpoint(), time_grid=grid, denoise=True),
            )
        for label, (proc, pr, kw) in rows.items():
            if not kw:
                kw = dict(steps=2)
            xs = sf.sample(jr.key(0), proc, pr, (gm.dim,), num=num, **kw)
            m = metrics(gm, xs, nll_data)
            cells.setdefault(label, []).append(f"{m['fd']:.4f} / {m['gap']:+.2f}")
            print(f"  {name} {label:<45} FD {m['fd']:.4f} gap {m['gap']:+.2f}")
    print("\n| NFE 5 | A: FD / gap | B: FD / gap |\n|---|---|---|")
    for label, (a, b) in cells.items():
        print(f"| {label} | {a} | {b} |")


FAMILY = (  # (components, dimension, mean scale, eigenvalue range), keys 1000 + i
    (6, 2, 2.0, (0.02, 0.3)),
    (6, 4, 1.5, (0.03, 0.5)),
    (6, 8, 1.0, (0.03, 0.6)),
    (8, 16, 0.7, (0.02, 0.5)),
)


def mixture(key, k, d, mean_scale, eig_range):
    """k full-covariance Gaussians in d dimensions: means ~ N(0, mean_scale^2 I),
    eigenvalues log-uniform in `eig_range`, weights uniform in [0.5, 1.5]
    normalised."""
    km, kq, ke, kw = jr.split(key, 4)
    means = mean_scale * jr.normal(km, (k, d))
    q, _ = jnp.linalg.qr(jr.normal(kq, (k, d, d)))
    lo, hi = jnp.log(eig_range[0]), jnp.log(eig_range[1])
    eig = jnp.exp(jr.uniform(ke, (k, d), minval=lo, maxval=hi))
    covs = jnp.einsum("kij,kj,klj->kil", q, eig, q)
    covs = (covs + jnp.swapaxes(covs, 1, 2)) / 2
    w = jr.uniform(kw, (k,), minval=0.5, maxval=1.5)
    return toy.GaussianMixture(w / w.sum(), means, covs)


def fit_on_mixtures(nfe, weighted, label, *, num=512, iters=400, reference_steps=200):
    """The learned-Adams fit of `sf.optimised_sampler` (pilot key 7) to the weighted
    sum over `weighted`, a list of `(mixture, weight)`, of each mixture's VP
    eps-model's mean squared distance to its `reference_steps`-step
    DPM-Solver++(3M) reference on the straight path. Uses a scoreflow internal."""
    from scoreflow._sampling._learned import fit_learned_adams

    vp = sf.VP()
    rf = sf.straight_path(vp)
    members = [
        (sf.on_path(sf.Predictor(gm.eps(vp), vp, prediction="eps"), rf), (gm.dim,), w)
        for gm, w in weighted
    ]
    return fit_learned_adams(
        jr.key(7),
        rf,
        members,
        nfe,
        num=num,
        iters=iters,
        learning_rate=0.01,
        reference_steps=reference_steps,
        label=label,
    )


def fit_on_family(nfe, *, num=256, iters=400):
    """A prototype of a shipped default: one sampler fitted to the sum over `FAMILY`
    (none of them A or B) of each problem's distance to its reference, divided by
    the dimension. Not a public feature."""
    family = [mixture(jr.key(1000 + i), *spec) for i, spec in enumerate(FAMILY)]
    weighted = [(gm, 1.0 / gm.dim) for gm in family]
    return fit_on_mixtures(nfe, weighted, "fitted on FAMILY", num=num, iters=iters)


def fit_jointly(nfe, weight_b, *, num=512, iters=400):
    """The test's own optimum for one fixed sampler: the fit to A and B together,
    minimising `mse_A / 2 + weight_b * mse_B / 32`. Sweeping `weight_b` traces the
    trade-off one fixed NFE-`nfe` sampler of this family faces between the two
    problems. Tuned on the benchmark itself, so never a default."""
    a, b = problem_a(), problem_b()
    weighted = [(a, 1.0 / a.dim), (b, weight_b / b.dim)]
    label = f"fitted on A and B, weight {weight_b:g} on B"
    return fit_on_mixtures(nfe, weighted, label, num=num, iters=iters)


def problem_c(key=jr.key(99)):
    """An 8-D mixture of 6 full-covariance Gaussians (means ~ N(0, I), eigenvalues
    log-uniform in [0.03, 0.6]): a third problem, neither A nor B, to fit on."""
    return mixture(key, 6, 8, 1.0, (0.03, 0.6))


JOINT_WEIGHTS = (0.1, 1.0, 10.0, 100.0)


def transfer(num_a, num_b, nfe=5):
    """Does a fitted sampler transfer? `sf.optimised_sampler(nfe)` fitted on one
    problem's exact model (pilot key 7, its defaults), its grid and step weights then
    used with A's and B's models (sampling key 0), beside the default."""
    vp = sf.VP()
    evals = {"A": (problem_a(), num_a), "B": (problem_b(), num_b)}
    fits = {"A": problem_a(), "B": problem_b(), "C (8-D)": problem_c()}
    rows = {"default": sf.default_sampler(vp, nfe)}
    for name, gm in fits.items():
        pred = sf.Predictor(gm.eps(vp), vp, prediction="eps")
        start = time.perf_counter()
        rows[f"sf.optimised_sampler fitted on {name}"] = sf.optimised_sampler(
            jr.key(7), pred, nfe, shape=(gm.dim,)
        )
        print(f"  fitted on {name} in {time.perf_counter() - start:.1f} s", flush=True)
    start = time.perf_counter()
    rows["learned Adams fitted on a family of 4 mixtures (2-16 D)"] = fit_on_family(nfe)
    print(f"  fitted on the family in {time.perf_counter() - start:.1f} s", flush=True)
    for weight_b in JOINT_WEIGHTS:
        start = time.perf_counter()
        rows[f"learned Adams fitted on A and B jointly, weight {weight_b:g} on B"] = (
            fit_jointly(nfe, weight_b)
        )
        print(f"  fitted on A+B in {time.perf_counter() - start:.1f} s", flush=True)
    cells = {}
    for ename, (gm, num) in evals.items():
        pred = sf.Predictor(gm.eps(vp), vp, prediction="eps")
        for label, cfg in rows.items():
            xs = cfg.sample(jr.key(0), pred, (gm.dim,), num=num)
            fd = float(fd_truth(gm, xs))
            cells.setdefault(label, []).append(f"{fd:.4f}")
            print(f"  {ename} {label:<40} FD {fd:.4f}", flush=True)
    print(f"\n| NFE {nfe} | FD on A | FD on B |\n|---|---|---|")
    for label, (a, b) in cells.items():
        print(f"| {label} | {a} | {b} |")


FIT_SETTINGS = (  # (pilot samples, Adam iterations, reference steps)
    (512, 400, 200),  # sf.optimised_sampler's defaults
    (512, 100, 200),
    (128, 400, 200),
    (128, 100, 50),
)


def fit_cost(num_a, num_b, nfe=5):
    """What a default that fitted each user's model would cost: the fit of
    `sf.optimised_sampler` on A's and B's own models at smaller settings, with the
    fit's time and its forward model evaluations (reference + Adam iterations;
    each iteration's backward pass comes on top), against the FD it reaches."""
    vp = sf.VP()
    rows = {}
    for name, gm, num in (("A", problem_a(), num_a), ("B", problem_b(), num_b)):
        pred = sf.Predictor(gm.eps(vp), vp, prediction="eps")
        for pilots, iters, ref in FIT_SETTINGS:
            start = time.perf_counter()
            cfg = fit_on_mixtures(
                nfe,
                [(gm, 1.0)],
                "fit cost",
                num=pilots,
                iters=iters,
                reference_steps=ref,
            )
            secs = time.perf_counter() - start
            fd = float(fd_truth(gm, cfg.sample(jr.key(0), pred, (gm.dim,), num=num)))
            evals = pilots * ref + iters * pilots * nfe
            key = (pilots, iters, ref, evals)
            rows.setdefault(key, []).append(f"{fd:.4f} ({secs:.0f} s)")
            print(f"  {name} {key}: FD {fd:.4f}, fit {secs:.1f} s", flush=True)
    print(
        f"\n| NFE {nfe}: pilots / Adam iterations / reference steps | forward "
        "evaluations | A: FD (fit time) | B: FD (fit time) |\n|---|---|---|---|"
    )
    for (pilots, iters, ref, evals), (a, b) in rows.items():
        print(f"| {pilots} / {iters} / {ref} | {evals:,} | {a} | {b} |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--num-a", type=int, default=50_000)
    ap.add_argument("--num-b", type=int, default=20_000)
    ap.add_argument("--pilot", type=int, default=512)
    ap.add_argument("--nfe", type=int, nargs="+", default=[5, 10, 20, 50])
    ap.add_argument("--only-problem", choices=("A", "B"), default=None)
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--opt-nfe", type=int, nargs="*", default=[5, 10])
    ap.add_argument(
        "--opt",
        nargs="*",
        default=None,
        help="subset of: unipc2 unipc3 midpoint learned",
    )
    ap.add_argument(
        "--denoise-sweep",
        action="store_true",
        help="only the NFE-5 sweep of the final-denoise time (both problems)",
    )
    ap.add_argument(
        "--transfer",
        action="store_true",
        help=(
            "only: NFE-5 samplers fitted on A, B, a third problem, a family, and A "
            "and B jointly, used on A, B"
        ),
    )
    ap.add_argument(
        "--fit-cost",
        action="store_true",
        help="only: NFE-5 fits on A's and B's own models at smaller settings",
    )
    args = ap.parse_args()
    print(f"devices: {jax.devices()}, float32")
    if args.fit_cost:
        fit_cost(args.num_a, args.num_b)
        return
    if args.transfer:
        transfer(args.num_a, args.num_b)
        return
    if args.denoise_sweep:
        denoise_sweep(args.num_a, args.num_b)
        return
    out = []
    if args.only_problem in (None, "A"):
        r, f = run(
            "A",
            problem_a(),
            args.num_a,
            args.nfe,
            args.pilot,
            args.only,
            args.opt_nfe,
            args.opt,
        )
        out.append(table("A", r, f, args.nfe, True))
    if args.only_problem in (None, "B"):
        r, f = run(
            "B",
            problem_b(),
            args.num_b,
            args.nfe,
            args.pilot,
            args.only,
            args.opt_nfe,
            args.opt,
        )
        out.append(table("B", r, f, args.nfe, False))
    print("\n".join(out))


if __name__ == "__main__":
    main()
