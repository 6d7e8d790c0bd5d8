r"""Time samplers: the density $p(t)$ on $[t_0, t_1]$ a loss draws its times from
(or, for DDPM's [`DiscreteTime`][scoreflow.internal.DiscreteTime], point masses at the
times of the training timesteps).

Each sampler returns `(t, weight)` for a batch: `weight` multiplies the per-example
loss. It is 1 for every sampler except [`scoreflow.LikelihoodImportance`][], which is
importance sampling *for the uniform-time objective* and so returns
$1/(p(t)\,(t_1 - t_0))$.
"""

from __future__ import annotations

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

from .._process import AbstractProcess


def _range(process, dtype):
    return jnp.asarray(process.t0, dtype), jnp.asarray(process.t1, dtype)


class AbstractTimeSampler(eqx.Module):
    """Draws times for a batch; see the module docstring."""

    @abc.abstractmethod
    def sample(self, key, process: AbstractProcess, n: int, dtype=None):
        """`(t, weight)`, each of shape `(n,)`, `t` in `[process.t0, process.t1]`."""

    @abc.abstractmethod
    def density(self, process: AbstractProcess, t):
        r"""$p(t)$ on $(t_0, t_1)$ (excluding any atom from clamping at the ends)."""

    def importance(self, process: AbstractProcess, t):
        """The per-example weight `sample` returns at time `t` (1 unless the
        sampler does importance sampling)."""
        return jnp.ones_like(t)

    def prepare(self, process: AbstractProcess) -> None:
        """Derive, outside jit, what `sample` needs of `process` inside it (the
        losses call this when they are built). A no-op unless the sampler maps a
        log-SNR to time: then `process.prepare_inverse()`."""
        return None


class UniformTime(AbstractTimeSampler):
    r"""$t \sim U(t_0, t_1)$ (Song et al. 2021)."""

    def sample(self, key, process, n, dtype=None):
        dtype = jnp.result_type(float) if dtype is None else dtype
        t0, t1 = _range(process, dtype)
        t = jr.uniform(key, (n,), dtype, t0, t1)
        return t, jnp.ones((n,), dtype)

    def density(self, process, t):
        return jnp.full_like(t, 1.0 / (process.t1 - process.t0))


class LogitNormal(AbstractTimeSampler):
    r"""$t = t_0 + (t_1 - t_0)\,\mathrm{sigmoid}(u)$, $u \sim N(\mu, s^2)$ (Esser
    et al. 2024, SD3, "rf/lognorm(0, 1)").
    [arXiv:2403.03206](https://arxiv.org/abs/2403.03206)"""

    mean: float = 0.0
    std: float = 1.0

    def sample(self, key, process, n, dtype=None):
        dtype = jnp.result_type(float) if dtype is None else dtype
        t0, t1 = _range(process, dtype)
        u = self.mean + self.std * jr.normal(key, (n,), dtype)
        return t0 + (t1 - t0) * jax.nn.sigmoid(u), jnp.ones((n,), dtype)

    def density(self, process, t):
        t0, t1 = process.t0, process.t1
        r = (t - t0) / (t1 - t0)
        u = jnp.log(r) - jnp.log1p(-r)
        z = (u - self.mean) / self.std
        return (
            jnp.exp(-0.5 * z**2)
            / (self.std * jnp.sqrt(2 * jnp.pi))
            / (r * (1 - r) * (t1 - t0))
        )


class LogNormalSigma(AbstractTimeSampler):
    r"""EDM's noise distribution (Karras et al. 2022): $\ln\sigma \sim
    N(P_\text{mean}, P_\text{std}^2)$ for $\sigma = \sigma_t/\alpha_t =
    e^{-\lambda/2}$, mapped to time by `process.t_from_log_snr`; values outside
    $[t_0, t_1]$ are clamped to the ends. `clamped_fraction(process)` says how much
    mass is clamped. [arXiv:2206.00364](https://arxiv.org/abs/2206.00364)"""

    p_mean: float = -1.2
    p_std: float = 1.2

    def prepare(self, process):
        process.prepare_inverse()

    def _lam_range(self, process, dtype):
        lo = jnp.asarray(process.log_snr(process.t1), dtype)
        hi = jnp.asarray(process.log_snr(process.t0), dtype)
        return lo, hi

    def sample(self, key, process, n, dtype=None):
        dtype = jnp.result_type(float) if dtype is None else dtype
        log_sigma = self.p_mean + self.p_std * jr.normal(key, (n,), dtype)
        lo, hi = self._lam_range(process, dtype)
        lam = jnp.clip(-2 * log_sigma, lo, hi)
        t = jnp.asarray(process.t_from_log_snr(lam), dtype)
        t0, t1 = _range(process, dtype)
        t = jnp.where(lam >= hi, t0, jnp.where(lam <= lo, t1, jnp.clip(t, t0, t1)))
        return t, jnp.ones((n,), dtype)

    def density(self, process, t):
        lam, dlam = jax.jvp(process.log_snr, (t,), (jnp.ones_like(t),))
        log_sigma = -lam / 2
        z = (log_sigma - self.p_mean) / self.p_std
        p_log_sigma = jnp.exp(-0.5 * z**2) / (self.p_std * jnp.sqrt(2 * jnp.pi))
        return p_log_sigma * jnp.abs(dlam) / 2

    def clamped_fraction(self, process) -> float:
        """The probability mass clamped to `t0` or `t1`."""
        lo, hi = self._lam_range(process, jnp.result_type(float))
        cdf = jax.scipy.stats.norm.cdf
        # log_sigma = -lam/2 is above -lo/2 (t > t1) or below -hi/2 (t < t0)
        above = 1 - cdf((-lo / 2 - self.p_mean) / self.p_std)
        below = cdf((-hi / 2 - self.p_mean) / self.p_std)
        return float(above + below)


class LikelihoodImportance(AbstractTimeSampler):
    r"""Importance sampling for the likelihood weighting (Song et al. 2021, sec. 4;
    Kingma et al. 2021): $p(t) \propto g(t)^2/\sigma(t)^2 = -d\lambda/dt$, i.e.
    $\lambda$ uniform on $[\lambda(t_1), \lambda(t_0)]$, mapped to time by
    `process.t_from_log_snr`. The returned weight
    $1/(p(t)(t_1 - t_0))$ keeps the objective that of uniform time, so with
    `weighting="likelihood"` the per-example weight $w/(p\,(t_1 - t_0))$ is the
    constant $(\lambda(t_0) - \lambda(t_1))/(t_1 - t_0)$: the ELBO with the least
    time variance. [arXiv:2101.09258](https://arxiv.org/abs/2101.09258)"""

    def prepare(self, process):
        process.prepare_inverse()

    def sample(self, key, process, n, dtype=None):
        dtype = jnp.result_type(float) if dtype is None else dtype
        t0, t1 = _range(process, dtype)
        hi = jnp.asarray(process.log_snr(t0), dtype)
        lo = jnp.asarray(process.log_snr(t1), dtype)
        lam = jr.uniform(key, (n,), dtype, lo, hi)
        t = jnp.clip(jnp.asarray(process.t_from_log_snr(lam), dtype), t0, t1)
        return t, self.importance(process, t).astype(dtype)

    def importance(self, process, t):
        return 1.0 / (self.density(process, t) * (process.t1 - process.t0))

    def density(self, process, t):
        hi = process.log_snr(process.t0)
        lo = process.log_snr(process.t1)
        return (process.g2(t) / process.sigma(t) ** 2) / (hi - lo)


class DiscreteTime(AbstractTimeSampler):
    r"""DDPM's discrete training times (Ho et al. 2020, Algorithm 1): a timestep
    $i \sim U\{i_\text{low}, \dots, i_\text{high}\}$ (default
    $U\{0, \dots, N - 1\}$, diffusers' `torch.randint(0, num_train_timesteps)`),
    mapped to scoreflow time by a [`scoreflow.DDPMTimesteps`][] convention,
    $t = $ `convention.to_t(i)`. Build it with `convention.time_sampler()` and use it
    with the convention's process:

    ```python
    conv = sf.DDPMTimesteps.linear()          # the table and its process
    loss = sf.dsm_loss(conv.process, prediction="eps",
                       time_sampler=conv.time_sampler())
    ```

    With `prediction="eps"` and the default `weighting="sigma2"` ($w = 1$ on the
    $\varepsilon$-MSE) this is DDPM's $L_\text{simple}$.

    **A discrete measure.** The times are point masses $1/K$ at the $K$ times of
    `support()`, so there is no density in $t$: the objective is the average
    $\frac1K\sum_i w(t_i)\,\mathbb{E}\|\hat\varepsilon - \varepsilon\|^2$, not
    an integral over $[t_0, t_1]$. `density` raises rather than return a number that
    pretends otherwise (so `loss.implied_weighting` is undefined for it);
    `importance` is 1.

    **Arguments:** `convention`, a `DDPMTimesteps`; `low`, `high`, the smallest and
    largest timestep drawn (inclusive, integers in $[0, N - 1]$).
    [arXiv:2006.11239](https://arxiv.org/abs/2006.11239)
    """

    convention: eqx.Module
    low: int = eqx.field(static=True)
    high: int = eqx.field(static=True)

    def __init__(self, convention, low: int = 0, high: int | None = None):
        n = int(convention.num_timesteps)
        high = n - 1 if high is None else high
        ok = all(
            isinstance(v, int) and not isinstance(v, bool) for v in (low, high)
        ) and (0 <= low <= high <= n - 1)
        if not ok:
            raise ValueError(
                "`DDPMTimesteps.time_sampler(low=..., high=...)`: need integers with "
                f"0 <= low <= high <= N - 1 = {n - 1}, got low={low!r}, high={high!r}."
            )
        self.convention, self.low, self.high = convention, low, high

    def sample(self, key, process, n, dtype=None):
        dtype = jnp.result_type(float) if dtype is None else dtype
        i = jr.randint(key, (n,), self.low, self.high + 1)
        t = jnp.asarray(self.convention.to_t(i), dtype)
        return t, jnp.ones((n,), dtype)

    def support(self):
        """The `high - low + 1` times drawn, each with probability
        `1 / (high - low + 1)`, increasing."""
        return self.convention.to_t(jnp.arange(self.low, self.high + 1))

    def density(self, process, t):
        raise ValueError(
            "`DiscreteTime.density`: DDPM's discrete time sampler draws point masses "
            "(1/K at each of the K times in `.support()`), which have no density in t; "
            "the objective is the average over those times, not an integral (see the "
            "class docstring). Use a continuous sampler such as sf.UniformTime() for "
            "a density."
        )


TIME_SAMPLERS = {
    "uniform": UniformTime,
    "logit_normal": LogitNormal,
    "log_normal": LogNormalSigma,
    "likelihood": LikelihoodImportance,
}


def as_time_sampler(sampler, call: str) -> AbstractTimeSampler:
    if isinstance(sampler, AbstractTimeSampler):
        return sampler
    if isinstance(sampler, str) and sampler in TIME_SAMPLERS:
        return TIME_SAMPLERS[sampler]()
    raise ValueError(
        f"`{call}`: unknown time_sampler {sampler!r}; expected one of "
        f"{', '.join(map(repr, TIME_SAMPLERS))} or an `sf.AbstractTimeSampler` "
        "(e.g. `sf.LogitNormal(mean=0.0, std=1.0)`)."
    )
