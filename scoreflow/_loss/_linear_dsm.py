r"""Denoising (and hybrid) score matching for matrix linear SDEs.

With the kernel $x_t = A(t)\,m_0(x_0) + L(t)\,\varepsilon$, the conditional score is
$\nabla\log p(x_t \mid x_0) = -L^{-\top}\varepsilon$, and DSM regresses the model's
score on it. Hybrid score matching (HSM; Dockhorn et al. 2022) is the same regression
on the rows where the noise enters ($G G^\top \ne 0$, e.g. the velocity of CLD),
with the auxiliary initial rows marginalised into the kernel: those rows are all the
reverse dynamics need, since they only see $G G^\top \nabla\log p_t$.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from .._process import AbstractLinearProcess, apply_blocks, require
from ._common import AbstractLoss, call_model, check_dropout
from ._time_sampler import AbstractTimeSampler, UniformTime, as_time_sampler

LINEAR_WEIGHTINGS = ("eps", "sigma2", "likelihood")


def _rows_of_noise(process: AbstractLinearProcess) -> tuple[int, ...]:
    """The rows where G G^T is non-zero, probed at a few times."""
    ts = np.linspace(process.t0, process.t1, 5)
    q = sum(np.abs(np.asarray(process.diffusion_cov(float(s)))) for s in ts)
    return tuple(int(i) for i in np.nonzero(q.sum(axis=1) > 0)[0])


class LinearDSMLoss(AbstractLoss):
    r"""Score matching for an [`scoreflow.AbstractLinearProcess`][] (see
    [`scoreflow.dsm_loss`][] and [`scoreflow.hsm_loss`][])."""

    process: AbstractLinearProcess
    weighting: str = eqx.field(static=True)
    time_sampler: AbstractTimeSampler
    rows: tuple[int, ...] = eqx.field(static=True)
    cond_dropout: float = eqx.field(static=True)
    null_cond: object
    check_scale: bool = eqx.field(static=True)

    @property
    def prediction_type(self) -> str:
        return "score"

    def per_example(self, model, x0, key, cond=None):
        x0, t, wt, cond, k_eps, _ = self._draw(x0, key, cond)
        dtype, n = x0.dtype, x0.shape[0]
        p = self.process
        m = self.rows[0]  # the rows are a trailing set m, ..., k - 1 (static)

        def one(x0, key, t, wt, c):
            m0 = p.embed(x0)
            eps = jr.normal(key, m0.shape, dtype)
            lo = p.chol(t).astype(dtype)
            xt = apply_blocks(p.mean_matrix(t), m0) + apply_blocks(lo, eps)
            out = jnp.asarray(call_model(model, t, xt, c)).reshape(eps.shape[0], -1)
            eps = eps.reshape(eps.shape[0], -1)
            if self.weighting == "likelihood":
                # (s - target)^T G G^T (s - target) on rows C, target = -L^{-T} eps
                target = jax.scipy.linalg.solve_triangular(lo.T, -eps, lower=False)
                res = (out - target)[m:]
                q = p.diffusion_cov(t).astype(dtype)[m:, m:]
                val = jnp.sum(res * (q @ res)) / res.size
            else:
                # L_CC^T s_C + eps_C: the eps-space residual on rows C
                val = jnp.mean((lo[m:, m:].T @ out[m:] + eps[m:]) ** 2)
            return wt * val

        keys = jr.split(k_eps, n)
        return jax.vmap(one)(x0, keys, t, wt, cond)


def linear_dsm_loss(
    process: AbstractLinearProcess,
    *,
    weighting: str = "eps",
    time_sampler="uniform",
    rows: str | tuple[int, ...] = "all",
    cond_dropout: float = 0.0,
    null_cond=None,
    check_scale: bool = False,
    call: str = "sf.dsm_loss",
) -> LinearDSMLoss:
    require(
        process,
        AbstractLinearProcess,
        call,
        need="a matrix linear SDE (an sf.AbstractLinearProcess)",
    )
    if weighting not in LINEAR_WEIGHTINGS:
        raise ValueError(
            f"`{call}`: for a matrix linear SDE the weighting must be one of "
            f"{', '.join(map(repr, LINEAR_WEIGHTINGS))}, got {weighting!r}."
        )
    weighting = "eps" if weighting == "sigma2" else weighting
    k = process.num_blocks
    noise_rows = _rows_of_noise(process)
    if rows == "all":
        rows = tuple(range(k))
    elif rows == "noise":
        rows = noise_rows
    else:
        rows = tuple(int(i) for i in rows)
    if not rows or rows != tuple(range(rows[0], k)):
        raise ValueError(
            f"`{call}`: the score rows must be a trailing set (m, ..., k - 1) of the "
            f"block axis (k = {k}), so that their conditional score only involves "
            f"their own noise; got rows={rows!r}. Reorder the state if needed."
        )
    if weighting == "likelihood" and not set(noise_rows) <= set(rows):
        raise ValueError(
            f"`{call}`: the likelihood weighting needs the score on every row where "
            f"G G^T acts ({noise_rows}), got rows={rows}."
        )
    return LinearDSMLoss(
        process=process,
        weighting=weighting,
        time_sampler=as_time_sampler(time_sampler, call),
        rows=rows,
        cond_dropout=check_dropout(cond_dropout, call),
        null_cond=null_cond,
        check_scale=check_scale,
    )


def hsm_loss(
    process: AbstractLinearProcess,
    *,
    weighting: str = "eps",
    time_sampler=UniformTime(),
    cond_dropout: float = 0.0,
    null_cond=None,
) -> LinearDSMLoss:
    r"""Hybrid score matching (Dockhorn, Vahdat & Kreis 2022, eq. 9) for a linear
    process whose auxiliary rows are marginalised into the kernel (e.g.
    [`scoreflow.CLD`][], with $v_0 \sim N(0, \gamma M)$).

    The model outputs a score of the state's shape `(k, *data_shape)`; only the rows
    where noise enters ($G G^\top \ne 0$; for CLD the velocity) are trained, which is
    all the reverse SDE and PF-ODE use. With $x_t = A m_0(x_0) + L\varepsilon$ and
    $C$ those rows (a trailing set), the target is
    $(-L^{-\top}\varepsilon)_C = -L_{CC}^{-\top}\varepsilon_C$ (for CLD
    $-\varepsilon_v/L_{vv} = \ell_t\,\varepsilon_v$ in the paper's notation), and

    - `weighting="eps"`: $\tfrac1D\|L_{CC}^\top s_\theta(t, x_t)_C + \varepsilon_C\|^2$
      (the paper's $\lambda(t) = \ell_t^{-2}$);
    - `weighting="likelihood"`: $\tfrac1D (s_\theta - s)^\top G G^\top (s_\theta - s)$
      (the paper's maximum-likelihood weighting $\lambda = 2\Gamma\beta$ for CLD).

    **Arguments:** `process`; `weighting`; `time_sampler` (default uniform on
    $[t_0, t_1]$); `cond_dropout`, `null_cond` as in [`scoreflow.dsm_loss`][].

    **Returns:** a loss `loss(model, x0, key)` with `x0` of shape `(n, *data_shape)`
    (the positions only), a scalar; `loss.per_example(...)` gives shape `(n,)`.

    ```python
    loss = sf.hsm_loss(sf.CLD())
    value = loss(score_model, x0, key)   # score_model(t, u) -> shape of u = (2, d)
    ```
    [arXiv:2112.07068](https://arxiv.org/abs/2112.07068)
    """
    return linear_dsm_loss(
        process,
        weighting=weighting,
        time_sampler=time_sampler,
        rows="noise",
        cond_dropout=cond_dropout,
        null_cond=null_cond,
        call="sf.hsm_loss",
    )
