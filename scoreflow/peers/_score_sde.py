r"""score_sde's predictor--corrector sampler (`sampling.get_pc_sampler`), exactly."""

from __future__ import annotations

import jax.numpy as jnp

from .._process import AbstractScalarProcess, require
from .._sampling import SamplerConfig
from .._sampling._solvers import PredictorCorrector

_PREDICTORS = {
    "reverse_diffusion": "reverse_diffusion",
    "ancestral": "ancestral",
    "ancestral_sampling": "ancestral",
    "euler_maruyama": "euler_maruyama",
    "none": "none",
}
_CORRECTORS = ("langevin", "none")


def score_sde_pc(
    process: AbstractScalarProcess,
    n: int,
    *,
    snr: float = 0.16,
    n_steps: int = 1,
    probability_flow: bool = False,
    denoise: bool = True,
    eps: float = 1e-3,
    predictor: str = "reverse_diffusion",
    corrector: str = "langevin",
) -> SamplerConfig:
    r"""score_sde's `get_pc_sampler(sde, shape, predictor, corrector, ..., snr,
    n_steps, probability_flow, denoise, eps)` with `sde.N = n` (Song et al. 2021;
    `yang-song/score_sde_pytorch`, `sampling.py`), as a sampling configuration.

    score_sde visits the $n$ times `linspace(T, eps, n)` ($T = t_1$); at each it
    runs `n_steps` Langevin corrector steps, then one predictor step, both reading
    score_sde's $n$-level discretisation at that time
    ([`process.discretize(t, n)`][scoreflow.AbstractScalarProcess.discretize]:
    DDPM's $\beta_i$ table for [`scoreflow.VP`][], SMLD's $\sigma_i$ ladder for
    [`scoreflow.VE`][]). The grid returned is those $n$ times and then
    `process.t0` (the last predictor step, at `eps`, reads level 0 only; ending at
    $t_0$ marks it as the final step), and the solver is
    [`scoreflow.PredictorCorrector`][]`(snr, n_steps, predictor=...,
    step_size="score_sde", levels=n, probability_flow=..., final_noise=not
    denoise)`. With `denoise=True` the run returns the last predictor step's mean
    (score_sde's `x_mean`), not a Tweedie denoise.

    **Kept by design:** the corrector's norms $\|z\|$, $\|s\|$ are each sample's own
    (score_sde averages them over the batch: its rule is this one for a batch of
    one); the initial noise is the kernel's $N(0, \sigma(t_1)^2 I)$ (score_sde: VP
    $N(0, I)$, VE $N(0, \sigma_\max^2 I)$; pass `noise=` to `sf.sample` to start
    from score_sde's draws); `sf.VE`'s kernel std is the exact
    $\sqrt{\sigma_{VE}(t)^2 - \sigma_\min^2}$, which changes the score of an
    $\varepsilon$-model, not the sampler.

    **Arguments:**

    - `process`: the forward process (score_sde's `sde`), e.g. `sf.VP()` or
      `sf.VE(sigma_min=0.01, sigma_max=50.0)`.
    - `n`: score_sde's `N`, the number of levels and of grid times (an int $\ge 2$).
    - `snr`, `n_steps`: the corrector's signal-to-noise ratio and steps per time.
    - `probability_flow`: the predictor follows the probability-flow ODE (no
      predictor noise; the corrector keeps its own).
    - `denoise`: return the last predictor step's mean.
    - `eps`: the last time visited; must exceed `process.t0`.
    - `predictor`: `"reverse_diffusion"` (`ReverseDiffusionPredictor`),
      `"ancestral"` (`AncestralSamplingPredictor`), `"euler_maruyama"`
      (`EulerMaruyamaPredictor`, $\Delta t = T/n$) or `"none"`.
    - `corrector`: `"langevin"` (`LangevinCorrector`) or `"none"`.

    **Returns:** a [`scoreflow.internal.SamplerConfig`][] (`method="sde"`; `nfe`
    is score_sde's count $n\,(\text{n\_steps} + 1)$).

    ```python
    cfg = sf.peers.score_sde_pc(sf.VP(), 1000, snr=0.16)
    xs = cfg.sample(key, pred, (3, 32, 32), num=16)
    ```
    [arXiv:2011.13456](https://arxiv.org/abs/2011.13456)
    """
    call = "sf.peers.score_sde_pc"
    require(process, AbstractScalarProcess, call)
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"`{call}(process, n)`: n must be an int >= 2, got {n!r}.")
    if predictor not in _PREDICTORS:
        raise ValueError(
            f"`{call}(predictor=...)` must be one of {tuple(_PREDICTORS)}, got "
            f"{predictor!r}."
        )
    if corrector not in _CORRECTORS:
        raise ValueError(
            f"`{call}(corrector=...)` must be one of {_CORRECTORS}, got {corrector!r}."
        )
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 0:
        raise ValueError(f"`{call}(n_steps=...)` must be an int >= 0, got {n_steps!r}.")
    t0, t1 = float(process.t0), float(process.t1)
    if not t0 < eps < t1:
        raise ValueError(
            f"`{call}(eps=...)` must lie in (process.t0, process.t1) = ({t0!r}, "
            f"{t1!r}), got eps={eps!r}: the grid ends with a step from eps to t0. "
            "Use a larger eps, or build the process with a smaller t0= (e.g. "
            "sf.VE(t0=1e-5))."
        )
    pred = _PREDICTORS[predictor]
    steps = n_steps if corrector == "langevin" else 0
    solver = PredictorCorrector(
        snr,
        steps,
        predictor=pred,
        step_size="score_sde",
        levels=n,
        probability_flow=probability_flow,
        final_noise=not denoise,
    )
    dtype = jnp.result_type(float)
    grid = jnp.concatenate(
        [jnp.linspace(t1, eps, n, dtype=dtype), jnp.asarray([t0], dtype)]
    )
    nfe = n * (steps + (pred != "none"))
    return SamplerConfig(
        path="native",
        process=process,
        solver=solver,
        time_grid=grid,
        denoise=False,
        nfe=nfe,
        label=(
            f"score_sde PC: {predictor} + {corrector} (snr={snr}, n_steps={n_steps}), "
            f"N={n}, eps={eps}"
        ),
        method="sde",
    )
