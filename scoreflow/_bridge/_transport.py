r"""Transport along a stochastic interpolant: the ODE $dX = b\,dt$ and the SDEs
$dX = [b \pm \epsilon\,s]\,dt + \sqrt{2\epsilon}\,dW$, integrated with diffrax."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import lineax as lx
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from ._interpolant import StochasticInterpolant


class _Drift(eqx.Module):
    r"""The drift in solver time $u$: $t = u$ forwards, $t = 1 - u$ backwards
    (flipped, so diffrax always integrates forwards), where the drift is
    $\pm(b \pm \epsilon s)$."""

    interp: StochasticInterpolant
    velocity: Any
    denoiser: Any
    eps: Any
    backward: bool = eqx.field(static=True)

    def __call__(self, u, x, args):
        t = 1 - u if self.backward else u
        t = jnp.asarray(t, x.dtype)
        out = self.velocity(t, x)
        if self.denoiser is not None:
            score = self.interp.score_from_denoiser(t, self.denoiser(t, x))
            e = _eps_at(self.eps, t)
            out = out - e * score if self.backward else out + e * score
        return -out if self.backward else out


class _Noise(eqx.Module):
    eps: Any
    backward: bool = eqx.field(static=True)

    def __call__(self, u, x, args):
        t = 1 - u if self.backward else u
        scale = jnp.sqrt(2 * _eps_at(self.eps, jnp.asarray(t, x.dtype)))
        return lx.DiagonalLinearOperator(
            jnp.broadcast_to(scale, x.shape).astype(x.dtype)
        )


def _eps_at(eps, t):
    return jnp.asarray(eps(t) if callable(eps) else eps, t.dtype)


def transport(
    key: PRNGKeyArray | None,
    interp: StochasticInterpolant,
    model,
    x: Float[ArrayLike, " n *shape"],
    *,
    method: str = "ode",
    eps: float | Callable = 1.0,
    direction: str = "forward",
    solver: diffrax.AbstractSolver | None = None,
    steps: int = 100,
    return_path: bool = False,
) -> (
    Float[Array, " n *shape"]
    | tuple[Float[Array, " n *shape"], Float[Array, " k n *shape"]]
):
    r"""Carry samples across a stochastic interpolant with a learned (or exact)
    velocity, integrated by diffrax on a uniform grid of `steps` steps.

    Forwards ($\rho_0 \to \rho_1$, $t: 0 \to 1$), the probability-flow ODE and the
    forward SDE of Albergo et al. (2023, Thm 2.21),

    $$dX = b(t, X)\,dt \qquad\text{or}\qquad
      dX = \big[b + \epsilon(t)\,s\big](t, X)\,dt + \sqrt{2\epsilon(t)}\,dW,$$

    with the score $s = -\eta/\gamma$ from the denoiser $\eta$. Backwards
    ($\rho_1 \to \rho_0$) the ODE runs in reverse and the SDE is
    $dX = [b - \epsilon s]\,dt + \sqrt{2\epsilon}\,dW$ backwards in time; both are
    integrated in the flipped time $u = 1 - t$ (forwards in $u$), as
    scoreflow's samplers do. Where $\gamma(t) = 0$ (the ends) the score term is
    dropped (see [`score_from_denoiser`][scoreflow.StochasticInterpolant.score_from_denoiser]):
    with the default `diffrax.Euler()` for the SDE this is only the first drift
    evaluation.

    **Arguments:**

    - `key`: PRNG key for the Brownian paths (`"sde"`; ignored, may be `None`,
      for `"ode"`).
    - `interp`: the [`scoreflow.StochasticInterpolant`][] the model was trained on.
    - `model`: `"ode"`: the velocity `b(t, x)` (unbatched); `"sde"`: the pair
      `(b, eta)` trained with `objective="velocity+score"`.
    - `x`: a batch `(n, *shape)` from $\rho_0$ (forward) or $\rho_1$ (backward).
    - `method`: `"ode"` or `"sde"`.
    - `eps`: $\epsilon \ge 0$, a float or a callable `eps(t)` (`"sde"` only). The
      score term $-\epsilon(x - I_t)/\gamma^2$ is stiff where $\gamma$ is small:
      Euler--Maruyama needs roughly $\epsilon\,\Delta t/\gamma(t)^2 < 1$, so scale
      `eps` with $\gamma^2$ (e.g. `eps = gamma(1/2)**2 / 2`) or take more `steps`.
    - `direction`: `"forward"` (0 to 1) or `"backward"` (1 to 0).
    - `solver`: a diffrax solver; default `diffrax.Heun()` (ODE) or
      `diffrax.Euler()` (Euler–Maruyama, SDE).
    - `steps`: the number of uniform steps.
    - `return_path`: also return the states on the grid, shape
      `(steps + 1, n, *shape)`, in solver order (first row is `x`).

    **Returns:** the transported batch `(n, *shape)`, or `(x_end, path)`.

    **Raises:** `ValueError` for an unknown method or direction, `steps < 1`, `eps < 0`, or
    `"sde"` without a `(velocity, denoiser)` pair.
    """
    call = "sf.transport"
    if method not in ("ode", "sde"):
        raise ValueError(f"`{call}`: method must be 'ode' or 'sde', got {method!r}.")
    if direction not in ("forward", "backward"):
        raise ValueError(
            f"`{call}`: direction must be 'forward' or 'backward', got {direction!r}."
        )
    if not (isinstance(steps, int) and steps >= 1):
        raise ValueError(f"`{call}`: steps must be an int >= 1, got {steps!r}.")
    if isinstance(eps, (int, float)) and not eps >= 0:
        raise ValueError(f"`{call}`: eps must be >= 0, got eps={eps!r}.")
    backward = direction == "backward"
    if method == "sde":
        if not (isinstance(model, (tuple, list)) and len(model) == 2):
            raise ValueError(
                f"`{call}(method='sde')` needs model=(velocity, denoiser), the pair "
                "trained with sf.bridge_loss(..., objective='velocity+score'); got "
                f"{type(model).__name__}."
            )
        if not interp.has_noise:
            raise ValueError(
                f"`{call}(method='sde')`: {interp!r} has gamma = 0, so no score is "
                "defined; use method='ode'."
            )
        if key is None:
            raise ValueError(f"`{call}(method='sde')` needs a PRNG key.")
        velocity, denoiser = model
    else:
        velocity = model[0] if isinstance(model, (tuple, list)) else model
        denoiser = None
    if solver is None:
        solver = diffrax.Heun() if method == "ode" else diffrax.Euler()
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    n = x.shape[0]
    keys = jr.split(jr.key(0) if key is None else key, n)
    grid = jnp.linspace(0.0, 1.0, steps + 1, dtype=x.dtype)
    drift = _Drift(interp, velocity, denoiser, eps, backward)
    saveat = diffrax.SaveAt(ts=grid) if return_path else diffrax.SaveAt(t1=True)

    def one(k, x0):
        if method == "ode":
            terms = diffrax.ODETerm(drift)
        else:
            bm = diffrax.UnsafeBrownianPath(x0.shape, k)
            terms = diffrax.MultiTerm(
                diffrax.ODETerm(drift), diffrax.ControlTerm(_Noise(eps, backward), bm)
            )
        sol = diffrax.diffeqsolve(
            terms,
            solver,
            grid[0],
            grid[-1],
            None,
            x0,
            saveat=saveat,
            stepsize_controller=diffrax.StepTo(ts=grid),
            adjoint=diffrax.ForwardMode()
            if method == "sde"
            else diffrax.RecursiveCheckpointAdjoint(),
            max_steps=steps,
        )
        return sol.ys

    ys = jax.vmap(one)(keys, x)
    if return_path:
        path = jnp.moveaxis(ys, 0, 1)
        return path[-1], path
    return ys[:, 0]
