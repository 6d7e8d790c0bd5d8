"""The first minute of a new user (issue 14): import, build a process, build a net,
build a grid, draw a first sample, each in a fresh Python process.

`python benchmarks/bench_first_minute.py [--repeats 3]` prints a markdown table of
the median wall-clock seconds over `--repeats` fresh processes (each row its own
`python -c ...`). Every row but the import rows imports scoreflow before its clock
starts; the "fresh process to ..." rows time from launching the process to the
samples being ready (interpreter start, imports, process, predictor, sampling; not
the interpreter's exit).

Cold rows run with an empty on-disk derivation cache (`SCOREFLOW_CACHE_DIR` set to a
new temporary directory: what a new user has; the built-ins' derivations ship with
the package). "warm (2nd process)" rows first run the same declaration once in an
untimed process that fills that cache. "warm (same process)" times a second
construction after a first one.

Children run with bytecode caching on (as an installed package: `__pycache__`
written on a first, untimed import) and `JAX_PLATFORMS=cpu`. The last row repeats the
first-sample row with JAX's own persistent compilation cache warm (a user option,
`jax.config.update("jax_compilation_cache_dir", ...)`; scoreflow does not set it).
`--root DIR` times another checkout (e.g. the commit before a change). The two
"floor" rows time what no change to scoreflow can remove: importing its mandated
dependencies, and the same first samples written by hand with JAX alone.

Targets (issue 14, idle 2-core machine): built-ins and a warm custom process
<= 0.1 s; a cold closed-form schedule <= 1 s; a schedule sympy cannot integrate
<= 3 s to its numeric fallback; `import scoreflow` <= `import jax` + 0.5 s; fresh
process to the first sample <= 3 s.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CUSTOM_SDE = "sf.SDE(-(1 + sf.t) * sf.x, sympy.sqrt(2 + 2 * sf.t))"
CUSTOM_INTERPOLANT = "sf.Interpolant(alpha=1 - sf.t**2, sigma=sf.t)"
NO_CLOSED_FORM = "sf.SDE(-sympy.sqrt(1 + sf.t**3) * sf.x, 1 + sf.t)"
PREDICTOR = """
gm = sf.toy.GaussianMixture(
    jnp.array([0.3, 0.7]), jnp.array([[-2.0, 0.0], [2.0, 0.0]]),
    jnp.stack([jnp.eye(2), 0.5 * jnp.eye(2)]))
p = sf.VP()
pred = sf.Predictor(gm.eps(p), p, prediction="eps")
"""
IMPORTS = (
    "import jax, jax.numpy as jnp, jax.random as jr, sympy\nimport scoreflow as sf"
)

# The same two-Gaussian model and 5 Midpoint steps (10 NFE) on VP's straight path,
# written by hand in JAX alone: what a fresh process needs with no scoreflow, no
# diffrax and no sympy (the floor under the "fresh process" rows).
HAND_WRITTEN = """
import jax, jax.numpy as jnp, jax.random as jr
w = jnp.array([0.3, 0.7]); mu = jnp.array([[-2.0, 0.0], [2.0, 0.0]])
var = jnp.array([1.0, 0.5])
def velocity(u, y):  # straight path: y = (1 - u) x0 + u eps, exact posterior mean
    a, s = 1 - u, u
    v = a**2 * var + s**2
    logp = jnp.log(w) - jnp.sum((y - a * mu) ** 2, -1) / (2 * v) - jnp.log(v)
    r = jax.nn.softmax(logp)
    x0 = jnp.sum(r[:, None] * (mu + (a * var / v)[:, None] * (y - a * mu)), 0)
    return (y - x0) / u
@jax.jit
def sample(key):
    def one(k):
        def step(y, uu):
            h = uu[1] - uu[0]
            ym = y + 0.5 * h * velocity(uu[0], y)
            return y + h * velocity(uu[0] + 0.5 * h, ym), None
        us = jnp.linspace(0.9934, 1e-3, 6)
        return jax.lax.scan(step, jr.normal(k, (2,)), (us[:-1], us[1:]))[0]
    return jax.vmap(one)(jax.vmap(lambda i: jr.fold_in(key, i))(jnp.arange(16)))
xs = jax.block_until_ready(sample(jr.key(0)))
"""

# (label, setup (untimed), body (timed), whole process?, prefill the disk cache?)
ROWS = [
    ("`import jax`", "", "import jax", False, False),
    (
        "floor: `import equinox, diffrax, sympy, sympy2jax, optax` (after jax)",
        "import jax",
        "import equinox, diffrax, sympy, sympy2jax, optax",
        False,
        False,
    ),
    ("`import scoreflow` (after jax)", "import jax", "import scoreflow", False, False),
    ("`sf.VP()` cold", IMPORTS, "p = sf.VP()", False, False),
    (
        "`sf.VP()` warm (same process)",
        IMPORTS + "\nsf.VP()",
        "p = sf.VP()",
        False,
        False,
    ),
    ("`sf.CosineVP()` cold", IMPORTS, "p = sf.CosineVP()", False, False),
    ("`sf.EDM()` cold", IMPORTS, "p = sf.EDM()", False, False),
    ("`sf.RectifiedFlow()` cold", IMPORTS, "p = sf.RectifiedFlow()", False, False),
    (f"custom `{CUSTOM_SDE}` cold", IMPORTS, f"p = {CUSTOM_SDE}", False, False),
    (
        f"custom `{CUSTOM_SDE}` warm (2nd process)",
        IMPORTS,
        f"p = {CUSTOM_SDE}",
        False,
        True,
    ),
    (
        f"custom `{CUSTOM_INTERPOLANT}` cold",
        IMPORTS,
        f"p = {CUSTOM_INTERPOLANT}",
        False,
        False,
    ),
    (
        f"custom `{CUSTOM_INTERPOLANT}` warm (2nd process)",
        IMPORTS,
        f"p = {CUSTOM_INTERPOLANT}",
        False,
        True,
    ),
    (
        f"no closed form `{NO_CLOSED_FORM}` cold",
        IMPORTS,
        f"p = {NO_CLOSED_FORM}",
        False,
        False,
    ),
    (
        "`sf.nets.MLP(2, key=jr.key(0))`",
        IMPORTS,
        "net = sf.nets.MLP(2, key=jr.key(0))",
        False,
        False,
    ),
    (
        "first `sf.log_snr_grid(sf.VP(), 20)`",
        IMPORTS + "\np = sf.VP()",
        "g = jax.block_until_ready(sf.log_snr_grid(p, 20))",
        False,
        False,
    ),
    (
        "fresh process to the first default sample (VP, 10 steps: Midpoint on the straight path)",
        "",
        IMPORTS
        + PREDICTOR
        + "xs = jax.block_until_ready(sf.sample(jr.key(0), p, pred, (2,), num=16, steps=10))",
        True,
        False,
    ),
    (
        "fresh process to the first `sf.DPMSolverPP2M` sample (VP, log-SNR grid)",
        "",
        IMPORTS
        + PREDICTOR
        + "xs = jax.block_until_ready(sf.sample(jr.key(0), p, pred, (2,), num=16, "
        "solver=sf.DPMSolverPP2M(), time_grid=sf.log_snr_grid(p, 10)))",
        True,
        False,
    ),
    (
        "floor: fresh process to the same samples, hand-written in JAX alone",
        "",
        HAND_WRITTEN,
        True,
        False,
    ),
    (
        "fresh process to the first default sample, JAX compilation cache warm",
        "",
        IMPORTS
        + PREDICTOR
        + "xs = jax.block_until_ready(sf.sample(jr.key(0), p, pred, (2,), num=16, steps=10))",
        True,
        "jax",
    ),
]


def child_source(setup, body):
    return "\n".join(
        [
            "import time",
            setup,
            "_t = time.perf_counter()",
            body,
            "print('SECONDS', time.perf_counter() - _t)",
            "print('EPOCH', time.time())",
        ]
    )


def child_env(root):
    env = dict(os.environ)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.setdefault("JAX_PLATFORMS", "cpu")
    return env


def run_once(root, setup, body, whole, prefill):
    env = child_env(root)
    with tempfile.TemporaryDirectory() as cache:
        env["SCOREFLOW_CACHE_DIR"] = cache
        if prefill == "jax":
            env["JAX_COMPILATION_CACHE_DIR"] = os.path.join(cache, "jax")
            env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
        if prefill:
            subprocess.run(
                [sys.executable, "-c", setup + "\n" + body],
                env=env,
                check=True,
                cwd=root,
            )
        src = child_source(setup, body)
        start = time.time()
        out = subprocess.run(
            [sys.executable, "-c", src],
            env=env,
            check=True,
            capture_output=True,
            text=True,
            cwd=root,  # `python -c` puts the working directory first on sys.path
        )
    lines = out.stdout.splitlines()
    if whole:  # from launching the process to the result (not to its exit)
        end = [ln for ln in lines if ln.startswith("EPOCH")][-1]
        return float(end.split()[1]) - start
    line = [ln for ln in lines if ln.startswith("SECONDS")][-1]
    return float(line.split()[1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", default="", help="run rows whose label has this")
    parser.add_argument("--root", default=ROOT, help="the checkout to time")
    args = parser.parse_args()
    # bytecode written once, untimed, as for an installed package
    subprocess.run(
        [sys.executable, "-c", "import scoreflow"],
        env=child_env(args.root),
        check=True,
        cwd=args.root,
    )
    with open("/proc/loadavg") as fh:
        load_before = fh.read().split()[:3]
    print(
        f"{args.root}: python {sys.version.split()[0]}, load average before: "
        f"{load_before}"
    )
    print()
    print("| step | median s | runs |")
    print("|---|---:|---|")
    for label, setup, body, whole, prefill in ROWS:
        if args.only and args.only not in label:
            continue
        runs = [
            run_once(args.root, textwrap.dedent(setup), body, whole, prefill)
            for _ in range(args.repeats)
        ]
        cells = ", ".join(f"{r:.2f}" for r in runs)
        print(f"| {label} | {statistics.median(runs):.2f} | {cells} |", flush=True)
    with open("/proc/loadavg") as fh:
        print(f"\nload average after: {fh.read().split()[:3]}")


if __name__ == "__main__":
    main()
