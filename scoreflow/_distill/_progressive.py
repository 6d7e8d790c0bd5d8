r"""Progressive distillation (Salimans & Ho 2022) for any process with a scalar
Gaussian kernel."""

from __future__ import annotations

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

from .._loss._common import AbstractLoss, as_float_data
from .._predictor import PredictionType, Predictor, check_prediction
from .._process import AbstractProcess, AbstractScalarProcess, require
from .._sampling import DDIM, check_time_grid
from ._common import check_solver, check_teacher, no_cond, teacher_step


def ddim_x0(process, t, s, x_t, x_s):
    r"""The $x_0$ whose DDIM step ($\eta = 0$) from $(t, x_t)$ lands on $x_s$:
    $x_s = \alpha_s\tilde x_0 + \sigma_s(x_t - \alpha_t\tilde x_0)/\sigma_t$, so
    $\tilde x_0 = (x_s - \tfrac{\sigma_s}{\sigma_t}x_t)/(\alpha_s -
    \tfrac{\sigma_s}{\sigma_t}\alpha_t)$ (Salimans & Ho 2022, Algorithm 2)."""
    ratio = process.sigma(s) / process.sigma(t)
    return (x_s - ratio * x_t) / (process.alpha(s) - ratio * process.alpha(t))


class ProgressiveLoss(AbstractLoss):
    r"""One round of progressive distillation (see
    [`scoreflow.progressive_loss`][])."""

    process: AbstractProcess
    teacher: Predictor
    grid: jax.Array
    prediction: str = eqx.field(static=True)
    solver: diffrax.AbstractSolver
    cond_dropout: float = eqx.field(static=True)
    null_cond: object
    check_scale: bool = eqx.field(static=True)

    @property
    def student_grid(self) -> jax.Array:
        """The student's time grid: every other time of the teacher's."""
        return self.grid[::2]

    def target(self, i, x_t):
        r"""The student's $x_0$ target at $(\tau_i, x_t)$, $i$ an even grid index:
        two teacher steps $\tau_i \to \tau_{i+1} \to \tau_{i+2}$ with `solver`,
        inverted by the DDIM algebra of `ddim_x0`."""
        g = self.grid.astype(x_t.dtype)
        t, t1_, t2_ = g[i], g[i + 1], g[i + 2]
        p, teacher, solver = self.process, self.teacher, self.solver
        x_mid = teacher_step(p, teacher, solver, t, t1_, x_t)
        x_end = teacher_step(p, teacher, solver, t1_, t2_, x_mid)
        return ddim_x0(p, t, t2_, x_t, x_end)

    def per_example(self, model, x0, key, cond=None):
        no_cond(cond, "sf.progressive_loss")
        x0 = as_float_data(x0)
        dtype, n = x0.dtype, x0.shape[0]
        k_i, k_eps = jr.split(key)
        g = self.grid.astype(dtype)
        i = 2 * jr.randint(k_i, (n,), 0, (g.shape[0] - 1) // 2)
        eps = jr.normal(k_eps, x0.shape, dtype)
        p = self.process
        student = Predictor(model, p, self.prediction)

        def one(x0, eps, i):
            t = g[i]
            x_t = (p.alpha(t) * x0 + p.sigma(t) * eps).astype(dtype)
            target = jax.lax.stop_gradient(self.target(i, x_t))
            snr = jnp.exp(p.log_snr(t))
            err = jnp.mean((student.x0(t, x_t) - target) ** 2)
            return jnp.maximum(snr, 1.0) * err

        return jax.vmap(one)(x0, eps, i)


def progressive_loss(
    process: AbstractProcess,
    teacher: Predictor,
    time_grid,
    *,
    prediction: PredictionType = "v",
    solver: diffrax.AbstractSolver = DDIM(),
    check_scale: bool = True,
) -> ProgressiveLoss:
    r"""One round of progressive distillation (Salimans & Ho 2022): a student learns
    to take in one DDIM step what the teacher takes in two.

    For an even time $t = \tau_{2j}$ of the teacher's grid, $x_t = \alpha x_0 +
    \sigma\varepsilon$, two teacher steps $\tau_{2j} \to \tau_{2j+1} \to \tau_{2j+2}$
    give $x''$, and the target is the $\tilde x_0$ whose single DDIM step lands on
    $x''$. The loss is the truncated-SNR weighted
    $\max(\alpha^2/\sigma^2, 1)\,\tfrac1D\|\hat x_0 - \tilde x_0\|^2$ (Salimans &
    Ho's choice, which for `prediction="v"` is the v-MSE up to a bounded factor).

    **Arguments:**

    - `process`; `teacher` an `sf.Predictor` (for the first round, the trained
      diffusion/flow model; then the previous student).
    - `time_grid`: the teacher's grid, strictly decreasing from $t_1$ to $t_0$ with an
      even number of steps (e.g. `sf.uniform_grid(process, 64)`); the student samples
      on `loss.student_grid` with `sf.sample(..., solver=sf.DDIM(),
      time_grid=loss.student_grid)`.
    - `prediction`: what the student network outputs (default `"v"`).
    - `solver`: the teacher's step (default `sf.DDIM()`, as in the paper).
    - `check_scale`: warn when the data scale is far from what the process assumes.

    **Returns:** a `ProgressiveLoss`, `loss(model, x0, key) -> scalar` with `model`
    the raw student network (start it from the teacher's weights).
    [arXiv:2202.00512](https://arxiv.org/abs/2202.00512)
    """
    call = "sf.progressive_loss"
    require(process, AbstractScalarProcess, call)
    teacher = check_teacher(teacher, process, call)
    if teacher is None:
        raise ValueError(f"`{call}` needs a teacher `sf.Predictor`, got None.")
    solver = check_solver(solver, call)
    grid = check_time_grid(time_grid, process, call=f"{call}(time_grid=...)")
    if (grid.shape[0] - 1) % 2:
        raise ValueError(
            f"`{call}(time_grid=...)` needs an even number of steps (the student takes "
            f"every other time), got {grid.shape[0] - 1}."
        )
    return ProgressiveLoss(
        process=process,
        teacher=teacher,
        grid=jnp.asarray(grid),
        prediction=check_prediction(prediction, call),
        solver=solver,
        cond_dropout=0.0,
        null_cond=None,
        check_scale=check_scale,
    )
