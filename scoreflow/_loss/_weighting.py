r"""Loss weightings in one currency: the weight $w$ on the $\varepsilon$-MSE.

A DSM loss is three choices: the prediction space the network outputs, a weighting
and a time density $p(t)$. scoreflow states every weighting as the weight on
$\|\hat\varepsilon - \varepsilon\|^2$, a function of the log-SNR
$\lambda = \log(\alpha^2/\sigma^2)$ (plus $-d\lambda/dt$ for the likelihood
weighting), and converts it to the prediction space automatically: with the
prediction $P$ an affine function of $\hat\varepsilon$ at fixed $x_t$,
$\|\hat P - P\|^2 = k_P(t)\,\|\hat\varepsilon - \varepsilon\|^2$ where

| prediction | $k_P(t)$ |
| --- | --- |
| `"eps"` | $1$ |
| `"score"` | $1/\sigma^2$ |
| `"x0"` | $\sigma^2/\alpha^2 = e^{-\lambda}$ |
| `"v"` | $(\alpha^2 + \sigma^2)^2 / \alpha^2$ |
| `"velocity"` | $(\dot\sigma - \sigma\dot\alpha/\alpha)^2$ |

so the loss in space $P$ uses the factor $w / k_P$, and two configurations with the
same implied weighting give the same loss.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable

import equinox as eqx
import jax.numpy as jnp

from .._predictor import from_hub
from .._process import AbstractProcess


class AbstractWeighting(eqx.Module):
    r"""The weight $w(t)$ on the $\varepsilon$-MSE of a DSM loss.

    Subclasses implement `__call__(process, t)`; those that depend on $t$ only
    through the log-SNR subclass [`scoreflow.AbstractLogSNRWeighting`][] and
    implement `of_log_snr(lam)` instead.
    """

    @abc.abstractmethod
    def __call__(self, process: AbstractProcess, t):
        """The weight on the eps-MSE at time `t` ($t = 0$ is data)."""


class AbstractLogSNRWeighting(AbstractWeighting):
    r"""A weighting that is a function $w(\lambda)$ of the log-SNR alone."""

    @abc.abstractmethod
    def of_log_snr(self, lam):
        r"""$w(\lambda)$; defined (not NaN) for $\lambda = \pm\infty$."""

    def __call__(self, process, t):
        return self.of_log_snr(process.log_snr(t))


class LikelihoodWeighting(AbstractWeighting):
    r"""Song et al. (2021)'s likelihood weighting: $g(t)^2$ on the score-MSE, i.e.
    $w = g^2/\sigma^2 = -d\lambda/dt$ on the $\varepsilon$-MSE. With uniform time
    (or with [`scoreflow.LikelihoodImportance`][]) the loss is the continuous-time
    ELBO (up to constants and a factor $2$).
    [arXiv:2101.09258](https://arxiv.org/abs/2101.09258)
    """

    def __call__(self, process, t):
        return process.g2(t) / process.sigma(t) ** 2


class ConstantWeighting(AbstractLogSNRWeighting):
    r"""$w = 1$: the plain $\varepsilon$-MSE ("simple" DDPM loss). This is Song et
    al.'s $\sigma^2$ weighting of the score-MSE (`"sigma2"`) and also the SNR
    weighting of the $x_0$-MSE (`"snr"`, Hang et al. 2023, Table 1), which are the
    same objective."""

    def of_log_snr(self, lam):
        return jnp.ones_like(lam)


class MinSNR(AbstractLogSNRWeighting):
    r"""Min-SNR-$\gamma$ (Hang et al. 2023): $\min(\mathrm{SNR}, \gamma)$ on the
    $x_0$-MSE, i.e. $w = \min(1, \gamma/\mathrm{SNR}) = \exp(\min(0, \log\gamma -
    \lambda))$ on the $\varepsilon$-MSE: $w(-\infty) = 1$, $w(+\infty) = 0$.
    [arXiv:2303.09556](https://arxiv.org/abs/2303.09556)

    **Arguments:** `gamma > 0` (default 5).
    """

    gamma: float = 5.0

    def __check_init__(self):
        if not (isinstance(self.gamma, (int, float)) and self.gamma > 0):
            raise ValueError(
                f"`sf.MinSNR(gamma=...)` must be > 0, got gamma={self.gamma!r}."
            )

    def of_log_snr(self, lam):
        return jnp.exp(jnp.minimum(0.0, math.log(self.gamma) - lam))


class EDMWeighting(AbstractLogSNRWeighting):
    r"""Karras et al. (2022)'s $\lambda(\sigma) = (\sigma^2 + \sigma_d^2)/
    (\sigma\sigma_d)^2$ on the $x_0$ (denoiser) MSE, with $\sigma = \sigma_t/\alpha_t
    = e^{-\lambda/2}$ for a general process; on the $\varepsilon$-MSE
    $w = 1 + e^{-\lambda}/\sigma_d^2$ ($w(+\infty) = 1$, $w(-\infty) = \infty$).
    With EDM preconditioning it is a unit weight on the network's own MSE.
    [arXiv:2206.00364](https://arxiv.org/abs/2206.00364)

    **Arguments:** `sigma_data`: the data std; `None` takes `process.sigma_data`
    where the process has one (`sf.EDM`), else 1.
    """

    sigma_data: float | None = None

    def _sd(self, process):
        if self.sigma_data is not None:
            return self.sigma_data
        return process.sigma_data if process is not None else 1.0

    def of_log_snr(self, lam, process=None):
        sd = self._sd(process)
        return 1.0 + jnp.exp(-lam) / sd**2

    def __call__(self, process, t):
        return self.of_log_snr(process.log_snr(t), process)


class LogSNRWeighting(AbstractLogSNRWeighting):
    r"""A user weighting $w(\lambda)$ on the $\varepsilon$-MSE, from a callable."""

    fn: Callable

    def of_log_snr(self, lam):
        return self.fn(lam)


WEIGHTINGS = {
    "likelihood": LikelihoodWeighting,
    "sigma2": ConstantWeighting,
    "snr": ConstantWeighting,
    "min_snr": MinSNR,
    "edm": EDMWeighting,
}


def as_weighting(weighting, call: str) -> AbstractWeighting:
    if isinstance(weighting, AbstractWeighting):
        return weighting
    if isinstance(weighting, str) and weighting in WEIGHTINGS:
        return WEIGHTINGS[weighting]()
    if callable(weighting) and not isinstance(weighting, str):
        return LogSNRWeighting(weighting)
    raise ValueError(
        f"`{call}`: unknown weighting {weighting!r}; expected one of "
        f"{', '.join(map(repr, WEIGHTINGS))}, an `sf.AbstractWeighting` (e.g. "
        "`sf.MinSNR(gamma=5)`) or a callable w(log_snr) giving the weight on the "
        "eps-MSE."
    )


def eps_slope(process: AbstractProcess, prediction: str, t):
    r"""$\partial P / \partial\hat\varepsilon$ at fixed $x_t$ (a scalar): the
    prediction's change when $\hat\varepsilon$ moves by one with $\hat x_0 = (x -
    \sigma\hat\varepsilon)/\alpha$. Its square is $k_P(t)$."""
    a, s = process.alpha(t), process.sigma(t)
    zero = jnp.zeros_like(s)
    return from_hub(process, prediction, t, zero, -s / a, jnp.ones_like(s))


def prediction_factor(process: AbstractProcess, prediction: str, t):
    r"""$k_P(t)$ with $\|\hat P - P\|^2 = k_P\,\|\hat\varepsilon - \varepsilon\|^2$."""
    return eps_slope(process, prediction, t) ** 2
