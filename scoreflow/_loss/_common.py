"""What every loss shares: label dropout, calling the model, the data-scale check."""

from __future__ import annotations

import abc
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from .._predictor import check_output_shape
from .._process import AbstractProcess

DATA_SCALE_TOLERANCE = 2.0
"""The data-scale check warns when the data std is off by more than this factor."""


class DataScaleWarning(UserWarning):
    """The data's standard deviation is far from what the process assumes."""


def expected_data_std(process: AbstractProcess) -> float:
    """The data std a process is designed for: `sigma_data` for `sf.EDM`, else 1."""
    return float(process.sigma_data)


def check_data_scale(
    process: AbstractProcess, x0, *, tolerance: float = DATA_SCALE_TOLERANCE
):
    r"""Warn (`sf.DataScaleWarning`) when the std of the data `x0` (shape
    `(n, *shape)`, all entries pooled) is more than `tolerance` times away from
    what `process` assumes ($\sigma_\text{data}$ for `sf.EDM`, 1 otherwise).

    **Returns:** the measured std (a float), or `None` inside a trace (no check).
    """
    if isinstance(x0, jax.core.Tracer):
        return None
    x0 = np.asarray(x0)
    if x0.size < 2:
        return None
    std = float(np.std(x0))
    want = expected_data_std(process)
    if not (want / tolerance <= std <= want * tolerance):
        warnings.warn(
            f"The data std is {std:.3g} but {process!r} assumes about {want:.3g} "
            f"(off by more than a factor {tolerance:g}); training may learn little "
            "but the prior. Rescale the data, e.g. "
            f"`x, scaler = sf.standardize(x, std={want:g})` and "
            "`scaler.inverse(samples)` afterwards.",
            DataScaleWarning,
            stacklevel=3,
        )
    return std


class Standardization(eqx.Module):
    """An affine data map `z = (x - mean) / scale`, with its inverse."""

    mean: jax.Array
    scale: jax.Array

    def __call__(self, x):
        return (jnp.asarray(x) - self.mean) / self.scale

    def inverse(self, z):
        """Back to data units: `z * scale + mean`."""
        return jnp.asarray(z) * self.scale + self.mean


def standardize(x0, *, std: float = 1.0, per_feature: bool = False):
    r"""Centre `x0` (shape `(n, *shape)`) and scale it to standard deviation `std`.

    **Arguments:** `x0`; `std` the target std (use `process.sigma_data` for
    `sf.EDM`); `per_feature`: one mean/scale per feature instead of one pooled scalar.

    **Returns:** `(z, scaler)` with `scaler.inverse(z) == x0` (a
    `sf.internal.Standardization`).
    """
    x0 = jnp.asarray(x0)
    axis = 0 if per_feature else None
    mean = jnp.mean(x0, axis=axis)
    scale = jnp.std(x0, axis=axis) / std
    scale = jnp.where(scale > 0, scale, 1.0)
    scaler = Standardization(mean, scale)
    return scaler(x0), scaler


def as_float_data(x0):
    """`x0` as an array, cast to the default float dtype if it is not floating."""
    x0 = jnp.asarray(x0)
    if not jnp.issubdtype(x0.dtype, jnp.floating):
        x0 = x0.astype(jnp.result_type(float))
    return x0


def call_model(model, t, x, cond):
    out = model(t, x) if cond is None else model(t, x, cond)
    check_output_shape(out, x, "loss")
    return out


def drop_labels(key, cond, p: float, null_cond):
    """Replace each example's label by `null_cond` with probability `p`."""
    if cond is None or p == 0:
        return cond
    n = jax.tree_util.tree_leaves(cond)[0].shape[0]
    drop = jr.bernoulli(key, p, (n,))

    def one(c, null):
        null = jnp.broadcast_to(jnp.asarray(null, c.dtype), c.shape[1:])
        mask = drop.reshape((n,) + (1,) * (c.ndim - 1))
        return jnp.where(mask, null, c)

    return jax.tree_util.tree_map(one, cond, null_cond)


class AbstractLoss(eqx.Module):
    """A training objective `loss(model, x0, key, cond=None) -> scalar`.

    `x0` has shape `(n, *shape)`; `model` is unbatched, `model(t, x)` or, when
    `cond` (a pytree of arrays with leading axis `n`, e.g. integer labels of shape
    `(n,)`) is given, `model(t, x, cond_i)`. The loss draws the times, the noise,
    the label dropout and the coupling itself from `key`.
    """

    process: eqx.AbstractVar[AbstractProcess]
    cond_dropout: eqx.AbstractVar[float]
    null_cond: eqx.AbstractVar[object]
    check_scale: eqx.AbstractVar[bool]

    def __check_init__(self):
        # what the loss's time sampler needs of the process inside the jitted step,
        # derived now (sf.LogNormalSigma: the closed-form inverse log-SNR, not a
        # bisection chosen by whether an eager call came first)
        sampler = getattr(self, "time_sampler", None)
        if sampler is not None:
            sampler.prepare(self.process)

    @abc.abstractmethod
    def per_example(self, model, x0, key, cond=None):
        """The loss of each example, shape `(n,)` (its mean is the loss)."""

    def __call__(self, model, x0, key, cond=None):
        if self.check_scale:
            check_data_scale(self.process, x0)
        return jnp.mean(self.per_example(model, x0, key, cond))

    @property
    def prediction_type(self) -> str:
        return getattr(self, "prediction", "velocity")

    def metadata(self) -> dict:
        """What a checkpoint must agree on: process, prediction, time convention."""
        return {
            "process": repr(self.process),
            "prediction": self.prediction_type,
            "time_convention": TIME_CONVENTION,
            "loss": type(self).__name__,
        }

    def _keys(self, key):
        return jr.split(key, 4)

    def _draw(self, x0, key, cond):
        """What every time-sampled loss draws first, from the four keys of `key`:
        the data as floats, the times `t` and their weights `wt` (from the loss's
        `time_sampler`), the labels after dropout; returns `(x0, t, wt, cond,
        k_noise, k_extra)`, the last two keys for the loss's own draws."""
        x0 = as_float_data(x0)
        k_t, k_noise, k_drop, k_extra = self._keys(key)
        t, wt = self.time_sampler.sample(k_t, self.process, x0.shape[0], x0.dtype)
        return x0, t, wt, self._labels(k_drop, cond), k_noise, k_extra

    def _labels(self, key, cond):
        if cond is not None and self.cond_dropout > 0 and self.null_cond is None:
            raise ValueError(
                "label dropout needs a null label: pass `null_cond=` (for "
                "`sf.nets` networks, `net.null_label`)."
            )
        return drop_labels(key, cond, self.cond_dropout, self.null_cond)


TIME_CONVENTION = "t=0 data, t=t1 prior; x_t = alpha(t) x0 + sigma(t) eps"


def check_dropout(p, call):
    if not (isinstance(p, (int, float)) and 0 <= p <= 1):
        raise ValueError(f"`{call}`: cond_dropout must lie in [0, 1], got {p!r}.")
    return float(p)


SSM_HINT = (
    " For processes without one use `sf.ssm_loss` (sliced score matching on "
    "simulated x_t)."
)
