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
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from ._loss._time_sampler import DiscreteTime
from ._process import AbstractProcess, TabulatedVP
from ._process._table import INTERPOLATIONS


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
    \bar\alpha_i)$ under `process`.

    A fractional timestep $u$ (what `from_t` returns; round it for integer-only
    models) is interpolated linearly between the neighbouring entries of the table:

    - `interpolation="log_snr"` (default): $\lambda(u)$ is linear in $u$;
    - `interpolation="sigma"`: the noise level $\tilde\sigma = \sigma/\alpha =
      \sqrt{(1 - \bar\alpha)/\bar\alpha}$ is linear in $u$, as in diffusers'
      `EulerDiscreteScheduler` (`np.interp` over the timesteps), whose fractional
      "linspace" timesteps and sigma grid this reproduces exactly.

    Both agree at integer timesteps.

    **Which process.** `process` must reach every noise level of the table on its
    $[t_0, t_1]$: `sf.VP()` does not reach timesteps 996--999 of the linear schedule
    ($\bar\alpha_{999} = 4.04\times10^{-5} < \alpha(1)^2 = 4.32\times10^{-5}$), nor
    `sf.CosineVP()` timestep 999 of diffusers' cosine table, so `to_t` raises for
    them. [`DDPMTimesteps.table`][scoreflow.DDPMTimesteps.table] builds the process
    from the table itself ([`scoreflow.internal.TabulatedVP`][], timestep $i$ at
    $t = i/(N - 1)$), which covers every timestep exactly: prefer it for a model
    trained on the table (diffusers' grids "trailing" and DPM-Solver's default start
    at timestep $N - 1$).

    **Arguments:** `process`; `alphas_cumprod` of shape `(N,)`, decreasing;
    `interpolation`, `"log_snr"` or `"sigma"`.

    **Raises:** `ValueError` if `alphas_cumprod` is not strictly decreasing in (0, 1).
    `to_t` raises (an `EqxRuntimeError`, also inside jit) for a timestep outside
    $[0, N - 1]$ or one whose noise level `process` never reaches.

    ```python
    conv = sf.DDPMTimesteps.table(scheduler.alphas_cumprod.double().numpy())
    process = conv.process                 # t = i / (N - 1) for timestep i
    model = conv.wrap_model(lambda i, x: unet(x, i))
    ```
    """

    process: AbstractProcess
    log_snrs: Float[Array, " N"]
    interpolation: str = eqx.field(static=True)

    def __init__(self, process, alphas_cumprod, *, interpolation: str = "log_snr"):
        if interpolation not in INTERPOLATIONS:
            raise ValueError(
                "`sf.DDPMTimesteps(interpolation=...)` must be 'log_snr' or 'sigma', "
                f"got {interpolation!r}."
            )
        self.process = process
        self.log_snrs = jnp.asarray(_log_snrs(alphas_cumprod))
        self.interpolation = interpolation

    @classmethod
    def table(cls, alphas_cumprod, *, interpolation: str = "log_snr"):
        r"""The convention together with the process built from the table: its
        `.process` is the [`scoreflow.internal.TabulatedVP`][] with
        $\alpha(t_i)^2 = \bar\alpha_i$ at $t_i = i/(N - 1)$ (interpolated between
        the knots by the same rule as the timesteps, so timestep $u$ is exactly
        $t = u/(N - 1)$, fractional or not). Every timestep $0..N-1$ maps to a time
        in $[t_0, t_1] = [0, 1]$.

        **Arguments:** `alphas_cumprod`, shape `(N,)`, strictly decreasing in (0, 1);
        `interpolation`, `"log_snr"` or `"sigma"`.
        """
        lam = _log_snrs(alphas_cumprod)
        return cls(
            TabulatedVP(lam, interpolation), alphas_cumprod, interpolation=interpolation
        )

    @classmethod
    def linear(
        cls,
        process=None,
        num: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        *,
        interpolation: str = "log_snr",
    ):
        """The DDPM linear beta schedule (Ho et al. 2020) with `num` timesteps, in
        float64; `process=None` builds the matching process
        ([`DDPMTimesteps.table`][scoreflow.DDPMTimesteps.table]).
        [arXiv:2006.11239](https://arxiv.org/abs/2006.11239)"""
        betas = np.linspace(beta_start, beta_end, num, dtype=np.float64)
        ac = np.cumprod(1.0 - betas)
        if process is None:
            return cls.table(ac, interpolation=interpolation)
        return cls(process, ac, interpolation=interpolation)

    @property
    def num_timesteps(self) -> int:
        """$N$, the number of training timesteps."""
        return int(self.log_snrs.shape[0])

    @property
    def alphas_cumprod(self) -> Float[Array, " N"]:
        r"""The table $\bar\alpha_i = \mathrm{sigmoid}(\lambda_i)$."""
        return jax.nn.sigmoid(self.log_snrs)

    def _table(self, dtype):
        lam = self.log_snrs.astype(dtype)
        return jnp.exp(-lam / 2) if self.interpolation == "sigma" else lam

    def to_t(self, u):
        """Timesteps `u` (integer or fractional, in $[0, N - 1]$) -> scoreflow time."""
        return _ddpm_to_t(self, jnp.asarray(u))

    def _to_t(self, u):
        dtype = jnp.result_type(self.log_snrs.dtype, float)
        u = u.astype(dtype)
        n = self.num_timesteps
        u = eqx.error_if(
            u,
            jnp.any((u < 0) | (u > n - 1) | jnp.isnan(u)),
            f"sf.DDPMTimesteps.to_t: a timestep outside [0, N - 1] = [0, {n - 1}] was "
            "asked for.",
        )
        idx = jnp.arange(n, dtype=dtype)
        v = jnp.interp(u, idx, self._table(dtype))
        lam = -2 * jnp.log(v) if self.interpolation == "sigma" else v
        lo = jnp.asarray(self.process.log_snr(self.process.t1), dtype)
        hi = jnp.asarray(self.process.log_snr(self.process.t0), dtype)
        slack = 16 * jnp.finfo(dtype).eps * jnp.maximum(1.0, jnp.abs(hi - lo))
        lam = eqx.error_if(
            lam,
            jnp.any((lam < lo - slack) | (lam > hi + slack)),
            "sf.DDPMTimesteps.to_t: a timestep's noise level lies outside what the "
            "process reaches on [t0, t1] (e.g. timesteps 996-999 of the linear "
            "schedule under sf.VP(), where alphas_cumprod[999] = 4.04e-5 < "
            "alpha(1)^2 = 4.32e-5). Build the process from the table: "
            "sf.DDPMTimesteps.table(alphas_cumprod) (or .linear() without a process); "
            "its .process covers every timestep.",
        )
        return self.process.t_from_log_snr(lam)

    def from_t(self, t):
        """scoreflow time -> fractional timestep (the inverse of `to_t`)."""
        lam = jnp.asarray(self.process.log_snr(t))
        dtype = jnp.result_type(lam.dtype, self.log_snrs.dtype)
        idx = jnp.arange(self.num_timesteps, dtype=dtype)
        tab = self._table(dtype)
        lam = lam.astype(dtype)
        if self.interpolation == "sigma":
            return jnp.interp(jnp.exp(-lam / 2), tab, idx)
        # log_snrs is decreasing: interpolate on the reversed arrays.
        return jnp.interp(-lam, -tab, idx)

    def time_sampler(self, low: int = 0, high: int | None = None):
        r"""DDPM's training distribution of times: timestep $i \sim U\{$`low`, ...,
        `high`$\}$ (default $U\{0, \dots, N - 1\}$, diffusers'
        `torch.randint(0, num_train_timesteps)`; Ho et al. draw $U\{1..T\}$, i.e.
        the same with 1-based indices) mapped to $t$ by `to_t`. Pass it as
        `sf.dsm_loss(conv.process, time_sampler=conv.time_sampler())`.

        **Returns:** a [`scoreflow.internal.DiscreteTime`][].
        """
        return DiscreteTime(self, low, high)


# Jitted as a whole: grids are built eagerly, where op-by-op dispatch would compile
# each operation anew for every grid length.
_ddpm_to_t = eqx.filter_jit(lambda conv, u: conv._to_t(u))


def _log_snrs(alphas_cumprod) -> np.ndarray:
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
    return np.log(ac) - np.log1p(-ac)
