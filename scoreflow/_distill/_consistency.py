r"""Consistency training and distillation (Song et al. 2023; Song & Dhariwal 2023;
continuous time: Lu & Song 2024) for any process with a scalar Gaussian kernel."""

from __future__ import annotations

from collections.abc import Callable

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jax.scipy.special import erf

from .._loss._common import AbstractLoss, as_float_data
from .._loss._time_sampler import AbstractTimeSampler, as_time_sampler
from .._predictor import Predictor
from .._process import AbstractProcess, AbstractScalarProcess, require
from .._sampling import edm_grid, log_snr_grid, uniform_grid
from ._common import (
    check_model,
    check_solver,
    check_teacher,
    no_cond,
    pseudo_huber,
    teacher_step,
)
from ._models import ConsistencyModel

_GRIDS = {"edm": edm_grid, "uniform": uniform_grid, "log_snr": log_snr_grid}
_HINT = "Wrap the network: `sf.ConsistencyModel(net, process)`."


class ConsistencyLoss(AbstractLoss):
    r"""Consistency training or distillation (see [`scoreflow.consistency_loss`][])."""

    process: AbstractProcess
    teacher: Predictor | None
    solver: diffrax.AbstractSolver
    grid: jax.Array | None
    continuous: bool = eqx.field(static=True)
    metric: str = eqx.field(static=True)
    huber_c: float = eqx.field(static=True)
    weighting: str | Callable = eqx.field(static=True)
    index_sampler: str = eqx.field(static=True)
    time_sampler: AbstractTimeSampler
    tangent_normalisation: float | None = eqx.field(static=True)
    cond_dropout: float = eqx.field(static=True)
    null_cond: object
    check_scale: bool = eqx.field(static=True)

    @property
    def prediction_type(self) -> str:
        return "consistency"

    def sampling_grid(self, steps: int) -> jax.Array:
        r"""A `steps`-step grid for [`scoreflow.few_step_sample`][]`(time_grid=...)`
        made of the training levels: $t_1 = \tau_N$, then $\tau_{\mathrm{round}(N
        (1 - j/k))}$ for $j = 1, \dots, k$ ($k$ = `steps` $\le N$), ending at $t_0$.
        A discrete-time consistency model is fitted only at these levels, so each
        jump starts where it was trained (Song et al. 2023 show that multistep
        quality depends strongly on the intermediate levels). For the default
        `grid="edm"` and $k$ dividing $N$ this equals [`scoreflow.edm_grid`][]`(process,
        k)`, the default of `sf.few_step_sample` for an `sf.ConsistencyModel`.
        [arXiv:2303.01469](https://arxiv.org/abs/2303.01469)
        """
        call = "sf.internal.ConsistencyLoss.sampling_grid"
        if self.grid is None:
            raise ValueError(
                f"`{call}`: a continuous-time loss (continuous=True) has no training "
                "grid; pass `time_grid=sf.edm_grid(process, k)` (or any decreasing "
                "grid) to `sf.few_step_sample`."
            )
        n = self.grid.shape[0] - 1
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= n:
            raise ValueError(
                f"`{call}(steps=...)` must be an int between 1 and the {n} training "
                f"steps, got {steps!r}; train with more `steps` for a finer grid."
            )
        idx = [round(n * (1 - j / steps)) for j in range(steps + 1)]
        return self.grid[jnp.asarray(idx)]

    # ---- the pieces, public so tests and users can check them ------------------

    def target_point(self, t, s, x_t, x0, eps):
        r"""The point at the earlier time $s$ paired with $x_t$: one `solver` step of
        the teacher's PF-ODE from $t$ to $s$ (distillation), or the kernel point
        $\alpha(s)x_0 + \sigma(s)\varepsilon$ with the same $\varepsilon$
        (training)."""
        if self.teacher is None:
            p = self.process
            return (p.alpha(s) * x0 + p.sigma(s) * eps).astype(x_t.dtype)
        return teacher_step(self.process, self.teacher, self.solver, t, s, x_t)

    def tangent(self, model, t, x_t, x0, eps):
        r"""$\frac{d}{dt} f_\theta(t, x_t)$ along the PF-ODE, by `jax.jvp` with
        tangent $(1, v)$: $v$ the teacher's velocity (distillation) or the
        conditional velocity $\dot\alpha x_0 + \dot\sigma\varepsilon$ (training).
        Returns `(f, df_dt)`."""
        p = self.process
        if self.teacher is None:
            v = p.alpha_dot(t) * x0 + p.sigma_dot(t) * eps
        else:
            v = self.teacher.velocity(t, x_t)
        v = v.astype(x_t.dtype)
        return jax.jvp(model, (t, x_t), (jnp.ones_like(t), v))

    def _weight(self, t_hi, t_lo):
        if callable(self.weighting):
            return self.weighting(t_hi)
        if self.weighting == "inverse_gap":
            p = self.process
            return 1.0 / (p.sigma(t_hi) / p.alpha(t_hi) - p.sigma(t_lo) / p.alpha(t_lo))
        return jnp.ones_like(t_hi)

    def _indices(self, key, n, dtype):
        ts = self.grid
        num = ts.shape[0] - 1
        if self.index_sampler == "uniform":
            return jr.randint(key, (n,), 0, num)
        # Song & Dhariwal (2023): p(i) ∝ erf((ln σ̃_{i+1} - Pm)/(√2 Ps)) - erf(...i).
        p = self.process
        se = jnp.log(p.sigma(ts) / p.alpha(ts))
        cdf = erf((se - (-1.1)) / (jnp.sqrt(2.0) * 2.0))
        return jr.categorical(key, jnp.log(jnp.diff(cdf)), shape=(n,))

    def per_example(self, model, x0, key, cond=None):
        call = "sf.consistency_loss"
        no_cond(cond, call)
        check_model(model, ConsistencyModel, call, _HINT)
        x0 = as_float_data(x0)
        dtype, n = x0.dtype, x0.shape[0]
        k_t, k_eps = jr.split(key)
        eps = jr.normal(k_eps, x0.shape, dtype)
        p = self.process
        if self.continuous:
            t, wt = self.time_sampler.sample(k_t, p, n, dtype)

            def one(x0, eps, t, wt):
                x_t = (p.alpha(t) * x0 + p.sigma(t) * eps).astype(dtype)
                f, g = self.tangent(model, t, x_t, x0, eps)
                if self.tangent_normalisation is not None:
                    norm = jnp.sqrt(jnp.mean(g**2))
                    g = g / (norm + self.tangent_normalisation)
                target = jax.lax.stop_gradient(f - g)
                w = self.weighting(t) if callable(self.weighting) else 1.0
                return wt * w * jnp.mean((f - target) ** 2)

            return jax.vmap(one)(x0, eps, t, wt)

        ts = self.grid.astype(dtype)
        i = self._indices(k_t, n, dtype)
        t_hi, t_lo = ts[i + 1], ts[i]

        def one(x0, eps, t_hi, t_lo):
            x_hi = (p.alpha(t_hi) * x0 + p.sigma(t_hi) * eps).astype(dtype)
            x_lo = jax.lax.stop_gradient(self.target_point(t_hi, t_lo, x_hi, x0, eps))
            target = jax.lax.stop_gradient(model(t_lo, x_lo))
            c = self.huber_c if self.metric == "pseudo_huber" else None
            d = pseudo_huber(model(t_hi, x_hi) - target, c)
            return self._weight(t_hi, t_lo) * d

        return jax.vmap(one)(x0, eps, t_hi, t_lo)


def consistency_loss(
    process: AbstractProcess,
    *,
    teacher: Predictor | None = None,
    solver: diffrax.AbstractSolver = diffrax.Heun(),
    steps: int = 16,
    grid="edm",
    metric: str = "pseudo_huber",
    huber_c: float = 0.00054,
    weighting="inverse_gap",
    index_sampler: str = "uniform",
    continuous: bool = False,
    time_sampler="uniform",
    tangent_normalisation: float | None = None,
    check_scale: bool = True,
) -> ConsistencyLoss:
    r"""Consistency training (no teacher) or consistency distillation (from a
    teacher [`scoreflow.Predictor`][]) of an [`scoreflow.ConsistencyModel`][] $f_\theta$
    on any process with a scalar Gaussian kernel.

    **Discrete time** (Song et al. 2023): on a grid $t_0 = \tau_0 < \dots < \tau_N =
    t_1$ draw $i$, $x_{\tau_{i+1}} = \alpha x_0 + \sigma\varepsilon$ and

    $$L = \mathbb{E}\big[\lambda_i\, d\big(f_\theta(\tau_{i+1}, x_{\tau_{i+1}}),\
    \mathrm{sg}\,f_\theta(\tau_i, \hat x_{\tau_i})\big)\big],$$

    where $\hat x_{\tau_i}$ is one `solver` step of the teacher's probability-flow ODE
    from $\tau_{i+1}$ to $\tau_i$ (distillation) or $\alpha(\tau_i)x_0 +
    \sigma(\tau_i)\varepsilon$, the exact point of the conditional flow (training).
    The target network is the stop-gradient of the student (Song & Dhariwal 2023).

    **Continuous time** (`continuous=True`, Song et al. 2023 §3/§4 and Lu & Song 2024):
    $t \sim$ `time_sampler` and

    $$L = \mathbb{E}\big[w(t)\,\tfrac1D\|f_\theta - \mathrm{sg}(f_\theta - g)\|^2\big],
    \qquad g = \tfrac{d}{dt}f_{\theta^-}(t, x_t) = \partial_t f + (\nabla_x f)\,v,$$

    the tangent by `jax.jvp` with $v$ the teacher's PF-ODE velocity (distillation) or
    $\dot\alpha x_0 + \dot\sigma\varepsilon$ (training). Its value is
    $w\|g\|^2/D$ and its gradient $2w\langle\nabla_\theta f, g\rangle/D$, the limit of
    the discrete gradient divided by the step.

    **Arguments:**

    - `process`: the process (scalar Gaussian kernel; $t = 0$ is data).
    - `teacher`: `None` (consistency training) or an `sf.Predictor` (distillation).
    - `solver`: the diffrax solver (or `sf.DDIM()`) of the teacher step.
    - `steps`, `grid`: $N$ and the grid spacing, `"edm"` (Karras's $\rho = 7$ in
      $\tilde\sigma = \sigma/\alpha$), `"uniform"` in $t$, `"log_snr"`, or an explicit
      strictly decreasing array of times from $t_1$ to $t_0$ (as
      [`scoreflow.edm_grid`][] returns). The curriculum of Song & Dhariwal (growing
      $N$) is a sequence of `sf.train.fit` calls with growing `steps`.
    - `metric`: `"pseudo_huber"` ($\sqrt{\|d\|^2/D + c^2} - c$, Song & Dhariwal
      2023, with `huber_c` $= c$ per entry, their $0.00054\sqrt{D}$ on the sum) or
      `"l2"` ($\|d\|^2/D$).
    - `weighting`: `"inverse_gap"` ($1/(\tilde\sigma_{i+1} - \tilde\sigma_i)$, Song &
      Dhariwal; the default), `"uniform"` ($\lambda = 1$), or a callable of the time.
      With `continuous=True` only a callable $w(t)$ applies (else $w = 1$).
      On the 2-D ring (RF, 1500 steps, CD) inverse-gap gave one-step FD 0.045 against
      0.075 (l2) and 0.64 ($N = 8$) with uniform weights, and kept 2 and 4 steps
      below 0.09.
    - `index_sampler`: `"uniform"` over $i$ or `"log_normal"` (Song & Dhariwal's
      discretised $\ln\tilde\sigma \sim N(-1.1, 2^2)$).
    - `continuous`, `time_sampler`, `tangent_normalisation` ($c$: $g \to
      g/(\|g\|/\sqrt D + c)$, Lu & Song's normalisation): the continuous objective.
    - `check_scale`: warn when the data scale is far from what the process assumes.

    **Returns:** a `ConsistencyLoss`, `loss(model, x0, key) -> scalar` with `model`
    an `sf.ConsistencyModel` and `x0` of shape `(n, *shape)`.

    ```python
    f = sf.ConsistencyModel(sf.nets.MLP(2, width=256, key=k1), process)
    loss = sf.consistency_loss(process, teacher=sf.Predictor(net, process, "velocity"))
    f = sf.train.fit(loss, f, data, key=k2, steps=2000).ema
    xs = sf.few_step_sample(k3, process, f, (2,), num=1000, steps=2)
    ```
    [arXiv:2303.01469](https://arxiv.org/abs/2303.01469),
    [arXiv:2310.14189](https://arxiv.org/abs/2310.14189),
    [arXiv:2410.11081](https://arxiv.org/abs/2410.11081)
    """
    call = "sf.consistency_loss"
    require(process, AbstractScalarProcess, call)
    teacher = check_teacher(teacher, process, call)
    solver = check_solver(solver, call)
    if metric not in ("pseudo_huber", "l2"):
        raise ValueError(
            f"`{call}(metric=...)` must be 'pseudo_huber' or 'l2', got {metric!r}."
        )
    if not (callable(weighting) or weighting in ("uniform", "inverse_gap")):
        raise ValueError(
            f"`{call}(weighting=...)` must be 'uniform', 'inverse_gap' or a callable "
            f"w(t), got {weighting!r}."
        )
    if index_sampler not in ("uniform", "log_normal"):
        raise ValueError(
            f"`{call}(index_sampler=...)` must be 'uniform' or 'log_normal', got "
            f"{index_sampler!r}."
        )
    if continuous:
        ts = None
    elif isinstance(grid, str):
        if grid not in _GRIDS:
            raise ValueError(
                f"`{call}(grid=...)` must be one of {', '.join(map(repr, _GRIDS))} or "
                f"an array of times, got {grid!r}."
            )
        if not (isinstance(steps, int) and steps >= 1):
            raise ValueError(f"`{call}(steps=...)` must be an int >= 1, got {steps!r}.")
        ts = _GRIDS[grid](process, steps)[::-1]
    else:
        ts = jnp.asarray(grid)[::-1]
        if ts.ndim != 1 or ts.shape[0] < 2 or not bool(jnp.all(jnp.diff(ts) > 0)):
            raise ValueError(
                f"`{call}(grid=...)`: an explicit grid must be a strictly decreasing "
                "1-D array of at least two times (t1 first, t0 last)."
            )
    return ConsistencyLoss(
        process=process,
        teacher=teacher,
        solver=solver,
        grid=ts,
        continuous=bool(continuous),
        metric=metric,
        huber_c=float(huber_c),
        weighting=weighting,
        index_sampler=index_sampler,
        time_sampler=as_time_sampler(time_sampler, call),
        tangent_normalisation=tangent_normalisation,
        cond_dropout=0.0,
        null_cond=None,
        check_scale=check_scale,
    )
