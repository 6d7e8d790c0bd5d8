r"""EDM (NVlabs/edm `edm_sampler`) and k-diffusion (`get_sigmas_karras` +
`sample_heun`) in one call."""

from __future__ import annotations

import math

from .._process import AbstractScalarProcess, require
from .._sampling import SamplerConfig
from .._sampling._grids import edm_grid
from .._sampling._solvers import EDMHeun
from .._time import SigmaTime


def edm_sampler(
    process,
    num_steps: int = 18,
    *,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    rho: float = 7.0,
    S_churn: float = 0.0,
    S_min: float = 0.0,
    S_max: float = float("inf"),
    S_noise: float = 1.0,
) -> SamplerConfig:
    r"""EDM's sampler (Karras et al. 2022, Algorithm 2; NVlabs/edm `edm_sampler`),
    which is also k-diffusion's `sample_heun` on `get_sigmas_karras(num_steps, ...)`:
    `num_steps` noise levels $\tilde\sigma_0 > \dots > \tilde\sigma_{N-1}$ with
    $\rho$-spacing, a Heun step between consecutive levels (with churn
    $\gamma = \min(S_\text{churn}/N, \sqrt2 - 1)$ where
    $S_{\min} \le \tilde\sigma_i \le S_{\max}$), and a last Euler step to
    $\tilde\sigma = 0$, which is the denoiser $D(x; \tilde\sigma_{N-1})$.

    In scoreflow terms: [`scoreflow.edm_grid`][]`(process, num_steps - 1)`,
    [`scoreflow.EDMHeun`][]`(gamma, S_min, S_max, S_noise,
    lower_order_final=False)` (every step between two levels is Heun) and
    `denoise=True` (the Euler step to 0): $2N - 1$ model evaluations. The default
    `sf.EDMHeun()` with `sf.edm_grid(process, n)` differs: its last step (to
    $t_0$) is Euler and there is no final denoise.

    $\tilde\sigma = \sigma/\alpha$ ([`scoreflow.SigmaTime`][]), so any process with
    a scalar kernel works; for `sf.EDM()` it is EDM's own $\sigma$.

    **Differences kept by design** (only with churn, `S_churn > 0`): the churned
    level $\hat\sigma = \tilde\sigma_i(1 + \gamma)$ is capped at
    $\tilde\sigma(t_1)$, where the predictor's range ends, so when
    $S_{\max} \ge \tilde\sigma_{\max}$ EDM churns its first step above
    $\sigma_{\max}$ and scoreflow does not; and the final Euler step to 0 is the
    denoiser without churn, where EDM churns it too when $S_{\min} \le
    \tilde\sigma_{\min}$. EDM's published stochastic settings (e.g. ImageNet-64:
    `S_churn=40, S_min=0.05, S_max=50, S_noise=1.003` with $\sigma \in [0.002,
    80]$) touch neither, so they are reproduced exactly (given the same draws:
    `sf.sample(..., normals=...)`, one draw per step).

    **Arguments:** `process` (scalar kernel); `num_steps` $N \ge 2$ (EDM's
    `num_steps`, k-diffusion's `n`); `sigma_min`, `sigma_max` (default: the
    process's range $\tilde\sigma(t_0)$, $\tilde\sigma(t_1)$); `rho`; EDM's
    `S_churn`, `S_min`, `S_max`, `S_noise` (k-diffusion's `s_churn`, `s_tmin`,
    `s_tmax`, `s_noise`).

    **Returns:** a [`scoreflow.internal.SamplerConfig`][] (`method="sde"` when
    `S_churn > 0`).

    ```python
    cfg = sf.peers.edm_sampler(sf.EDM(), 18)
    xs = sf.sample(key, cfg.process, pred, shape, num=n, **cfg.kwargs())
    ```
    [arXiv:2206.00364](https://arxiv.org/abs/2206.00364)
    """
    call = "sf.peers.edm_sampler"
    require(process, AbstractScalarProcess, call)
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 2:
        raise ValueError(
            f"`{call}(num_steps=...)` is the number of noise levels, an int >= 2, got "
            f"{num_steps!r}."
        )
    if not S_churn >= 0:
        raise ValueError(f"`{call}(S_churn=...)` must be >= 0, got {S_churn!r}.")
    conv = SigmaTime(process)
    t_start = None if sigma_max is None else conv.to_t(sigma_max)
    t_end = None if sigma_min is None else conv.to_t(sigma_min)
    grid = edm_grid(process, num_steps - 1, rho=rho, t_start=t_start, t_end=t_end)
    gamma = min(S_churn / num_steps, math.sqrt(2) - 1)
    churn = gamma > 0
    solver = EDMHeun(
        gamma=gamma if churn else 0,
        s_tmin=S_min,
        s_tmax=S_max,
        s_noise=S_noise,
        lower_order_final=False,
    )
    return SamplerConfig(
        path="native",
        process=process,
        solver=solver,
        time_grid=grid,
        denoise=True,
        nfe=2 * num_steps - 1,
        label=f"EDM sampler, {num_steps} levels, rho={rho:g}, S_churn={S_churn:g}",
        method="sde" if churn else "ode",
    )
