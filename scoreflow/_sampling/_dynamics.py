r"""Reverse-time dynamics as diffrax terms, in flipped time $s = t_1 - t$.

The family of reverse-time processes sharing the marginals $p_t$ of a forward
process $dx = f(t, x)\,dt + g(t)\,dW$ is, for any noise level $\eta(t) \ge 0$,

$$dx = \Big[f(t, x) - \tfrac{1 + \eta(t)^2}{2}\,g(t)^2\,\nabla_x\log p_t(x)\Big]dt
      + \eta(t)\,g(t)\,d\bar W_t,$$

run backwards from $t_1$ to $t_0$: $\eta = 0$ is the probability-flow ODE and
$\eta = 1$ the reverse SDE (Anderson 1982; Song et al. 2021). scoreflow integrates
it in the flipped time $s = t_1 - t$, *forwards* in $s$, so no solver's
backward-time code path is ever used (diffrax's stochastic Runge--Kutta solvers
have had backward-time bugs, diffrax#598). In $s$ the drift changes sign and the
noise, being symmetric, does not:

$$dx = -\Big[f - \tfrac{1 + \eta^2}{2} g^2 \nabla\log p_t\Big](t_1 - s)\,ds
      + \eta\,g(t_1 - s)\,dW_s.$$

For a diffusion that does not depend on $x$ the noise is additive, Itô and
Stratonovich readings coincide and diffrax's additive-noise solvers (ShARK, SRA1,
SEA) apply. For a state-dependent (diagonal) diffusion $g(t, x)$ the family gains
the divergence of $g g^\top$ (Anderson 1982):

$$dx = \Big[f - \tfrac{1 + \eta^2}{2}\big(\partial_x g^2 + g^2\nabla_x\log p_t\big)
\Big]dt + \eta\,g\,d\bar W_t \quad(\text{Itô}),$$

and the drift handed to diffrax is converted to the reading the solver converges to:
Itô for `diffrax.Euler` / `ItoMilstein` (`AbstractItoSolver`), Stratonovich for
Heun, Midpoint, EulerHeun, SPaRK, ... (`AbstractStratonovichSolver`), by
subtracting $\tfrac12(\eta g)\partial_x(\eta g) = \tfrac{\eta^2}{4}\partial_x g^2$
(see [`scoreflow.sde_convention`][]). Gaussian processes take neither branch: the
choice is made at trace time.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any

import diffrax
import equinox as eqx
import jax.numpy as jnp
import lineax as lx

from .._process import AbstractProcess


def sde_convention(solver) -> str:
    """`"ito"` or `"stratonovich"`: the reading of an SDE that a diffrax solver
    converges to (`diffrax.AbstractItoSolver`: Euler, ItoMilstein;
    `diffrax.AbstractStratonovichSolver`: Heun, Midpoint, EulerHeun, ReversibleHeun,
    SPaRK, GeneralShARK, SlowRK, StratonovichMilstein, ...). Wrapped solvers are
    unwrapped; anything else (ODE-only solvers, scoreflow's samplers) is `"ito"`.

    Only matters when the diffusion depends on $x$."""
    while isinstance(solver, diffrax.AbstractWrappedSolver):
        solver = solver.solver
    if isinstance(solver, diffrax.AbstractStratonovichSolver):
        return "stratonovich"
    return "ito"


def _is_static_zero(eta) -> bool:
    return isinstance(eta, (int, float)) and not isinstance(eta, bool) and eta == 0


def _as_eta(eta):
    """Keep Python 0 static (so the ODE has no noise at all); anything else numeric
    becomes an array leaf (traced, no recompilation when it changes)."""
    if eta is None or callable(eta) or _is_static_zero(eta):
        return 0 if eta is None else eta
    return jnp.asarray(eta, dtype=jnp.result_type(float))


class ReverseDrift(eqx.Module):
    r"""The drift of the reverse-time family in flipped time $s = t_1 - t$:
    $-\big[f(t, x) - \tfrac{1+\eta(t)^2}{2}\,g(t)^2\,\text{score}(t, x)\big]$ at
    $t = t_1 - s$. Called as `drift(s, x, cond)` (diffrax's `(t, y, args)`, with
    `args` the condition passed to the predictor).

    Samplers that need the model itself (DDIM, DPM-Solver++, EDM) read `process`,
    `predictor` and `t1` from this object.
    """

    process: AbstractProcess
    predictor: Any
    eta: Any
    t1: float = eqx.field(static=True)
    convention: str = eqx.field(static=True, default="ito")

    def time(self, s):
        """Process time $t = t_1 - s$."""
        return self.t1 - s

    def eta_at(self, t):
        if _is_static_zero(self.eta):
            return None
        return self.eta(t) if callable(self.eta) else self.eta

    def __call__(self, s, x, cond=None):
        t = self.time(s)
        x = jnp.asarray(x)
        t = jnp.asarray(t, x.dtype)
        score = self.predictor.score(t, x, cond)
        return -self.process.reverse_drift(t, x, score, self.eta_at(t), self.convention)


def _inner(term):
    """`term` without the wrappers `diffeqsolve` puts around it (diffrax's
    `WrapTerm`, which flips time for backward solves, keeps the wrapped term in its
    public `term` field)."""
    while not isinstance(term, AbstractReverseTerm) and isinstance(
        getattr(term, "term", None), diffrax.AbstractTerm
    ):
        term = term.term
    return term


class AbstractReverseTerm(diffrax.AbstractTerm):
    r"""The reverse-time dynamics as one diffrax term: what scoreflow's samplers
    declare as their `term_structure` (as diffrax's Langevin solvers declare theirs),
    so `diffrax.diffeqsolve` refuses any other term with `TermAndSolverIncompatible`.

    Two final forms: [`ReverseDriftTerm`][scoreflow.internal.ReverseDriftTerm] (the
    probability-flow ODE, $\eta = 0$, an `ODETerm`) and
    [`ReverseSDETerm`][scoreflow.internal.ReverseSDETerm] (a `MultiTerm` of that
    drift and the Brownian noise term, so diffrax's own SDE solvers take it too).
    """

    @abc.abstractmethod
    def reverse_parts(self) -> tuple[ReverseDrift, diffrax.AbstractTerm | None]:
        r"""`(drift, noise)`: the [`ReverseDrift`][scoreflow.internal.ReverseDrift]
        (process, predictor, $\eta$, $t_1$) and the noise term (`None` for the
        ODE)."""


class ReverseDriftTerm(diffrax.ODETerm, AbstractReverseTerm):
    r"""The drift term of the reverse-time dynamics: an `ODETerm` whose vector field
    is a [`ReverseDrift`][scoreflow.internal.ReverseDrift] (process, predictor,
    $\eta$), so scoreflow's samplers find the model through the term's type. On its
    own it is the probability-flow ODE."""

    vector_field: ReverseDrift

    def reverse_parts(self):
        return self.vector_field, None


class ReverseSDETerm(diffrax.MultiTerm, AbstractReverseTerm):
    r"""The reverse-time SDE with noise level $\eta \ne 0$: a `diffrax.MultiTerm` of a
    [`ReverseDriftTerm`][scoreflow.internal.ReverseDriftTerm] and the `ControlTerm`
    of $\eta\,g$ on a Brownian path in flipped time."""

    def reverse_parts(self):
        drift, noise = self.terms
        return _inner(drift).vector_field, noise


class ReverseDiffusion(eqx.Module):
    r"""The diffusion $\eta(t)\,g(t)$ at $t = t_1 - s$, as a diagonal lineax operator
    acting on a Brownian increment shaped like `x` (for a
    [`scoreflow.AbstractLinearProcess`][], $\eta(t)\,G(t)$ on the block axis).

    The noise coefficient of the reverse dynamics' `ControlTerm`, not a sampler:
    score_sde's `ReverseDiffusionPredictor` is
    [`scoreflow.PredictorCorrector`][]`(predictor="reverse_diffusion")` (exactly,
    [`scoreflow.peers.score_sde_pc`][]). `sf.ReverseDiffusion` is a deprecated
    alias of this class."""

    process: AbstractProcess
    eta: Any
    t1: float = eqx.field(static=True)

    def __call__(self, s, x, cond=None):
        x = jnp.asarray(x)
        t = jnp.asarray(self.t1 - s, x.dtype)
        eta = self.eta(t) if callable(self.eta) else self.eta
        op = self.process.diffusion_operator(t, x)
        if isinstance(op, lx.DiagonalLinearOperator):  # keep it diagonal for diffrax
            return lx.DiagonalLinearOperator((eta * op.diagonal).astype(x.dtype))
        return op * jnp.asarray(eta, x.dtype)


def _brownian(brownian_motion, key, process, shape, call):
    if brownian_motion is not None and key is not None:
        raise ValueError(f"`{call}`: pass either brownian_motion= or key=, not both.")
    if brownian_motion is not None:
        return brownian_motion
    if key is None:
        raise ValueError(
            f"`{call}` needs randomness: pass key= (a VirtualBrownianTree on the "
            "flipped time s in [0, t1 - t0] is built for you) or brownian_motion= "
            "(any diffrax.AbstractBrownianPath in flipped time s = t1 - t)."
        )
    if shape is None:
        raise ValueError(f"`{call}(key=...)`: also pass shape= (the shape of one x).")
    span = process.t1 - process.t0
    return diffrax.VirtualBrownianTree(
        0.0,
        span,
        tol=span / 2**12,
        shape=tuple(shape),
        key=key,
        levy_area=diffrax.SpaceTimeLevyArea,
    )


def reverse_dynamics(
    process: AbstractProcess,
    predictor,
    *,
    eta: float | Callable = 1.0,
    brownian_motion: diffrax.AbstractBrownianPath | None = None,
    key=None,
    shape: tuple[int, ...] | None = None,
    convention: str | None = None,
):
    r"""The reverse-time family with noise level $\eta(t)$, as diffrax terms in flipped
    time $s = t_1 - t$ (integrate forwards in $s$ from $t_1 - t_\text{start}$):

    $$dx = -\Big[f - \tfrac{1 + \eta^2}{2} g^2 \nabla\log p_t\Big]ds + \eta\,g\,dW_s.$$

    **Arguments:**

    - `process`: the forward process.
    - `predictor`: an [`scoreflow.Predictor`][] (or a guided one from
      [`scoreflow.cfg`][]); its `score(t, x, cond)` is used, `cond` being diffrax's
      `args`.
    - `eta`: a number $\ge 0$ or a callable `eta(t)` of process time. A Python `0`
      gives the probability-flow ODE (an `ODETerm`, no noise term at all).
    - `brownian_motion` or `key` (+ `shape`): the Brownian path in $s$ for $\eta \ne 0$.
    - `convention`: `"ito"` or `"stratonovich"`, the reading of the returned terms;
      it must match the solver ([`scoreflow.sde_convention`][]`(solver)`;
      [`scoreflow.sample`][] does this for you). Irrelevant unless the diffusion
      depends on $x$; then it is required (no silent default), otherwise `None`
      means `"ito"`.

    **Returns:** a [`ReverseDriftTerm`][scoreflow.internal.ReverseDriftTerm] (a
    `diffrax.ODETerm`, for `eta=0`) or a
    [`ReverseSDETerm`][scoreflow.internal.ReverseSDETerm] (a
    `diffrax.MultiTerm(ODETerm, ControlTerm)`); both are
    [`AbstractReverseTerm`][scoreflow.internal.AbstractReverseTerm]s, the term
    structure of scoreflow's samplers.

    **Raises:** `ValueError` if the noise term has no Brownian path.

    ```python
    terms = sf.reverse_dynamics(p, pred, eta=0.5, key=key, shape=(2,))
    s1 = p.t1 - p.t0
    sol = diffrax.diffeqsolve(terms, diffrax.Euler(), 0.0, s1, 1e-3, x1)
    ```
    """
    eta = _as_eta(eta)
    convention = process.sde_reading(
        convention, call="sf.reverse_dynamics", noisy=not _is_static_zero(eta)
    )
    drift = ReverseDriftTerm(
        ReverseDrift(process, predictor, eta, float(process.t1), convention)
    )
    if _is_static_zero(eta):
        return drift
    bm = _brownian(brownian_motion, key, process, shape, "sf.reverse_dynamics")
    return ReverseSDETerm(
        drift,
        diffrax.ControlTerm(ReverseDiffusion(process, eta, float(process.t1)), bm),
    )


def reverse_sde(
    process: AbstractProcess,
    predictor,
    brownian_motion: diffrax.AbstractBrownianPath | None = None,
    *,
    key=None,
    shape: tuple[int, ...] | None = None,
    convention: str | None = None,
) -> diffrax.MultiTerm:
    r"""The reverse-time SDE (Anderson 1982; Song et al. 2021, eq. 6) in flipped time
    $s = t_1 - t$: drift $-[f - g^2\nabla\log p_t]$, diffusion $g$:

    $$dx = -\big[f(t, x) - g(t)^2\,\nabla_x\log p_t(x)\big]\,ds + g(t)\,dW_s,
    \qquad t = t_1 - s.$$

    **Arguments:** `process`, `predictor` (its `score(t, x, cond)`, `cond` = diffrax
    `args`), and the Brownian path in $s$: `brownian_motion`, or `key` and `shape`
    (then a `diffrax.VirtualBrownianTree` on $[0, t_1 - t_0]$ with Lévy area, so
    every diffrax SDE solver, ShARK included, works). For a state-dependent diffusion
    $g(t, x)$ the drift gains $-\partial_x g^2$ (Anderson 1982) and `convention`
    (`"ito"` or `"stratonovich"`) must match the solver, see
    [`scoreflow.reverse_dynamics`][].

    **Returns:** `diffrax.MultiTerm(ODETerm, ControlTerm)`.

    ```python
    terms = sf.reverse_sde(p, pred, key=jr.key(0), shape=(2,))
    sol = diffrax.diffeqsolve(terms, diffrax.ShARK(), 0.0, p.t1 - p.t0, 1e-2, x1)
    ```
    [arXiv:2011.13456](https://arxiv.org/abs/2011.13456)
    """
    return reverse_dynamics(
        process,
        predictor,
        eta=1.0,
        brownian_motion=brownian_motion,
        key=key,
        shape=shape,
        convention=convention,
    )


def probability_flow(process: AbstractProcess, predictor) -> diffrax.ODETerm:
    r"""The probability-flow ODE (Song et al. 2021, eq. 13) in flipped time
    $s = t_1 - t$:

    $$\frac{dx}{ds} = -\Big[f(t, x) - \tfrac12 g(t)^2\,\nabla_x\log p_t(x)\Big],
    \qquad t = t_1 - s,$$

    which shares the marginals $p_t$ of the forward process.

    **Arguments:** `process`, `predictor` (its `score(t, x, cond)`, `cond` = diffrax
    `args`).

    **Returns:** a `diffrax.ODETerm`; integrate it forwards in $s$ from
    $t_1 - t_\text{start}$ to $t_1 - t_\text{end}$.
    [arXiv:2011.13456](https://arxiv.org/abs/2011.13456)
    """
    return reverse_dynamics(process, predictor, eta=0)


class _ForwardDrift(eqx.Module):
    process: AbstractProcess
    convention: str = eqx.field(static=True)

    def __call__(self, t, x, args=None):
        x = jnp.asarray(x)
        t = jnp.asarray(t, x.dtype)
        if self.convention == "stratonovich":
            return self.process.stratonovich_drift(t, x).astype(x.dtype)
        return self.process.drift(t, x).astype(x.dtype)


class _ForwardDiffusion(eqx.Module):
    process: AbstractProcess

    def __call__(self, t, x, args=None):
        x = jnp.asarray(x)
        return self.process.diffusion_operator(jnp.asarray(t, x.dtype), x)


def forward_sde(
    process: AbstractProcess,
    brownian_motion: diffrax.AbstractBrownianPath,
    *,
    convention: str | None = None,
) -> diffrax.MultiTerm:
    r"""The forward SDE $dx = f\,dt + g\,dW$ as diffrax terms in process time
    ($t = 0$ data), with the drift in the reading the solver converges to:
    `"ito"` gives $f$ (for `diffrax.Euler`, Euler--Maruyama), `"stratonovich"` gives
    $f_S = f - \tfrac14\partial_x g^2$ (for `diffrax.Heun`, `Midpoint`, ...); use
    [`scoreflow.sde_convention`][]`(solver)`. Both describe the same process.

    **Arguments:** `process`; `brownian_motion` a diffrax Brownian path shaped like
    one `x`; `convention` (required when the diffusion depends on $x$).

    **Returns:** `diffrax.MultiTerm(ODETerm, ControlTerm)`.

    ```python
    p = sf.SDE(drift=0.5 * sf.x, diffusion=0.4 * sf.x)          # geometric BM
    bm = diffrax.VirtualBrownianTree(0.0, 1.0, 1e-3, (), key)
    solver = diffrax.Heun()
    terms = sf.forward_sde(p, bm, convention=sf.sde_convention(solver))
    sol = diffrax.diffeqsolve(terms, solver, 0.0, 1.0, 1e-2, jnp.asarray(1.0))
    ```
    """
    convention = process.sde_reading(convention, call="sf.forward_sde")
    return diffrax.MultiTerm(
        diffrax.ODETerm(_ForwardDrift(process, convention)),
        diffrax.ControlTerm(_ForwardDiffusion(process), brownian_motion),
    )
