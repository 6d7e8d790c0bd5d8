r"""Equivalent paths: sample a model trained under one process along another.

Two processes with scalar Gaussian kernels, $x_t = \alpha_t x_0 + \sigma_t\varepsilon$
and $y_u = a_u x_0 + s_u\varepsilon$, are exact reparametrisations of each other
wherever their log-SNRs agree: if $\lambda_\text{path}(u) = \lambda_\text{src}(t)$
then $y_u = k\,x_t$ with $k = a_u/\alpha_t = s_u/\sigma_t$, and the data and noise
predictions at the two points are the same. So a predictor trained under the source
process gives, exactly, a predictor for the path:

$$\hat x_0^\text{path}(u, y) = \hat x_0^\text{src}\big(t(u), y/k\big),\qquad
  t(u) = \lambda_\text{src}^{-1}(\lambda_\text{path}(u)),\quad
  k = \frac{a_u + s_u}{\alpha_t + \sigma_t}$$

(the sum form of $k$ stays finite at both ends). The straight path
$y = x/(\alpha + \sigma)$ at $u = \sigma/(\alpha + \sigma)$ is rectified flow,
$y_u = (1 - u)x_0 + u\varepsilon$; its PF-ODE is the one plain Runge--Kutta steps
integrate best (Lipman et al. 2023; Karras et al. 2022, §3).
"""

from __future__ import annotations

import functools
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from .._process import AbstractProcess, AbstractScalarProcess, RectifiedFlow, require
from ._guidance import AbstractGuidedPredictor


def _check_kernel(call, process):
    require(
        process,
        AbstractScalarProcess,
        call,
        hint=(
            " Only such a process has equivalent paths (an invertible log-SNR); use a "
            "process declared by alpha(t), sigma(t) or an affine scalar SDE."
        ),
    )


def straight_path(process: AbstractProcess) -> RectifiedFlow:
    r"""The straight (rectified-flow) path with the same log-SNR range as `process`:
    `sf.RectifiedFlow(t0=u(t0), t1=u(t1))` with $u = \sigma/(\alpha + \sigma)$.

    **Arguments:** `process`, a process with a scalar Gaussian kernel.

    **Returns:** the `sf.RectifiedFlow` on $[u(t_0), u(t_1)]$.

    ```python
    rf = sf.straight_path(sf.VP())          # u in [~1e-3, ~0.9934]
    ```
    """
    _check_kernel("sf.straight_path", process)

    def u(t):
        a, s = float(process.alpha(t)), float(process.sigma(t))
        return s / (a + s)

    return _rectified_flow(u(process.t0), u(process.t1))


@functools.lru_cache(maxsize=64)
def _rectified_flow(t0: float, t1: float) -> RectifiedFlow:
    # one object per range: a declared process's static part compares by identity,
    # so a fresh one per call would recompile every jitted sampler that holds it
    return RectifiedFlow(t0=t0, t1=t1)


def _source_time(src, path, t):
    # the source time with the path's log-SNR at path time t
    lam = path.log_snr(t)
    # the two ranges agree up to round-off at the ends: clip into the source's
    lam = jnp.clip(lam, src.log_snr(src.t1), src.log_snr(src.t0))
    return src.t_from_log_snr(lam).astype(jnp.result_type(t))


def _scale(src, path, t):
    # k(t) = y / x, in the sum form that stays finite at both ends
    ts = _source_time(src, path, t)
    return (path.alpha(t) + path.sigma(t)) / (src.alpha(ts) + src.sigma(ts))


@eqx.filter_jit
def path_grid(src, path, grid):
    r"""`(k(u), t(u))` at each time `u` of `grid` on `path`: the scale $y/x$ and the
    source time, in one compiled program (evaluated op by op, a session's first
    default sample compiled some twenty small programs: issue 14). The ends of the
    source times are the source's own `t1`, `t0`."""
    scale = jax.vmap(lambda u: _scale(src, path, u))(grid)
    ts = jax.vmap(lambda u: _source_time(src, path, u))(grid)
    ts = ts.at[0].set(jnp.asarray(src.t1, ts.dtype))
    return scale, ts.at[-1].set(jnp.asarray(src.t0, ts.dtype))


class PathPredictor(AbstractGuidedPredictor):
    r"""A predictor trained under `predictor.process`, read along another `path`
    with the same log-SNR range (see the module docstring): its `process` is `path`,
    and every method takes the path's time and state. Exact (no retraining, no
    approximation); one source-model evaluation per call.

    Build it with [`scoreflow.on_path`][].
    """

    predictor: Any
    path: AbstractProcess

    @property
    def process(self):
        return self.path

    def source_time(self, t):
        r"""The source time with the path's log-SNR at path time `t`."""
        return _source_time(self.predictor.process, self.path, t)

    def scale(self, t):
        r"""$k(t) = y/x$: path state over source state at path time `t`."""
        return _scale(self.predictor.process, self.path, t)

    def to_source(self, t, y):
        """(source time, source state) of the path point `(t, y)`."""
        return self.source_time(t), y / self.scale(t).astype(jnp.result_type(y))

    def map_models(self, fn):
        return eqx.tree_at(lambda p: p.predictor, self, self.predictor.map_models(fn))

    def hub(self, t, x, cond=None):
        r"""$(\hat x_0, \hat\varepsilon)$ at path time `t` and path state `x` (the
        time in the state's dtype, as the reverse drift reads it)."""
        x = jnp.asarray(x)
        ts, xs = self.to_source(jnp.asarray(t, jnp.result_type(x, float)), x)
        return self.predictor.hub(ts, xs, cond)


def on_path(predictor, path: AbstractProcess | str = "straight") -> PathPredictor:
    r"""Read `predictor` (trained under `predictor.process`) along `path`.

    **Arguments:**

    - `predictor`: an [`scoreflow.Predictor`][] (or guided predictor).
    - `path`: a process with a scalar Gaussian kernel whose log-SNR range covers the
      times you sample at, or `"straight"` for
      [`scoreflow.straight_path`][]`(predictor.process)`.

    **Returns:** a [`scoreflow.internal.PathPredictor`][] whose `process` is the path: sample
    with `sf.sample(key, pp.process, pp, ...)`. The samples are in the path's
    coordinates; at the data end they are $k\,x_{t_0}$ (for the straight path of VP
    $k \approx 1$; map back exactly with `pp.to_source`).

    ```python
    pp = sf.on_path(sf.Predictor(model, sf.VP(), prediction="eps"))
    xs = sf.sample(key, pp.process, pp, (2,), num=1000, solver=diffrax.Midpoint(),
                   steps=5)
    ```
    """
    src = predictor.process
    _check_kernel("sf.on_path", src)
    if isinstance(path, str):
        if path != "straight":
            raise ValueError(
                f"`sf.on_path(path=...)` must be a process or 'straight', got {path!r}."
            )
        path = straight_path(src)
    _check_kernel("sf.on_path", path)
    src.prepare_inverse()  # the closed form inside jit, not bisection
    return PathPredictor(predictor, path)
