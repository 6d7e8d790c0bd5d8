r"""Reference networks: unbatched `model(t, x)` / `model(t, x, cond)` (equinox).

- [`scoreflow.nets.MLP`][]: for vector data, with a sinusoidal or random-Fourier time
  embedding.
- [`scoreflow.nets.UNet`][]: a small U-Net for channels-first images `(C, H, W)`
  whose sides are divisible by 4 (8x8, 28x28, 32x32).

Both take an optional class embedding with `num_classes + 1` rows; the last,
`net.null_label` $=$ `num_classes`, is the "no label" of classifier-free guidance
(pass it as `null_cond=` to the losses and to `sf.Predictor`).
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray

__all__ = ["FourierEmbedding", "MLP", "SinusoidalEmbedding", "UNet"]


class SinusoidalEmbedding(eqx.Module):
    r"""$[\sin(\omega_k s), \cos(\omega_k s)]_{k < d/2}$ with frequencies
    $\omega_k$ geometric in $[1, \omega_\max]$ and $s = $ `scale` $\cdot\,t$
    (Vaswani et al. 2017; Ho et al. 2020)."""

    dim: int = eqx.field(static=True)
    scale: float = eqx.field(static=True)
    max_freq: float = eqx.field(static=True)

    def __init__(self, dim: int, *, scale: float = 1.0, max_freq: float = 1000.0):
        if dim % 2:
            raise ValueError(f"`SinusoidalEmbedding(dim=...)` must be even, got {dim}.")
        self.dim, self.scale, self.max_freq = dim, float(scale), float(max_freq)

    def __call__(self, t) -> Float[Array, " dim"]:
        t = jnp.asarray(t)
        dtype = t.dtype if jnp.issubdtype(t.dtype, jnp.floating) else float
        half = self.dim // 2
        freqs = jnp.exp(jnp.linspace(0.0, math.log(self.max_freq), half, dtype=dtype))
        arg = self.scale * t * freqs
        return jnp.concatenate([jnp.sin(arg), jnp.cos(arg)])


class FourierEmbedding(eqx.Module):
    r"""Random Fourier features $[\sin(2\pi W t), \cos(2\pi W t)]$ with fixed
    $W \sim N(0, \text{scale}^2)$ (Tancik et al. 2020; Song et al. 2021's
    `GaussianFourierProjection`). $W$ is not trained (`stop_gradient`)."""

    weights: Array

    def __init__(self, dim: int, *, scale: float = 16.0, key: PRNGKeyArray):
        if dim % 2:
            raise ValueError(f"`FourierEmbedding(dim=...)` must be even, got {dim}.")
        self.weights = scale * jr.normal(key, (dim // 2,))

    def __call__(self, t) -> Float[Array, " dim"]:
        w = jax.lax.stop_gradient(self.weights)
        arg = 2 * jnp.pi * jnp.asarray(t, w.dtype) * w
        return jnp.concatenate([jnp.sin(arg), jnp.cos(arg)])


def _embedding(kind, dim, key):
    if kind == "sinusoidal":
        return SinusoidalEmbedding(dim)
    if kind == "fourier":
        return FourierEmbedding(dim, key=key)
    raise ValueError(f"time_embedding must be 'sinusoidal' or 'fourier', got {kind!r}.")


class _Conditioner(eqx.Module):
    """Time embedding, plus a class embedding with a null row."""

    time: eqx.Module
    time_mlp: eqx.nn.MLP
    label: eqx.nn.Embedding | None
    num_classes: int | None = eqx.field(static=True)

    def __init__(self, kind, emb_dim, out_dim, num_classes, key):
        k1, k2, k3 = jr.split(key, 3)
        self.time = _embedding(kind, emb_dim, k1)
        self.time_mlp = eqx.nn.MLP(
            emb_dim, out_dim, out_dim, 1, activation=jax.nn.silu, key=k2
        )
        self.num_classes = num_classes
        self.label = (
            None
            if num_classes is None
            else eqx.nn.Embedding(num_classes + 1, out_dim, key=k3)
        )

    def __call__(self, t, cond):
        h = self.time_mlp(self.time(t))
        if self.label is None:
            if cond is not None:
                raise ValueError(
                    "this network has no class embedding (num_classes=None) but was "
                    "called with cond."
                )
            return h
        if cond is None:
            cond = self.num_classes
        cond = jnp.asarray(cond)
        if not jnp.issubdtype(cond.dtype, jnp.integer):
            raise TypeError(
                f"class labels must be integers in [0, {self.num_classes}] "
                f"({self.num_classes} = null_label), got dtype {cond.dtype}."
            )
        if cond.shape != ():
            raise ValueError(
                "the network is unbatched: it takes one class label (a scalar), got "
                f"shape {cond.shape}. vmap over the batch."
            )
        # Without this check, jnp's clamping indexing maps an out-of-range label
        # (7 or -1 for 3 classes) silently onto the null label.
        cond = eqx.error_if(
            cond,
            (cond < 0) | (cond > self.num_classes),
            f"class label out of range: labels are ints in [0, {self.num_classes - 1}] "
            f"(or {self.num_classes} = null_label, unconditional) for num_classes="
            f"{self.num_classes}.",
        )
        return h + self.label(cond.astype(jnp.int32))


class MLP(eqx.Module):
    r"""A residual MLP for vector data $x \in \mathbb{R}^d$, conditioned on time (and
    optionally a class label) by adding an embedding to every hidden layer.

    **Arguments:**

    - `dim`: the data dimension $d$ (input and output).
    - `width`, `depth`: hidden width and number of hidden blocks.
    - `time_embedding`: `"sinusoidal"` (default) or `"fourier"`.
    - `num_classes`: `None` or the number of classes; labels are ints in
      `[0, num_classes]`, `num_classes` ($=$ `null_label`) meaning "no label".
    - `key`: a PRNG key.

    Called as `net(t, x)` or `net(t, x, label)`, unbatched: `t` a scalar, `x` of
    shape `(d,)`.
    """

    embed: _Conditioner
    inp: eqx.nn.Linear
    hidden: tuple[eqx.nn.Linear, ...]
    out: eqx.nn.Linear

    def __init__(
        self,
        dim: int,
        *,
        width: int = 128,
        depth: int = 3,
        time_embedding: str = "sinusoidal",
        num_classes: int | None = None,
        key: PRNGKeyArray,
    ):
        ke, ki, ko, *kh = jr.split(key, 3 + depth)
        self.embed = _Conditioner(time_embedding, 64, width, num_classes, ke)
        self.inp = eqx.nn.Linear(dim, width, key=ki)
        self.hidden = tuple(eqx.nn.Linear(width, width, key=k) for k in kh)
        self.out = eqx.nn.Linear(width, dim, key=ko)

    @property
    def null_label(self) -> int | None:
        """The label meaning "unconditional" (`num_classes`)."""
        return self.embed.num_classes

    def __call__(self, t, x, cond=None):
        emb = self.embed(t, cond)
        h = self.inp(x)
        for layer in self.hidden:
            h = h + layer(jax.nn.silu(h + emb))
        return self.out(jax.nn.silu(h))


def _groups(c):
    return math.gcd(8, c)


class _ResBlock(eqx.Module):
    norm1: eqx.nn.GroupNorm
    conv1: eqx.nn.Conv2d
    emb: eqx.nn.Linear
    norm2: eqx.nn.GroupNorm
    conv2: eqx.nn.Conv2d
    skip: eqx.nn.Conv2d | None

    def __init__(self, cin, cout, emb_dim, key):
        k1, k2, k3, k4 = jr.split(key, 4)
        self.norm1 = eqx.nn.GroupNorm(_groups(cin), cin)
        self.conv1 = eqx.nn.Conv2d(cin, cout, 3, padding=1, key=k1)
        self.emb = eqx.nn.Linear(emb_dim, cout, key=k2)
        self.norm2 = eqx.nn.GroupNorm(_groups(cout), cout)
        self.conv2 = eqx.nn.Conv2d(cout, cout, 3, padding=1, key=k3)
        self.skip = None if cin == cout else eqx.nn.Conv2d(cin, cout, 1, key=k4)

    def __call__(self, x, emb):
        h = self.conv1(jax.nn.silu(self.norm1(x)))
        h = h + self.emb(emb)[:, None, None]
        h = self.conv2(jax.nn.silu(self.norm2(h)))
        return h + (x if self.skip is None else self.skip(x))


class UNet(eqx.Module):
    r"""A small U-Net for channels-first images `(C, H, W)` with `H`, `W` divisible
    by 4: two resolutions below the input (28 -> 14 -> 7, 8 -> 4 -> 2), residual
    blocks with GroupNorm and SiLU, the time (and class) embedding added in every
    block, skip connections by concatenation.

    **Arguments:** `in_channels`; `channels` per level (default `(32, 64, 64)`);
    `time_embedding`, `num_classes`, `key` as for [`scoreflow.nets.MLP`][].

    Called as `net(t, x)` or `net(t, x, label)` with `x` of shape `(C, H, W)`.
    """

    embed: _Conditioner
    inp: eqx.nn.Conv2d
    down: tuple[_ResBlock, ...]
    downsample: tuple[eqx.nn.Conv2d, ...]
    mid: _ResBlock
    up: tuple[_ResBlock, ...]
    upsample: tuple[eqx.nn.ConvTranspose2d, ...]
    norm: eqx.nn.GroupNorm
    out: eqx.nn.Conv2d

    def __init__(
        self,
        in_channels: int,
        *,
        channels: tuple[int, int, int] = (32, 64, 64),
        time_embedding: str = "sinusoidal",
        num_classes: int | None = None,
        key: PRNGKeyArray,
    ):
        c0, c1, c2 = channels
        emb = 4 * c0
        keys = iter(jr.split(key, 16))
        self.embed = _Conditioner(time_embedding, 64, emb, num_classes, next(keys))
        self.inp = eqx.nn.Conv2d(in_channels, c0, 3, padding=1, key=next(keys))
        self.down = (
            _ResBlock(c0, c0, emb, next(keys)),
            _ResBlock(c1, c1, emb, next(keys)),
        )
        self.downsample = (
            eqx.nn.Conv2d(c0, c1, 3, stride=2, padding=1, key=next(keys)),
            eqx.nn.Conv2d(c1, c2, 3, stride=2, padding=1, key=next(keys)),
        )
        self.mid = _ResBlock(c2, c2, emb, next(keys))
        self.upsample = (
            eqx.nn.ConvTranspose2d(c2, c1, 4, stride=2, padding=1, key=next(keys)),
            eqx.nn.ConvTranspose2d(c1, c0, 4, stride=2, padding=1, key=next(keys)),
        )
        self.up = (
            _ResBlock(2 * c1, c1, emb, next(keys)),
            _ResBlock(2 * c0, c0, emb, next(keys)),
        )
        self.norm = eqx.nn.GroupNorm(_groups(c0), c0)
        self.out = eqx.nn.Conv2d(c0, in_channels, 3, padding=1, key=next(keys))

    @property
    def null_label(self) -> int | None:
        """The label meaning "unconditional" (`num_classes`)."""
        return self.embed.num_classes

    def __call__(self, t, x, cond=None):
        if x.ndim != 3 or x.shape[1] % 4 or x.shape[2] % 4:
            raise ValueError(
                f"`UNet` takes one channels-first image (C, H, W) with H, W divisible "
                f"by 4, got shape {x.shape}."
            )
        emb = self.embed(t, cond)
        h = self.inp(x)
        skips = []
        for block, down in zip(self.down, self.downsample):
            h = block(h, emb)
            skips.append(h)
            h = down(h)
        h = self.mid(h, emb)
        for block, up in zip(self.up, self.upsample):
            h = up(h)
            h = block(jnp.concatenate([h, skips.pop()]), emb)
        return self.out(jax.nn.silu(self.norm(h)))
