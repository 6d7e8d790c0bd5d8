"""Time one scoreflow DSM training step against a hand-written JAX/optax step.

Both steps do the same work: draw a batch of 4096 rows from the data, draw times
uniformly on [t0, t1] and Gaussian noise, form x_t under VP, evaluate the eps-MSE of
the same equinox MLP, take an Adam step and update an EMA of the weights. The
scoreflow step is `sf.train.make_step(sf.dsm_loss(sf.VP(), prediction="eps"), ...)`;
the reference hand-codes VP's alpha(t), sigma(t) and the loss. Timings are
interleaved (A, B, A, B, ...) and the median per step is reported.

    python benchmarks/bench_train.py [--batch 4096] [--steps 20] [--repeats 15]
"""

import argparse
import statistics
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import optax

import scoreflow as sf


def hand_written_step(optimizer, batch_size, ema_decay, t0, t1, beta_min, beta_max):
    def alpha_sigma(t):
        int_beta = beta_min * t + 0.5 * (beta_max - beta_min) * t**2
        alpha = jnp.exp(-0.5 * int_beta)
        sigma = jnp.sqrt(-jnp.expm1(-int_beta))
        return alpha, sigma

    def loss_fn(model, x0, key):
        k_t, k_eps = jr.split(key)
        n = x0.shape[0]
        t = jr.uniform(k_t, (n,), x0.dtype, t0, t1)
        eps = jr.normal(k_eps, x0.shape, x0.dtype)
        a, s = alpha_sigma(t)
        xt = a[:, None] * x0 + s[:, None] * eps
        out = jax.vmap(model)(t, xt)
        return jnp.mean((out - eps) ** 2)

    @eqx.filter_jit
    def step(model, ema, opt_state, key, data):
        key, k_batch, k_loss = jr.split(key, 3)
        idx = jr.randint(k_batch, (batch_size,), 0, data.shape[0])
        value, grads = eqx.filter_value_and_grad(loss_fn)(model, data[idx], k_loss)
        params = eqx.filter(model, eqx.is_inexact_array)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        model = eqx.apply_updates(model, updates)
        ema = jax.tree_util.tree_map(
            lambda e, p: ema_decay * e + (1 - ema_decay) * p,
            eqx.filter(ema, eqx.is_inexact_array),
            eqx.filter(model, eqx.is_inexact_array),
        )
        ema = eqx.combine(ema, eqx.filter(model, eqx.is_inexact_array, inverse=True))
        return model, ema, opt_state, key, value

    return step


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()

    process = sf.VP()
    data = sf.toy.ring(jr.key(0), 65536) / 2.8
    net = sf.nets.MLP(2, width=256, depth=3, key=jr.key(1))
    opt = optax.adam(1e-3)
    decay = 0.999

    sf_step = sf.train.make_step(
        sf.dsm_loss(process, prediction="eps", weighting="sigma2"),
        opt,
        batch_size=args.batch,
        ema_decay=decay,
    )
    hand = hand_written_step(opt, args.batch, decay, process.t0, process.t1, 0.1, 20.0)

    state = sf.train.init_state(net, opt, jr.key(2))
    h = (net, net, opt.init(eqx.filter(net, eqx.is_inexact_array)), jr.key(2))

    def run_sf(state, k):
        for _ in range(k):
            state, v = sf_step(state, data)
        jax.block_until_ready(v)
        return state

    def run_hand(h, k):
        model, ema, o, key = h
        for _ in range(k):
            model, ema, o, key, v = hand(model, ema, o, key, data)
        jax.block_until_ready(v)
        return model, ema, o, key

    state = run_sf(state, 3)  # compile + warm up
    h = run_hand(h, 3)
    t_sf, t_hand = [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        state = run_sf(state, args.steps)
        t_sf.append((time.perf_counter() - t) / args.steps)
        t = time.perf_counter()
        h = run_hand(h, args.steps)
        t_hand.append((time.perf_counter() - t) / args.steps)
    a, b = statistics.median(t_sf), statistics.median(t_hand)
    print(f"device: {jax.devices()[0].device_kind}, batch {args.batch}, MLP 256x3")
    print(f"scoreflow step: {a * 1e3:.3f} ms (median of {args.repeats})")
    print(f"hand-written step: {b * 1e3:.3f} ms")
    print(f"ratio scoreflow / hand-written: {a / b:.3f} (target <= 1.05)")


if __name__ == "__main__":
    main()
