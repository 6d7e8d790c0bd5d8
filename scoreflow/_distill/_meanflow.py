r"""MeanFlow (Geng et al. 2025) on any process with a scalar Gaussian kernel."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

from .._loss._common import AbstractLoss, as_float_data
from .._loss._time_sampler import AbstractTimeSampler, LogitNormal, as_time_sampler
from .._predictor import Predictor
from .._process import AbstractProcess, AbstractScalarProcess, require
from ._common import check_model, check_teacher, no_cond
from ._models import MeanFlowModel

_HINT = "Wrap the network: `sf.MeanFlowModel(net, process)` with `net(t, r, x)`."


def meanflow_target(u, t, r, x, v):
    r"""The MeanFlow target $v - (t - r)\,\frac{d}{dt}u(t, r, x_t)$, with the total
    derivative along the flow $\frac{d}{dt}u = \partial_t u + (\nabla_x u)\,v$ taken
    by `jax.jvp` with tangent $(1, 0, v)$ on $(t, r, x)$.

    **Arguments:** `u` a callable `u(t, r, x)`; scalar times `t`, `r` ($t = 0$ data);
    `x` one point at time $t$; `v` the velocity $dx_t/dt$ there.

    **Returns:** `(u(t, r, x), target)`.
    """
    one = jnp.ones_like(t)
    out, dudt = jax.jvp(u, (t, r, x), (one, jnp.zeros_like(r), v))
    return out, v - (t - r) * dudt


class MeanFlowLoss(AbstractLoss):
    r"""The MeanFlow objective (see [`scoreflow.meanflow_loss`][])."""

    process: AbstractProcess
    teacher: Predictor | None
    time_sampler: AbstractTimeSampler
    equal_fraction: float = eqx.field(static=True)
    adaptive_power: float = eqx.field(static=True)
    adaptive_c: float = eqx.field(static=True)
    cond_dropout: float = eqx.field(static=True)
    null_cond: object
    check_scale: bool = eqx.field(static=True)

    @property
    def prediction_type(self) -> str:
        return "mean_velocity"

    def per_example(self, model, x0, key, cond=None):
        call = "sf.meanflow_loss"
        no_cond(cond, call)
        check_model(model, MeanFlowModel, call, _HINT)
        x0 = as_float_data(x0)
        dtype, n = x0.dtype, x0.shape[0]
        k_t, k_r, k_eq, k_eps = jr.split(key, 4)
        p = self.process
        t, _ = self.time_sampler.sample(k_t, p, n, dtype)
        r, _ = self.time_sampler.sample(k_r, p, n, dtype)
        t, r = jnp.maximum(t, r), jnp.minimum(t, r)
        r = jnp.where(jr.uniform(k_eq, (n,)) < self.equal_fraction, t, r)
        eps = jr.normal(k_eps, x0.shape, dtype)

        def one(x0, eps, t, r):
            x_t = (p.alpha(t) * x0 + p.sigma(t) * eps).astype(dtype)
            if self.teacher is None:
                v = p.alpha_dot(t) * x0 + p.sigma_dot(t) * eps
            else:
                v = self.teacher.velocity(t, x_t)
            u, target = meanflow_target(model, t, r, x_t, v.astype(dtype))
            err = jnp.mean((u - jax.lax.stop_gradient(target)) ** 2)
            if self.adaptive_power == 0:
                return err
            w = jax.lax.stop_gradient((err + self.adaptive_c) ** -self.adaptive_power)
            return w * err

        return jax.vmap(one)(x0, eps, t, r)


def meanflow_loss(
    process: AbstractProcess,
    *,
    teacher: Predictor | None = None,
    time_sampler=LogitNormal(mean=-0.4, std=1.0),
    equal_fraction: float = 0.75,
    adaptive_power: float = 1.0,
    adaptive_c: float = 1e-3,
    check_scale: bool = True,
) -> MeanFlowLoss:
    r"""The MeanFlow objective (Geng et al. 2025) for an [`scoreflow.MeanFlowModel`][]
    $u_\theta(t, r, x)$ on any process with a scalar Gaussian kernel:

    $$L = \mathbb{E}\Big[w\,\tfrac1D\big\|u_\theta(t, r, x_t) - \mathrm{sg}\big(v -
    (t - r)\,\tfrac{d}{dt}u_\theta(t, r, x_t)\big)\big\|^2\Big],\qquad
    x_t = \alpha(t)x_0 + \sigma(t)\varepsilon,$$

    from the MeanFlow identity $u = v - (t - r)\,du/dt$ (differentiate
    $(t - r)\,u(t, r, x_t) = \int_r^t v(s, x_s)\,ds$ in $t$). $v$ is the conditional
    velocity $\dot\alpha x_0 + \dot\sigma\varepsilon$ of the declared path (training)
    or the teacher's PF-ODE velocity (distillation); $du/dt$ is a `jax.jvp`
    ([`scoreflow.meanflow_target`][]). $t = 0$ is data, so $r \le t$.

    **Arguments:**

    - `process`: the process.
    - `teacher`: `None` or an `sf.Predictor` whose velocity replaces the conditional one.
    - `time_sampler`: draws two times per example, sorted into $r \le t$ (default
      Geng et al.'s logit-normal $(-0.4, 1)$); any `sf.AbstractTimeSampler` or name.
    - `equal_fraction`: the fraction of examples with $r = t$ (plain flow matching;
      Geng et al. use 0.75).
    - `adaptive_power`, `adaptive_c`: the adaptive weight $w =
      \mathrm{sg}(1/(\|\Delta\|^2/D + c)^p)$ ($p = 0$: none).
    - `check_scale`: warn when the data scale is far from what the process assumes.

    **Returns:** a `MeanFlowLoss`, `loss(model, x0, key) -> scalar`.

    ```python
    u = sf.MeanFlowModel(sf.MeanFlowMLP(2, width=256, key=k1), process)
    u = sf.train.fit(sf.meanflow_loss(process), u, data, key=k2, steps=2000).ema
    xs = sf.few_step_sample(k3, process, u, (2,), num=1000, steps=1)
    ```
    [arXiv:2505.13447](https://arxiv.org/abs/2505.13447)
    """
    call = "sf.meanflow_loss"
    require(process, AbstractScalarProcess, call)
    teacher = check_teacher(teacher, process, call)
    if not 0 <= equal_fraction <= 1:
        raise ValueError(
            f"`{call}(equal_fraction=...)` must lie in [0, 1], got {equal_fraction!r}."
        )
    if adaptive_power < 0 or adaptive_c <= 0:
        raise ValueError(
            f"`{call}`: adaptive_power must be >= 0 and adaptive_c > 0, got "
            f"{adaptive_power!r}, {adaptive_c!r}."
        )
    return MeanFlowLoss(
        process=process,
        teacher=teacher,
        time_sampler=as_time_sampler(time_sampler, call),
        equal_fraction=float(equal_fraction),
        adaptive_power=float(adaptive_power),
        adaptive_c=float(adaptive_c),
        cond_dropout=0.0,
        null_cond=None,
        check_scale=check_scale,
    )
