"""Sliced score matching on simulated forward paths, for any process."""

from __future__ import annotations

from collections.abc import Callable

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

from .._process import AbstractProcess
from .._sampling._dynamics import forward_sde
from ._common import AbstractLoss, call_model, check_dropout
from ._time_sampler import AbstractTimeSampler, as_time_sampler


def simulate_forward(process: AbstractProcess, key, x0, t, *, num_steps: int = 64):
    r"""One forward path $dx = f(t, x)\,dt + g(t, x)\,dW$ (Itô) from $x(0) = $ `x0`
    to time `t` by Euler–Maruyama (diffrax, `UnsafeBrownianPath`) with step
    $t_1/$`num_steps` (the last step shortened to land on `t`).

    **Arguments:** `key`; `x0` one unbatched data point; `t` a scalar in
    $(0, t_1]$ ($t = 0$ is data; `t = 0` returns `x0`).

    **Returns:** $x_t$, shaped like `x0`.
    """
    x0 = jnp.asarray(x0)
    dtype = x0.dtype
    t = jnp.asarray(t, dtype)
    dt = jnp.asarray(process.t1 / num_steps, dtype)
    end = jnp.maximum(t, jnp.finfo(dtype).tiny * 1e6)
    # Euler-Maruyama converges to the Itô reading, which is how f is stored.
    terms = forward_sde(
        process,
        diffrax.UnsafeBrownianPath(shape=x0.shape, key=key),
        convention="ito",
    )
    sol = diffrax.diffeqsolve(
        terms,
        diffrax.Euler(),
        t0=jnp.zeros((), dtype),
        t1=end,
        dt0=dt,
        y0=x0,
        saveat=diffrax.SaveAt(t1=True),
        max_steps=num_steps + 2,
        adjoint=diffrax.DirectAdjoint(),
    )
    return jnp.where(t > 0, sol.ys[0], x0)


class SSMLoss(AbstractLoss):
    r"""Sliced score matching on simulated $x_t$ (see [`scoreflow.ssm_loss`][])."""

    process: AbstractProcess
    weighting: Callable
    time_sampler: AbstractTimeSampler
    num_steps: int = eqx.field(static=True)
    num_projections: int = eqx.field(static=True)
    variance_reduction: bool = eqx.field(static=True)
    cond_dropout: float = eqx.field(static=True)
    null_cond: object
    check_scale: bool = eqx.field(static=True)

    @property
    def prediction_type(self) -> str:
        return "score"

    def per_example(self, model, x0, key, cond=None):
        x0, t, wt, cond, k_path, k_v = self._draw(x0, key, cond)
        dtype, n = x0.dtype, x0.shape[0]
        process = self.process

        def one(x0, t, wt, kp, kv, c):
            xt = jax.lax.stop_gradient(
                simulate_forward(process, kp, x0, t, num_steps=self.num_steps)
            )
            vs = jr.normal(kv, (self.num_projections,) + x0.shape, dtype)

            def proj(v):
                s, jv = jax.jvp(lambda y: call_model(model, t, y, c), (xt,), (v,))
                second = (
                    jnp.sum(s**2) if self.variance_reduction else jnp.sum(v * s) ** 2
                )
                return jnp.sum(v * jv) + 0.5 * second

            val = jnp.mean(jax.vmap(proj)(vs)) / x0.size
            return wt * jnp.asarray(self.weighting(process, t)).astype(dtype) * val

        return jax.vmap(one)(x0, t, wt, jr.split(k_path, n), jr.split(k_v, n), cond)


def _ssm_weighting(weighting, call):
    if weighting == "uniform":
        return lambda process, t: jnp.ones_like(t)
    if weighting == "likelihood":
        return lambda process, t: process.g2(t)  # x-free g only (checked below)
    if callable(weighting):
        return weighting
    raise ValueError(
        f"`{call}`: weighting must be 'uniform', 'likelihood' (g(t)^2) or a callable "
        f"w(process, t), got {weighting!r}."
    )


def ssm_loss(
    process: AbstractProcess,
    *,
    weighting="uniform",
    time_sampler="uniform",
    num_steps: int = 64,
    num_projections: int = 1,
    variance_reduction: bool = True,
    cond_dropout: float = 0.0,
    null_cond=None,
    check_scale: bool = True,
) -> SSMLoss:
    r"""Sliced score matching (Song et al. 2019) for any process, including those
    without a Gaussian kernel (non-affine drift, e.g.
    `sf.SDE(-sf.x**3 + sf.x, 1.0)`), where DSM has no target.

    $x_t$ is simulated from $x_0$ by Euler–Maruyama ([`scoreflow.internal.simulate_forward`][],
    diffrax) and the model, a **score** $s_\theta(t, x)$, is trained with

    $$L = \mathbb{E}_{t, x_t, v}\,\frac{w(t)}{D}\Big[v^\top \nabla_x s_\theta(t, x_t)\,v
    + \tfrac12\|s_\theta(t, x_t)\|^2\Big],\qquad v \sim N(0, I),$$

    (`variance_reduction=False`: $\tfrac12 (v^\top s_\theta)^2$), which equals
    $\tfrac{1}{2D}\mathbb{E}\,w\,\|s_\theta - \nabla\log p_t\|^2$ up to a constant
    (Hyvärinen's identity). The Jacobian–vector product is one `jax.jvp`.

    **Arguments:**

    - `process`: any process (only `drift`, `diffusion` and `t1` are used),
      including a state-dependent diffusion $g(t, x)$ (simulated in Itô form).
    - `weighting`: `"uniform"` ($w = 1$), `"likelihood"` ($w = g^2$) or a callable
      `w(process, t)`.
    - `time_sampler`: as for [`scoreflow.dsm_loss`][] (default uniform on
      $[t_0, t_1]$).
    - `num_steps`: Euler–Maruyama steps over $[0, t_1]$; the simulated marginal has
      $O(t_1/\text{num\_steps})$ weak error.
    - `num_projections`: slices $v$ per example.
    - `cond_dropout`, `null_cond`, `check_scale`: as for [`scoreflow.dsm_loss`][].

    **Returns:** an `SSMLoss`, `loss(model, x0, key, cond=None) -> scalar`.

    [arXiv:1905.07088](https://arxiv.org/abs/1905.07088)
    """
    call = "sf.ssm_loss"
    if weighting == "likelihood":
        try:
            process.g2(process.t1)
        except ValueError as e:
            raise ValueError(
                f"`{call}`: weighting='likelihood' (g(t)^2) needs a diffusion that does "
                "not depend on x; use 'uniform' or a callable w(process, t)."
            ) from e
    return SSMLoss(
        process=process,
        weighting=_ssm_weighting(weighting, call),
        time_sampler=as_time_sampler(time_sampler, call),
        num_steps=int(num_steps),
        num_projections=int(num_projections),
        variance_reduction=bool(variance_reduction),
        cond_dropout=check_dropout(cond_dropout, call),
        null_cond=null_cond,
        check_scale=check_scale,
    )
