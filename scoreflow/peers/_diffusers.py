r"""diffusers' schedules and schedulers, each in one scoreflow call.

A diffusers model is trained on a table of $N$ cumulative products
$\bar\alpha_0 > \dots > \bar\alpha_{N-1}$ (`scheduler.alphas_cumprod`). Its exact
continuous-time counterpart is [`scoreflow.DDPMTimesteps.table`][]: its `.process`
passes through every entry, timestep $i$ at $t = i/(N - 1)$, so every integer
timestep, 999 included, is a time of the process. A recipe takes that convention and
returns a [`scoreflow.internal.SamplerConfig`][] whose grid is the scheduler's
timesteps mapped to time, whose solver takes the scheduler's step, and whose final
denoise is the scheduler's last step to $\bar\alpha = 1$ ($\tilde\sigma = 0$):

```python
conv = sf.DDPMTimesteps.table(scheduler.alphas_cumprod.double().numpy())
model = conv.wrap_model(lambda i, x: unet(x[None], i[None])[0])
pred = sf.Predictor(model, conv.process, prediction="eps")    # prediction_type="epsilon"
cfg = sf.peers.diffusers_ddim(conv, 50)                        # DDIMScheduler, eta = 0
xs = cfg.sample(key, pred, (3, 64, 64), num=8, noise=z)        # z: diffusers' randn
```

What every recipe assumes of the scheduler (its other settings are not reproduced):
`clip_sample=False` and `thresholding=False` (diffusers' `DDIMScheduler` and
`DDPMScheduler` clip $\hat x_0$ to $[-1, 1]$ by default; scoreflow never clips),
`rescale_betas_zero_snr=False` (a zero terminal SNR has no finite time),
no Karras/exponential/beta sigmas. diffusers starts from `randn` times
`init_noise_sigma`, which in scoreflow's variable $x$ is a unit normal (DDIM, DDPM,
DPM-Solver, Euler with "leading" spacing) or $\sigma(t_\text{start})z$ (Euler with
"linspace"/"trailing", scoreflow's own default start): pass `noise=` to start from
the same point. The model sees the timestep `conv.from_t(t)`, equal to diffusers'
up to rounding (about $10^{-13}$).
"""

from __future__ import annotations

import warnings

import jax.numpy as jnp
import numpy as np

from .._sampling import SamplerConfig
from .._sampling._grids import _check_steps, diffusers_timesteps as _timesteps
from .._sampling._solvers import DDIM, DDPM, DPMSolverPP2M
from .._time import DDPMTimesteps

_SCHEDULERS = {
    # name -> (family of the spacing rules, default spacing)
    "ddim": ("ddim", "leading"),
    "ddpm": ("ddim", "leading"),
    "euler": ("euler", "linspace"),
    "dpmsolver": ("dpmsolver", "linspace"),
}


def diffusers_schedule(
    num_train_timesteps: int = 1000,
    beta_start: float = 0.0001,
    beta_end: float = 0.02,
    beta_schedule: str = "linear",
    *,
    trained_betas=None,
    interpolation: str = "log_snr",
) -> DDPMTimesteps:
    r"""A diffusers training schedule as a [`scoreflow.DDPMTimesteps`][] with its
    matching process ([`DDPMTimesteps.table`][scoreflow.DDPMTimesteps.table]).

    $\bar\alpha_i = \prod_{j \le i}(1 - \beta_j)$ with diffusers' betas:

    - `"linear"`: $\beta_i$ evenly spaced from `beta_start` to `beta_end`;
    - `"scaled_linear"` (Stable Diffusion): $\sqrt{\beta_i}$ evenly spaced from
      $\sqrt{\beta_\text{start}}$ to $\sqrt{\beta_\text{end}}$;
    - `"squaredcos_cap_v2"` (Nichol & Dhariwal 2021): $\beta_i = \min(1 -
      \bar\alpha(\tfrac{i+1}{N})/\bar\alpha(\tfrac iN), 0.999)$ with
      $\bar\alpha(s) = \cos^2\!\big(\tfrac{s + 0.008}{1.008}\tfrac\pi2\big)$;
    - or `trained_betas`.

    Computed in float64; diffusers computes the table in float32 (about $10^{-7}$
    relative apart). For bit-for-bit agreement with a scheduler pass its own table:
    `sf.DDPMTimesteps.table(scheduler.alphas_cumprod.double().numpy())`.

    **Arguments:** as diffusers' scheduler constructors; `interpolation` for
    fractional timesteps (`"sigma"` for `EulerDiscreteScheduler`, see
    [`scoreflow.DDPMTimesteps`][]).

    **Returns:** a `DDPMTimesteps`; its `.process` is the
    [`scoreflow.internal.TabulatedVP`][] of the table.
    [arXiv:2102.09672](https://arxiv.org/abs/2102.09672)
    """
    call = "sf.peers.diffusers_schedule"
    n = int(num_train_timesteps)
    if trained_betas is not None:
        betas = np.asarray(trained_betas, np.float64)
    elif beta_schedule == "linear":
        betas = np.linspace(beta_start, beta_end, n, dtype=np.float64)
    elif beta_schedule == "scaled_linear":
        betas = np.linspace(beta_start**0.5, beta_end**0.5, n, dtype=np.float64) ** 2
    elif beta_schedule == "squaredcos_cap_v2":

        def abar(s):
            return np.cos((s + 0.008) / 1.008 * np.pi / 2) ** 2

        i = np.arange(n, dtype=np.float64)
        betas = np.minimum(1 - abar((i + 1) / n) / abar(i / n), 0.999)
    else:
        raise ValueError(
            f"`{call}(beta_schedule=...)` must be 'linear', 'scaled_linear' or "
            f"'squaredcos_cap_v2' (or pass trained_betas=), got {beta_schedule!r}."
        )
    return DDPMTimesteps.table(np.cumprod(1.0 - betas), interpolation=interpolation)


def diffusers_timesteps(
    num_inference_steps: int,
    *,
    scheduler: str = "ddim",
    num_train_timesteps: int = 1000,
    timestep_spacing: str | None = None,
    steps_offset: int = 0,
) -> np.ndarray:
    r"""The timesteps of a diffusers scheduler's `set_timesteps(num_inference_steps)`
    (Lin et al. 2024, Table 2), decreasing. With $T$ = `num_train_timesteps`, $n$ =
    `num_inference_steps`:

    | spacing | `"ddim"`, `"ddpm"`, `"euler"` | `"dpmsolver"` |
    | --- | --- | --- |
    | `"leading"` | $k\lfloor T/n\rfloor$ + `steps_offset`, $k = n-1..0$ | $k\lfloor T/(n+1)\rfloor$ + `steps_offset`, $k = n..1$ |
    | `"trailing"` | $\mathrm{round}(T - kT/n) - 1$, $k = 0..n-1$ | the same |
    | `"linspace"` | $n$ points of $[0, T-1]$, rounded (`"euler"`: not rounded), reversed | $n + 1$ points of $[0, T-1]$, rounded, reversed, the last dropped |

    **Arguments:** `num_inference_steps`; `scheduler`, `"ddim"` (`DDIMScheduler`),
    `"ddpm"` (`DDPMScheduler`), `"euler"` (`EulerDiscreteScheduler`) or
    `"dpmsolver"` (`DPMSolverMultistepScheduler`); `num_train_timesteps`;
    `timestep_spacing` (default: the scheduler's, `"leading"` for DDIM and DDPM,
    `"linspace"` for Euler and DPM-Solver); `steps_offset`.

    **Returns:** a NumPy array, int64 (float64 for `"euler"`, whose "linspace"
    timesteps are fractional; diffusers holds them in float32). Map them to scoreflow
    time with `convention.to_t`.

    **Raises:** `ValueError` for an unknown scheduler or spacing, or timesteps
    outside $[0, T - 1]$ or not decreasing.
    [arXiv:2305.08891](https://arxiv.org/abs/2305.08891)
    """
    call = "sf.peers.diffusers_timesteps"
    if scheduler not in _SCHEDULERS:
        raise ValueError(
            f"`{call}(scheduler=...)` must be one of "
            f"{', '.join(map(repr, _SCHEDULERS))}, got {scheduler!r}."
        )
    family, default = _SCHEDULERS[scheduler]
    return _timesteps(
        call,
        num_inference_steps,
        spacing=default if timestep_spacing is None else timestep_spacing,
        train_steps=num_train_timesteps,
        steps_offset=steps_offset,
        family=family,
    )


def _check_schedule(call, schedule):
    if not isinstance(schedule, DDPMTimesteps):
        raise TypeError(
            f"`{call}` takes the training schedule as an sf.DDPMTimesteps, e.g. "
            "sf.DDPMTimesteps.table(scheduler.alphas_cumprod.double().numpy()) or "
            f"sf.peers.diffusers_schedule(); got {type(schedule).__name__}."
        )


def _times(schedule, timesteps):
    return np.asarray(schedule.to_t(np.asarray(timesteps, np.float64)), np.float64)


def _config(schedule, solver, grid, denoise, label, method="ode"):
    if len(grid) < 2:
        raise ValueError(
            f"{label}: the only step is the final jump to x0_hat at t = {grid[0]!r}; "
            "with one step there is nothing to integrate: call predictor.x0(t, x) "
            "directly, or take more steps."
        )
    grid = jnp.asarray(grid, jnp.result_type(float))
    return SamplerConfig(
        path="native",
        process=schedule.process,
        solver=solver,
        time_grid=grid,
        denoise=bool(denoise),
        nfe=len(grid) - 1 + int(bool(denoise)),
        label=label,
        method=method,
    )


def diffusers_ddim(
    schedule: DDPMTimesteps,
    num_inference_steps: int,
    *,
    eta: float = 0.0,
    timestep_spacing: str = "leading",
    steps_offset: int = 0,
    set_alpha_to_one: bool = True,
) -> SamplerConfig:
    r"""diffusers' `DDIMScheduler` (Song et al. 2021): [`scoreflow.DDIM`][]`(eta)` on
    the scheduler's timesteps.

    Step $k$ goes from timestep $i_k$ to $i_{k+1}$ with
    $x' = \sqrt{\bar\alpha'}\,\hat x_0 + \sqrt{1 - \bar\alpha' - s^2}\,\hat\varepsilon
    + s z$, $s^2 = \eta^2\frac{1 - \bar\alpha'}{1 - \bar\alpha}(1 -
    \bar\alpha/\bar\alpha')$. The last step goes to `final_alpha_cumprod`: with
    `set_alpha_to_one=True` (diffusers' default) to $\bar\alpha = 1$, which is
    $\hat x_0$, the recipe's final denoise; otherwise to $\bar\alpha_0$, timestep 0
    (nothing to do when the last timestep is 0 already).

    **Difference kept.** diffusers steps from $i$ to $i - \lfloor T/n\rfloor$
    whatever the spacing, while the next step starts from the spacing's next
    timestep: the two differ for `"linspace"` (e.g. 10 steps: 999 → 899, then
    888 → 788, ...) and for `"trailing"` when $n$ does not divide $T$, which is no
    sampler on a grid. The recipe lands on the next timestep (as
    `DDPMScheduler` does) and warns when diffusers would not.

    **Arguments:** `schedule`, the training table ([`scoreflow.DDPMTimesteps`][]);
    `num_inference_steps`; `eta` ($\eta > 0$ samples with `method="sde"`: the noise
    $z$ comes from scoreflow's Brownian increments, not torch's generator);
    `timestep_spacing`, `steps_offset`, `set_alpha_to_one` as diffusers'.

    **Returns:** a [`scoreflow.internal.SamplerConfig`][] (`num_inference_steps`
    model evaluations; one fewer where diffusers' last step, from timestep 0 to
    $\bar\alpha_0$, does nothing).
    [arXiv:2010.02502](https://arxiv.org/abs/2010.02502)
    """
    call = "sf.peers.diffusers_ddim"
    _check_schedule(call, schedule)
    n = _check_steps(call, num_inference_steps)
    T = schedule.num_timesteps
    ts = diffusers_timesteps(
        n,
        scheduler="ddim",
        num_train_timesteps=T,
        timestep_spacing=timestep_spacing,
        steps_offset=steps_offset,
    )
    prev = ts - T // n
    if np.any(prev[:-1] != ts[1:]):
        k = int(np.argmax(prev[:-1] != ts[1:]))
        warnings.warn(
            f"`{call}`: diffusers' DDIMScheduler steps from timestep {ts[k]} to "
            f"{prev[k]} (t - T // n) but starts its next step at {ts[k + 1]} "
            f"({timestep_spacing!r} spacing, {n} steps over {T}); scoreflow's grid "
            "lands on the next timestep, so the two differ. For an exact match use "
            "'leading' spacing, or 'trailing' with a number of steps that divides "
            "num_train_timesteps.",
            stacklevel=2,
        )
    if prev[-1] >= 0:
        ends, denoise = [int(prev[-1])], False
    elif set_alpha_to_one:
        ends, denoise = [], True
    else:
        ends, denoise = ([0] if ts[-1] > 0 else []), False
    grid = _times(schedule, np.concatenate([ts, ends]))
    stochastic = not (isinstance(eta, (int, float)) and eta == 0)
    return _config(
        schedule,
        DDIM(eta) if stochastic else DDIM(),
        grid,
        denoise,
        f"diffusers DDIMScheduler(eta={eta}, {timestep_spacing}, steps_offset="
        f"{steps_offset}, set_alpha_to_one={set_alpha_to_one}), {n} steps",
        method="sde" if stochastic else "ode",
    )


def diffusers_ddpm(
    schedule: DDPMTimesteps,
    num_inference_steps: int | None = None,
    *,
    timestep_spacing: str = "leading",
    steps_offset: int = 0,
) -> SamplerConfig:
    r"""diffusers' `DDPMScheduler` (Ho et al. 2020) with `variance_type="fixed_small"`:
    ancestral sampling from the posterior $q(x_{i'} \mid x_i, \hat x_0)$ between
    consecutive timesteps, [`scoreflow.DDPM`][] with `method="sde"`. The last step
    goes to $\bar\alpha = 1$: $\hat x_0$, the recipe's final denoise.

    **Differences kept.** diffusers adds noise of variance $10^{-20}$ (its clamp) on
    that last step when the last timestep is not 0; the recipe adds none. The noise
    $z$ comes from scoreflow's Brownian increments. `"fixed_large"` and learned
    variances are not reproduced.

    **Arguments:** `schedule` ([`scoreflow.DDPMTimesteps`][]);
    `num_inference_steps` (default: every training timestep, as without
    `set_timesteps`); `timestep_spacing`, `steps_offset` as diffusers'.

    **Returns:** a [`scoreflow.internal.SamplerConfig`][].
    [arXiv:2006.11239](https://arxiv.org/abs/2006.11239)
    """
    call = "sf.peers.diffusers_ddpm"
    _check_schedule(call, schedule)
    T = schedule.num_timesteps
    n = T if num_inference_steps is None else _check_steps(call, num_inference_steps)
    ts = diffusers_timesteps(
        n,
        scheduler="ddpm",
        num_train_timesteps=T,
        timestep_spacing=timestep_spacing,
        steps_offset=steps_offset,
    )
    return _config(
        schedule,
        DDPM(),
        _times(schedule, ts),
        True,
        f"diffusers DDPMScheduler({timestep_spacing}, steps_offset={steps_offset}), "
        f"{n} steps",
        method="sde",
    )


def diffusers_euler(
    schedule: DDPMTimesteps,
    num_inference_steps: int,
    *,
    timestep_spacing: str = "linspace",
    steps_offset: int = 0,
    final_sigmas_type: str = "zero",
) -> SamplerConfig:
    r"""diffusers' `EulerDiscreteScheduler` (k-diffusion's `sample_euler`, Karras et
    al. 2022, without churn): Euler steps of the probability-flow ODE in
    $(\tilde x, \tilde\sigma) = (x/\alpha, \sigma/\alpha)$,
    $\tilde x' = \tilde x + (\tilde\sigma' - \tilde\sigma)(\tilde x - \hat x_0)/\tilde\sigma
    = \hat x_0 + \tilde\sigma'\hat\varepsilon$, which is exactly a DDIM step
    ([`scoreflow.DDIM`][]`()`), on the scheduler's sigmas: $\tilde\sigma$ at the
    (fractional, for "linspace") timesteps, interpolated *linearly in the timestep*
    (`np.interp`), then $\tilde\sigma = 0$ ($\hat x_0$: the final denoise) or, with
    `final_sigmas_type="sigma_min"`, $\tilde\sigma$ of timestep 0.

    The schedule must interpolate fractional timesteps as diffusers does:
    `interpolation="sigma"` (`sf.DDPMTimesteps.table(ac, interpolation="sigma")` or
    `sf.peers.diffusers_schedule(..., interpolation="sigma")`); integer timesteps
    ("leading", "trailing") are the same under either rule.

    **Arguments:** `schedule` ([`scoreflow.DDPMTimesteps`][]);
    `num_inference_steps`; `timestep_spacing` (diffusers' default "linspace"),
    `steps_offset`, `final_sigmas_type` as diffusers'. (`interpolation_type="linear"`,
    no Karras sigmas, `s_churn=0`.)

    **Returns:** a [`scoreflow.internal.SamplerConfig`][].

    **Raises:** `ValueError` for fractional timesteps with a schedule that
    interpolates in log-SNR.
    [arXiv:2206.00364](https://arxiv.org/abs/2206.00364)
    """
    call = "sf.peers.diffusers_euler"
    _check_schedule(call, schedule)
    if final_sigmas_type not in ("zero", "sigma_min"):
        raise ValueError(
            f"`{call}(final_sigmas_type=...)` must be 'zero' or 'sigma_min', got "
            f"{final_sigmas_type!r}."
        )
    n = _check_steps(call, num_inference_steps)
    ts = diffusers_timesteps(
        n,
        scheduler="euler",
        num_train_timesteps=schedule.num_timesteps,
        timestep_spacing=timestep_spacing,
        steps_offset=steps_offset,
    )
    if schedule.interpolation != "sigma" and np.any(ts != np.round(ts)):
        raise ValueError(
            f"`{call}`: EulerDiscreteScheduler's {timestep_spacing!r} timesteps are "
            "fractional, and it interpolates sigma linearly between timesteps, while "
            "this schedule interpolates the log-SNR. Build the schedule with "
            "interpolation='sigma' (sf.DDPMTimesteps.table(alphas_cumprod, "
            "interpolation='sigma')) and wrap the model with it."
        )
    zero = final_sigmas_type == "zero"
    ends = [] if zero or ts[-1] == 0 else [0.0]
    return _config(
        schedule,
        DDIM(),
        _times(schedule, np.concatenate([ts, ends])),
        zero,
        f"diffusers EulerDiscreteScheduler({timestep_spacing}, steps_offset="
        f"{steps_offset}, final_sigmas_type={final_sigmas_type}), {n} steps",
    )


def diffusers_dpm_solver(
    schedule: DDPMTimesteps,
    num_inference_steps: int,
    *,
    timestep_spacing: str = "linspace",
    steps_offset: int = 0,
) -> SamplerConfig:
    r"""diffusers' `DPMSolverMultistepScheduler` with its defaults
    (`solver_order=2`, `algorithm_type="dpmsolver++"`, `solver_type="midpoint"`,
    `lower_order_final=True`, `final_sigmas_type="zero"`): DPM-Solver++(2M) (Lu et
    al. 2022) in data prediction, [`scoreflow.DPMSolverPP2M`][], on the scheduler's
    timesteps. The first step is first order; the last, to $\tilde\sigma = 0$, is
    diffusers' lower-order final step, whose result is $\hat x_0$: the recipe's final
    denoise (so the solver's own `lower_order_final`, which acts on a step that
    reaches $t_0$, is off).

    **Arguments:** `schedule` ([`scoreflow.DDPMTimesteps`][]);
    `num_inference_steps`; `timestep_spacing` (diffusers' default "linspace") and
    `steps_offset` as diffusers' (`lambda_min_clipped=-inf`, no Karras or Lu
    lambdas).

    **Returns:** a [`scoreflow.internal.SamplerConfig`][] (`num_inference_steps`
    model evaluations).
    [arXiv:2211.01095](https://arxiv.org/abs/2211.01095)
    """
    call = "sf.peers.diffusers_dpm_solver"
    _check_schedule(call, schedule)
    n = _check_steps(call, num_inference_steps)
    ts = diffusers_timesteps(
        n,
        scheduler="dpmsolver",
        num_train_timesteps=schedule.num_timesteps,
        timestep_spacing=timestep_spacing,
        steps_offset=steps_offset,
    )
    return _config(
        schedule,
        DPMSolverPP2M(lower_order_final=False),
        _times(schedule, ts),
        True,
        f"diffusers DPMSolverMultistepScheduler(2M, dpmsolver++, {timestep_spacing}, "
        f"steps_offset={steps_offset}), {n} steps",
    )
