"""Denoising score matching in any prediction space."""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

from .._precond import EDMPreconditioner
from .._predictor import PredictionType, check_prediction, from_hub
from .._process import (
    AbstractLinearProcess,
    AbstractProcess,
    AbstractScalarProcess,
    require,
)
from ._common import SSM_HINT, AbstractLoss, call_model, check_dropout
from ._linear_dsm import linear_dsm_loss
from ._time_sampler import AbstractTimeSampler, as_time_sampler
from ._weighting import AbstractWeighting, as_weighting, prediction_factor


class DSMLoss(AbstractLoss):
    r"""Denoising score matching (see [`scoreflow.dsm_loss`][])."""

    process: AbstractProcess
    prediction: str = eqx.field(static=True)
    weighting: AbstractWeighting
    time_sampler: AbstractTimeSampler
    precondition: str | None = eqx.field(static=True)
    sigma_data: float | None = eqx.field(static=True)
    cond_dropout: float = eqx.field(static=True)
    null_cond: object
    check_scale: bool = eqx.field(static=True)

    def implied_weighting(self, t):
        r"""The objective this loss estimates, as a weight per unit time on the
        $\varepsilon$-MSE: $L = \int_{t_0}^{t_1} \omega(t)\,
        \mathbb{E}\|\hat\varepsilon - \varepsilon\|^2/D\,dt$ (plus any mass the
        time sampler clamps to the ends), with $\omega = w(t)\,p(t)\,
        \text{importance}(t)$. Two configurations with the same $\omega$ are the
        same objective (e.g. `"likelihood"` weighting with uniform time or with
        `sf.LikelihoodImportance`).

        **Arguments:** `t` times in $(t_0, t_1)$ ($t = 0$ is data).
        """
        s, p = self.time_sampler, self.process
        return self.weighting(p, t) * s.density(p, t) * s.importance(p, t)

    def wrap(self, model):
        """The model as the loss sees it (EDM-preconditioned if asked)."""
        if self.precondition == "edm":
            return EDMPreconditioner(model, self.process, self.sigma_data)
        return model

    def per_example(self, model, x0, key, cond=None):
        x0, t, wt, cond, k_eps, _ = self._draw(x0, key, cond)
        dtype = x0.dtype
        eps = jr.normal(k_eps, x0.shape, dtype)
        net = self.wrap(model)
        process, pred = self.process, self.prediction

        def one(x0, eps, t, wt, c):
            xt = process.marginal(x0, eps, t)
            out = call_model(net, t, xt, c)
            target = from_hub(process, pred, t, xt, x0, eps).astype(dtype)
            factor = self.weighting(process, t) / prediction_factor(process, pred, t)
            return wt * factor.astype(dtype) * jnp.mean((out - target) ** 2)

        return jax.vmap(one)(x0, eps, t, wt, cond)


def dsm_loss(
    process: AbstractProcess,
    *,
    prediction: PredictionType = "eps",
    weighting="sigma2",
    time_sampler="uniform",
    precondition: str | None = None,
    sigma_data: float | None = None,
    cond_dropout: float = 0.0,
    null_cond=None,
    check_scale: bool = True,
) -> DSMLoss:
    r"""Denoising score matching (Vincent 2011; Song et al. 2021) in any prediction
    space, with a weighting stated once on the $\varepsilon$-MSE.

    $$L = \mathbb{E}_{t \sim p(t),\, x_0,\, \varepsilon}\Big[\frac{w(t)}{k_P(t)}\,
    \tfrac{1}{D}\big\|P_\theta(t, x_t) - P(x_0, \varepsilon)\big\|^2\Big],\qquad
    x_t = \alpha(t) x_0 + \sigma(t)\varepsilon,$$

    where $P$ is the prediction type, $P(x_0, \varepsilon)$ its conditional target,
    $k_P$ the factor with $\|\hat P - P\|^2 = k_P\|\hat\varepsilon - \varepsilon\|^2$
    (table in `scoreflow._loss._weighting`) and $w$ the weight on the
    $\varepsilon$-MSE. So the loss value depends on the model only through the
    $\varepsilon$ it implies: the same network expressed in two prediction spaces
    gives the same loss.

    **Arguments:**

    - `process`: a process with a Gaussian kernel. A matrix linear SDE
      ([`scoreflow.LinearSDE`][], [`scoreflow.CLD`][]) takes `prediction="score"`
      and `weighting="sigma2"` (the $\varepsilon$-MSE $\|L^\top s_\theta +
      \varepsilon\|^2$ with $L$ the Cholesky factor of the kernel covariance) or
      `"likelihood"` ($G G^\top$ on the score-MSE); see also [`scoreflow.hsm_loss`][].
    - `prediction`: what the model outputs: `"eps"`, `"score"`, `"x0"`, `"v"`,
      `"velocity"`.
    - `weighting`: `"sigma2"` ($w = 1$; Song et al.'s $\sigma^2$ on the score-MSE),
      `"snr"` (SNR on the $x_0$-MSE, also $w = 1$), `"min_snr"` (`sf.MinSNR(5)`),
      `"edm"` (`sf.EDMWeighting`), `"likelihood"` ($g^2$ on the score-MSE,
      $w = g^2/\sigma^2$), any `sf.AbstractWeighting`, or a callable $w(\lambda)$.
    - `time_sampler`: `"uniform"`, `"logit_normal"`, `"log_normal"` (EDM's
      $\ln\sigma$ density), `"likelihood"` (importance sampling), or an
      `sf.AbstractTimeSampler`.
    - `precondition`: `None` or `"edm"`: the model is wrapped in
      `sf.EDMPreconditioner` and `prediction` must be `"x0"`.
    - `sigma_data`: for EDM preconditioning (default `process.sigma_data` or 1).
    - `cond_dropout`, `null_cond`: classifier-free-guidance training: each label is
      replaced by `null_cond` with probability `cond_dropout`.
    - `check_scale`: warn (`sf.DataScaleWarning`) when eagerly called data is far
      from the scale the process assumes.

    **Returns:** a `DSMLoss`, called as `loss(model, x0, key)` or
    `loss(model, x0, key, cond=labels)` with `x0` of shape `(n, *shape)` and labels
    with leading axis `n`; a scalar. `loss.per_example(...)` gives shape `(n,)`.

    ```python
    loss = sf.dsm_loss(sf.VP(), prediction="eps", weighting=sf.MinSNR(5))
    value, grads = eqx.filter_value_and_grad(loss)(model, x0, key)
    ```
    """
    call = "sf.dsm_loss"
    prediction = check_prediction(prediction, call)
    return _dsm_for(
        process,
        call=call,
        prediction=prediction,
        weighting=weighting,
        time_sampler=time_sampler,
        precondition=precondition,
        sigma_data=sigma_data,
        cond_dropout=cond_dropout,
        null_cond=null_cond,
        check_scale=check_scale,
    )


@functools.singledispatch
def _dsm_for(process, *, call, **kw):
    require(process, AbstractScalarProcess, call, hint=SSM_HINT)


@_dsm_for.register
def _(process: AbstractLinearProcess, *, call, prediction, precondition, **kw):
    if prediction != "score" or precondition is not None:
        raise ValueError(
            f"`{call}`: for a matrix linear SDE ({process!r}) the model predicts "
            f"the score (prediction='score', no preconditioning), got "
            f"prediction={prediction!r}."
        )
    kw.pop("sigma_data")
    kw.pop("check_scale")
    return linear_dsm_loss(process, call=call, **kw)


@_dsm_for.register
def _(
    process: AbstractScalarProcess,
    *,
    call,
    prediction,
    weighting,
    time_sampler,
    precondition,
    sigma_data,
    cond_dropout,
    null_cond,
    check_scale,
):
    if precondition not in (None, "edm"):
        raise ValueError(
            f"`{call}`: precondition must be None or 'edm', got {precondition!r}."
        )
    if precondition == "edm" and prediction != "x0":
        raise ValueError(
            f"`{call}(precondition='edm')`: the preconditioned network is a denoiser, "
            f"so prediction must be 'x0', got {prediction!r}."
        )
    return DSMLoss(
        process=process,
        prediction=prediction,
        weighting=as_weighting(weighting, call),
        time_sampler=as_time_sampler(time_sampler, call),
        precondition=precondition,
        sigma_data=sigma_data,
        cond_dropout=check_dropout(cond_dropout, call),
        null_cond=null_cond,
        check_scale=check_scale,
    )
