r"""The variance-preserving process of a discrete DDPM table (`alphas_cumprod`).

A DDPM with $N$ training timesteps is a table $\bar\alpha_0 > \dots > \bar\alpha_{N-1}$.
[`TabulatedVP`][scoreflow.internal.TabulatedVP] is the continuous-time VP process
that passes through every entry: timestep $i$ sits at $t_i = i/(N - 1)$, so
$[t_0, t_1] = [0, 1]$ covers every integer timestep (the built-in `sf.VP()` reaches
only $\bar\alpha \ge \alpha(1)^2 = 4.3\times10^{-5}$, which leaves out timesteps
996--999 of the linear schedule).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._declared import SDE, Interpolant
from ._expr import as_time
from ._ladder import AbstractScalarProcess
from ._log_snr import closed_form_time

INTERPOLATIONS = ("log_snr", "sigma")


class TabulatedVP(AbstractScalarProcess):
    r"""The VP process through a DDPM table: $\alpha(t)^2 = \bar\alpha_i$ exactly at
    $t_i = i/(N - 1)$, $i = 0, \dots, N - 1$, and $\sigma^2 = 1 - \alpha^2$.

    Between the knots the log-SNR $\lambda = \log(\alpha^2/\sigma^2)$ is interpolated
    linearly in $t$ (`interpolation="log_snr"`), or the noise level
    $\tilde\sigma = \sigma/\alpha = e^{-\lambda/2}$ is (`"sigma"`, diffusers'
    `EulerDiscreteScheduler` rule for fractional timesteps). Either way
    $\alpha^2 = \mathrm{sigmoid}(\lambda)$, $\sigma^2 = \mathrm{sigmoid}(-\lambda)$,
    $f = \tfrac12\sigma^2\dot\lambda$ and $g^2 = -\dot\lambda\,\sigma^2 \ge 0$: between
    $t_{i-1}$ and $t_i$ the transition is exactly DDPM's
    $x_i = \sqrt{1 - \beta_i}\,x_{i-1} + \sqrt{\beta_i}\,z$. $g^2$ is piecewise
    continuous (it jumps at the knots, as DDPM's $\beta_i$ do).

    Build it with [`scoreflow.DDPMTimesteps.table`][] (its `.process`), which also
    maps timestep $i$ to $t_i$ and back.

    **Arguments:** `log_snrs`, the table's $\lambda_i = \log\bar\alpha_i -
    \log(1 - \bar\alpha_i)$, shape `(N,)`, strictly decreasing; `interpolation`,
    `"log_snr"` or `"sigma"`.
    [arXiv:2006.11239](https://arxiv.org/abs/2006.11239)
    """

    log_snrs: Float[Array, " N"]
    interpolation: str = eqx.field(static=True)
    t0: float = eqx.field(static=True)
    t1: float = eqx.field(static=True)

    def __init__(self, log_snrs, interpolation: str = "log_snr"):
        if interpolation not in INTERPOLATIONS:
            raise ValueError(
                "`TabulatedVP(interpolation=...)` must be 'log_snr' or 'sigma', got "
                f"{interpolation!r}."
            )
        self.log_snrs = jnp.asarray(log_snrs)
        if self.log_snrs.ndim != 1 or self.log_snrs.shape[0] < 2:
            raise ValueError(
                "`TabulatedVP`: log_snrs must be 1-D with at least 2 entries, got shape "
                f"{self.log_snrs.shape}."
            )
        self.interpolation = interpolation
        self.t0, self.t1 = 0.0, 1.0

    # ---- the table, interpolated ----------------------------------------------

    def _segment(self, t):
        """(i, w, table) with t = (i + w)/(N - 1), i in 0..N-2, w in [0, 1]."""
        t = as_time(t)
        n = self.log_snrs.shape[0]
        tab = self.log_snrs.astype(t.dtype)
        if self.interpolation == "sigma":
            tab = jnp.exp(-tab / 2)
        u = t * (n - 1)
        i = jax.lax.stop_gradient(jnp.clip(jnp.floor(u), 0, n - 2))
        return i.astype(jnp.int32), u - i, tab

    def log_snr(self, t):
        r"""$\lambda(t)$: the table's $\lambda_i$ at $t_i = i/(N - 1)$, interpolated as
        `interpolation` says."""
        i, w, tab = self._segment(t)
        # (1 - w) a + w b is exact at both ends of the segment.
        v = (1 - w) * tab[i] + w * tab[i + 1]
        return -2 * jnp.log(v) if self.interpolation == "sigma" else v

    def alpha(self, t):
        return jnp.exp(0.5 * jax.nn.log_sigmoid(self.log_snr(t)))

    def sigma(self, t):
        return jnp.exp(0.5 * jax.nn.log_sigmoid(-self.log_snr(t)))

    def _lam_dot(self, t):
        t = as_time(t)
        return jax.jvp(self.log_snr, (t,), (jnp.ones_like(t),))

    def alpha_dot(self, t):
        lam, dlam = self._lam_dot(t)
        return 0.5 * self.alpha(t) * jax.nn.sigmoid(-lam) * dlam

    def sigma_dot(self, t):
        lam, dlam = self._lam_dot(t)
        return -0.5 * self.sigma(t) * jax.nn.sigmoid(lam) * dlam

    def f(self, t):
        lam, dlam = self._lam_dot(t)
        return 0.5 * jax.nn.sigmoid(-lam) * dlam

    def g2(self, t):
        r"""Squared diffusion $g^2 = -\dot\lambda\,\sigma^2$ (piecewise continuous)."""
        lam, dlam = self._lam_dot(t)
        return -dlam * jax.nn.sigmoid(-lam)

    def t_from_log_snr(self, lam):
        r"""The exact inverse of the interpolated log-SNR on $[0, 1]$; a log-SNR
        outside $[\lambda_{N-1}, \lambda_0]$ raises."""

        def inverse(lam, _):
            n = self.log_snrs.shape[0]
            knots = jnp.linspace(0.0, 1.0, n, dtype=lam.dtype)
            tab = self.log_snrs.astype(lam.dtype)
            if self.interpolation == "sigma":
                return jnp.interp(jnp.exp(-lam / 2), jnp.exp(-tab / 2), knots)
            return jnp.interp(-lam, -tab, knots)

        return closed_form_time(inverse, None, self.log_snr, lam, self.t0, self.t1)

    # ---- declarations -----------------------------------------------------------

    def as_interpolant(self) -> AbstractScalarProcess:
        """This process as `sf.Interpolant(alpha, sigma)` of callables (numeric
        derivations)."""
        return Interpolant(self.alpha, self.sigma, t0=self.t0, t1=self.t1)

    def as_sde(self) -> AbstractScalarProcess:
        """This process as `sf.SDE(drift, diffusion)` of callables (its kernel then
        comes from the moment ODEs)."""
        return SDE(lambda t, x: self.f(t) * x, self.diffusion, t0=self.t0, t1=self.t1)
