"""Adaptive sampling: the batch as one system vs one system per sample (issue 15).

`python benchmarks/bench_adaptive.py` (not a test; about a minute on a shared CPU).

flow_matching's `ODESolver.sample(method="dopri5", atol, rtol)` hands the whole batch
to torchdiffeq as one ODE with one step-size controller, whose error norm is the RMS
over every element of the batch. `sf.sample(..., stepsize_controller=...)` by
default solves each sample alone under `vmap` (`adaptive="per_sample"`), so a batch
runs until its slowest sample is done; `adaptive="batch"` is torchdiffeq's way. Both
rows use `sf.peers.flow_matching_ode("cond_ot", method="dopri5", atol=tol, rtol=tol)`
(diffrax's Dopri5 with torchdiffeq's step-size rule, `error_order=5`), an exact
Gaussian-mixture velocity model read through `sf.peers.flow_matching_velocity`, and
the same initial noise.

- problem A: 2-D ring, 8 Gaussians of std 0.3 at radius 4, weights ∝ 1..8;
- problem B: 32-D mixture of 10 full-covariance Gaussians (`bench_fewstep.problem_b`).

Reported: NFE (batch: the one count of batched model evaluations; per sample: the
maximum over samples, which is what the vmapped loop runs, and the mean), and the
Fréchet distance of the samples to the mixture's exact moments, beside the FD of
exact samples of the same size (the floor). The peers (flow_matching + torchdiffeq)
are run on the same noise only when torch, torchdiffeq and flow_matching are
installed.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from bench_fewstep import problem_a, problem_b
from bench_sampling import fd_truth

import scoreflow as sf


def mixture_velocity_torch(torch, gm):
    """flow_matching's CondOT marginal velocity of the mixture, in torch (their time u,
    data at u = 1): x_u = u x1 + (1 - u) z, so component k has mean u m_k and
    covariance S_k = u^2 C_k + (1 - u)^2 I, and v = sum_k r_k (E[x1 | x, k] -
    E[z | x, k]) with E[x1 | x, k] = m_k + u C_k S_k^-1 (x - u m_k) and
    E[z | x, k] = (1 - u) S_k^-1 (x - u m_k)."""
    w = torch.tensor(np.asarray(gm.weights), dtype=torch.float64)
    m = torch.tensor(np.asarray(gm.means), dtype=torch.float64)
    c = torch.tensor(np.asarray(gm.covs), dtype=torch.float64)
    eye = torch.eye(m.shape[-1], dtype=torch.float64)

    def vf(x, t):
        u = t.to(torch.float64)
        x = x.to(torch.float64)
        s = u**2 * c + (1 - u) ** 2 * eye  # (K, d, d)
        chol = torch.linalg.cholesky(s)
        d = x[:, None, :] - u * m[None]  # (n, K, d)
        sol = torch.cholesky_solve(d.permute(1, 2, 0), chol)  # (K, d, n)
        sol = sol.permute(2, 0, 1)  # (n, K, d) = S_k^-1 (x - u m_k)
        logdet = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
        logp = torch.log(w) - 0.5 * (d * sol).sum(-1) - 0.5 * logdet
        r = torch.softmax(logp, -1)  # (n, K)
        ex1 = m[None] + u * torch.einsum("kij,nkj->nki", c, sol)
        ez = (1 - u) * sol
        return (r[..., None] * (ex1 - ez)).sum(1).to(torch.float32)

    return vf


def run_peer(gm, z, tol):
    try:
        import torch
        from flow_matching.solver import ODESolver
    except ImportError:
        return None
    calls = [0]
    vf = mixture_velocity_torch(torch, gm)

    def counted(x, t):
        calls[0] += 1
        return vf(x, t)

    p = sf.RectifiedFlow()
    xs = ODESolver(velocity_model=counted).sample(
        x_init=torch.tensor(np.asarray(z)),
        step_size=None,
        method="dopri5",
        atol=tol,
        rtol=tol,
        time_grid=torch.tensor([1 - p.t1, 1 - p.t0]),
    )
    return xs.numpy(), calls[0]


def run(name, gm, num, tols, key=jr.key(0)):
    cfg0 = sf.peers.flow_matching_ode("cond_ot", method="dopri5")
    p = cfg0.process
    vel = gm.velocity(p)
    pred = sf.peers.flow_matching_velocity(lambda u, x: -vel(1.0 - u, x), "cond_ot")
    z = jr.normal(key, (num, gm.dim))  # flow_matching's x_init
    floor = [fd_truth(gm, gm.sample(jr.key(100 + i), num)) for i in range(5)]
    rows = []
    for tol in tols:
        for mode in ("per_sample", "batch"):
            cfg = sf.peers.flow_matching_ode(
                "cond_ot", method="dopri5", atol=tol, rtol=tol, adaptive=mode
            )
            t = time.perf_counter()
            xs, info = cfg.sample(
                key, pred, (gm.dim,), num=num, noise=z, return_info=True
            )
            xs = jax.block_until_ready(xs)
            wall = time.perf_counter() - t
            nfe = np.asarray(info["nfe"])
            rows.append(
                dict(
                    tol=tol,
                    mode=mode,
                    nfe_max=int(nfe.max()),
                    nfe_mean=float(nfe.mean()),
                    fd=fd_truth(gm, xs),
                    wall=wall,
                )
            )
            print(name, rows[-1], flush=True)
        peer = run_peer(gm, z, tol)
        if peer is None:
            rows.append(dict(tol=tol, mode="peer", missing=True))
        else:
            xs, calls = peer
            rows.append(
                dict(
                    tol=tol,
                    mode="peer",
                    nfe_max=calls,
                    nfe_mean=calls,
                    fd=fd_truth(gm, jnp.asarray(xs)),
                    wall=float("nan"),
                )
            )
    return rows, (float(np.mean(floor)), float(np.std(floor)))


def table(name, rows, floor, num):
    out = [
        f"**Problem {name}** ({num} samples; FD floor of exact samples "
        f"{floor[0]:.4f} ± {floor[1]:.4f})",
        "",
        "| rtol = atol | mode | NFE (max / mean over samples) | FD | wall s (incl. compile) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        if r.get("missing"):
            out.append(
                f"| {r['tol']:.0e} | flow_matching + torchdiffeq dopri5 | "
                "not installed | | |"
            )
            continue
        label = {
            "per_sample": '`adaptive="per_sample"` (default)',
            "batch": '`adaptive="batch"`',
            "peer": "flow_matching + torchdiffeq dopri5",
        }[r["mode"]]
        nfe = (
            f"{r['nfe_max']} / {r['nfe_mean']:.1f}"
            if r["mode"] == "per_sample"
            else f"{r['nfe_max']} (one count)"
        )
        out.append(
            f"| {r['tol']:.0e} | {label} | {nfe} | {r['fd']:.4f} | {r['wall']:.1f} |"
        )
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--num", type=int, default=2000)
    ap.add_argument("--tols", type=float, nargs="+", default=[1e-3, 1e-5])
    args = ap.parse_args()
    try:
        import flow_matching  # noqa: F401
        import torch  # noqa: F401
        import torchdiffeq  # noqa: F401

        peers = "installed"
    except ImportError:
        peers = "not installed"
    print(
        f"devices: {jax.devices()}; float32; torch/torchdiffeq/flow_matching: {peers}"
    )
    out = []
    for name, gm in (("A", problem_a()), ("B", problem_b())):
        rows, floor = run(name, gm, args.num, args.tols)
        out.append(table(name, rows, floor, args.num))
    print("\n\n".join(out))


if __name__ == "__main__":
    main()
