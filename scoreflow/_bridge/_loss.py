r"""Regression losses for stochastic interpolants and Schrödinger-bridge CFM."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

from .._loss._cfm import _import_ott, ot_coupling
from ._interpolant import StochasticInterpolant

COUPLINGS = ("independent", "ot", "sb")
OBJECTIVES = ("velocity", "velocity+score")
SINGULAR_T_MIN = 1e-3
"""Default clip of the loss times, $t \\in [t_\\min, 1 - t_\\min]$, when
$\\dot\\gamma$ is singular at the ends (Brownian $\\gamma$)."""


def sb_epsilon(interp: StochasticInterpolant) -> float:
    r"""The entropic regularisation of the static Schrödinger bridge for `interp`:
    $2\sigma^2$ with $\sigma^2 = 4\gamma(\tfrac12)^2$, exact for
    $\gamma = \sigma\sqrt{t(1 - t)}$ (Tong et al. 2024) and a scale-matched choice
    for other $\gamma$."""
    return float(2 * 4 * interp.gamma(0.5) ** 2)


class BridgeLoss(eqx.Module):
    r"""The loss of a stochastic interpolant (see [`scoreflow.bridge_loss`][]).

    Called as `loss(model, x0, x1, key)` with source and target batches of the same
    shape `(n, *shape)`, or as `loss(model, pairs, key)` with `pairs` of shape
    `(n, 2, *shape)` (`jnp.stack([x0, x1], axis=1)`), which is what
    `sf.train.fit(loss, model, pairs, ...)` passes.
    """

    interp: StochasticInterpolant
    coupling: str = eqx.field(static=True)
    objective: str = eqx.field(static=True)
    epsilon: float = eqx.field(static=True)
    t_min: float = eqx.field(static=True)

    def pair(self, key, x0, x1):
        """Re-pair the rows of `x1` with those of `x0` by the coupling: a random
        permutation (`"independent"`), or a draw from the minibatch (entropic) OT
        plan (`"ot"`, `"sb"`). Rows of `x0` keep their order."""
        if self.coupling == "independent":
            return x1[jr.permutation(key, x1.shape[0])]
        idx = ot_coupling(
            key, x0, x1, epsilon=self.epsilon, relative=self.coupling == "ot"
        )
        return x1[idx]

    def __call__(self, model, x0, x1, key=None):
        if key is None:
            x0, x1, key = x0[:, 0], x0[:, 1], x1
        x0, x1 = jnp.asarray(x0), jnp.asarray(x1)
        dtype = jnp.result_type(x0.dtype, x1.dtype, float)
        x0, x1 = x0.astype(dtype), x1.astype(dtype)
        if x0.shape != x1.shape:
            raise ValueError(
                f"`sf.bridge_loss`: x0 and x1 must have the same shape (n, *shape), "
                f"got {x0.shape} and {x1.shape}."
            )
        n = x0.shape[0]
        k_pair, k_t, k_z = jr.split(key, 3)
        x1 = self.pair(k_pair, x0, x1)
        t = jr.uniform(k_t, (n,), dtype, self.t_min, 1 - self.t_min)
        xt, z = self.interp.interpolate(k_z, x0, x1, t)
        target = self.interp.velocity_target(t, x0, x1, z)
        if self.objective == "velocity":
            b = jax.vmap(model)(t, xt)
            return jnp.mean((b - target) ** 2)
        b_model, eta_model = model
        b = jax.vmap(b_model)(t, xt)
        eta = jax.vmap(eta_model)(t, xt)
        return jnp.mean((b - target) ** 2) + jnp.mean((eta - z) ** 2)


def bridge_loss(
    interp: StochasticInterpolant,
    *,
    coupling: str = "independent",
    objective: str = "velocity",
    epsilon: float | None = None,
    t_min: float | None = None,
) -> BridgeLoss:
    r"""The regression loss of a stochastic interpolant
    $x_t = \alpha x_0 + \beta x_1 + \gamma z$ (Albergo et al. 2023), with an
    independent, minibatch-OT (Tong et al. 2024, OT-CFM) or Schrödinger-bridge
    (SB-CFM) coupling of the source and target batches:

    $$L_b = \mathbb{E}_{t, (x_0, x_1)\sim\pi, z}\,\tfrac1D
      \big\|b_\theta(t, x_t) - (\dot\alpha x_0 + \dot\beta x_1 + \dot\gamma z)\big\|^2,
      \qquad L_\eta = \mathbb{E}\,\tfrac1D\big\|\eta_\theta(t, x_t) - z\big\|^2.$$

    $L_b$ is minimised by the transport velocity
    $b(t, x) = E[\dot\alpha x_0 + \dot\beta x_1 + \dot\gamma z \mid x_t = x]$, $L_\eta$
    by the denoiser $\eta(t, x) = E[z \mid x_t = x]$, which gives the score
    $\nabla\log\rho_t = -\eta/\gamma$ (for the SB path, Tong et al.'s score
    regression $\|\gamma s_\theta + z\|^2$ is $L_\eta$ with $\eta = -\gamma s$).

    **Arguments:**

    - `interp`: a [`scoreflow.StochasticInterpolant`][] ($t = 0$ source, $t = 1$
      target).
    - `coupling`: how source and target rows are paired in each batch:
      `"independent"` (a random permutation), `"ot"` (a draw from the minibatch
      entropic-OT plan with small `epsilon` relative to the mean cost, default
      0.01: near-exact OT, as OT-CFM) or `"sb"` (the entropic plan with absolute
      `epsilon`, default $2\sigma^2 = 8\gamma(\tfrac12)^2$, exact for
      $\gamma = \sigma\sqrt{t(1-t)}$: the static Schrödinger bridge, as SB-CFM). `"ot"` and `"sb"` need ott-jax.
    - `objective`: `"velocity"` (the model is `b(t, x)`) or `"velocity+score"`
      (the model is a pair `(b, eta)` of unbatched networks; needs $\gamma \ne 0$).
    - `t_min`: loss times are uniform on $[t_\min, 1 - t_\min]$; default
      $10^{-3}$ when $\dot\gamma$ is singular at the ends, else 0.

    **Returns:** a [`scoreflow.internal.BridgeLoss`][], `loss(model, x0, x1, key) -> scalar`.

    **Raises:** `ValueError` for an unknown coupling or objective, or a score
    objective with $\gamma = 0$; `ImportError` if ott-jax is missing for `"ot"`/`"sb"`.

    [arXiv:2303.08797](https://arxiv.org/abs/2303.08797),
    [arXiv:2302.00482](https://arxiv.org/abs/2302.00482)
    """
    call = "sf.bridge_loss"
    if not isinstance(interp, StochasticInterpolant):
        raise TypeError(
            f"`{call}` expects an sf.StochasticInterpolant, got {type(interp).__name__}."
        )
    if coupling not in COUPLINGS:
        raise ValueError(
            f"`{call}`: coupling must be one of {COUPLINGS}, got {coupling!r}."
        )
    if objective not in OBJECTIVES:
        raise ValueError(
            f"`{call}`: objective must be one of {OBJECTIVES}, got {objective!r}."
        )
    if objective == "velocity+score" and not interp.has_noise:
        raise ValueError(
            f"`{call}(objective='velocity+score')`: {interp!r} has gamma = 0, so "
            "there is no latent noise to denoise; use objective='velocity' or a "
            "gamma > 0 (e.g. sf.brownian_gamma())."
        )
    if coupling != "independent":
        _import_ott()
    if epsilon is None:
        if coupling == "sb":
            if not interp.has_noise:
                raise ValueError(
                    f"`{call}(coupling='sb')`: {interp!r} has gamma = 0, so the "
                    "Schrödinger-bridge regularisation 2 sigma^2 is 0; pass "
                    "epsilon=..., or use coupling='ot'."
                )
            epsilon = sb_epsilon(interp)
        else:
            epsilon = 0.01
    if not epsilon > 0:
        raise ValueError(f"`{call}`: epsilon must be > 0, got epsilon={epsilon!r}.")
    if t_min is None:
        t_min = SINGULAR_T_MIN if interp.singular_ends else 0.0
    if not 0 <= t_min < 0.5:
        raise ValueError(f"`{call}`: need 0 <= t_min < 0.5, got t_min={t_min!r}.")
    if interp.singular_ends and t_min == 0:
        raise ValueError(
            f"`{call}`: gamma_dot of {interp!r} is infinite at t = 0 or 1, so the "
            "velocity target is too; pass t_min > 0 (default 1e-3)."
        )
    return BridgeLoss(interp, coupling, objective, float(epsilon), float(t_min))
