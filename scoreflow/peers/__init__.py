r"""Other libraries' schedules and samplers, each reproduced exactly in one call.

A researcher porting a model or a paper's sampler says "this is diffusers' X" or
"this is score_sde's Y" and gets the same numbers (tested against oracles written
from the peers' published formulas in `tests/test_peer_*.py`; with the `bench` extra
installed, `pytest -m peers` runs the same checks against the real packages). Each
recipe returns a [`scoreflow.internal.SamplerConfig`][]: pass `**cfg.kwargs()` to
[`scoreflow.sample`][] or call `cfg.sample(key, predictor, shape, num=n)`.

The differences kept by design are listed in `docs/coming-from.md`.

**diffusers.** [`diffusers_schedule`][scoreflow.peers.diffusers_schedule] and
[`diffusers_timesteps`][scoreflow.peers.diffusers_timesteps] build its tables and
spacings; `diffusers_ddim`, `diffusers_ddpm`, `diffusers_euler` and
`diffusers_dpm_solver` its schedulers' sampling loops.

**EDM and k-diffusion.** [`edm_sampler`][scoreflow.peers.edm_sampler] is EDM's
`edm_sampler` and k-diffusion's `sample_heun` on Karras levels.

**score_sde.** [`score_sde_pc`][scoreflow.peers.score_sde_pc] is its
`get_pc_sampler` (reverse-diffusion or ancestral predictor, Langevin corrector).

**Meta's flow_matching.** [`flow_matching_velocity`][scoreflow.peers.flow_matching_velocity]
turns its velocity network (data at $u = 1$) into a scoreflow predictor,
[`flow_matching_process`][scoreflow.peers.flow_matching_process] gives the process of
each of its five schedulers, and
[`flow_matching_ode`][scoreflow.peers.flow_matching_ode] its `ODESolver.sample`.
"""

from ._diffusers import (
    diffusers_ddim as diffusers_ddim,
    diffusers_ddpm as diffusers_ddpm,
    diffusers_dpm_solver as diffusers_dpm_solver,
    diffusers_euler as diffusers_euler,
    diffusers_schedule as diffusers_schedule,
    diffusers_timesteps as diffusers_timesteps,
)
from ._edm import edm_sampler as edm_sampler
from ._flow_matching import (
    flow_matching_ode as flow_matching_ode,
    flow_matching_process as flow_matching_process,
    flow_matching_velocity as flow_matching_velocity,
)
from ._score_sde import score_sde_pc as score_sde_pc

__all__: list[str] = [
    "diffusers_ddim",
    "diffusers_ddpm",
    "diffusers_dpm_solver",
    "diffusers_euler",
    "diffusers_schedule",
    "diffusers_timesteps",
    "edm_sampler",
    "flow_matching_ode",
    "flow_matching_process",
    "flow_matching_velocity",
    "score_sde_pc",
]
