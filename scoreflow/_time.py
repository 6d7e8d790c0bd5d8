r"""Adapters between scoreflow's time and other ecosystems' time conventions.

scoreflow's time is fixed: $t = 0$ is data, $t = t_1$ the prior. Models and schedules
from elsewhere are converted at the boundary, never mixed:

- flow-matching time (`flow_matching`, torchcfm): $u = 1 - t$, noise at $u = 0$;
- sigma-time (EDM, k-diffusion): $u = \sigma(t)/\alpha(t) = e^{-\lambda(t)/2}$;
- integer DDPM timesteps with their `alphas_cumprod`: timestep $i$ has
  $\lambda_i = \log(\bar\alpha_i / (1 - \bar\alpha_i))$, matched to the scoreflow time
  with the same log-SNR.
"""

import abc

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from ._process import AbstractProcess


class TimeConvention(eqx.Module):
    """Maps another library's time `u` to scoreflow's `t` and back."""

    @abc.abstractmethod
    def to_t(self, u: ArrayLike) -> Array:
        """Their time `u` -> scoreflow time `t`."""

    @abc.abstractmethod
    def from_t(self, t: ArrayLike) -> Array:
        """scoreflow time `t` -> their time `u`."""

    def wrap_model(self, model):
        """A scoreflow-convention model `(t, x, *cond)` from one that takes their time.

        Only the time argument is converted; what the model predicts is declared
        separately with `sf.Predictor(..., prediction=...)` (e.g. a flow-matching
        model trained with noise at u = 0 predicts `-velocity` in scoreflow's time).
        """
        return _TimeWrapped(model, self)


class _TimeWrapped(eqx.Module):
    model: object
    convention: TimeConvention

    def __call__(self, t, x, *cond):
        return self.model(self.convention.from_t(t), x, *cond)


class FlowMatchingTime(TimeConvention):
    r"""Flow-matching time $u = T - t$ (noise at $u = 0$, data at $u = T$, $T = 1$ by
    default), as in Meta's `flow_matching` and torchcfm. Velocities flip sign:
    $dx/du = -dx/dt$."""

    horizon: float = 1.0

    def to_t(self, u):
        return self.horizon - jnp.asarray(u)

    def from_t(self, t):
        return self.horizon - jnp.asarray(t)


class SigmaTime(TimeConvention):
    r"""EDM / k-diffusion noise level $u = \sigma(t)/\alpha(t) = e^{-\lambda(t)/2}$
    (the std of $x_t/\alpha(t)$ around $x_0$)."""

    process: AbstractProcess

    def to_t(self, u):
        u = jnp.asarray(u, dtype=jnp.result_type(float))
        return self.process.t_from_log_snr(-2.0 * jnp.log(u))

    def from_t(self, t):
        return jnp.exp(-0.5 * self.process.log_snr(t))


class DDPMTimesteps(TimeConvention):
    r"""Integer DDPM timesteps $i = 0, \dots, N-1$ with cumulative products
    $\bar\alpha_i$ (diffusers' `alphas_cumprod`). Timestep $i$ corresponds to the
    scoreflow time with the same log-SNR $\lambda_i = \log\bar\alpha_i - \log(1 -
    \bar\alpha_i)$ under `process`; `from_t` returns the fractional timestep found
    by linear interpolation in $\lambda$ (round it for integer-only models).

    **Arguments:** `process`; `alphas_cumprod` of shape `(N,)`, decreasing.

    **Raises:** `ValueError` if `alphas_cumprod` is not strictly decreasing in (0, 1).
    """

    process: AbstractProcess
    log_snrs: Float[Array, " N"]

    def __init__(self, process, alphas_cumprod):
        ac = np.asarray(alphas_cumprod, dtype=np.float64)
        if ac.ndim != 1 or ac.size < 2:
            raise ValueError(
                "`sf.DDPMTimesteps`: alphas_cumprod must be a 1-D array of at least 2 "
                f"values, got shape {ac.shape}."
            )
        if not (np.all(ac > 0) and np.all(ac < 1) and np.all(np.diff(ac) < 0)):
            raise ValueError(
                "`sf.DDPMTimesteps`: alphas_cumprod must lie in (0, 1) and be strictly "
                "decreasing (timestep 0 is the least noisy); a final value of exactly 0 "
                "(zero terminal SNR) has no finite time: clip it, e.g. to 2**-24."
            )
        self.process = process
        self.log_snrs = jnp.asarray(np.log(ac) - np.log1p(-ac))

    @classmethod
    def linear(
        cls, process, num: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
    ):
        """The DDPM linear beta schedule (Ho et al. 2020) with `num` timesteps."""
        betas = np.linspace(beta_start, beta_end, num, dtype=np.float64)
        return cls(process, np.cumprod(1.0 - betas))

    def to_t(self, u):
        u = jnp.asarray(u)
        n = self.log_snrs.shape[0]
        idx = jnp.arange(n, dtype=self.log_snrs.dtype)
        lam = jnp.interp(u.astype(self.log_snrs.dtype), idx, self.log_snrs)
        return self.process.t_from_log_snr(lam)

    def from_t(self, t):
        lam = self.process.log_snr(t)
        n = self.log_snrs.shape[0]
        idx = jnp.arange(n, dtype=self.log_snrs.dtype)
        # log_snrs is decreasing: interpolate on the reversed arrays.
        return jnp.interp(-lam, -self.log_snrs, idx)
