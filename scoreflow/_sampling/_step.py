r"""One sampler step with given inputs, and given per-step normal draws.

Comparing one DDIM / DDPM / DPM-Solver++ / EDM step with another library's needs the
step itself, from $(t, x)$ to $(t', x')$, with the other library's model-output
history and its normal draws: [`scoreflow.step`][] is that call, for every scoreflow
sampler and every diffrax solver. The draws travel as a diffrax path
([`GivenNormals`][scoreflow.internal.GivenNormals]) whose increment over the
$j$-th of the $k$ equal parts of step $i$ is $z_{ij}\sqrt{\Delta s}$: a sampler that
reads $k$ standard normals per step (`solver.normals_per_step()`) reads exactly
$z_{i1}, \dots, z_{ik}$. `sf.sample(..., normals=z)` replays a whole run's draws
the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import diffrax
import jax.numpy as jnp
from jaxtyping import Array

from .._process import AbstractProcess, require
from ._dynamics import _as_eta, _is_static_zero, reverse_dynamics, sde_convention
from ._solvers import AbstractDiffusionSolver


class GivenNormals(diffrax.AbstractPath):
    r"""A control path in flipped time $s$ made of given standard normals: over the
    $j$-th of the $k$ equal parts of step $i$ of the grid `s` its increment is
    `z[i, j] * sqrt(Δs)`. A stand-in for a Brownian path when the draws come from
    elsewhere (another library's generator): the increments have the law of
    Brownian increments when `z` is standard normal, and any other values are used
    as they are.

    **Fields:** `s` (the increasing flipped-time grid, shape `(n + 1,)`), `z` (shape
    `(n, k, *shape)`).
    """

    s: Array
    z: Array
    t0: Any
    t1: Any

    def __init__(self, s, z):
        self.s = jnp.asarray(s)
        self.z = jnp.asarray(z)
        self.t0 = self.s[0]
        self.t1 = self.s[-1]

    def evaluate(self, t0, t1=None, left: bool = True):
        if t1 is None:
            raise ValueError(
                "GivenNormals holds increments only: evaluate it over an interval "
                "(t0, t1), as diffrax's ControlTerm does."
            )
        n, k = self.z.shape[0], self.z.shape[1]
        t0 = jnp.asarray(t0, self.s.dtype)
        i = jnp.clip(jnp.searchsorted(self.s, t0, side="right") - 1, 0, n - 1)
        part = (self.s[i + 1] - self.s[i]) / k
        j = jnp.clip(jnp.round((t0 - self.s[i]) / part).astype(jnp.int32), 0, k - 1)
        dt = jnp.asarray(t1, self.s.dtype) - t0
        return self.z[i, j] * jnp.sqrt(dt).astype(self.z.dtype)


def check_solver(call: str, solver, process) -> None:
    """`solver` is a diffrax solver whose rung of the process ladder `process`
    stands on (the one check `sf.sample` and `sf.step` share)."""
    if not isinstance(solver, diffrax.AbstractSolver):
        raise TypeError(
            f"`{call}(solver=...)` must be a diffrax solver instance such as "
            f"diffrax.Heun() or sf.DDIM(), got {solver!r}."
        )
    require(
        process,
        getattr(solver, "process_rung", AbstractProcess),
        f"{call}(solver={type(solver).__name__}(...))",
        hint=(
            " The exponential-integrator and ancestral samplers step through a scalar "
            "kernel alpha(t), sigma(t); use a diffrax solver instead, e.g. "
            "solver=diffrax.Heun() (method='ode') or diffrax.Euler() (method='sde')."
        ),
    )


def normals_per_step(solver) -> int:
    """How many standard normals one step of `solver` reads (a diffrax solver: one
    increment)."""
    if isinstance(solver, AbstractDiffusionSolver):
        return solver.normals_per_step()
    return 1


def check_normals_solver(solver, call: str) -> None:
    """Given draws replace plain Brownian increments: refuse solvers that need a
    Lévy area (ShARK, SRA1, SEA, ...)."""
    if getattr(solver, "minimal_levy_area", diffrax.BrownianIncrement) not in (
        diffrax.BrownianIncrement,
        diffrax.AbstractBrownianIncrement,
    ):
        raise ValueError(
            f"`{call}(normals=...)`: {type(solver).__name__} needs a Lévy area as well "
            "as the Brownian increments, which given normal draws do not define; use a "
            "solver that reads plain increments (diffrax.Euler, diffrax.Heun, or a "
            "scoreflow sampler)."
        )


def shape_normals(normals, lead: tuple[int, ...], k: int, shape, dtype, call: str):
    """`normals` shaped `(*lead, k, *shape)`; with `k = 1` the `k` axis may be left
    out."""
    z = jnp.asarray(normals, dtype)
    full = (*lead, k, *shape)
    if k == 1 and z.shape == (*lead, *shape):
        z = z.reshape(full)
    if z.shape != full:
        short = f" or {(*lead, *shape)}" if k == 1 else ""
        raise ValueError(
            f"`{call}(normals=...)` must have shape {full}{short} ({k} standard "
            f"normal draw(s) of shape {tuple(shape)} per step), got {z.shape}."
        )
    return z


def step(
    solver: diffrax.AbstractSolver,
    process: AbstractProcess,
    predictor,
    t,
    t_next,
    x,
    *,
    method: str = "ode",
    eta=None,
    normals=None,
    history: Sequence[tuple] | None = None,
    state=None,
    cond=None,
    return_state: bool = False,
):
    r"""One step of a sampler, from $(t, x)$ to $(t', x')$, $t' < t$, with given
    inputs: the previous points of a multistep method and the normal draws of a
    stochastic one.

    The step is `solver.step` on the reverse dynamics in flipped time
    $s = t_1 - t$, exactly as inside [`scoreflow.sample`][] (so a step that ends at
    the data end $t_0$ takes the samplers' lower-order final branch).

    **Arguments:**

    - `solver`: a scoreflow sampler or any diffrax solver.
    - `process`, `predictor`: as for `sf.sample`; `x` is one unbatched sample
      (`jax.vmap` for a batch).
    - `t`, `t_next`: process times of the step.
    - `method`, `eta`: `"ode"` (probability flow) or `"sde"` (noise level `eta`,
      default 1), as for `sf.sample`.
    - `normals`: for a stochastic step, the `k = solver.normals_per_step()` standard
      normal draws, shape `(k, *x.shape)` (or `x.shape` when `k = 1`), e.g. a peer's
      `variance_noise`.
    - `history`: the points a multistep solver evaluated the model at before this
      step, most recent first, as `(t_i, x_i, x0_i)` triples: time, the state the
      solver stepped from there (for [`scoreflow.UniPC`][], the corrected state) and
      the data prediction $\hat x_0$ there (from an $\varepsilon$-model,
      $\hat x_0 = (x_i - \sigma_i\hat\varepsilon_i)/\alpha_i$). Samplers keeping no
      history refuse a non-empty one.
    - `state`: a solver state to continue from (as returned with
      `return_state=True`), instead of `history`.
    - `cond`: the condition passed to the predictor.
    - `return_state`: also return the solver state after the step.

    **Returns:** $x'$ (and the state).

    ```python
    x1 = sf.step(sf.DDIM(eta=1.0), p, pred, 0.5, 0.4, x, method="sde", normals=z)
    x2 = sf.step(sf.DPMSolverPP2M(), p, pred, 0.4, 0.3, x1,
                 history=[(0.5, x, pred.x0(0.5, x))])
    ```
    """
    call = "sf.step"
    if method not in ("ode", "sde"):
        raise ValueError(
            f"`{call}(method=...)` must be 'ode' or 'sde', got {method!r}."
        )
    check_solver(call, solver, process)
    if history is not None and state is not None:
        raise ValueError(f"`{call}`: pass either history= or state=, not both.")
    x = jnp.asarray(x)
    dtype = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.result_type(float)
    x = x.astype(dtype)
    t1 = float(process.t1)
    s0 = jnp.asarray(t1 - jnp.asarray(t, dtype), dtype)
    s1 = jnp.asarray(t1 - jnp.asarray(t_next, dtype), dtype)
    if method == "ode":
        if normals is not None:
            raise ValueError(
                f"`{call}`: normals= are the draws of a stochastic step; pass "
                "method='sde' (method='ode' is the probability-flow ODE)."
            )
        if eta is not None and not _is_static_zero(eta):
            raise ValueError(
                f"`{call}`: eta={eta!r} adds noise, which needs method='sde'."
            )
        terms = reverse_dynamics(process, predictor, eta=0)
    else:
        if normals is None:
            raise ValueError(
                f"`{call}(method='sde')` needs the step's normal draws: pass normals= "
                f"({normals_per_step(solver)} draw(s) shaped like x)."
            )
        check_normals_solver(solver, call)
        k = normals_per_step(solver)
        z = shape_normals(normals, (), k, x.shape, dtype, call)[None]
        path = GivenNormals(jnp.stack([s0, s1]), z)
        terms = reverse_dynamics(
            process,
            predictor,
            eta=_as_eta(1.0 if eta is None else eta),
            brownian_motion=path,
            convention=sde_convention(solver),
        )
    if state is None:
        if history:
            state = solver_state_from_history(solver, process, t, x, history, call)
        else:
            state = solver.init(terms, s0, s1, x, cond)
    y1, _, _, state, _ = solver.step(terms, s0, s1, x, cond, state, False)
    return (y1, state) if return_state else y1


def solver_state_from_history(solver, process, t, x, history, call: str):
    """The solver's state at `(t, x)` from a given history (see `sf.step`)."""
    if not isinstance(solver, AbstractDiffusionSolver):
        raise ValueError(
            f"`{call}(history=...)`: {type(solver).__name__} keeps no history between "
            "steps (a one-step method); leave history out."
        )
    points = []
    for i, item in enumerate(history):
        if len(item) != 3:
            raise ValueError(
                f"`{call}(history=...)`: entry {i} must be a (t_i, x_i, x0_i) triple, "
                f"got {len(item)} items."
            )
        ti, xi, mi = item
        points.append(
            (
                jnp.asarray(ti, x.dtype),
                jnp.asarray(xi, x.dtype).reshape(x.shape),
                jnp.asarray(mi, x.dtype).reshape(x.shape),
            )
        )
    return solver.state_from_history(process, jnp.asarray(t, x.dtype), x, points)
