r"""Other libraries' schedules and samplers, each reproduced exactly in one call.

A researcher porting a model or a paper's sampler says "this is diffusers' X" or
"this is score_sde's Y" and gets the same numbers (tested against oracles written
from the peers' published formulas in `tests/test_peer_*.py`; with the `bench` extra
installed, `pytest -m peers` runs the same checks against the real packages). Each
recipe returns a [`scoreflow.internal.SamplerConfig`][]: pass `**cfg.kwargs()` to
[`scoreflow.sample`][] or call `cfg.sample(key, predictor, shape, num=n)`.

The differences kept by design are listed in `docs/coming-from.md`.
"""

from ._diffusers import (
    diffusers_ddim as diffusers_ddim,
    diffusers_ddpm as diffusers_ddpm,
    diffusers_dpm_solver as diffusers_dpm_solver,
    diffusers_euler as diffusers_euler,
    diffusers_schedule as diffusers_schedule,
    diffusers_timesteps as diffusers_timesteps,
)

__all__: list[str] = [
    "diffusers_ddim",
    "diffusers_ddpm",
    "diffusers_dpm_solver",
    "diffusers_euler",
    "diffusers_schedule",
    "diffusers_timesteps",
]
