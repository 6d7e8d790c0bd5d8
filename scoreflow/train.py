r"""Training helpers: one jitted, data-parallel step and a `fit` loop with EMA,
progress bar, checkpoints with a checksum, exact resume, divergence detection, and
data from memory, from any iterable of batches, or from one shard per host.

**What is trained.** Only the network's floating-point arrays: arrays inside a
process (`sf.AbstractProcess`) or a time convention (`sf.TimeConvention`, e.g.
`sf.DDPMTimesteps(...).wrap_model(net)`) stay fixed. A learned schedule is trained
by wrapping it in `sf.ScheduledModel`, whose `params` are leaves of the model. Pass
`trainable=` (an equinox filter spec) to choose otherwise.

**Data parallelism.** The step runs on a 1-D `jax.sharding.Mesh(jax.devices(),
("batch",))`: the batch is sharded with `NamedSharding(mesh, P("batch"))`, the
parameters, optimiser state and EMA are replicated (`P()`), and XLA inserts the
gradient all-reduce. Data in memory is sharded by rows over the same mesh (each
device holds `1/D` of it); the rows of a batch are gathered from their owners with
one reduce-scatter, so the batch equals `data[idx]` exactly. The result equals the
single-device step up to float reassociation of the gradient sum (tested with 4
forced host devices and with 2 processes x 2 devices).

**Multi-host.** Call `jax.distributed.initialize()` (coordinator address, number of
processes, process id: from the cluster environment) before any other JAX call, in
every process, and run the same `fit` with the same `key` and arguments everywhere;
`jax.devices()` then lists the devices of all hosts and the mesh spans them. Data
may be the same array on every host (each host keeps its devices' rows), an
iterable yielding the same global batches on every host, or
`ProcessLocal(source)`: each host yields only its own rows of every global batch,
and the global batch is assembled with `jax.make_array_from_process_local_data`.
Checkpoints are written by process 0 only (on a file system all hosts see) and
read by every process on resume. See `docs/scaling.md`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import itertools
import json
import math
import os
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

if TYPE_CHECKING:  # imported where used: optax costs 50 ms at `import scoreflow`
    import optax

from ._loss import TIME_CONVENTION
from ._loss._common import check_data_scale
from ._process import AbstractProcess
from ._time import TimeConvention

__all__ = [
    "CheckpointCorruptError",
    "CheckpointMismatchError",
    "ProcessLocal",
    "TrainState",
    "TrainingDivergedError",
    "default_trainable",
    "fit",
    "init_state",
    "load_checkpoint",
    "make_batch_step",
    "make_mesh",
    "make_step",
    "read_metadata",
    "replicate",
    "save_checkpoint",
    "shard_rows",
]

_MAGIC_V1 = b"scoreflow-checkpoint-v1\n"
_MAGIC = b"scoreflow-checkpoint-v2\n"


class TrainState(eqx.Module):
    """Everything a run needs to continue exactly: the model, its EMA, the optimiser
    state, the step count and the PRNG key (raw `uint32` key data)."""

    model: Any
    ema: Any
    opt_state: Any
    step: jax.Array
    key: jax.Array


class TrainingDivergedError(FloatingPointError):
    """The loss became NaN or infinite, or grew past `divergence` times its first
    value. `.state` is the last good state (before the failing step), `.step` the
    failing step, `.checkpoint` the last good file."""

    def __init__(self, message, state=None, step=None, checkpoint=None):
        super().__init__(message)
        self.state, self.step, self.checkpoint = state, step, checkpoint


class CheckpointMismatchError(ValueError):
    """A checkpoint was written under another process, prediction or time convention."""


class CheckpointCorruptError(ValueError):
    """A checkpoint file is truncated or its bytes changed since it was written (its
    SHA-256 checksum does not match). `.previous` is the previous checkpoint kept
    next to it (`path + ".prev"`) when that one is intact, else `None`."""

    def __init__(self, message, previous=None):
        super().__init__(message)
        self.previous = previous


def _raw_key(key):
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return jr.key_data(key)
    return key


# --------------------------------------------------------------------------- #
# What is trained
# --------------------------------------------------------------------------- #


def _is_fixed_node(x):
    return isinstance(x, (AbstractProcess, TimeConvention))


def default_trainable(model):
    """The filter spec `fit` trains by default: `True` for every floating-point
    array of `model` except those inside a process (`sf.AbstractProcess`) or a time
    convention (`sf.TimeConvention`), which stay fixed. `sf.ScheduledModel` keeps
    its schedule's `params` as its own leaves, so they are trained.

    **Returns:** a pytree of bools with the structure of `model` (usable with
    `eqx.partition` / `eqx.filter`).
    """

    def spec(node):
        if _is_fixed_node(node):
            return jax.tree_util.tree_map(lambda _: False, node)
        return eqx.is_inexact_array(node)

    return jax.tree_util.tree_map(spec, model, is_leaf=_is_fixed_node)


def _spec(model, trainable):
    return default_trainable(model) if trainable is None else trainable


def init_state(
    model, optimizer: optax.GradientTransformation, key, *, trainable=None
) -> TrainState:
    """A fresh `TrainState`: EMA = model, `optimizer.init` on the trainable arrays
    (`trainable`: an equinox filter spec, default `default_trainable(model)`)."""
    params = eqx.filter(model, _spec(model, trainable))
    return TrainState(
        model=model,
        ema=model,
        opt_state=optimizer.init(params),
        step=jnp.zeros((), jnp.int32),
        key=_raw_key(key),
    )


def make_mesh(devices=None) -> Mesh:
    """A 1-D mesh `("batch",)` over `devices` (default `jax.devices()`: all devices
    of all processes)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), ("batch",))


def _call_loss(loss, model, x0, key, cond):
    return loss(model, x0, key) if cond is None else loss(model, x0, key, cond=cond)


def _update(loss, optimizer, ema_decay, trainable, state, x0, c, key, k_loss):
    """Loss, gradient with respect to the trainable arrays only, optimiser and EMA."""
    spec = _spec(state.model, trainable)
    params, static = eqx.partition(state.model, spec)
    value, grads = eqx.filter_value_and_grad(
        lambda p: _call_loss(loss, eqx.combine(p, static), x0, k_loss, c)
    )(params)
    # optax mixes its int32 step count with float hyperparameters (e.g. Adam's bias
    # correction b1**count): run it under standard promotion whatever the caller's
    # setting.
    with jax.numpy_dtype_promotion("standard"):
        updates, opt_state = optimizer.update(grads, state.opt_state, params)
    params = eqx.apply_updates(params, updates)
    ema_params = eqx.filter(state.ema, spec)
    ema_params = jax.tree_util.tree_map(
        lambda e, p: (ema_decay * e + (1 - ema_decay) * p).astype(p.dtype),
        ema_params,
        params,
    )
    model = eqx.combine(params, static)
    ema = eqx.combine(ema_params, eqx.filter(state.ema, spec, inverse=True))
    new = TrainState(model, ema, opt_state, state.step + 1, jr.key_data(key))
    return new, value


def _check_batch_size(batch_size, mesh, call="sf.train"):
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
        raise TypeError(
            f"`{call}(batch_size=...)` must be a Python int >= 1, got "
            f"batch_size={batch_size!r}."
        )
    if batch_size < 1:
        raise ValueError(
            f"`{call}(batch_size=...)` must be >= 1 (the number of rows per step), got "
            f"batch_size={batch_size}."
        )
    if mesh is not None and batch_size % mesh.size:
        raise ValueError(
            f"`{call}`: batch_size={batch_size} must be divisible by the number of "
            f"devices {mesh.size} to shard the batch; use a multiple of {mesh.size} "
            "or `shard=False`."
        )


def _gather_rows(mesh, rows, idx):
    """`rows[idx]` for `rows` sharded by rows over `mesh` and `idx` replicated; the
    result is sharded over the batch. Each device picks the rows it owns (zeros
    elsewhere) and one reduce-scatter sums them: exact, as every row has one owner."""

    def local(block, idx):
        m = block.shape[0]
        lo = jax.lax.axis_index("batch") * m
        j = idx - lo
        mine = (j >= 0) & (j < m)
        got = block[jnp.clip(j, 0, m - 1)]
        got = jnp.where(mine.reshape((-1,) + (1,) * (got.ndim - 1)), got, 0)
        return jax.lax.psum_scatter(got, "batch", scatter_dimension=0, tiled=True)

    def one(leaf):
        return jax.shard_map(
            local, mesh=mesh, in_specs=(P("batch"), P()), out_specs=P("batch")
        )(leaf, idx)

    return jax.tree_util.tree_map(one, rows)


def make_step(
    loss: Callable,
    optimizer: optax.GradientTransformation,
    *,
    batch_size: int,
    ema_decay: float = 0.999,
    mesh: Mesh | None = None,
    num_rows: int | None = None,
    trainable=None,
):
    r"""One training step on data in memory, `step(state, data, cond) -> (state,
    loss_value)`, jitted.

    The step splits `state.key` into the next key, a batch key (indices drawn with
    replacement from the `n` rows of `data`, and the same rows of `cond`) and a loss
    key; computes `loss(model, x0, key[, cond=...])` and its gradient with respect to
    the trainable arrays; applies `optimizer`; updates their EMA
    $\bar\theta \leftarrow d\,\bar\theta + (1 - d)\theta$.

    **Arguments:** `loss` a callable `loss(model, x0, key)` (e.g. `sf.dsm_loss(...)`);
    `optimizer` an optax transformation; `batch_size`; `ema_decay` $d$; `mesh`: a
    1-D mesh (`make_mesh()`) to shard the batch over its devices, parameters
    replicated (`data` may then be replicated or sharded by rows over the mesh);
    `None` runs on the default device; `num_rows`: draw indices from the first
    `num_rows` rows only (the rest is padding, e.g. to make the rows divisible by
    the mesh); `trainable`: equinox filter spec (default `default_trainable`).

    **Raises:** `ValueError` if `batch_size` is not >= 1 and divisible by the mesh
    size.
    """
    _check_batch_size(batch_size, mesh, "sf.train.make_step")
    config = (loss, optimizer, ema_decay, trainable, batch_size, mesh, num_rows)
    return _Step(_memory_step, config)


# The steps are module-level jitted functions of (config, state, batch): `loss` and
# `optimizer` are arguments (their arrays traced, the rest static and hashed), so a
# second `make_step`/`fit` with the same loss and optimiser reuses the compiled step.


class _Step(eqx.Module):
    """`step(state, batch, cond=None)`, with `.lower(...)` as a jitted function."""

    fn: Callable = eqx.field(static=True)
    config: tuple

    def __call__(self, state, batch, cond=None):
        return self.fn(self.config, state, batch, cond)

    def lower(self, state, batch, cond=None):
        return self.fn.lower(self.config, state, batch, cond)


@eqx.filter_jit
def _memory_step(config, state: TrainState, data, cond):
    loss, optimizer, ema_decay, trainable, batch_size, mesh, num_rows = config
    key = jr.wrap_key_data(state.key)
    key, k_batch, k_loss = jr.split(key, 3)
    rows = jax.tree_util.tree_leaves(data)[0].shape[0]
    n = rows if num_rows is None else num_rows
    idx = jr.randint(k_batch, (batch_size,), 0, n)
    if mesh is not None and rows % mesh.size == 0:
        x0, c = _gather_rows(mesh, (data, cond), idx)
    else:
        x0 = jax.tree_util.tree_map(lambda a: a[idx], data)
        c = None if cond is None else jax.tree_util.tree_map(lambda a: a[idx], cond)
        if mesh is not None:
            batch_sharding = NamedSharding(mesh, P("batch"))
            x0 = jax.lax.with_sharding_constraint(x0, batch_sharding)
            if c is not None:
                c = jax.lax.with_sharding_constraint(c, batch_sharding)
    return _update(loss, optimizer, ema_decay, trainable, state, x0, c, key, k_loss)


@eqx.filter_jit
def _batch_step(config, state: TrainState, x0, cond):
    loss, optimizer, ema_decay, trainable = config
    key = jr.wrap_key_data(state.key)
    key, _, k_loss = jr.split(key, 3)
    return _update(loss, optimizer, ema_decay, trainable, state, x0, cond, key, k_loss)


def make_batch_step(
    loss: Callable,
    optimizer: optax.GradientTransformation,
    *,
    ema_decay: float = 0.999,
    trainable=None,
):
    r"""One training step on a given batch, `step(state, x0, cond) -> (state,
    loss_value)`, jitted: what `make_step` does after drawing its rows. The PRNG key
    is split as in `make_step` (the batch key is unused), so streaming the rows
    `make_step` would draw reproduces its run bit for bit. Shard `x0` over a mesh
    (`NamedSharding(mesh, P("batch"))`) and replicate `state` for data parallelism.
    """

    return _Step(_batch_step, (loss, optimizer, ema_decay, trainable))


def replicate(tree, mesh: Mesh):
    """Place every array leaf of `tree` replicated on all devices of `mesh` (every
    process must pass the same values)."""
    sharding = NamedSharding(mesh, P())
    return jax.tree_util.tree_map(
        lambda a: jax.device_put(a, sharding) if isinstance(a, jax.Array) else a, tree
    )


def shard_rows(tree, mesh: Mesh):
    """Place every array leaf of `tree` (leading axis divisible by the mesh size)
    sharded by rows over `mesh`: each device keeps its block of rows. Every process
    passes the same host arrays and keeps only its devices' blocks."""
    sharding = NamedSharding(mesh, P("batch"))

    def put(a):
        a = np.asarray(a)
        return jax.make_array_from_callback(a.shape, sharding, lambda i: a[i])

    return jax.tree_util.tree_map(put, tree)


# --------------------------------------------------------------------------- #
# Checkpoints
# --------------------------------------------------------------------------- #


def _previous(path) -> str:
    return os.fspath(path) + ".prev"


def save_checkpoint(path, state: TrainState, metadata: dict | None = None) -> None:
    """Write `state` (model, EMA, optimiser state, step, key) and `metadata` (a
    JSON-able dict, e.g. `loss.metadata()`: process, prediction and time convention)
    to one file with the SHA-256 checksum of its payload, atomically (written to
    `path + ".tmp"`, then renamed: a crash never leaves a half-written checkpoint).
    An existing checkpoint at `path` is kept as `path + ".prev"`, so a file damaged
    later still leaves the previous good one.

    In a multi-process run call it from one process (`fit` uses process 0); the
    arrays of `state` must be replicated (as `fit` keeps them).
    """
    payload = io.BytesIO()
    eqx.tree_serialise_leaves(payload, state)
    payload = payload.getvalue()
    meta = dict(metadata or {})
    meta.setdefault("time_convention", TIME_CONVENTION)
    meta["step"] = int(state.step)
    meta["payload_bytes"] = len(payload)
    meta["sha256"] = hashlib.sha256(payload).hexdigest()
    path = os.fspath(path)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(_MAGIC)
        f.write(json.dumps(meta, sort_keys=True).encode() + b"\n")
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    if os.path.exists(path):
        os.replace(path, _previous(path))
    os.replace(tmp, path)


def _read_header(f, path):
    magic = f.readline()
    if magic not in (_MAGIC, _MAGIC_V1):
        raise CheckpointCorruptError(
            f"{os.fspath(path)!r} is not a scoreflow checkpoint (its first line is "
            f"{magic[:40]!r}); it is damaged or another kind of file."
        )
    try:
        return magic, json.loads(f.readline())
    except ValueError as e:
        raise CheckpointCorruptError(
            f"checkpoint {os.fspath(path)!r} is corrupted: its metadata line is not "
            f"valid JSON ({e})."
        ) from None


def read_metadata(path) -> dict:
    """The metadata dict of a checkpoint file (not checking its payload)."""
    with open(path, "rb") as f:
        return _read_header(f, path)[1]


def _intact(path) -> bool:
    try:
        _verified_payload(path)
        return True
    except (OSError, ValueError):
        return False


def _verified_payload(path):
    with open(path, "rb") as f:
        magic, meta = _read_header(f, path)
        payload = f.read()
    if magic == _MAGIC_V1:  # written before checksums: nothing to verify
        return meta, payload
    want = meta.get("payload_bytes")
    if want is None or "sha256" not in meta:
        raise CheckpointCorruptError(
            f"checkpoint {os.fspath(path)!r} is corrupted: its metadata has no "
            "checksum."
        )
    if len(payload) != want:
        raise CheckpointCorruptError(
            f"checkpoint {os.fspath(path)!r} is truncated: its payload has "
            f"{len(payload)} bytes, {want} were written."
        )
    if hashlib.sha256(payload).hexdigest() != meta["sha256"]:
        raise CheckpointCorruptError(
            f"checkpoint {os.fspath(path)!r} is corrupted: the SHA-256 checksum of "
            "its payload does not match the one written with it (bytes changed on "
            "disk or in transfer)."
        )
    return meta, payload


def load_checkpoint(path, like: TrainState, *, expected: dict | None = None):
    r"""Read a checkpoint written by `save_checkpoint` into the structure of `like`
    (a `TrainState` built the same way, e.g. by `init_state`), after verifying its
    length and SHA-256 checksum.

    **Arguments:** `path`; `like`; `expected`: metadata that must match (e.g.
    `loss.metadata()`); the keys `process`, `prediction`, `time_convention` and
    `loss` are compared where both sides have them.

    **Returns:** `(state, metadata)`.

    **Raises:** `CheckpointCorruptError` if the file is truncated or its bytes
    changed (the message names the previous good checkpoint `path + ".prev"` when
    there is one); `CheckpointMismatchError` if the checkpoint's time convention is
    not scoreflow's ($t = 0$ data), if it disagrees with `expected`, or if it holds
    another model structure.
    """
    try:
        meta, payload = _verified_payload(path)
    except CheckpointCorruptError as e:
        prev = _previous(path)
        if os.path.exists(prev) and _intact(prev):
            raise CheckpointCorruptError(
                f"{e} The previous checkpoint {prev!r} (step "
                f"{read_metadata(prev)['step']}) is intact and was left in place: "
                f"move it to {os.fspath(path)!r} to resume from it.",
                previous=prev,
            ) from None
        raise CheckpointCorruptError(
            f"{e} No intact previous checkpoint ({prev!r}) exists; delete the file "
            "to start afresh."
        ) from None
    if meta.get("time_convention") != TIME_CONVENTION:
        raise CheckpointMismatchError(
            f"checkpoint {os.fspath(path)!r} uses the time convention "
            f"{meta.get('time_convention')!r}, but scoreflow's is "
            f"{TIME_CONVENTION!r}; convert the model (t -> 1 - t) before loading."
        )
    for k in ("process", "prediction", "time_convention", "loss"):
        if expected and k in expected and k in meta and expected[k] != meta[k]:
            raise CheckpointMismatchError(
                f"checkpoint {os.fspath(path)!r} was trained with {k}={meta[k]!r}, "
                f"but this run has {k}={expected[k]!r}; refusing to load it. Use a "
                "matching loss/process, or another checkpoint path."
            )
    try:
        state = eqx.tree_deserialise_leaves(io.BytesIO(payload), like)
    except Exception as e:  # equinox raises TreePathError / ValueError on a mismatch
        raise CheckpointMismatchError(
            f"checkpoint {os.fspath(path)!r} (intact) holds another model or "
            f"optimiser structure than this run ({type(e).__name__}: {e}). Build "
            "the model, optimiser and `trainable` as in the run that wrote it."
        ) from None
    return state, meta


# --------------------------------------------------------------------------- #
# Data sources
# --------------------------------------------------------------------------- #


@dataclasses.dataclass(frozen=True)
class ProcessLocal:
    """Per-process data for `fit`: each process yields only its own rows of every
    global batch, `batch_size / jax.process_count()` rows each, and the global batch
    is assembled with `jax.make_array_from_process_local_data` on the data-parallel
    mesh (process $p$'s rows come $p$-th). In a single process it is the same as
    passing `source` itself.

    **Arguments:** `source`: an iterable of local batches, or a callable
    `source(start_step) -> iterator` that starts at step `start_step` (used on
    resume). A batch is an array `(rows, *shape)`, a pair `(x0, cond)`, or a
    mapping with keys `"x0"` and optionally `"cond"` (NumPy arrays or pytrees of
    them, e.g. from grain or tf.data).
    """

    source: Any


def _is_in_memory(data):
    return isinstance(data, (np.ndarray, jax.Array))


def _split_batch(item, step):
    if isinstance(item, Mapping):
        if "x0" not in item:
            raise ValueError(
                f"`sf.train.fit`: batch {step} is a mapping without the key 'x0' (it "
                f"has {sorted(item)}); yield {{'x0': rows, 'cond': labels}}, a pair "
                "(x0, cond) or an array."
            )
        return item["x0"], item.get("cond")
    if isinstance(item, tuple) and len(item) == 2:
        return item
    return item, None


def _rows(tree):
    return {
        int(np.shape(a)[0]) if np.ndim(a) else 0
        for a in jax.tree_util.tree_leaves(tree)
    }


def _iterate(source, start):
    """An iterator over `source` from step `start` (a callable seeks itself)."""
    if callable(source) and not isinstance(source, Iterable):
        return iter(source(start))
    if not isinstance(source, Iterable):
        raise TypeError(
            "`sf.train.fit(data=...)` must be an array, an iterable of batches, a "
            "callable `data(start_step) -> iterator`, or `sf.train.ProcessLocal(...)`;"
            f" got {type(source).__name__}."
        )
    return itertools.islice(iter(source), start, None)


def _placer(mesh, local):
    """Host batch -> device batch (sharded over the mesh when there is one). On one
    device the host arrays go to the jitted step as they are: its C++ dispatch
    transfers them for a fraction of what a Python `jax.device_put` per batch costs
    (0.5 ms of a 7 ms step in `benchmarks/bench_scale.py`)."""
    if mesh is None:
        return lambda tree: tree
    sharding = NamedSharding(mesh, P("batch"))
    count = jax.process_count()

    def put_local(a):
        a = np.asarray(a)
        return jax.make_array_from_process_local_data(
            sharding, a, (a.shape[0] * count, *a.shape[1:])
        )

    def put_global(a):
        a = np.asarray(a)
        return jax.make_array_from_callback(a.shape, sharding, lambda i: a[i])

    put = put_local if local else put_global
    return lambda tree: jax.tree_util.tree_map(put, tree)


def _stream(source, start, rows, place, on_first):
    """Yield placed `(x0, cond)` batches, checking their rows; `rows` is the number
    per process (None: taken from the first batch, after `on_first(x0, rows)`)."""
    has_cond = [None]
    for i, item in enumerate(_iterate(source, start), start):
        x0, c = _split_batch(item, i)
        got = _rows(x0)
        got_c = _rows(c) if c is not None else got
        if len(got) != 1 or got != got_c:
            raise ValueError(
                f"`sf.train.fit`: batch {i} has leading axes {sorted(got)} in x0 and "
                f"{sorted(got_c)} in cond; every leaf needs the same number of rows."
            )
        (n,) = got
        if rows is None:
            on_first(x0, n)
            rows = n
        elif i == start:
            on_first(x0, None)
        if n != rows:
            raise ValueError(
                f"`sf.train.fit`: batch {i} has {n} rows but the batches have {rows} "
                "per process (batch_size / process count); every batch must have the "
                "same size (drop the last incomplete one, e.g. drop_remainder=True)."
            )
        if has_cond[0] is None:
            has_cond[0] = c is not None
        elif has_cond[0] != (c is not None):
            raise ValueError(
                f"`sf.train.fit`: batch {i} {'has no' if c is None else 'has a'} "
                "cond, unlike the first batch; yield (x0, cond) every time or never."
            )
        yield place((x0, c))


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


def _check_learning_rate(lr):
    if callable(lr):
        return
    try:
        ok = math.isfinite(float(lr)) and float(lr) > 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(
            "`sf.train.fit(learning_rate=...)` must be a finite number > 0 or an optax "
            f"schedule, got learning_rate={lr!r}."
        )


def _default_optimizer(learning_rate):
    """`chain(clip_by_global_norm(1), adam(learning_rate))`, the same object for the
    same (hashable) learning rate, so a second `fit` reuses the compiled step."""
    try:
        return _default_optimizer_cached(learning_rate)
    except TypeError:  # an unhashable learning rate (e.g. a JAX scalar)
        return _default_optimizer_cached.__wrapped__(learning_rate)


@functools.lru_cache(maxsize=32)
def _default_optimizer_cached(learning_rate):
    import optax

    return optax.chain(optax.clip_by_global_norm(1.0), optax.adam(learning_rate))


def _check_checkpoint_dir(checkpoint):
    parent = os.path.dirname(os.path.abspath(os.fspath(checkpoint)))
    if not os.path.isdir(parent):
        raise FileNotFoundError(
            f"`sf.train.fit(checkpoint={os.fspath(checkpoint)!r})`: the directory "
            f"{parent!r} does not exist, so no checkpoint could be written; create it "
            "(e.g. `os.makedirs(..., exist_ok=True)`) before training."
        )
    if not os.access(parent, os.W_OK):
        raise PermissionError(
            f"`sf.train.fit(checkpoint={os.fspath(checkpoint)!r})`: the directory "
            f"{parent!r} is not writable."
        )


def _in_memory(data, cond, batch_size, process, check_scale):
    data = np.asarray(data) if not isinstance(data, jax.Array) else data
    if data.ndim < 1 or data.shape[0] < 1:
        raise ValueError(
            f"`sf.train.fit`: data must have shape (N, *shape) with N >= 1 rows, got "
            f"shape {tuple(data.shape)}."
        )
    n = data.shape[0]
    if cond is not None:
        bad = sorted(r for r in _rows(cond) if r != n)
        if bad:
            raise ValueError(
                f"`sf.train.fit(cond=...)`: the labels need one row per data row "
                f"(leading axis {n}), got leading axes {sorted(_rows(cond))}. Pass "
                "`cond` aligned with `data`."
            )
    if process is not None and check_scale:
        check_data_scale(process, data)
    return data, cond


def _pad_rows(tree, multiple):
    def pad(a):
        a = np.asarray(a)
        extra = (-a.shape[0]) % multiple
        if not extra:
            return a
        return np.concatenate([a, np.repeat(a[:1], extra, axis=0)])

    return jax.tree_util.tree_map(pad, tree)


def fit(
    loss: Callable,
    model,
    data,
    *,
    key,
    steps: int,
    batch_size: int | None = None,
    optimizer: optax.GradientTransformation | None = None,
    learning_rate: float | optax.Schedule = 1e-3,
    ema_decay: float = 0.999,
    cond=None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 1000,
    resume: bool = True,
    metadata: dict | None = None,
    shard: bool = True,
    trainable=None,
    divergence: float | None = 1e4,
    progress: bool = True,
) -> FitResult:
    r"""Train `model` on `loss` for `steps` steps (in total, counting resumed ones).

    **Arguments:**

    - `loss`: `loss(model, x0, key[, cond=...]) -> scalar`, e.g. `sf.dsm_loss(...)`.
    - `model`: an equinox module (unbatched `model(t, x[, cond])`). Its trainable
      arrays are `trainable` (an equinox filter spec), by default
      `default_trainable(model)`: every floating-point array except those inside a
      process or a time convention (so `sf.DDPMTimesteps(...).wrap_model(net)`
      trains `net` only; `sf.ScheduledModel` trains its schedule's `params` too).
    - `data`, one of:
        - an array `(N, *shape)` (NumPy or JAX) in memory: batches of `batch_size`
          rows (default 256) are drawn with replacement inside the jitted step;
          on several devices the rows are sharded over them (each device holds
          `N / D` rows). `cond`: labels (a pytree) with leading axis `N`.
        - an iterable of batches (a generator, a grain/tf.data iterator...): each
          an array `(batch_size, *shape)`, a pair `(x0, cond)` or a mapping
          `{"x0": ..., "cond": ...}` of NumPy arrays; every process yields the same
          global batches. Or a callable `data(start_step) -> iterator` that can
          seek (used on resume). An iterable is resumed by skipping the batches
          already used, so a resumed run is exact when the iterable is
          deterministic. The next batch is fetched and sent to the devices while
          the current step runs.
        - `sf.train.ProcessLocal(source)`: each process yields only its own rows of
          every global batch (see `ProcessLocal`).
    - `key`: PRNG key (the whole run, including data order, is a function of it).
    - `batch_size`: global rows per step; for streamed data it defaults to (and
      must equal) the rows of the batches.
    - `optimizer`: an optax transformation; default
      `chain(clip_by_global_norm(1), adam(learning_rate))` (`learning_rate` may be
      an optax schedule).
    - `ema_decay`: EMA of the weights, returned as `result.ema`. The EMA starts
      from the initial weights with no bias correction, so after `n` steps a
      fraction `ema_decay**n` of it is still the untrained network: for short runs
      pick `ema_decay` well below `1 - 1/steps` (e.g. 0.995 for ~1500 steps).
    - `checkpoint`, `checkpoint_every`: a file path (its directory must exist); the
      full `TrainState` plus metadata (from `loss.metadata()` where the loss has
      it, updated by `metadata`) and a checksum is written by process 0 every
      `checkpoint_every` steps and at the end; the previous file is kept as
      `checkpoint + ".prev"`.
    - `resume`: if the checkpoint file exists, continue from it (refusing a file
      from another process/prediction/time convention, or a damaged one). An
      interrupted and resumed run is bit-identical to an uninterrupted one.
    - `shard`: shard the batch over all `jax.devices()` (see the module docstring);
      a no-op on one device.
    - `divergence`: stop when the loss exceeds `divergence` times the (positive)
      loss of the first step of this call; `None` turns the check off. NaN or
      infinite losses always stop training.
    - `progress`: a tqdm bar with the running loss.

    The jitted step is compiled once per loss, optimiser (the default one is shared
    for an equal `learning_rate`), options and data layout: a second `fit` with the
    same `loss` (e.g. training in stages) starts at once.

    **Returns:** a `FitResult` (`.state`, `.model`, `.ema`, `.losses`).

    **Raises:** `TrainingDivergedError` when the loss is NaN/inf or diverges:
    training stops at once, the checkpoint file keeps the last good state, and the
    error carries the last good state. `CheckpointCorruptError` when the checkpoint
    to resume from is damaged (the file and its `.prev` stay untouched).
    `ValueError` / `FileNotFoundError` for bad arguments, before any training.
    """
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
        raise ValueError(
            f"`sf.train.fit(steps=...)` must be a Python int >= 0, got steps={steps!r}."
        )
    if divergence is not None and not divergence > 1:
        raise ValueError(
            f"`sf.train.fit(divergence=...)` must be > 1 or None, got {divergence!r}."
        )
    if optimizer is None:
        _check_learning_rate(learning_rate)
        optimizer = _default_optimizer(learning_rate)
    if checkpoint is not None:
        _check_checkpoint_dir(checkpoint)
    meta = dict(loss.metadata()) if hasattr(loss, "metadata") else {}
    meta.update(metadata or {})
    process = getattr(loss, "process", None)
    check_scale = getattr(loss, "check_scale", False)
    if isinstance(data, (list, tuple)):
        raise TypeError(
            f"`sf.train.fit(data=...)` got a {type(data).__name__}, which could be rows "
            "or batches; pass `np.asarray(data)` for data in memory (rows drawn inside "
            "the step) or `iter(data)` for a sequence of batches."
        )
    in_memory = _is_in_memory(data)
    if not in_memory and cond is not None:
        raise ValueError(
            "`sf.train.fit(cond=...)` goes with data in memory; a stream yields its "
            "labels with the batches, as pairs (x0, cond)."
        )
    mesh = make_mesh() if (shard and len(jax.devices()) > 1) else None
    count = jax.process_count()

    state = init_state(model, optimizer, key, trainable=trainable)
    if checkpoint is not None and resume and os.path.exists(checkpoint):
        state, _ = load_checkpoint(checkpoint, state, expected=meta)
    start = int(state.step)

    if in_memory:
        batch_size = 256 if batch_size is None else batch_size
        _check_batch_size(batch_size, mesh, "sf.train.fit")
        data, cond = _in_memory(data, cond, batch_size, process, check_scale)
        n = data.shape[0]
        step_fn = make_step(
            loss,
            optimizer,
            batch_size=batch_size,
            ema_decay=ema_decay,
            mesh=mesh,
            num_rows=n,
            trainable=trainable,
        )
        if mesh is not None:
            state = replicate(state, mesh)
            data, cond = shard_rows(_pad_rows((data, cond), mesh.size), mesh)
        else:
            data, cond = jax.device_put((data, cond))
        feed = itertools.repeat((data, cond))
    else:
        local = isinstance(data, ProcessLocal)
        source = data.source if local else data
        if batch_size is not None:
            _check_batch_size(batch_size, mesh, "sf.train.fit")
            if local and batch_size % count:
                raise ValueError(
                    f"`sf.train.fit`: batch_size={batch_size} must be divisible by "
                    f"the number of processes {count} (each yields its share)."
                )
        rows = None if batch_size is None else batch_size // (count if local else 1)
        step_fn = make_batch_step(
            loss, optimizer, ema_decay=ema_decay, trainable=trainable
        )
        if mesh is not None:
            state = replicate(state, mesh)

        def on_first(x0, n):
            if n is not None:
                _check_batch_size(n * (count if local else 1), mesh, "sf.train.fit")
            if process is not None and check_scale:
                check_data_scale(process, x0)

        feed = _stream(source, start, rows, _placer(mesh, local), on_first)
    is_main = jax.process_index() == 0

    losses = []
    bar = None
    if progress and steps > start:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, initial=start, desc="fit", dynamic_ncols=True)
    running = math.nan
    reference = None
    last_good = (
        None if checkpoint is None or not os.path.exists(checkpoint) else checkpoint
    )

    def finish(i, before, after, value):
        """Book-keeping of step `i` (`before` -> `after`), once its loss is known:
        the divergence check, the loss, the bar and the checkpoint."""
        nonlocal reference, running, last_good
        value = float(value)
        if reference is None and math.isfinite(value):
            reference = value
        diverged = (
            divergence is not None
            and reference is not None
            and reference > 0
            and value > divergence * reference
        )
        if not math.isfinite(value) or diverged:
            where = (
                f"The last good checkpoint is {os.fspath(last_good)!r} (step "
                f"{read_metadata(last_good)['step']})."
                if last_good
                else "No checkpoint was written."
            )
            what = (
                f"the loss is {value}"
                if not diverged
                else f"the loss grew from {reference:.4g} (step {start}) to "
                f"{value:.4g}, more than divergence={divergence:g} times"
            )
            raise TrainingDivergedError(
                f"`sf.train.fit`: {what} at step {i}; training stopped. {where} "
                f"The last good state (step {i}) is `error.state`. Try a smaller "
                "learning rate, gradient clipping, or check the data scale and "
                "the time range.",
                state=before,
                step=i,
                checkpoint=last_good,
            )
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
                save_checkpoint(checkpoint, after, meta)
            if count > 1:
                from jax.experimental import multihost_utils

                multihost_utils.sync_global_devices(f"sf.train.fit ckpt {i + 1}")
            last_good = checkpoint

    # A pipeline one step deep: step i + 1 is dispatched (its batch read before)
    # ahead of step i's loss being read back, so an asynchronous device never waits
    # for the host's book-keeping (on CPU the step runs inside the dispatch). A bad loss at step i still stops with the state before
    # step i; the step already queued after it is discarded.
    pending = None
    try:
        batch = next(feed, None) if steps > start else None
        for i in range(start, steps):
            if batch is None:
                warnings.warn(
                    f"`sf.train.fit`: the data ran out after step {i} of {steps}; "
                    "training stopped there. Pass an endless (repeating) iterable or "
                    "fewer steps.",
                    stacklevel=2,
                )
                break
            new_state, value = step_fn(state, *batch)
            # the next batch is read (on a mesh, placed) while this step runs
            batch = next(feed, None) if i + 1 < steps else None
            if pending is not None:
                finish(*pending)
            pending = (i, state, new_state, value)
            state = new_state
        if pending is not None:
            finish(*pending)
            pending = None
    finally:
        if bar is not None:
            bar.close()
    return FitResult(state, np.asarray(losses))
