r"""Training helpers: one jitted, data-parallel step and a `fit` loop with EMA,
progress bar, checkpoints, exact resume and NaN detection.

**Data parallelism.** The step shards the batch over a 1-D
`jax.sharding.Mesh(jax.devices(), ("batch",))` with `NamedSharding(mesh, P("batch"))`
and keeps the parameters, optimiser state and EMA replicated (`P()`); XLA inserts
the gradient all-reduce. The result equals the single-device step up to float
reassociation (tested with 4 forced host devices).

**Multi-host.** Call `jax.distributed.initialize()` (arguments from the cluster
environment: coordinator address, number of processes, process id) before any
other JAX call, in every process; `jax.devices()` then lists the devices of all
hosts and the same mesh spans them. Every process must run the same `fit` with the
same `key`, `data` and arguments: the batch indices are drawn inside the step from
the replicated key, and `data` is placed replicated on every device (so it must fit
in one device's memory; stream larger data sets with your own loop around
`make_step`). Checkpoints should then be written by process 0 only
(`jax.process_index() == 0`), which `fit` does. Only the single-host path is
tested here.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ._loss import TIME_CONVENTION
from ._loss._common import check_data_scale

__all__ = [
    "CheckpointMismatchError",
    "TrainState",
    "TrainingDivergedError",
    "fit",
    "init_state",
    "load_checkpoint",
    "make_mesh",
    "make_step",
    "save_checkpoint",
]

_MAGIC = b"scoreflow-checkpoint-v1\n"


class TrainState(eqx.Module):
    """Everything a run needs to continue exactly: the model, its EMA, the optimiser
    state, the step count and the PRNG key (raw `uint32` key data)."""

    model: Any
    ema: Any
    opt_state: Any
    step: jax.Array
    key: jax.Array


class TrainingDivergedError(FloatingPointError):
    """The loss became NaN or infinite. `.state` is the last finite state (before
    the failing step), `.step` the failing step, `.checkpoint` the last good file."""

    def __init__(self, message, state=None, step=None, checkpoint=None):
        super().__init__(message)
        self.state, self.step, self.checkpoint = state, step, checkpoint


class CheckpointMismatchError(ValueError):
    """A checkpoint was written under another process, prediction or time convention."""


def _raw_key(key):
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return jr.key_data(key)
    return key


def init_state(model, optimizer: optax.GradientTransformation, key) -> TrainState:
    """A fresh `TrainState`: EMA = model, `optimizer.init` on its float arrays."""
    params = eqx.filter(model, eqx.is_inexact_array)
    return TrainState(
        model=model,
        ema=model,
        opt_state=optimizer.init(params),
        step=jnp.zeros((), jnp.int32),
        key=_raw_key(key),
    )


def make_mesh(devices=None) -> Mesh:
    """A 1-D mesh `("batch",)` over `devices` (default `jax.devices()`)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), ("batch",))


def _call_loss(loss, model, x0, key, cond):
    return loss(model, x0, key) if cond is None else loss(model, x0, key, cond=cond)


def make_step(
    loss: Callable,
    optimizer: optax.GradientTransformation,
    *,
    batch_size: int,
    ema_decay: float = 0.999,
    mesh: Mesh | None = None,
):
    r"""One training step `step(state, data, cond) -> (state, loss_value)`, jitted.

    The step splits `state.key` into the next key, a batch key (indices drawn with
    replacement from the `n` rows of `data`, and the same rows of `cond`) and a loss
    key; computes `loss(model, x0, key[, cond=...])` and its gradient; applies
    `optimizer`; updates the EMA $\bar\theta \leftarrow d\,\bar\theta + (1 - d)\theta$.

    **Arguments:** `loss` a callable `loss(model, x0, key)` (e.g. `sf.dsm_loss(...)`);
    `optimizer` an optax transformation; `batch_size`; `ema_decay` $d$; `mesh`: a
    1-D mesh (`make_mesh()`) to shard the batch over its devices, parameters
    replicated; `None` runs on the default device.

    **Raises:** `ValueError` if `batch_size` is not divisible by the mesh size.
    """
    if mesh is not None and batch_size % mesh.size:
        raise ValueError(
            f"`sf.train`: batch_size={batch_size} must be divisible by the number of "
            f"devices {mesh.size} to shard the batch."
        )
    batch_sharding = None if mesh is None else NamedSharding(mesh, P("batch"))

    @eqx.filter_jit
    def step(state: TrainState, data, cond=None):
        key = jr.wrap_key_data(state.key)
        key, k_batch, k_loss = jr.split(key, 3)
        n = jax.tree_util.tree_leaves(data)[0].shape[0]
        idx = jr.randint(k_batch, (batch_size,), 0, n)
        x0 = data[idx]
        c = None if cond is None else jax.tree_util.tree_map(lambda a: a[idx], cond)
        if batch_sharding is not None:
            x0 = jax.lax.with_sharding_constraint(x0, batch_sharding)
            if c is not None:
                c = jax.lax.with_sharding_constraint(c, batch_sharding)
        value, grads = eqx.filter_value_and_grad(
            lambda m: _call_loss(loss, m, x0, k_loss, c)
        )(state.model)
        params = eqx.filter(state.model, eqx.is_inexact_array)
        # optax mixes its int32 step count with float hyperparameters (e.g. Adam's
        # bias correction b1**count): run it under standard promotion whatever the
        # caller's setting.
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = optimizer.update(grads, state.opt_state, params)
        model = eqx.apply_updates(state.model, updates)
        new_params, static = eqx.partition(model, eqx.is_inexact_array)
        ema_params = eqx.filter(state.ema, eqx.is_inexact_array)
        ema_params = jax.tree_util.tree_map(
            lambda e, p: (ema_decay * e + (1 - ema_decay) * p).astype(p.dtype),
            ema_params,
            new_params,
        )
        ema = eqx.combine(ema_params, static)
        new = TrainState(model, ema, opt_state, state.step + 1, jr.key_data(key))
        return new, value

    return step


def replicate(tree, mesh: Mesh):
    """Place every array leaf of `tree` replicated on all devices of `mesh`."""
    sharding = NamedSharding(mesh, P())
    return jax.tree_util.tree_map(
        lambda a: jax.device_put(a, sharding) if isinstance(a, jax.Array) else a, tree
    )


# --------------------------------------------------------------------------- #
# Checkpoints
# --------------------------------------------------------------------------- #


def save_checkpoint(path, state: TrainState, metadata: dict | None = None) -> None:
    """Write `state` (model, EMA, optimiser state, step, key) and `metadata` (a
    JSON-able dict, e.g. `loss.metadata()`: process, prediction and time convention)
    to one file, atomically (a crash never leaves a half-written checkpoint)."""
    meta = dict(metadata or {})
    meta.setdefault("time_convention", TIME_CONVENTION)
    meta["step"] = int(state.step)
    buf = io.BytesIO()
    buf.write(_MAGIC)
    buf.write(json.dumps(meta, sort_keys=True).encode() + b"\n")
    eqx.tree_serialise_leaves(buf, state)
    path = os.fspath(path)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(buf.getvalue())
    os.replace(tmp, path)


def read_metadata(path) -> dict:
    """The metadata dict of a checkpoint file."""
    with open(path, "rb") as f:
        if f.readline() != _MAGIC:
            raise ValueError(f"{path!r} is not a scoreflow checkpoint.")
        return json.loads(f.readline())


def load_checkpoint(path, like: TrainState, *, expected: dict | None = None):
    r"""Read a checkpoint written by `save_checkpoint` into the structure of `like`
    (a `TrainState` built the same way, e.g. by `init_state`).

    **Arguments:** `path`; `like`; `expected`: metadata that must match (e.g.
    `loss.metadata()`); the keys `process`, `prediction`, `time_convention` and
    `loss` are compared where both sides have them.

    **Returns:** `(state, metadata)`.

    **Raises:** `CheckpointMismatchError` if the checkpoint's time convention is not
    scoreflow's ($t = 0$ data), or if it disagrees with `expected`.
    """
    with open(path, "rb") as f:
        if f.readline() != _MAGIC:
            raise ValueError(f"{path!r} is not a scoreflow checkpoint.")
        meta = json.loads(f.readline())
        if meta.get("time_convention") != TIME_CONVENTION:
            raise CheckpointMismatchError(
                f"checkpoint {path!r} uses the time convention "
                f"{meta.get('time_convention')!r}, but scoreflow's is "
                f"{TIME_CONVENTION!r}; convert the model (t -> 1 - t) before loading."
            )
        for k in ("process", "prediction", "time_convention", "loss"):
            if expected and k in expected and k in meta and expected[k] != meta[k]:
                raise CheckpointMismatchError(
                    f"checkpoint {path!r} was trained with {k}={meta[k]!r}, but this "
                    f"run has {k}={expected[k]!r}; refusing to load it. Use a matching "
                    "loss/process, or another checkpoint path."
                )
        state = eqx.tree_deserialise_leaves(f, like)
    return state, meta


# --------------------------------------------------------------------------- #
# fit
# --------------------------------------------------------------------------- #


@dataclasses.dataclass
class FitResult:
    """`state` (the final `TrainState`: `.model`, `.ema`, ...) and `losses`
    (numpy array, one loss per step run in this call)."""

    state: TrainState
    losses: np.ndarray

    @property
    def model(self):
        return self.state.model

    @property
    def ema(self):
        return self.state.ema


def fit(
    loss: Callable,
    model,
    data,
    *,
    key,
    steps: int,
    batch_size: int = 256,
    optimizer: optax.GradientTransformation | None = None,
    learning_rate: float | optax.Schedule = 1e-3,
    ema_decay: float = 0.999,
    cond=None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 1000,
    resume: bool = True,
    metadata: dict | None = None,
    shard: bool = True,
    progress: bool = True,
) -> FitResult:
    r"""Train `model` on `loss` for `steps` steps (in total, counting resumed ones).

    **Arguments:**

    - `loss`: `loss(model, x0, key[, cond=...]) -> scalar`, e.g. `sf.dsm_loss(...)`.
    - `model`: an equinox module (unbatched `model(t, x[, cond])`).
    - `data`: array `(N, *shape)`; batches of `batch_size` rows are drawn with
      replacement inside the jitted step. `cond`: labels with leading axis `N`.
    - `key`: PRNG key (the whole run, including data order, is a function of it).
    - `optimizer`: an optax transformation; default
      `chain(clip_by_global_norm(1), adam(learning_rate))` (`learning_rate` may be
      an optax schedule).
    - `ema_decay`: EMA of the weights, returned as `result.ema`. The EMA starts
      from the initial weights with no bias correction, so after `n` steps a
      fraction `ema_decay**n` of it is still the untrained network: for short runs
      pick `ema_decay` well below `1 - 1/steps` (e.g. 0.995 for ~1500 steps).
    - `checkpoint`, `checkpoint_every`: a file path; the full `TrainState` plus
      metadata (from `loss.metadata()` where the loss has it, updated by
      `metadata`) is written every `checkpoint_every` steps and at the end.
    - `resume`: if the checkpoint file exists, continue from it (refusing a file
      from another process/prediction/time convention). An interrupted and resumed
      run is bit-identical to an uninterrupted one.
    - `shard`: shard the batch over all `jax.devices()` (see the module docstring);
      a no-op on one device.
    - `progress`: a tqdm bar with the running loss.

    **Returns:** a `FitResult` (`.state`, `.model`, `.ema`, `.losses`).

    **Raises:** `TrainingDivergedError` when the loss is NaN/inf: training stops at
    once, the checkpoint file keeps the last good state, and the error carries the
    last finite state.
    """
    if optimizer is None:
        optimizer = optax.chain(
            optax.clip_by_global_norm(1.0), optax.adam(learning_rate)
        )
    meta = dict(loss.metadata()) if hasattr(loss, "metadata") else {}
    meta.update(metadata or {})
    data = jnp.asarray(data)
    process = getattr(loss, "process", None)
    if process is not None and getattr(loss, "check_scale", False):
        check_data_scale(process, data)

    mesh = make_mesh() if (shard and len(jax.devices()) > 1) else None
    step_fn = make_step(
        loss, optimizer, batch_size=batch_size, ema_decay=ema_decay, mesh=mesh
    )
    state = init_state(model, optimizer, key)
    if checkpoint is not None and resume and os.path.exists(checkpoint):
        state, _ = load_checkpoint(checkpoint, state, expected=meta)
    if mesh is not None:
        state, data, cond = replicate((state, data, cond), mesh)
    is_main = jax.process_index() == 0

    start = int(state.step)
    losses = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, initial=start, desc="fit", dynamic_ncols=True)
    running = math.nan
    last_good = (
        None if checkpoint is None or not os.path.exists(checkpoint) else checkpoint
    )
    try:
        for i in range(start, steps):
            new_state, value = step_fn(state, data, cond)
            value = float(value)
            if not math.isfinite(value):
                where = (
                    f"The last good checkpoint is {os.fspath(last_good)!r} (step "
                    f"{read_metadata(last_good)['step']})."
                    if last_good
                    else "No checkpoint was written."
                )
                raise TrainingDivergedError(
                    f"`sf.train.fit`: the loss is {value} at step {i}; training "
                    f"stopped. {where} The last finite state (step {i}) is "
                    "`error.state`. Try a smaller learning rate, gradient clipping, "
                    "or check the data scale and the time range.",
                    state=state,
                    step=i,
                    checkpoint=last_good,
                )
            state = new_state
            losses.append(value)
            running = value if math.isnan(running) else 0.98 * running + 0.02 * value
            if bar is not None:
                bar.update(1)
                if (i + 1) % 10 == 0 or i + 1 == steps:
                    bar.set_postfix(loss=f"{running:.4g}")
            if checkpoint is not None and (
                (i + 1) % checkpoint_every == 0 or i + 1 == steps
            ):
                if is_main:
                    save_checkpoint(checkpoint, state, meta)
                last_good = checkpoint
    finally:
        if bar is not None:
            bar.close()
    return FitResult(state, np.asarray(losses))
