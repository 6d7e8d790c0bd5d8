"""Conditional flow matching on a process's interpolant, with optional OT coupling."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

from .._predictor import PredictionType, check_prediction, from_hub, to_hub
from .._process import AbstractScalarProcess, require
from ._common import (
    SSM_HINT,
    AbstractLoss,
    call_model,
    check_dropout,
)
from ._time_sampler import AbstractTimeSampler, as_time_sampler

_OT_MISSING = (
    "`sf.cfm_loss(coupling='ot')` needs the optional dependency ott-jax for "
    "minibatch optimal transport. Install it with `pip install scoreflow[ot]` (or "
    "`pip install ott-jax`), or use coupling='independent'."
)


def _import_ott():
    try:
        from ott.geometry import pointcloud
        from ott.problems.linear import linear_problem
        from ott.solvers.linear import sinkhorn
    except ImportError as e:
        raise ImportError(_OT_MISSING) from e
    return pointcloud, linear_problem, sinkhorn


def ot_coupling(key, x0, eps, *, epsilon: float = 0.01, relative: bool = True):
    r"""Minibatch optimal-transport pairing (Tong et al. 2023; Pooladian et al. 2023).

    Solves entropic OT (ott-jax Sinkhorn, squared Euclidean cost
    $\|x_0 - \varepsilon\|^2$) between the rows of `x0` and `eps` and, for each
    data row $i$, draws its partner $j$ from $\pi_{ij}/\sum_j\pi_{ij}$. Data rows
    (and so their labels) keep their order; only the noise is re-indexed.

    `epsilon` is the entropic regularisation, relative to the mean cost (default,
    near-exact OT for small values) or, with `relative=False`, absolute: then
    `epsilon = 2 sigma**2` gives the static Schrödinger bridge of a Brownian motion
    with diffusion coefficient `sigma` (Tong et al. 2024).

    **Returns:** the index array `j` of shape `(n,)`: pair `x0[i]` with `eps[j[i]]`.
    """
    pointcloud, linear_problem, sinkhorn = _import_ott()
    n = x0.shape[0]
    a = jax.lax.stop_gradient(x0.reshape(n, -1))
    b = jax.lax.stop_gradient(eps.reshape(n, -1))
    geom = pointcloud.PointCloud(
        a, b, epsilon=epsilon, relative_epsilon="mean" if relative else None
    )
    # ott-jax mixes integer and float arrays internally (its marginal error raises an
    # array to an integer power), which fails under strict dtype promotion: run it
    # under standard promotion whatever the caller's setting.
    with jax.numpy_dtype_promotion("standard"):
        out = sinkhorn.Sinkhorn()(linear_problem.LinearProblem(geom))
    logits = jnp.log(jnp.maximum(out.matrix, jnp.finfo(out.matrix.dtype).tiny))
    return jr.categorical(key, logits, axis=-1)


class CFMLoss(AbstractLoss):
    r"""Conditional flow matching (see [`scoreflow.cfm_loss`][])."""

    process: AbstractScalarProcess
    prediction: str = eqx.field(static=True)
    coupling: str = eqx.field(static=True)
    time_sampler: AbstractTimeSampler
    ot_epsilon: float = eqx.field(static=True)
    cond_dropout: float = eqx.field(static=True)
    null_cond: object
    check_scale: bool = eqx.field(static=True)

    def per_example(self, model, x0, key, cond=None):
        x0, t, wt, cond, k_eps, k_pair = self._draw(x0, key, cond)
        dtype = x0.dtype
        eps = jr.normal(k_eps, x0.shape, dtype)
        if self.coupling == "ot":
            eps = eps[ot_coupling(k_pair, x0, eps, epsilon=self.ot_epsilon)]
        process, pred = self.process, self.prediction

        def one(x0, eps, t, wt, c):
            xt = process.marginal(x0, eps, t)
            out = call_model(model, t, xt, c)
            if pred != "velocity":
                hx0, heps = to_hub(process, pred, t, xt, out)
                out = from_hub(process, "velocity", t, xt, hx0, heps).astype(dtype)
            target = from_hub(process, "velocity", t, xt, x0, eps).astype(dtype)
            return wt * jnp.mean((out - target) ** 2)

        return jax.vmap(one)(x0, eps, t, wt, cond)


def cfm_loss(
    process: AbstractScalarProcess,
    *,
    coupling: str = "independent",
    prediction: PredictionType = "velocity",
    time_sampler="uniform",
    ot_epsilon: float = 0.01,
    cond_dropout: float = 0.0,
    null_cond=None,
    check_scale: bool = True,
) -> CFMLoss:
    r"""Conditional flow matching (Lipman et al. 2023; Liu et al. 2022; Albergo &
    Vanden-Eijnden 2023) on the process's own interpolant:

    $$L = \mathbb{E}_{t \sim p(t),\,(x_0, \varepsilon) \sim \pi}\,\tfrac1D
    \big\|v_\theta(t, x_t) - (\dot\alpha(t) x_0 + \dot\sigma(t)\varepsilon)\big\|^2,
    \qquad x_t = \alpha(t) x_0 + \sigma(t)\varepsilon.$$

    Its minimiser is the marginal (probability-flow) velocity, for any process with
    a Gaussian kernel (for `sf.RectifiedFlow` the target is $\varepsilon - x_0$).
    The noise side is $N(0, I)$ scaled by $\sigma$: the prior of the path is
    $N(0, \sigma(t_1)^2 I)$, an assumption of every coupling here.

    **Arguments:**

    - `process`: a process with a Gaussian kernel.
    - `coupling`: `"independent"` ($\pi = p_\text{data}\otimes N(0, I)$) or `"ot"`
      (minibatch OT by ott-jax, [`scoreflow.internal.ot_coupling`][]; needs the `ot` extra).
      Data rows and their labels keep their order; the noise is re-paired.
    - `prediction`: what the model outputs (default `"velocity"`); other types are
      converted to a velocity exactly before the MSE.
    - `time_sampler`: as for [`scoreflow.dsm_loss`][] (default uniform).
    - `ot_epsilon`: entropic regularisation, relative to the mean cost.
    - `cond_dropout`, `null_cond`, `check_scale`: as for [`scoreflow.dsm_loss`][].

    **Returns:** a `CFMLoss`, `loss(model, x0, key, cond=None) -> scalar`.

    **Raises:** `ImportError` with installation advice if `coupling="ot"` and
    ott-jax is missing.

    [arXiv:2210.02747](https://arxiv.org/abs/2210.02747),
    [arXiv:2302.00482](https://arxiv.org/abs/2302.00482)
    """
    call = "sf.cfm_loss"
    prediction = check_prediction(prediction, call)
    if coupling not in ("independent", "ot"):
        raise ValueError(
            f"`{call}`: coupling must be 'independent' or 'ot', got {coupling!r}."
        )
    if coupling == "ot":
        _import_ott()
    require(process, AbstractScalarProcess, call, hint=SSM_HINT)
    return CFMLoss(
        process=process,
        prediction=prediction,
        coupling=coupling,
        time_sampler=as_time_sampler(time_sampler, call),
        ot_epsilon=float(ot_epsilon),
        cond_dropout=check_dropout(cond_dropout, call),
        null_cond=null_cond,
        check_scale=check_scale,
    )
