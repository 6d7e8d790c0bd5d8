"""Scaling benchmarks: training throughput and peak memory for the three data paths
of `sf.train.fit` at equal batch size, and the peak memory of `sf.sample` in one
call vs in chunks (`sf.chunked`).

Every configuration runs in its own subprocess, so its peak resident set size
(`ru_maxrss`, including the ~0.3-0.5 GiB of an imported jax + scoreflow, printed as
"baseline") is its own.

Training: a 2-D ring data set of `--rows` rows, `sf.nets.MLP(2, width=128,
depth=2)`, `sf.cfm_loss(sf.RectifiedFlow())`, batch `--batch`. The three paths
run in one process, each `fit` call `--block` steps, in `--repeats` rounds with the
order rotated every round (a second `fit` with the same loss and optimiser reuses
the compiled step, so every timed call is steady-state training plus `fit`'s own
per-call cost). Steps/s is `block / wall time` of one call; the ratio to memory is
the median over rounds of the ratio within a round (paired, so the machine's slow
drift cancels); "CPU ms/step" is the process CPU time per step (all threads; less
sensitive to other jobs on a shared machine), its ratio memory / path. Paths: `memory` (the array, rows drawn
inside the jitted step), `stream` (a Python generator of NumPy batches, drawn
with NumPy), `perhost` (`sf.train.ProcessLocal` of the same generator; one process).

Sampling: an untrained `sf.nets.MLP(2, width=32, depth=1)` velocity model, Euler,
`--sample-steps` steps, `num` 2-D samples in one `sf.sample` call or in chunks of
`--chunk`.

    python benchmarks/bench_scale.py [--rows 65536] [--batch 1024] [--block 300]
        [--repeats 9] [--nums 10000,100000,1000000] [--chunk 50000]
"""

import argparse
import json
import os
import subprocess
import sys
import time

TRAIN = """
import json, resource, statistics, sys, time
import jax, jax.random as jr, numpy as np
import scoreflow as sf
mode, rows, batch, block, repeats = sys.argv[1], *map(int, sys.argv[2:6])
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
data = np.asarray(sf.toy.ring(jr.key(0), rows) / 2.8, np.float32)
net = sf.nets.MLP(2, width=128, depth=2, key=jr.key(1))
loss = sf.cfm_loss(sf.RectifiedFlow())

def stream():
    rng = np.random.default_rng(0)
    while True:
        yield data[rng.integers(0, rows, batch)]

def source(path):
    if path == "memory":
        return data
    if path == "stream":
        return stream()
    return sf.train.ProcessLocal(stream())

def run(path, n):
    t, c = time.perf_counter(), time.process_time()
    r = sf.train.fit(loss, net, source(path), key=jr.key(2), steps=n,
                     batch_size=batch, progress=False)
    jax.block_until_ready(r.state.model)
    return time.perf_counter() - t, time.process_time() - c

paths = ("memory", "stream", "perhost") if mode == "time" else (mode,)
for p in paths:
    run(p, 2)  # compiles the step (reused by every later `fit` of this path)
rates = {p: [] for p in paths}
cpu = {p: [] for p in paths}
for r in range(repeats):  # interleaved, the order rotated every round
    order = paths[r % len(paths):] + paths[:r % len(paths)]
    for p in order:
        w, c = run(p, block)
        rates[p].append(block / w)
        cpu[p].append(c / block * 1e3)
ratio = {p: statistics.median(a / m for a, m in zip(rates[p], rates["memory"]))
         for p in paths} if "memory" in paths else {}
cpu_ratio = {p: statistics.median(m / a for a, m in zip(cpu[p], cpu["memory"]))
             for p in paths} if "memory" in paths else {}
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps(dict(rates={p: statistics.median(v) for p, v in rates.items()},
                      cpu_ms={p: statistics.median(v) for p, v in cpu.items()},
                      ratio=ratio, cpu_ratio=cpu_ratio,
                      peak_mib=peak / 1024, baseline_mib=base / 1024)))
"""

SAMPLE = """
import json, resource, sys, time
import jax, jax.random as jr, numpy as np
import scoreflow as sf
from scoreflow._chunk import chunked
num, chunk, steps = map(int, sys.argv[1:4])
p = sf.RectifiedFlow()
pred = sf.Predictor(sf.nets.MLP(2, width=32, depth=1, key=jr.key(1)), p,
                    prediction="velocity")
import diffrax
kw = dict(steps=steps, solver=diffrax.Euler())
sf.sample(jr.key(9), p, pred, (2,), num=8, **kw)  # imports, helpers
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
if chunk == 0:
    xs = np.asarray(sf.sample(jr.key(0), p, pred, (2,), num=num, **kw))
else:
    xs = chunked(lambda idx, keys: sf.sample(keys, p, pred, (2,), num=len(idx), **kw),
                 num, chunk, key=jr.key(0))
wall = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps(dict(num=num, chunk=chunk, wall_s=wall, peak_mib=peak / 1024,
                      baseline_mib=base / 1024, checksum=float(np.sum(xs[:1000])))))
"""


def _run(script, *args):
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run(
        [sys.executable, "-c", script, *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=65536)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--block", type=int, default=300)
    ap.add_argument("--nums", default="10000,100000,1000000")
    ap.add_argument("--chunk", type=int, default=50000)
    ap.add_argument("--sample-steps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--skip-train", action="store_true")
    args = ap.parse_args()

    if not args.skip_train:
        print(
            f"training: {args.rows} rows, batch {args.batch}, MLP 128x2, steps/s "
            f"in fit calls of {args.block} steps, median of {args.repeats} "
            "interleaved rounds; peak RSS of one path per process"
        )
        a = (args.rows, args.batch, args.block)
        timed = _run(TRAIN, "time", *a, args.repeats)
        rates, cpu = timed["rates"], timed["cpu_ms"]
        ratio, cpu_ratio = timed["ratio"], timed["cpu_ratio"]
        print(
            "| data path | steps/s | ratio to memory | CPU ms/step | ratio | "
            "peak RSS MiB | baseline MiB |"
        )
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for path in ("memory", "stream", "perhost"):
            r = _run(TRAIN, path, *a, 1)
            print(
                f"| {path} | {rates[path]:.1f} | {ratio[path]:.3f} "
                f"| {cpu[path]:.2f} | {cpu_ratio[path]:.3f} "
                f"| {r['peak_mib']:.0f} | {r['baseline_mib']:.0f} |",
                flush=True,
            )
    if not args.nums:
        return
    print(f"\nsampling: 2-D, Euler {args.sample_steps} steps, MLP 32x1")
    print(
        "| num | one call: peak RSS MiB | s | chunks of "
        f"{args.chunk}: peak RSS MiB | s | time ratio chunked/one |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for num in map(int, args.nums.split(",")):
        t = time.perf_counter()
        one = _run(SAMPLE, num, 0, args.sample_steps)
        ch = _run(SAMPLE, num, min(args.chunk, num), args.sample_steps)
        assert one["checksum"] == ch["checksum"], (one, ch)
        print(
            f"| {num:.0e} | {one['peak_mib']:.0f} | {one['wall_s']:.2f} | "
            f"{ch['peak_mib']:.0f} | {ch['wall_s']:.2f} | "
            f"{ch['wall_s'] / one['wall_s']:.2f} |",
            flush=True,
        )
        del t
    print(f"(baseline RSS after imports and a warm-up: {one['baseline_mib']:.0f} MiB)")


if __name__ == "__main__":
    main()
