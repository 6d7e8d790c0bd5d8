"""Registries the tests parametrise over, so that a new process or sampler is one line
here and inherits every test it qualifies for.

- `PROCESSES`: name -> (builder, rung). The rung is the deepest rung of the ladder
  the process stands on (`sf.AbstractScalarProcess`, `sf.AbstractGaussianProcess` or
  `sf.AbstractProcess`); `tests/test_registry.py` checks it against the ladder
  (`isinstance`), so the ladder decides what a process qualifies for. Processes are
  built once per test session ([`process`][]; their sympy derivation takes seconds).
- `PREDICTIONS`: `sf.internal.PREDICTIONS`.
- `SAMPLERS`: name -> `Sampler(solver, grid, order, rung, stochastic)`; the rung a
  scoreflow solver needs is its `process_rung`, a diffrax solver needs only the SDE
  rung.

Tests parametrise with [`process_params`][] / [`sampler_params`][], which mark
everything outside a small default set `slow`, so the registry does not multiply
slow tests in the default run.
"""

import dataclasses
import functools
from collections.abc import Callable

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sympy

import scoreflow as sf

# --------------------------------------------------------------------------- #
# Processes
# --------------------------------------------------------------------------- #

BUILTIN_NAMES = ("VP", "SubVP", "VE", "CosineVP", "RectifiedFlow", "EDM")

_t, _x = sf.t, sf.x
_SCALAR = sf.AbstractScalarProcess
_GAUSSIAN = sf.AbstractGaussianProcess
_SDE = sf.AbstractProcess


def _linear_sde():
    """A small linear SDE with a random (fixed-seed) stable 2x2 drift matrix, rounded
    to two decimals: with full float64 entries the symbolic derivation meets
    integers beyond int64 and raises OverflowError (noted in the registry report)."""
    rng = np.random.default_rng(0)
    F = np.round(-np.eye(2) + 0.3 * rng.standard_normal((2, 2)), 2)
    return sf.LinearSDE(F.tolist(), np.eye(2).tolist())


# name -> (builder, rung). One line per process.
PROCESSES: dict[str, tuple[Callable[[], sf.AbstractProcess], type]] = {
    **{name: (getattr(sf, name), _SCALAR) for name in BUILTIN_NAMES},
    # A sympy SDE with an affine, time-dependent drift (a Gaussian kernel).
    "SDE(sympy)": (lambda: sf.SDE(-(1 + _t) * _x, sympy.sqrt(2 + 2 * _t)), _SCALAR),
    # A sympy interpolant (the trigonometric / "cosine" path).
    "Interpolant(sympy)": (
        lambda: sf.Interpolant(
            sympy.cos(sympy.pi * _t / 2), sympy.sin(sympy.pi * _t / 2)
        ),
        _SCALAR,
    ),
    # A callable interpolant (numeric derivations).
    "Interpolant(callable)": (
        lambda: sf.Interpolant(lambda u: 1 - u**2, lambda u: u, t0=1e-3, t1=0.99),
        _SCALAR,
    ),
    "LinearSDE": (_linear_sde, _GAUSSIAN),
    "CLD": (sf.CLD, _GAUSSIAN),
    # Non-affine drift: no Gaussian kernel (the double well).
    "DoubleWell": (lambda: sf.SDE(-(_x**3) + _x, 1), _SDE),
}

RUNGS = (_SCALAR, _GAUSSIAN, _SDE)


@functools.cache
def process(name: str) -> sf.AbstractProcess:
    """The registry's process `name`, built once per session."""
    return PROCESSES[name][0]()


def builtin(name: str) -> sf.AbstractProcess:
    return process(name)


def builtins() -> dict:
    return {name: builtin(name) for name in BUILTIN_NAMES}


def stands_on(name: str, rung: type) -> bool:
    """Whether registry process `name` stands on `rung` (by its declared deepest
    rung, which tests/test_registry.py checks against the ladder)."""
    return issubclass(PROCESSES[name][1], rung)


def process_names(rung: type = _SDE) -> list[str]:
    """Every registry process that stands on `rung`."""
    return [name for name in PROCESSES if stands_on(name, rung)]


def process_params(rung: type = _SDE, *, default=None, exclude=()) -> list:
    """pytest params over every registry process on `rung`; those not in `default`
    (`None`: all of them) are marked slow."""
    out = []
    for name in process_names(rung):
        if name in exclude:
            continue
        fast = default is None or name in default
        out.append(pytest.param(name, id=name, marks=() if fast else pytest.mark.slow))
    return out


# --------------------------------------------------------------------------- #
# Predictions
# --------------------------------------------------------------------------- #

PREDICTIONS = tuple(sf.internal.PREDICTIONS)


# --------------------------------------------------------------------------- #
# Samplers
# --------------------------------------------------------------------------- #


@dataclasses.dataclass(frozen=True)
class Sampler:
    """A sampler: the solver, the grid it is meant for, its expected order
    (deterministic samplers: the global order of the ODE error; stochastic ones:
    `None`, they are checked in distribution) and the rung of the ladder it needs."""

    solver: diffrax.AbstractSolver
    grid: Callable
    order: int | None
    stochastic: bool = False
    steps: tuple[int, ...] = (16, 32, 64)
    # The global order actually reached on `grid` where the grid costs the solver
    # its claimed `order` (fixed equal-step coefficients on a non-uniform grid);
    # `None`: the claim holds there.
    grid_order: int | None = None

    @property
    def expected_order(self) -> int | None:
        """The order the convergence bands test on `grid`."""
        return self.order if self.grid_order is None else self.grid_order

    @property
    def rung(self) -> type:
        # scoreflow's solvers state the rung they need; diffrax's need an SDE only.
        if isinstance(self.solver, sf.AbstractDiffusionSolver):
            return self.solver.process_rung
        return _SDE

    @property
    def method(self) -> str:
        return "sde" if self.stochastic else "ode"


# name -> Sampler. One line per sampler.
SAMPLERS: dict[str, Sampler] = {
    "euler": Sampler(diffrax.Euler(), sf.uniform_grid, 1),
    "heun": Sampler(diffrax.Heun(), sf.uniform_grid, 2),
    "midpoint": Sampler(diffrax.Midpoint(), sf.uniform_grid, 2),
    "ddim": Sampler(sf.DDIM(), sf.log_snr_grid, 1),
    "dpm++2m": Sampler(sf.DPMSolverPP2M(), sf.log_snr_grid, 2, steps=(32, 64, 128)),
    "edm-heun": Sampler(sf.EDMHeun(), sf.edm_grid, 2, steps=(32, 64, 128)),
    # The Adams methods in (sigma~, x~), without the first-order final step (whose
    # O(h^2) local error would cap the global order at 2). LMS's variable-step
    # Lagrange weights keep order 4 on EDM's rho-grid, but only from ~128 steps
    # (local orders on VP, 64..512 steps: 3.51, 3.85, 3.94), and only while its
    # Euler warm-up step's O(h^2) error stays negligible (see _ORDER_FOR in
    # tests/test_solvers.py: not on a process starting at low noise). iPNDM's fixed
    # equal-step weights see the rho-grid's step ratios 1 + O(h): an O(h^3) local
    # error, so global order 2 whatever max_order (measured 1.96, 1.94, 2.00 at
    # 64..512); its order 4 needs a grid uniform in sigma~.
    "lms": Sampler(
        sf.LMS(lower_order_final=False), sf.edm_grid, 4, steps=(128, 256, 512)
    ),
    "ipndm": Sampler(
        sf.IPNDM(lower_order_final=False),
        sf.edm_grid,
        4,
        steps=(64, 128, 256),
        grid_order=2,
    ),
    "ddpm": Sampler(sf.DDPM(), sf.uniform_grid, None, stochastic=True),
    "ddim-eta1": Sampler(sf.DDIM(eta=1.0), sf.uniform_grid, None, stochastic=True),
    # The default: score_sde's corrector with the norms averaged over the batch
    # (its per-sample form, norms="sample", is heavy-tailed in d = 2: 1/|s|^2 has no
    # mean); tested exactly in test_peer_score_sde.py.
    "pc": Sampler(
        sf.PredictorCorrector(),
        sf.uniform_grid,
        None,
        stochastic=True,
    ),
}


def sampler_names(*, stochastic: bool | None = None) -> list[str]:
    return [
        name
        for name, s in SAMPLERS.items()
        if stochastic is None or s.stochastic == stochastic
    ]


def sampler_params(*, stochastic: bool | None = None, default=None) -> list:
    """pytest params over the registry's samplers; those not in `default` (`None`:
    all) are marked slow."""
    return [
        pytest.param(
            name,
            id=name,
            marks=() if default is None or name in default else pytest.mark.slow,
        )
        for name in sampler_names(stochastic=stochastic)
    ]


# --------------------------------------------------------------------------- #
# Utilities
# --------------------------------------------------------------------------- #


def to_float32(tree):
    """Cast every floating-point array leaf (process parameters, sympy2jax
    constants, network weights) to float32."""
    return jax.tree_util.tree_map(
        lambda leaf: leaf.astype(jnp.float32) if eqx.is_inexact_array(leaf) else leaf,
        tree,
    )
