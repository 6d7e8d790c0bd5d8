r"""EDM preconditioning (Karras et al. 2022, Table 1), for any process.

Dividing $x_t = \alpha x_0 + \sigma\varepsilon$ by $\alpha$ gives EDM's form
$\tilde x = x_0 + \sigma_e\varepsilon$ with $\sigma_e = \sigma/\alpha = e^{-\lambda/2}$.
The denoiser is
$D(t, x) = c_\text{skip}\,\tilde x
+ c_\text{out}\,F(c_\text{noise}, c_\text{in}\tilde x)$:

$$c_\text{skip} = \frac{\sigma_d^2}{\sigma_e^2 + \sigma_d^2},\quad
c_\text{out} = \frac{\sigma_e\sigma_d}{\sqrt{\sigma_e^2 + \sigma_d^2}},\quad
c_\text{in} = \frac{1}{\sqrt{\sigma_e^2 + \sigma_d^2}},\quad
c_\text{noise} = \tfrac14\ln\sigma_e = -\lambda/8,$$

evaluated in the forms $c_\text{in}\tilde x = x/\sqrt{\sigma^2 + \alpha^2\sigma_d^2}$,
$c_\text{skip}\tilde x = \alpha\sigma_d^2 x/(\sigma^2 + \alpha^2\sigma_d^2)$,
$c_\text{out} = \sigma\sigma_d/\sqrt{\sigma^2 + \alpha^2\sigma_d^2}$, which stay finite
as $\alpha \to 0$.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax.numpy as jnp

from ._process import AbstractProcess


def sigma_data_of(process, sigma_data, call: str | None = None) -> float:
    """`sigma_data`, defaulting to `process.sigma_data`; with `call`, checked > 0."""
    sd = float(process.sigma_data if sigma_data is None else sigma_data)
    if call is not None and not sd > 0:
        raise ValueError(
            f"`{call}(sigma_data=...)` must be > 0, got sigma_data={sd!r}."
        )
    return sd


def edm_coefficients(process: AbstractProcess, t, sigma_data: float | None = None):
    r"""`(c_skip, c_out, c_in, c_noise)` of Karras et al. (2022), Table 1, for the
    process's $\sigma_e(t) = \sigma(t)/\alpha(t)$, acting on $\tilde x = x/\alpha$.

    **Arguments:** `process`; `t` a time ($t = 0$ data); `sigma_data` (default
    `process.sigma_data` for `sf.EDM`, else 1).
    """
    sd = sigma_data_of(process, sigma_data)
    a, s = process.alpha(t), process.sigma(t)
    se = s / a
    n2 = se**2 + sd**2
    return sd**2 / n2, se * sd / jnp.sqrt(n2), 1 / jnp.sqrt(n2), jnp.log(se) / 4


class EDMPreconditioner(eqx.Module):
    r"""Wraps a raw network $F$ into EDM's preconditioned denoiser $D$ (an `"x0"`
    prediction), for any process with a Gaussian kernel (see the module docstring).

    `net` is called as `net(c_noise, c_in * x / alpha)` (or with `cond`), so its time
    input is $c_\text{noise} = \ln(\sigma/\alpha)/4$, not $t$.

    **Arguments:** `net`; `process`; `sigma_data` (default `process.sigma_data`
    for `sf.EDM`, else 1).

    ```python
    D = sf.EDMPreconditioner(net, sf.VP())
    pred = sf.Predictor(D, sf.VP(), prediction="x0")
    ```
    [arXiv:2206.00364](https://arxiv.org/abs/2206.00364)
    """

    net: Callable
    process: AbstractProcess
    sigma_data: float = eqx.field(static=True)

    def __init__(self, net, process, sigma_data: float | None = None):
        self.net = net
        self.process = process
        self.sigma_data = sigma_data_of(process, sigma_data, "sf.EDMPreconditioner")

    def raw(self, t, x, cond=None):
        """`(c_noise, c_in * x/alpha, c_skip * x/alpha, c_out)` and the net's output."""
        x = jnp.asarray(x)
        t = jnp.asarray(t, dtype=jnp.result_type(x.dtype, float))
        a, s = self.process.alpha(t), self.process.sigma(t)
        sd = self.sigma_data
        r = jnp.sqrt(s**2 + (a * sd) ** 2)
        c_noise = (jnp.log(s) - jnp.log(a)) / 4
        c_out = s * sd / r
        x_in = x / r
        skip = a * sd**2 * x / r**2
        out = self.net(c_noise, x_in) if cond is None else self.net(c_noise, x_in, cond)
        return skip, c_out, out

    def __call__(self, t, x, cond=None):
        skip, c_out, out = self.raw(t, x, cond)
        return skip + c_out * out
