r"""Few-step generators on a declared process: the consistency parametrisation and
the MeanFlow average velocity.

Both are maps $x_t \mapsto x_r$ from a time $t$ to an earlier time $r < t$ ($t = 0$
is data), taken by one network evaluation; [`scoreflow.few_step_sample`][] chains
them along a time grid.
"""

import abc
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from equinox import AbstractVar

from .._precond import sigma_data_of
from .._process import AbstractProcess
from .._sampling import edm_grid, uniform_grid
from ..nets import MLP


def frozen(process):
    """`process` with gradients stopped at its array leaves: a parametrisation must not
    train the process (`sf.train.fit` trains every inexact array of the model, and a
    declared process keeps its sympy constants as leaves)."""
    arrays, rest = eqx.partition(process, eqx.is_array)
    return eqx.combine(jax.lax.stop_gradient(arrays), rest)


def _call(net, t, x, cond):
    return net(t, x) if cond is None else net(t, x, cond)


class AbstractFewStepModel(eqx.Module):
    """A network that jumps along the probability-flow ODE of `process` from a time
    $t$ to an earlier time $r$ in one evaluation (see
    [`scoreflow.few_step_sample`][])."""

    process: AbstractVar[AbstractProcess]

    @abc.abstractmethod
    def jump(self, key, t, r, x):
        r"""$x_r$ from $x_t$, $t_0 \le r < t \le t_1$ (`key` for any fresh noise)."""

    def sampling_grid(self, steps: int):
        r"""The default `steps`-step grid of [`scoreflow.few_step_sample`][]: here
        [`scoreflow.uniform_grid`][]`(process, steps)`, uniform in $t$."""
        return uniform_grid(self.process, steps)


class ConsistencyModel(AbstractFewStepModel):
    r"""The consistency parametrisation (Song et al. 2023) of a network $F$ for any
    process with a scalar Gaussian kernel $x_t = \alpha(t) x_0 + \sigma(t)\varepsilon$:

    $$f(t, x) = c_\text{skip}(t)\,x + c_\text{out}(t)\,
    F\big(t,\ x/\sqrt{\sigma(t)^2 + \alpha(t)^2\sigma_d^2}\big),$$

    $$c_\text{skip}(t) = \frac{\alpha(t_0)}{\alpha(t)}\,
    \frac{\sigma_d^2}{(\tilde\sigma(t) - \tilde\sigma(t_0))^2 + \sigma_d^2},\qquad
    c_\text{out}(t) = \alpha(t_0)\,
    \frac{\sigma_d\,(\tilde\sigma(t) - \tilde\sigma(t_0))}
    {\sqrt{\tilde\sigma(t)^2 + \sigma_d^2}},$$

    with $\tilde\sigma = \sigma/\alpha$ the noise level of $x/\alpha = x_0 +
    \tilde\sigma\varepsilon$. $f(t, x_t)$ estimates the end point $x_{t_0}$ of the
    probability-flow ODE through $x_t$, and $f(t_0, x) = x$ holds exactly
    ($c_\text{skip}(t_0) = 1$, $c_\text{out}(t_0) = 0$ in floating point). For
    $\alpha \equiv 1$ (`sf.EDM`, `sf.VE`) these are Song et al.'s $c_\text{skip}$,
    $c_\text{out}$ (their appendix C); see the concept page "One- and few-step
    generation" for the derivation.

    **Arguments:**

    - `net`: the raw network, unbatched `net(t, x)` ($t$ the process time).
    - `process`: the process (scalar Gaussian kernel).
    - `sigma_data`: $\sigma_d$ (default `process.sigma_data` for `sf.EDM`, else 1).

    Called as `model(t, x)`: an estimate of $x_{t_0}$, shaped like `x`.

    ```python
    f = sf.ConsistencyModel(sf.nets.MLP(2, width=256, key=key), sf.RectifiedFlow())
    ```
    [arXiv:2303.01469](https://arxiv.org/abs/2303.01469)
    """

    net: Callable
    process: AbstractProcess
    sigma_data: float = eqx.field(static=True)

    def __init__(self, net, process, sigma_data: float | None = None):
        self.net = net
        self.process = process
        self.sigma_data = sigma_data_of(process, sigma_data, "sf.ConsistencyModel")

    def coefficients(self, t):
        r"""`(c_skip, c_out, c_in)` at time `t`; `c_in` multiplies $x$ (not $x/\alpha$)."""
        p, sd = frozen(self.process), self.sigma_data
        t = jnp.asarray(t)
        t0 = jnp.asarray(p.t0, t.dtype)
        a, s, a0 = p.alpha(t), p.sigma(t), p.alpha(t0)
        se, se0 = s / a, p.sigma(t0) / a0
        gap = se - se0
        c_skip = (a0 / a) * sd**2 / (gap**2 + sd**2)
        c_out = a0 * sd * gap / jnp.sqrt(se**2 + sd**2)
        c_in = 1 / (a * jnp.sqrt(se**2 + sd**2))
        return c_skip, c_out, c_in

    def __call__(self, t, x, cond=None):
        x = jnp.asarray(x)
        t = jnp.asarray(t, jnp.result_type(x.dtype, float))
        c_skip, c_out, c_in = self.coefficients(t)
        out = _call(self.net, t, (c_in * x).astype(x.dtype), cond)
        return (c_skip * x + c_out * out).astype(x.dtype)

    def jump(self, key, t, r, x):
        r"""Multistep consistency sampling (Song et al. 2023, Algorithm 1) on the
        declared kernel: $y = f(t, x)$, $\hat x_0 = y/\alpha(t_0)$, then
        $x_r = \alpha(r)\hat x_0 + \sqrt{\sigma(r)^2 - \alpha(r)^2\tilde\sigma(t_0)^2}\,z$
        (total noise variance $\sigma(r)^2$; no noise when $r = t_0$)."""
        p = frozen(self.process)
        y = self(t, x)
        r = jnp.asarray(r, y.dtype)
        t0 = jnp.asarray(p.t0, y.dtype)
        a0 = p.alpha(t0)
        ar, sr = p.alpha(r), p.sigma(r)
        var = jnp.maximum(sr**2 - (ar * p.sigma(t0) / a0) ** 2, 0.0)
        z = jr.normal(key, y.shape, y.dtype)
        return (ar / a0) * y + jnp.sqrt(var) * z

    def sampling_grid(self, steps: int):
        r"""The default `steps`-step grid of [`scoreflow.few_step_sample`][]:
        [`scoreflow.edm_grid`][]`(process, steps)`, Karras's $\rho = 7$ spacing of
        $\tilde\sigma = \sigma/\alpha$ from $t_1$ to $t_0$.

        Why: a consistency model trained in discrete time (`sf.consistency_loss`) is
        fitted only at the levels of its training grid, by default the $N$-step
        $\rho = 7$ grid ($N = 16$); between them nothing constrains it, and multistep
        sampling is known to depend strongly on the intermediate levels (Song et al.
        2023, §6, chose them by a search on FID). The $\rho$-spacing is linear in
        $i/N$, so for $k$ dividing $N$ the $k$-step grid is every $(N/k)$-th training
        level: each jump starts where the model was trained (for
        `sf.RectifiedFlow`, two steps jump from $t_1$ and from $t = 0.951$,
        $\tilde\sigma = 19.4$; the uniform grid's $t = 0.5$ lies between two training
        levels). The levels are fixed in advance, not searched on samples; how good a
        $k$-step sample is still depends on how accurate the model is at them (see
        the benchmarks). For another training grid, or $k$ not
        dividing $N$, pass `time_grid=loss.sampling_grid(k)` (the training levels
        themselves, [`scoreflow.internal.ConsistencyLoss`][]).
        [arXiv:2303.01469](https://arxiv.org/abs/2303.01469)
        """
        return edm_grid(self.process, steps)


class MeanFlowModel(AbstractFewStepModel):
    r"""The MeanFlow average velocity (Geng et al. 2025) on a declared process:

    $$u(t, r, x_t) = \frac{1}{t - r}\int_r^t v(s, x_s)\,ds,\qquad
    x_r = x_t - (t - r)\,u(t, r, x_t),$$

    with $v$ the probability-flow velocity of the process ($t = 0$ is data, so
    $r < t$ steps towards data); $u(t, t, x) = v(t, x)$.

    **Arguments:**

    - `net`: the network, unbatched `net(t, r, x)` with output shaped like `x` (for
      vector data, [`scoreflow.MeanFlowMLP`][]).
    - `process`: the process (scalar Gaussian kernel).

    Called as `model(t, r, x)`: $u(t, r, x)$.
    [arXiv:2505.13447](https://arxiv.org/abs/2505.13447)
    """

    net: Callable
    process: AbstractProcess

    def __call__(self, t, r, x):
        x = jnp.asarray(x)
        dtype = jnp.result_type(x.dtype, float)
        return self.net(jnp.asarray(t, dtype), jnp.asarray(r, dtype), x)

    def jump(self, key, t, r, x):
        """$x_r = x_t - (t - r)\\,u(t, r, x_t)$ (`key` unused)."""
        del key
        return x - (t - r) * self(t, r, x)


class MeanFlowMLP(eqx.Module):
    r"""A two-time network `net(t, r, x)` for vector data $x \in \mathbb{R}^d$: an
    [`scoreflow.nets.MLP`][] of dimension $d + 1$ (same width and depth) fed
    $(x, t - r)$ at time $t$, whose first $d$ outputs are returned (Geng et al.
    condition on $(t, t - r)$ too).

    **Arguments:** `dim` ($d$), `width`, `depth`, `time_embedding` as for
    `sf.nets.MLP`; `key`.
    """

    mlp: MLP

    def __init__(
        self,
        dim: int,
        *,
        width: int = 128,
        depth: int = 3,
        time_embedding: str = "sinusoidal",
        key,
    ):
        self.mlp = MLP(
            dim + 1, width=width, depth=depth, time_embedding=time_embedding, key=key
        )

    def __call__(self, t, r, x):
        x = jnp.asarray(x)
        h = jnp.asarray(t - r, x.dtype)[None]
        return self.mlp(t, jnp.concatenate([x, h]))[: x.shape[0]]
