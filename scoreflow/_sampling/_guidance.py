r"""Guidance: classifier-free (Ho & Salimans 2022) and classifier (Dhariwal & Nichol
2021), as transforms of the predictor, so every solver stage sees guided values.

Every prediction type is an affine function of the network output at fixed
$(t, x)$, and a guidance combination $(1 - s)\,u + s\,c$ has weights summing to
one, so combining in the network's own parameterisation and then converting gives
the same field as combining scores, $\varepsilon$'s, $x_0$'s or velocities.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._predictor import AbstractPredictor, Predictor, to_hub


def _static_one(scale) -> bool:
    return (
        isinstance(scale, (int, float)) and not isinstance(scale, bool) and scale == 1
    )


class AbstractGuidedPredictor(AbstractPredictor):
    """A predictor that transforms another one, `predictor`, whose process,
    prediction type and null label it reports as its own; the views are
    [`scoreflow.AbstractPredictor`][]'s."""

    predictor: eqx.AbstractVar[AbstractPredictor]

    @property
    def process(self):
        return self.predictor.process

    @property
    def prediction(self):
        return self.predictor.prediction

    @property
    def null_cond(self):
        return self.predictor.null_cond


class CFGPredictor(AbstractGuidedPredictor):
    r"""Classifier-free guidance of a predictor (see [`scoreflow.cfg`][]); its views
    `score/eps/x0/velocity/v(t, x, cond)` are those of
    [`scoreflow.AbstractPredictor`][]."""

    predictor: Predictor
    scale: Any

    def map_models(self, fn):
        """This guided predictor with the inner predictor's network replaced by
        `fn(model)`."""
        return eqx.tree_at(lambda g: g.predictor, self, self.predictor.map_models(fn))

    def hub(self, t, x, cond=None):
        r"""$(\hat x_0, \hat\varepsilon)$ of the guided output."""
        x = jnp.asarray(x)
        t = jnp.asarray(t, dtype=jnp.result_type(x.dtype, float))
        p = self.predictor
        if cond is None or _static_one(self.scale):
            # The unconditional branch, or no guidance: one network evaluation.
            return p.hub(t, x, cond)
        uncond = p.raw(t, x, None)
        out = p.raw(t, x, cond)
        guided = jax.tree_util.tree_map(
            lambda u, c: u + self.scale * (c - u), uncond, out
        )
        return to_hub(p.process, p.prediction, t, x, guided)


def cfg(
    predictor: Predictor, scale: float | None = None, *, weight: float | None = None
) -> CFGPredictor:
    r"""Classifier-free guidance (Ho & Salimans 2022) as a transform of the predictor.

    With the unconditional output $u = $ `model(t, x, predictor.null_cond)` and the
    conditional output $c = $ `model(t, x, cond)`, the guided output is

    $$u + s\,(c - u) \;=\; u + (1 + w)(c - u), \qquad s = 1 + w,$$

    the lecture notes' scale $s$ (`scale=`, $s = 1$ is no guidance) or the paper's
    weight $w$ (`weight=`, $w = 0$ is no guidance). In score form,
    $\nabla\log p_t(x) + s\,\nabla\log p_t(y \mid x)$. The combination is applied
    at every call, so at every stage of every solver, and is the same whatever the
    prediction type (score, eps, x0, velocity, v) because conversions are affine.

    **Arguments:**

    - `predictor`: an [`scoreflow.Predictor`][] whose model takes `(t, x, cond)`.
    - `scale`: the guidance scale $s$; or
    - `weight`: the paper weight $w$ (keyword only; exactly one of the two).

    **Returns:** a predictor whose `score/eps/x0/velocity/v(t, x, cond)` are guided;
    `cond=None` is the unconditional branch, `model(t, x, predictor.null_cond)`.
    With a static `scale == 1` (or `weight == 0`) no unconditional pass is made.
    A numeric scale is stored as an array, so changing it does not recompile.

    **Raises:** `ValueError` if neither or both of `scale` and `weight` are given.

    ```python
    guided = sf.cfg(pred, 3.0)              # == sf.cfg(pred, weight=2.0)
    xs = sf.sample(key, p, guided, (2,), num=64, steps=50, cond=labels)
    ```
    [arXiv:2207.12598](https://arxiv.org/abs/2207.12598)
    """
    if (scale is None) == (weight is None):
        raise ValueError(
            "`sf.cfg(predictor, scale)` takes exactly one of scale= (1 means no "
            "guidance) and weight= (Ho & Salimans' w, 0 means no guidance; scale = 1 + "
            f"w), got scale={scale!r}, weight={weight!r}."
        )
    given = ("scale", scale) if weight is None else ("weight", weight)
    concrete = (
        np.asarray(given[1]) if not isinstance(given[1], jax.core.Tracer) else None
    )
    if concrete is not None and not np.all(np.isfinite(concrete)):
        raise ValueError(
            f"`sf.cfg(predictor, {given[0]}={given[1]!r})`: the guidance {given[0]} must "
            "be finite (NaN or inf would make every guided sample NaN)."
        )
    if weight is not None:
        scale = (
            1 + weight if isinstance(weight, (int, float)) else 1 + jnp.asarray(weight)
        )
    if not _static_one(scale):
        scale = jnp.asarray(scale, dtype=jnp.result_type(float))
    return CFGPredictor(predictor, scale)


class ClassifierGuidedPredictor(AbstractGuidedPredictor):
    r"""Classifier guidance of a predictor (see [`scoreflow.classifier_guidance`][]);
    its views `score/eps/x0/velocity/v(t, x, cond)` are those of
    [`scoreflow.AbstractPredictor`][]."""

    predictor: AbstractPredictor
    log_prob: Callable
    scale: Any
    conditional_model: bool = eqx.field(static=True, default=False)

    def map_models(self, fn):
        """This guided predictor with the inner predictor's networks and the
        classifier `log_prob` each replaced by `fn(...)`."""
        return eqx.tree_at(
            lambda g: (g.predictor, g.log_prob),
            self,
            (self.predictor.map_models(fn), fn(self.log_prob)),
        )

    def hub(self, t, x, cond=None):
        x = jnp.asarray(x)
        t = jnp.asarray(t, dtype=jnp.result_type(x.dtype, float))
        p = self.predictor
        x0, eps = p.hub(t, x, cond if self.conditional_model else None)
        if cond is None:
            return x0, eps
        grad = jax.grad(lambda y: self.log_prob(t, y, cond))(x)
        sigma, alpha = p.process.sigma(t), p.process.alpha(t)
        # score += s * grad  <=>  eps -= sigma * s * grad, and x0 = (x - sigma eps)/alpha.
        d_eps = sigma * self.scale * grad
        return x0 + sigma * d_eps / alpha, eps - d_eps


def classifier_guidance(
    predictor,
    log_prob: Callable,
    scale: float = 1.0,
    *,
    conditional_model: bool = False,
) -> ClassifierGuidedPredictor:
    r"""Classifier guidance (Song et al. 2021; Dhariwal & Nichol 2021):

    $$\nabla_x\log p_t(x) + s\,\nabla_x\log p_t(y \mid x).$$

    **Arguments:**

    - `predictor`: the predictor being guided; it is called unconditionally
      (`cond=None`) unless `conditional_model=True`, when it gets the same `cond`.
    - `log_prob`: the user's noisy classifier `log_prob(t, x, y) -> scalar`, time
      first, unbatched, $t = 0$ data.
    - `scale`: $s$ ($s = 1$ samples $p_t(x \mid y)$ exactly for an exact classifier).

    **Returns:** a predictor whose methods take `(t, x, cond)`; `cond=None` gives
    the unguided predictor.
    [arXiv:2105.05233](https://arxiv.org/abs/2105.05233)
    """
    if not _static_one(scale):
        scale = jnp.asarray(scale, dtype=jnp.result_type(float))
    return ClassifierGuidedPredictor(predictor, log_prob, scale, conditional_model)
