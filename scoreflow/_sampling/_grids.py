r"""Time grids for fixed-step samplers.

A grid is a strictly decreasing 1-D array of times $t_0 > t_1 > \dots > t_N$ in
scoreflow's convention (data at $t = 0$), running from the noise end to the data
end: `N + 1` points for `N` steps, both endpoints included. Every function here is
pure (no randomness, no state) and returns an array of the default float dtype.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from .._process import AbstractProcess


def _check_steps(call: str, steps) -> int:
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(
            f"`{call}`: steps must be a Python int >= 1, got steps={steps!r}."
        )
    return int(steps)


def _endpoints(call, process, t_start, t_end):
    t_start = process.t1 if t_start is None else t_start
    t_end = process.t0 if t_end is None else t_end
    if isinstance(t_start, (int, float)) and isinstance(t_end, (int, float)):
        if not t_start > t_end:
            raise ValueError(
                f"`{call}`: need t_start > t_end (sampling runs from noise to data), "
                f"got t_start={t_start!r}, t_end={t_end!r}."
            )
    lo, hi = float(process.t0), float(process.t1)
    slack = 1e-6 * max(1.0, abs(hi))
    for name, v in (("t_start", t_start), ("t_end", t_end)):
        if isinstance(v, (int, float)) and not lo - slack <= v <= hi + slack:
            raise ValueError(
                f"`{call}`: {name}={v!r} is outside the process's time range "
                f"[t0, t1] = [{lo:g}, {hi:g}], where its coefficients and the "
                "predictor are defined; pass a time inside it (or declare the process "
                "with a wider t0=/t1=)."
            )
    dtype = jnp.result_type(float)
    return jnp.asarray(t_start, dtype), jnp.asarray(t_end, dtype)


def uniform_grid(
    process: AbstractProcess, steps: int, *, t_start=None, t_end=None
) -> Float[Array, " steps+1"]:
    r"""`steps + 1` times uniform in $t$, from `t_start` (default `process.t1`) down
    to `t_end` (default `process.t0`).

    **Arguments:**

    - `process`: the forward process (supplies the default endpoints).
    - `steps`: the number of steps $N \ge 1$ (a Python int).
    - `t_start`, `t_end`: the noise and data ends of the grid, `t_start > t_end`.

    **Returns:** a strictly decreasing array of shape `(steps + 1,)`.

    ```python
    grid = sf.uniform_grid(sf.VP(), 10)   # [1.0, 0.9, ..., 1e-5]
    ```
    """
    steps = _check_steps("sf.uniform_grid", steps)
    a, b = _endpoints("sf.uniform_grid", process, t_start, t_end)
    u = jnp.linspace(0.0, 1.0, steps + 1, dtype=a.dtype)
    # Concrete (not inside jit): the arithmetic on the host in NumPy, the same
    # correctly rounded operations in the same dtype as jnp's eager ones (the same
    # grid to the bit) without compiling one small XLA program per operation on a
    # session's first grid (issue 14). Inside jit: jnp, staged.
    traced = any(isinstance(v, jax.core.Tracer) for v in (a, b, u))
    xp = jnp if traced else np
    a, b, u = xp.asarray(a), xp.asarray(b), xp.asarray(u)
    grid = a + (b - a) * u
    return jnp.asarray(xp.concatenate([a[None], grid[1:-1], b[None]]))


def log_snr_grid(
    process: AbstractProcess, steps: int, *, t_start=None, t_end=None
) -> Float[Array, " steps+1"]:
    r"""`steps + 1` times uniform in log-SNR $\lambda(t) = \log(\alpha^2/\sigma^2)$
    (the "logSNR" spacing of DPM-Solver, Lu et al. 2022), mapped back to $t$ by
    `process.t_from_log_snr`.

    **Arguments:** as for [`scoreflow.uniform_grid`][]; the process needs a
    Gaussian kernel and `t_from_log_snr`.

    **Returns:** a strictly decreasing array of times, shape `(steps + 1,)`.
    [arXiv:2206.00927](https://arxiv.org/abs/2206.00927)
    """
    steps = _check_steps("sf.log_snr_grid", steps)
    a, b = _endpoints("sf.log_snr_grid", process, t_start, t_end)
    lam = jnp.linspace(process.log_snr(a), process.log_snr(b), steps + 1)
    grid = process.t_from_log_snr(lam[1:-1])
    return jnp.concatenate([a[None], grid.astype(a.dtype), b[None]])


def edm_grid(
    process: AbstractProcess, steps: int, *, rho: float = 7.0, t_start=None, t_end=None
) -> Float[Array, " steps+1"]:
    r"""`steps + 1` times with Karras et al.'s $\rho$-spacing of the noise level
    $\tilde\sigma = \sigma/\alpha$ (EDM, eq. 5):
    $\tilde\sigma_i = \big(\tilde\sigma_{\max}^{1/\rho} + \tfrac{i}{N}
    (\tilde\sigma_{\min}^{1/\rho} - \tilde\sigma_{\max}^{1/\rho})\big)^\rho$, mapped
    to $t$ through $\lambda = -2\log\tilde\sigma$ and `process.t_from_log_snr`.
    For `sf.EDM()` this is exactly the EDM schedule (there $\tilde\sigma = \sigma$).

    **Arguments:** as for [`scoreflow.uniform_grid`][], plus `rho > 0` (EDM uses 7).

    **Returns:** a strictly decreasing array of times, shape `(steps + 1,)`.
    [arXiv:2206.00364](https://arxiv.org/abs/2206.00364)
    """
    steps = _check_steps("sf.edm_grid", steps)
    if not (isinstance(rho, (int, float)) and rho > 0):
        raise ValueError(f"`sf.edm_grid(rho=...)` must be > 0, got rho={rho!r}.")
    a, b = _endpoints("sf.edm_grid", process, t_start, t_end)
    # log sigma~ = -lambda / 2
    smax = jnp.exp(-process.log_snr(a) / 2)
    smin = jnp.exp(-process.log_snr(b) / 2)
    u = jnp.linspace(0.0, 1.0, steps + 1, dtype=a.dtype)
    st = (smax ** (1 / rho) + u * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    grid = process.t_from_log_snr(-2 * jnp.log(st[1:-1]))
    return jnp.concatenate([a[None], grid.astype(a.dtype), b[None]])


def check_time_grid(
    grid: Float[ArrayLike, " n"],
    process: AbstractProcess | None = None,
    *,
    call: str = "sf.internal.check_time_grid",
) -> Float[Array, " n"]:
    r"""Validate a sampling grid and return it as an array.

    A valid grid is 1-D with at least two points, finite, strictly decreasing (no
    duplicates: sampling runs from noise at `grid[0]` to data at `grid[-1]`, both
    endpoints included) and, given a `process`, inside $[t_0, t_1]$.

    **Arguments:** `grid`, the times; `process` (optional) to check the range.

    **Returns:** `grid` as an array of the default float dtype.

    **Raises:** `ValueError` quoting the offending entries. Inside `jit` (a traced
    grid) only the shape is checked here; values are checked with `eqx.error_if`.
    """
    g = jnp.asarray(grid)
    if not jnp.issubdtype(g.dtype, jnp.floating):
        g = g.astype(jnp.result_type(float))
    if g.ndim != 1 or g.shape[0] < 2:
        raise ValueError(
            f"`{call}`: a time grid must be 1-D with at least 2 points (start and end), "
            f"got shape {g.shape}."
        )
    if isinstance(g, jax.core.Tracer):
        d = jnp.diff(g)
        return eqx.error_if(
            g,
            ~jnp.all(d < 0) | ~jnp.all(jnp.isfinite(g)),
            f"`{call}`: the time grid must be finite and strictly decreasing.",
        )
    n = np.asarray(g, np.float64)
    if not np.all(np.isfinite(n)):
        raise ValueError(f"`{call}`: the time grid contains NaN or inf: {n.tolist()}.")
    d = np.diff(n)
    if np.all(d > 0):
        raise ValueError(
            f"`{call}`: the time grid is increasing, but sampling runs from noise (large "
            "t) to data (t = 0); pass grid[::-1]."
        )
    if not np.all(d < 0):
        i = int(np.argmax(d >= 0))
        kind = "a duplicate" if d[i] == 0 else "a non-monotone step"
        raise ValueError(
            f"`{call}`: the time grid must be strictly decreasing; found {kind} at "
            f"index {i}: grid[{i}]={n[i]!r}, grid[{i + 1}]={n[i + 1]!r}."
        )
    if process is not None:
        lo, hi = process.t0, process.t1
        tol = 1e-6 * max(1.0, abs(hi))
        if n[0] > hi + tol or n[-1] < lo - tol:
            raise ValueError(
                f"`{call}`: the time grid must lie inside the process's range [t0, t1] "
                f"= [{lo!r}, {hi!r}], got grid[0]={n[0]!r}, grid[-1]={n[-1]!r}."
            )
    return g


_SPACINGS = ("leading", "trailing", "linspace")
_FAMILIES = ("ddim", "dpmsolver", "euler")


def diffusers_timesteps(
    call: str,
    steps: int,
    *,
    spacing: str,
    train_steps: int,
    steps_offset: int = 0,
    family: str = "ddim",
) -> np.ndarray:
    """diffusers' inference timesteps (decreasing), as its `set_timesteps` computes
    them for a scheduler `family`: `"ddim"` (`DDIMScheduler`, `DDPMScheduler`:
    `steps` points), `"dpmsolver"` (`DPMSolverMultistepScheduler`: "linspace" and
    "leading" space `steps + 1` points and drop the last) or `"euler"`
    (`EulerDiscreteScheduler`: as "ddim", but "linspace" is not rounded). Integers
    (int64), except the `"euler"` family's floats. The one copy of these rules:
    `sf.diffusers_grid` and `sf.peers.diffusers_timesteps` call it."""
    steps = _check_steps(call, steps)
    if spacing not in _SPACINGS:
        raise ValueError(
            f"`{call}`: the timestep spacing must be 'leading', 'trailing' or "
            f"'linspace', got {spacing!r}."
        )
    if family not in _FAMILIES:
        raise ValueError(
            f"`{call}`: the scheduler must be one of {', '.join(map(repr, _FAMILIES))}, "
            f"got {family!r}."
        )
    T = int(train_steps)
    if steps > T:
        raise ValueError(
            f"`{call}`: steps={steps} exceeds train_steps={T} (one training timestep "
            "per step at most)."
        )
    n = steps + 1 if family == "dpmsolver" else steps
    if spacing == "leading":
        idx = (np.arange(n) * (T // n)).round()[::-1] + int(steps_offset)
    elif spacing == "trailing":
        idx = np.round(np.arange(T, 0, -T / steps)) - 1
    else:
        idx = np.linspace(0, T - 1, n)
        idx = (idx if family == "euler" else idx.round())[::-1]
    if family == "dpmsolver" and spacing != "trailing":
        idx = idx[:-1]
    idx = idx.astype(np.float64 if family == "euler" else np.int64)
    if np.any(idx < 0) or np.any(idx > T - 1) or np.any(np.diff(idx) >= 0):
        raise ValueError(
            f"`{call}`: diffusers' {spacing!r} spacing of {steps} steps over {T} "
            f"training timesteps (steps_offset={steps_offset}) gives {idx.tolist()}, "
            f"not strictly decreasing timesteps in [0, {T - 1}]; choose fewer steps, "
            "another spacing or a smaller steps_offset."
        )
    return idx


def diffusers_grid(
    process: AbstractProcess,
    steps: int,
    *,
    spacing: str = "leading",
    train_steps: int = 1000,
    steps_offset: int = 0,
    convention=None,
) -> Float[Array, " steps+1"]:
    r"""diffusers' timestep spacings (`DDIMScheduler`, `DDPMScheduler`; Lin et al.
    2024, Table 2) on `train_steps` discrete training times, mapped to scoreflow's
    continuous time by DDPM's rule $t(i) = t_1 (i + 1)/T$, $i = 0..T - 1$, or, given
    a [`scoreflow.DDPMTimesteps`][] `convention`, by `convention.to_t(i)` (the
    timesteps' exact noise levels); then a last step to `process.t0` (unless the
    last timestep is already there).

    With $T$ = `train_steps` and $N$ = `steps`, the $N$ discrete timesteps are

    - `"leading"`: $i_k = k\lfloor T/N\rfloor + $ `steps_offset`, $k = N-1..0$;
    - `"trailing"`: $i_k = \mathrm{round}(T - kT/N) - 1$, $k = 0..N-1$ (starts at
      $T - 1$; recommended by Lin et al.);
    - `"linspace"`: $\mathrm{round}$ of $N$ points evenly spaced on $[0, T-1]$,
      reversed.

    (`sf.peers.diffusers_timesteps` gives these integers, and those of
    `DPMSolverMultistepScheduler` and `EulerDiscreteScheduler`, which differ.)

    **Arguments:** `process` (with a `convention`: `convention.process`), `steps`
    ($N \ge 1$, $N \le T$), `spacing`, `train_steps` ($T$; with a `convention`, its
    table's length), `steps_offset` (diffusers' `steps_offset`, "leading" only),
    `convention`.

    **Returns:** a strictly decreasing array of times, shape `(steps + 1,)`: the $N$
    timesteps (each a model evaluation for a one-evaluation solver) and `process.t0`
    (shape `(steps,)` where the last timestep already maps to `process.t0`).

    **Raises:** `ValueError` for an unknown spacing or timesteps outside
    $[0, T - 1]$.
    [arXiv:2305.08891](https://arxiv.org/abs/2305.08891)
    """
    call = "sf.diffusers_grid"
    T = int(train_steps) if convention is None else convention.num_timesteps
    idx = diffusers_timesteps(
        call, steps, spacing=spacing, train_steps=T, steps_offset=steps_offset
    )
    dtype = jnp.result_type(float)
    if convention is None:
        t = jnp.asarray(process.t1, dtype) * (jnp.asarray(idx, dtype) + 1) / T
    else:
        t = jnp.asarray(convention.to_t(idx), dtype)
    t0 = jnp.asarray([process.t0], dtype)
    if float(t[-1]) > float(process.t0):
        t = jnp.concatenate([t, t0])
    return check_time_grid(t, process, call=call)


def denoise_grid(process: AbstractProcess, steps: int) -> Float[Array, " steps+1"]:
    r"""The "uniform to $1/n$ + final denoise" grid: the uniform grid of `steps + 1`
    steps on $[0, t_1]$ without its last step, i.e. the `steps + 1` times
    $t_1(1 - k/(N + 1))$, $k = 0..N$, ending at $t_1/(N + 1)$. Use it with
    `sf.sample(..., denoise=True)`: the Tweedie step $\hat x_0$ replaces the last
    step (one evaluation instead of the solver's).

    **Returns:** a strictly decreasing array of times, shape `(steps + 1,)`.
    """
    steps = _check_steps("sf.denoise_grid", steps)
    dtype = jnp.result_type(float)
    t1 = jnp.asarray(process.t1, dtype)
    k = jnp.arange(steps + 1, dtype=dtype)
    return t1 * (1 - k / (steps + 1))
