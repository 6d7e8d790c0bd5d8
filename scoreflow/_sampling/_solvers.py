r"""Diffusion samplers as `diffrax.AbstractSolver`s.

Each solver steps the reverse-time dynamics built by
[`scoreflow.probability_flow`][] / [`scoreflow.reverse_sde`][] (flipped time
$s = t_1 - t$, integrated forwards in $s$). They read the process and predictor
from the term's drift, and their randomness from the term's Brownian path, so
`diffeqsolve`, `SaveAt`, progress meters and Brownian trees all keep working.

The exponential integrators are derived from the declared kernel
$x_t = \alpha(t)x_0 + \sigma(t)\varepsilon$ and half-log-SNR
$\lambda = \tfrac12\log(\alpha^2/\sigma^2)$ of *any* process; nothing is
special-cased to VP. With $h = \lambda_b - \lambda_a > 0$ for a step from $t_a$ to
$t_b < t_a$:

- DDIM / DPM-Solver-1 (Song et al. 2021; Lu et al. 2022):
  $x_b = \alpha_b\hat x_0 + \sqrt{\sigma_b^2 - c^2}\,\hat\varepsilon + c\,z$, with
  $c = \eta\,\sigma_b\sqrt{1 - e^{-2h}}$ (the exact DDPM posterior std at $\eta=1$).
- DPM-Solver++(2M): $x_b = \tfrac{\sigma_b}{\sigma_a}x_a - \alpha_b(e^{-h} - 1)D$,
  $D = (1 + \tfrac1{2r})\hat x_0^{(a)} - \tfrac1{2r}\hat x_0^{(\text{prev})}$,
  $r = h_\text{prev}/h$.

**Lower-order final step.** The second-order samplers (`DPMSolverPP2M`, `EDMHeun`)
take a first-order (DDIM) step on the step that reaches the data end $t_0$ of the
process, i.e. the end $s = t_1 - t_0$ of the flipped-time interval, read from the
term (`ReverseDrift.t1` and `ReverseDrift.process.t0`). This is EDM's Algorithm 1
(an Euler step to $\sigma = 0$), k-diffusion's `sigmas[i + 1] == 0` branch and
diffusers' `lower_order_final`. The criterion is the position of the step, not the
grid: a grid that stops above $t_0$ has no lower-order step, and the same rule holds
inside `diffeqsolve`. Turn it off with `lower_order_final=False`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from diffrax import RESULTS, LocalLinearInterpolation

from .._process import AbstractScalarProcess
from ._dynamics import AbstractReverseTerm, _inner, _is_static_zero


def _split_terms(terms, call):
    """(ReverseDrift, Brownian noise term or None) from our dynamics' term (the
    solvers' `term_structure`; `diffeqsolve` has checked it, `sf.step` has not)."""
    terms = _inner(terms)
    if not isinstance(terms, AbstractReverseTerm):
        raise ValueError(
            f"`{call}` steps the dynamics built by sf.probability_flow / sf.reverse_sde "
            "/ sf.reverse_dynamics (it needs the model, not just a vector field); got "
            f"terms {type(terms).__name__}."
        )
    return terms.reverse_parts()


def _normals(noise, s0, s1, k: int, like, call):
    """`k` independent standard normals shaped like `like`, from the Brownian path's
    increments over `k` equal sub-intervals of [s0, s1]."""
    if noise is None:
        raise ValueError(
            f"`{call}` is stochastic and needs a Brownian path: use "
            "sf.sample(..., method='sde') or the terms of sf.reverse_sde."
        )
    out = []
    h = (s1 - s0) / k
    for i in range(k):
        a = s0 + i * h
        w = noise.contr(a, a + h)
        w = getattr(w, "W", w)
        out.append((w / jnp.sqrt(h)).astype(like.dtype))
    return out


SAMPLE_AXIS = "scoreflow_samples"
"""The vmap axis name of the samples `sf.sample` draws together."""


def _batch_mean(v):
    """The mean of `v` over the samples drawn together (the vmap axis
    `SAMPLE_AXIS` of `sf.sample`); `v` itself outside such a batch (`sf.step`, a
    batch of one)."""
    try:
        return jax.lax.pmean(v, SAMPLE_AXIS)
    except NameError:
        return v


def _coeffs(process, t):
    return process.alpha(t), process.sigma(t), process.log_snr(t) / 2


def _reaches_data_end(drift, s1):
    """Whether a step ending at flipped time `s1` reaches the data end $t_0$ of the
    process, i.e. the end $t_1 - t_0$ of the flipped-time interval, up to one machine
    epsilon (relative): `sf.sample` computes its grid's end with the same rounding,
    and a step that stops a few ulps short (possible on fine float32 grids near
    $t_0$) is not the final one. A traced bool; a Python bool for a Python-number
    `s1` (a step traced at known times, as when `sf.sample` counts model calls)."""
    if isinstance(s1, (int, float)):
        s_end = float(drift.t1) - float(drift.process.t0)
        return np.bool_(s1 >= s_end - 2.3e-16 * max(1.0, abs(s_end)))
    s1 = jnp.asarray(s1)
    dtype = (
        s1.dtype if jnp.issubdtype(s1.dtype, jnp.floating) else jnp.result_type(float)
    )
    s_end = jnp.asarray(drift.t1, dtype) - jnp.asarray(drift.process.t0, dtype)
    tol = jnp.finfo(dtype).eps * jnp.maximum(1.0, jnp.abs(s_end))
    return s1 >= s_end - tol


def _final_or(final, first_order: Callable, higher_order: Callable):
    """`first_order()` on the final step, else `higher_order()`: a `lax.cond` (with an
    unbatched predicate, as on `sf.sample`'s grid, only one branch runs, so the final
    step saves the evaluations of the higher-order branch). A concrete predicate (a
    step traced at known times, as when `sf.sample` counts model calls) picks its
    branch in Python."""
    if isinstance(final, (bool, np.bool_)):
        return first_order() if final else higher_order()
    return jax.lax.cond(final, first_order, higher_order)


class AbstractDiffusionSolver(diffrax.AbstractSolver):
    """Base of scoreflow's samplers: fixed-step solvers of the reverse dynamics that
    evaluate the model through the term's predictor (`hub`, one network evaluation
    for both $\\hat x_0$ and $\\hat\\varepsilon$). No error estimate: use them on a
    fixed grid."""

    term_structure: ClassVar = AbstractReverseTerm
    process_rung: ClassVar = AbstractScalarProcess
    """What the sampler needs of the process (checked by `sf.sample`)."""
    interpolation_cls: ClassVar[Callable[..., LocalLinearInterpolation]] = (
        LocalLinearInterpolation
    )

    def init(self, terms, t0, t1, y0, args):
        return None

    def reverse_parts(self, terms):
        """`(drift, noise)` of the reverse dynamics `step` receives (the term
        structure [`AbstractReverseTerm`][scoreflow.internal.AbstractReverseTerm],
        unwrapped from what `diffeqsolve` puts around it): the
        [`ReverseDrift`][scoreflow.internal.ReverseDrift] (`drift.process`,
        `drift.predictor`, `drift.time(s)`) and the Brownian noise term, `None` for
        the probability-flow ODE."""
        return _split_terms(terms, type(self).__name__)

    def func(self, terms, t0, y0, args):
        drift, _ = self.reverse_parts(terms)
        return drift(t0, y0, args)

    def order(self, terms):
        return 1

    def normals_per_step(self) -> int:
        """How many standard normals one stochastic step reads from the Brownian
        path (the `k` of `sf.sample(normals=...)` and `sf.step(normals=...)`)."""
        return 1

    def state_from_history(self, process, t, x, history):
        """The solver state at `(t, x)` given the earlier points of the run, most
        recent first, as `(t_i, x_i, x0_i)` triples (see [`scoreflow.step`][]).
        Samplers without memory have none to take."""
        if history:
            raise ValueError(
                f"`sf.step(history=...)`: sf.{type(self).__name__} keeps no history "
                "between steps (a one-step method); leave history out."
            )
        return None


def _ddim(drift, s0, s1, x, cond, eta, z, large=False):
    p = drift.process
    ta, tb = drift.time(s0), drift.time(s1)
    x0, eps = drift.predictor.hub(ta, x, cond)
    ab, sb, lb = _coeffs(p, tb)
    _, sa, la = _coeffs(p, ta)
    if z is None:
        return ab * x0 + sb * eps
    h = lb - la
    var = -jnp.expm1(-2 * h)  # posterior variance / sigma_b^2
    c = eta * sb * jnp.sqrt(var)
    mean = ab * x0 + sb * jnp.sqrt(jnp.clip(1 - eta**2 * var, 0.0)) * eps
    if large:  # DDPM's fixed-large variance sigma_a^2 (1 - e^{-2h}), same mean
        c = sa * jnp.sqrt(var)
    return mean + c * z


class DDIM(AbstractDiffusionSolver):
    r"""DDIM (Song, Meng & Ermon 2021) for any process with a Gaussian kernel:

    $$x_b = \alpha_b\hat x_0 + \sqrt{\sigma_b^2 - c^2}\,\hat\varepsilon + c\,z,\qquad
      c = \eta\,\sigma_b\sqrt{1 - e^{\lambda_a - \lambda_b}}$$

    ($\lambda$ the full log-SNR). $\eta = 0$ is deterministic (exactly
    DPM-Solver-1, first order; use it with `method="ode"` or `"sde"`); $\eta = 1$ is
    ancestral DDPM. $\eta > 0$ needs the Brownian path of `method="sde"`, whose
    increments give $z$. One model evaluation per step.

    **Arguments:** `eta` ($\ge 0$; a Python `0` is static and deterministic, any
    other number is traced).
    [arXiv:2010.02502](https://arxiv.org/abs/2010.02502)
    """

    eta: Any = 0.0

    def __init__(self, eta: float = 0.0):
        if isinstance(eta, (int, float)) and eta < 0:
            raise ValueError(f"`sf.DDIM(eta=...)` must be >= 0, got eta={eta!r}.")
        self.eta = (
            0 if _is_static_zero(eta) else jnp.asarray(eta, jnp.result_type(float))
        )

    def strong_order(self, terms):
        return None if _is_static_zero(self.eta) else 0.5

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        drift, noise = _split_terms(terms, "sf.DDIM")
        z = (
            None
            if _is_static_zero(self.eta)
            else _normals(noise, t0, t1, 1, y0, "sf.DDIM(eta>0)")[0]
        )
        y1 = _ddim(drift, t0, t1, y0, args, self.eta, z)
        return y1, None, dict(y0=y0, y1=y1), None, RESULTS.successful


class DDPM(AbstractDiffusionSolver):
    r"""Ancestral sampling (Ho et al. 2020) for any process with a Gaussian kernel:
    draw $x_b$ from the exact Gaussian posterior $q(x_b \mid x_a, \hat x_0)$,

    $$x_b = \alpha_b\hat x_0 + \sigma_b e^{-h}\hat\varepsilon
          + \sigma_b\sqrt{1 - e^{-2h}}\,z,\qquad h = \tfrac12(\lambda_b - \lambda_a),$$

    identical to [`scoreflow.DDIM`][]`(eta=1)`. Needs `method="sde"`.

    `variance="large"` keeps the mean and takes Ho et al.'s "fixed large" variance
    instead, the variance of the forward step from $t_b$ to $t_a$,
    $\sigma_a^2(1 - e^{-2h}) = \sigma_a^2 - (\alpha_a/\alpha_b)^2\sigma_b^2$
    ($\beta_t$ in DDPM's notation; score_sde's `AncestralSamplingPredictor` for VP,
    whose exact $\beta_i$ table is [`scoreflow.peers.score_sde_pc`][]).

    **Arguments:** `variance` (`"posterior"`, the default, or `"large"`; static).
    [arXiv:2006.11239](https://arxiv.org/abs/2006.11239)
    """

    variance: str = eqx.field(static=True, default="posterior")

    def __check_init__(self):
        if self.variance not in ("posterior", "large"):
            raise ValueError(
                "`sf.DDPM(variance=...)` must be 'posterior' or 'large', got "
                f"{self.variance!r}."
            )

    def strong_order(self, terms):
        return 0.5

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        drift, noise = _split_terms(terms, "sf.DDPM")
        (z,) = _normals(noise, t0, t1, 1, y0, "sf.DDPM")
        y1 = _ddim(drift, t0, t1, y0, args, 1.0, z, large=self.variance == "large")
        return y1, None, dict(y0=y0, y1=y1), None, RESULTS.successful


class DPMSolverPP2M(AbstractDiffusionSolver):
    r"""DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): the second-order multistep
    exponential integrator in data ($\hat x_0$) prediction, for any process with a
    Gaussian kernel, in half-log-SNR $\lambda = \log(\alpha/\sigma)$:

    $$x_b = \frac{\sigma_b}{\sigma_a}x_a - \alpha_b\,(e^{-h} - 1)\,D,\qquad
      D = \Big(1 + \frac1{2r}\Big)\hat x_0(t_a) - \frac1{2r}\hat x_0(t_\text{prev}),$$

    $h = \lambda_b - \lambda_a$, $r = h_\text{prev}/h$; the first step is DDIM.
    One model evaluation per step; works on non-uniform grids.

    **Lower-order final step** (`lower_order_final=True`, the default): the step that
    reaches the data end $t_0$ is also DDIM ($D = \hat x_0(t_a)$), as in k-diffusion
    and diffusers (`lower_order_final`). The multistep correction extrapolates
    $\hat x_0$ linearly in $\lambda$, and the last step of a few-step grid is long
    in $\lambda$ (the log-SNR range ends steeply at $t_0$), so its extrapolation
    overshoots; the DDIM step is exact for a constant $\hat x_0$ and stays stable.
    With many steps the final step's local error is $O(h^2)$, so the method stays
    second order.

    **Arguments:** `lower_order_final` (static bool).
    [arXiv:2211.01095](https://arxiv.org/abs/2211.01095)
    """

    lower_order_final: bool = eqx.field(static=True, default=True)

    def order(self, terms):
        return 2

    def init(self, terms, t0, t1, y0, args):
        dtype = jnp.result_type(y0)
        return (jnp.zeros_like(y0), jnp.zeros((), dtype), jnp.array(False))

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        drift, _ = _split_terms(terms, "sf.DPMSolverPP2M")
        p = drift.process
        x0_prev, h_prev, have_prev = solver_state
        ta, tb = drift.time(t0), drift.time(t1)
        x0, _ = drift.predictor.hub(ta, y0, args)
        _, sa, la = _coeffs(p, ta)
        ab, sb, lb = _coeffs(p, tb)
        h = lb - la
        use2 = have_prev & ~jnp.asarray(made_jump)
        if self.lower_order_final:
            use2 = use2 & ~_reaches_data_end(drift, t1)
        r = h_prev / jnp.where(use2, h, 1.0)
        r = jnp.where(use2, r, 1.0)
        d = jnp.where(use2, (1 + 1 / (2 * r)) * x0 - x0_prev / (2 * r), x0)
        y1 = (sb / sa) * y0 - ab * jnp.expm1(-h) * d
        state = (x0, h, jnp.array(True))
        return y1, None, dict(y0=y0, y1=y1), state, RESULTS.successful

    def state_from_history(self, process, t, x, history):
        if not history:
            return (jnp.zeros_like(x), jnp.zeros((), x.dtype), jnp.array(False))
        t_prev, _, x0_prev = history[0]
        h = (process.log_snr(t) - process.log_snr(t_prev)) / 2
        return (x0_prev, jnp.asarray(h, x.dtype), jnp.array(True))


class EDMHeun(AbstractDiffusionSolver):
    r"""EDM's stochastic sampler (Karras et al. 2022, Algorithm 2) for any process
    with a Gaussian kernel, in the scaled variables $\tilde x = x/\alpha$,
    $\tilde\sigma = \sigma/\alpha$, where the PF-ODE is
    $d\tilde x/d\tilde\sigma = (\tilde x - D(\tilde x; \tilde\sigma))/\tilde\sigma$
    with $D$ the denoiser $\hat x_0$:

    1. churn: $\hat\sigma = \tilde\sigma_a(1 + \gamma)$ (when
       $S_{t\min} \le \tilde\sigma_a \le S_{t\max}$),
       $\hat x = \tilde x + \sqrt{\hat\sigma^2 - \tilde\sigma_a^2}\,S_\text{noise}\,z$;
    2. Heun's 2nd-order step from $\hat\sigma$ to $\tilde\sigma_b$.

    $\gamma = 0$ (default, static) is the deterministic 2nd-order Heun sampler (EDM
    Algorithm 1) and works with `method="ode"`; $\gamma > 0$ needs `method="sde"`.
    Two model evaluations per step, one on the final step (below).

    The churned level $\hat\sigma$ is capped at $\tilde\sigma(t_1)$: the predictor is
    only defined on $[t_0, t_1]$, and $D$ must be evaluated at the time whose noise
    level $\hat x$ actually has (on EDM's own grid the first step starts at $t_1$, so
    it gets no churn; the paper's $D$ accepts any $\sigma$). The churn noise is
    $\tilde\sigma_a\sqrt{\gamma(2 + \gamma)}\,S_\text{noise}\,z$, which is exactly 0
    where $\gamma$ is switched off ($\sqrt{\hat\sigma^2 - \tilde\sigma_a^2}$ is not:
    under jit the two squares round differently and the square root of the tiny
    negative difference was NaN).

    **Lower-order final step** (`lower_order_final=True`, the default): the step that
    reaches the data end $t_0$ is an Euler step in $(\tilde x, \tilde\sigma)$, which is
    exactly a DDIM step, and costs one evaluation, as in EDM's Algorithm 1 (where the
    last step goes to $\sigma = 0$) and k-diffusion. Heun's correction there would
    divide by $\tilde\sigma(t_0)$ ($10^{-3}$ for VP) and amplify the error of its
    Euler predictor by $\hat\sigma/\tilde\sigma(t_0)$: with two steps, Fréchet
    distance 415 on the 8-Gaussian ring instead of about DDIM's.

    **Arguments:** `gamma` ($= \min(S_\text{churn}/N, \sqrt2 - 1)$ in the paper),
    `s_tmin`, `s_tmax` (in units of $\tilde\sigma$), `s_noise`, `lower_order_final`
    (static bool).
    [arXiv:2206.00364](https://arxiv.org/abs/2206.00364)
    """

    gamma: Any = 0
    s_tmin: Any = 0.0
    s_tmax: Any = float("inf")
    s_noise: Any = 1.0
    lower_order_final: bool = eqx.field(static=True, default=True)

    def __init__(
        self,
        gamma=0,
        s_tmin=0.0,
        s_tmax=float("inf"),
        s_noise=1.0,
        lower_order_final: bool = True,
    ):
        if isinstance(gamma, (int, float)) and not 0 <= gamma <= 2**0.5 - 1 + 1e-12:
            raise ValueError(
                f"`sf.EDMHeun(gamma=...)` must lie in [0, sqrt(2) - 1], got gamma={gamma!r}."
            )
        f = jnp.result_type(float)
        self.gamma = 0 if _is_static_zero(gamma) else jnp.asarray(gamma, f)
        self.s_tmin = jnp.asarray(s_tmin, f)
        self.s_tmax = jnp.asarray(s_tmax, f)
        self.s_noise = jnp.asarray(s_noise, f)
        self.lower_order_final = bool(lower_order_final)

    def order(self, terms):
        return 2

    def strong_order(self, terms):
        return None if _is_static_zero(self.gamma) else 0.5

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        drift, noise = _split_terms(terms, "sf.EDMHeun")
        p, pred = drift.process, drift.predictor
        ta, tb = drift.time(t0), drift.time(t1)
        aa, ab = p.alpha(ta), p.alpha(tb)
        la = p.log_snr(ta)
        sa = jnp.exp(-la / 2)  # sigma~ = sigma / alpha
        sb = jnp.exp(-p.log_snr(tb) / 2)
        xt = y0 / aa
        if _is_static_zero(self.gamma):
            s_hat, t_hat, a_hat = sa, ta, aa
        else:
            (z,) = _normals(noise, t0, t1, 1, y0, "sf.EDMHeun(gamma>0)")
            on = (sa >= self.s_tmin) & (sa <= self.s_tmax)
            # Cap sigma_hat = sa (1 + g) at sigma~(t1), the top of the predictor's range.
            s_top = jnp.exp(-p.log_snr(jnp.asarray(p.t1, jnp.result_type(ta))) / 2)
            g = jnp.where(on, jnp.minimum(self.gamma, s_top / sa - 1), 0.0)
            churn = g > 0
            g = jnp.where(churn, g, 0.0)
            s_hat = sa * (1 + g)
            # sqrt(s_hat^2 - sa^2) without cancellation (and with finite gradients
            # where g = 0).
            std = jnp.where(churn, sa * jnp.sqrt(jnp.where(churn, g * (2 + g), 1.0)), 0)
            xt = xt + std * self.s_noise * z
            lam_hat = la - 2 * jnp.log1p(g)
            t_hat = jnp.where(churn, p.t_from_log_snr(lam_hat), ta)
            a_hat = p.alpha(t_hat)
        d1 = (xt - pred.x0(t_hat, a_hat * xt, args)) / s_hat
        x_eul = xt + (sb - s_hat) * d1

        def heun():
            d2 = (x_eul - pred.x0(tb, ab * x_eul, args)) / sb
            return xt + (sb - s_hat) * (d1 + d2) / 2

        if self.lower_order_final:
            x_b = _final_or(_reaches_data_end(drift, t1), lambda: x_eul, heun)
        else:
            x_b = heun()
        y1 = ab * x_b
        return y1, None, dict(y0=y0, y1=y1), None, RESULTS.successful


_PC_PREDICTORS = ("reverse_diffusion", "euler_maruyama", "ancestral", "none")
_PC_STEP_SIZES = ("score_sde", "annealed")


def _kernel_step(p, ta, tb):
    r"""The forward step $t_b \to t_a$ of the exact kernel, $x_a = m\,x_b + G z$:
    $(m, G^2)$ with $m = \alpha_a/\alpha_b$,
    $G^2 = \sigma_a^2 - m^2\sigma_b^2 = \sigma_a^2(1 - e^{\lambda_a - \lambda_b})$."""
    m = p.alpha(ta) / p.alpha(tb)
    g2 = -(p.sigma(ta) ** 2) * jnp.expm1(p.log_snr(ta) - p.log_snr(tb))
    return m, g2


class PredictorCorrector(AbstractDiffusionSolver):
    r"""Predictor--corrector sampling (Song et al. 2021, Algorithms 1--2, and
    score_sde's `get_pc_sampler`): at each grid time $t_a$, `corrector_steps`
    Langevin corrector steps, then one predictor step towards $t_b$.

    Both read a discretisation of the forward SDE, the step
    $x_a = m\,x_b + G\,z$ into $t_a$:

    - `levels=None` (default): the exact kernel between the grid times,
      $m = \alpha_a/\alpha_b$, $G^2 = \sigma_a^2 - m^2\sigma_b^2$, for any process
      and grid;
    - `levels=N`: score_sde's $N$-level tables,
      [`process.discretize(t, N)`][scoreflow.AbstractScalarProcess.discretize]
      (DDPM's $\beta_i$ for [`scoreflow.VP`][], SMLD's $\sigma_i$ for
      [`scoreflow.VE`][], Euler--Maruyama otherwise), read at $t_a$ only.
      [`scoreflow.peers.score_sde_pc`][] builds the matching grid.

    **Corrector** (Langevin, $x \leftarrow x + \epsilon\,s + \sqrt{2\epsilon}\,z$,
    $s = \nabla\log p_{t_a}(x)$, signal-to-noise ratio $r$ = `snr`):

    - `step_size="score_sde"` (default), score_sde's `LangevinCorrector`:
      $\epsilon = 2\,\alpha_i\,(r\,\overline{\|z\|}/\overline{\|s\|})^2$ with
      $\alpha_i = m^2$ ($1 - \beta_i$ for VP, 1 for VE), the norms averaged over
      the batch (`norms="batch"`, the default, exactly score_sde: the mean runs
      over the samples `sf.sample` draws together, or over each chunk with
      `batch_size=`, whose padded last chunk repeats its last sample; so, for this
      sampler only, a sample depends on its batch). `norms="sample"` uses each
      sample's own norms (a batch of one; what [`scoreflow.step`][] does). In image
      dimensions both norms concentrate and the two agree; in low dimension
      $\|z\|/\|s\|$ varies a lot from sample to sample (for $d = 2$,
      $1/\|s\|^2$ has no mean) and per-sample steps are heavy-tailed: on
      unit-Gaussian data with the exact score and score_sde's grid with
      $N = 200$, the sample std is 1.004 ($d = 2$) and 1.010 ($d = 16$) with the
      batch means, 4.15 and 1.13 with per-sample norms.
    - `step_size="annealed"`: $\epsilon = 2r^2\min(d/\|s\|^2,\ \sigma(t_a)^2)$ (the
      noise norm replaced by its mean $\sqrt d$ and the step capped at the
      Gaussian scale $2r^2\sigma^2$, no $\alpha_i$). For any
      $p_t = p_0 * N(0, \sigma^2 I)$, $E\|s\|^2 \le d/\sigma^2$, so the cap binds
      for most samples: on unit-Gaussian data ($d = 64$, $t = 0.1$) its median
      step is 0.10$\times$ score_sde's for VP.

    **Predictor** (`predictor=`; $w = 1$, or $\tfrac12$ with
    `probability_flow=True`, which also drops the predictor's noise):

    - `"reverse_diffusion"` (default), score_sde's `ReverseDiffusionPredictor`:
      $x_b = x - (m - 1)\,x + w\,G^2 s + G z$;
    - `"ancestral"`, score_sde's `AncestralSamplingPredictor`:
      $x_b = (x + G^2 s)/m + \sqrt v\,z$, with $v = G^2$ (DDPM's "fixed large"
      variance) on the grid, and the table's $v$ with `levels` (VP: $\beta_i$; VE:
      the SMLD posterior $\sigma_{i-1}^2 G_i^2/\sigma_i^2$);
    - `"euler_maruyama"`: an Euler--Maruyama step of the reverse SDE over
      $\Delta t = t_a - t_b$ (with `levels`, score_sde's $\Delta t = t_1/N$);
    - `"none"`: corrector only (score_sde's `NonePredictor`).

    **Final step:** with `final_noise=False` (default) the predictor step that
    reaches the data end $t_0$ returns its mean (score_sde's `denoise=True`).

    Needs `method="sde"` (all noise comes from the Brownian path's increments:
    `corrector_steps + 1` standard normals per step, the corrector's first).
    `corrector_steps + 1` model evaluations per step (`corrector_steps` with
    `predictor="none"`). Not to be confused with `sf.ReverseDiffusion`, the
    diffusion operator of the reverse dynamics.

    **Arguments:** `snr` ($r > 0$), `corrector_steps` (int $\ge 0$), `predictor`,
    `step_size`, `levels` (None or an int $N \ge 2$), `probability_flow` (bool),
    `final_noise` (bool), `norms` (`"batch"` or `"sample"`); all but `snr`
    static.
    [arXiv:2011.13456](https://arxiv.org/abs/2011.13456)
    """

    snr: Any = 0.16
    corrector_steps: int = eqx.field(static=True, default=1)
    predictor: str = eqx.field(static=True, default="reverse_diffusion")
    step_size: str = eqx.field(static=True, default="score_sde")
    levels: int | None = eqx.field(static=True, default=None)
    probability_flow: bool = eqx.field(static=True, default=False)
    final_noise: bool = eqx.field(static=True, default=False)
    norms: str = eqx.field(static=True, default="batch")

    def __init__(
        self,
        snr: float = 0.16,
        corrector_steps: int = 1,
        *,
        predictor: str = "reverse_diffusion",
        step_size: str = "score_sde",
        levels: int | None = None,
        probability_flow: bool = False,
        final_noise: bool = False,
        norms: str = "batch",
    ):
        call = "sf.PredictorCorrector"
        if norms not in ("batch", "sample"):
            raise ValueError(
                f"`{call}(norms=...)` must be 'batch' (score_sde: the corrector's "
                f"norms averaged over the batch) or 'sample', got {norms!r}."
            )
        if isinstance(snr, (int, float)) and snr <= 0:
            raise ValueError(f"`{call}(snr=...)` must be > 0, got {snr!r}.")
        if not isinstance(corrector_steps, int) or corrector_steps < 0:
            raise ValueError(
                f"`{call}(corrector_steps=...)` must be an int >= 0, got "
                f"{corrector_steps!r}."
            )
        if predictor not in _PC_PREDICTORS:
            raise ValueError(
                f"`{call}(predictor=...)` must be one of {_PC_PREDICTORS}, got "
                f"{predictor!r}."
            )
        if step_size not in _PC_STEP_SIZES:
            raise ValueError(
                f"`{call}(step_size=...)` must be one of {_PC_STEP_SIZES}, got "
                f"{step_size!r}."
            )
        if levels is not None and (
            isinstance(levels, bool) or not isinstance(levels, int) or levels < 2
        ):
            raise ValueError(
                f"`{call}(levels=...)` must be None (the exact kernel between grid "
                f"times) or an int >= 2 (score_sde's N), got {levels!r}."
            )
        if predictor == "ancestral" and probability_flow:
            raise ValueError(
                f"`{call}(predictor='ancestral', probability_flow=True)`: the "
                "ancestral predictor has no probability-flow form (score_sde refuses "
                "it too); use predictor='reverse_diffusion' or 'euler_maruyama'."
            )
        self.snr = jnp.asarray(snr, jnp.result_type(float))
        self.corrector_steps = corrector_steps
        self.predictor = predictor
        self.step_size = step_size
        self.levels = levels
        self.probability_flow = bool(probability_flow)
        self.final_noise = bool(final_noise)
        self.norms = norms

    def strong_order(self, terms):
        return 0.5

    def normals_per_step(self) -> int:
        return self.corrector_steps + 1

    def _discretization(self, p, ta, tb):
        """$(m, G^2, v)$ of the forward step into $t_a$."""
        if self.levels is not None:
            return p.discretize(ta, self.levels)
        m, g2 = _kernel_step(p, ta, tb)
        return m, g2, g2

    def _corrector_size(self, p, ta, m, score, z):
        s2 = jnp.sum(score**2)
        if self.step_size == "annealed":
            return 2 * self.snr**2 * jnp.minimum(score.size / s2, p.sigma(ta) ** 2)
        z_norm, s_norm = jnp.sqrt(jnp.sum(z**2)), jnp.sqrt(s2)
        if self.norms == "batch":
            z_norm, s_norm = _batch_mean(z_norm), _batch_mean(s_norm)
        return 2 * m**2 * (self.snr * z_norm / s_norm) ** 2

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        call = "sf.PredictorCorrector"
        drift, noise = _split_terms(terms, call)
        p, pred = drift.process, drift.predictor
        ta, tb = drift.time(t0), drift.time(t1)
        k = self.corrector_steps + 1
        noisy_predictor = self.predictor != "none" and not self.probability_flow
        if self.corrector_steps or noisy_predictor:
            zs = _normals(noise, t0, t1, k, y0, call)
        else:
            zs = [None] * k
        m, g2, v = (jnp.asarray(c, y0.dtype) for c in self._discretization(p, ta, tb))
        x = y0
        for z in zs[:-1]:
            score = pred.score(ta, x, args)
            e = self._corrector_size(p, ta, m, score, z).astype(y0.dtype)
            x = x + e * score + jnp.sqrt(2 * e) * z
        if self.predictor == "none":
            return x, None, dict(y0=y0, y1=x), None, RESULTS.successful
        score = pred.score(ta, x, args)
        w = 0.5 if self.probability_flow else 1.0
        if self.predictor == "reverse_diffusion":
            mean, std = x - (m - 1) * x + w * g2 * score, jnp.sqrt(g2)
        elif self.predictor == "ancestral":
            mean, std = (x + g2 * score) / m, jnp.sqrt(v)
        else:  # euler_maruyama
            dt = t1 - t0 if self.levels is None else p.t1 / self.levels
            eta = None if self.probability_flow else 1.0
            mean = x - dt * p.reverse_drift(ta, x, score, eta)
            std = p.diffusion(ta) * jnp.sqrt(dt)
        if self.probability_flow:
            y1 = mean
        else:
            y1 = mean + std.astype(y0.dtype) * zs[-1]
            if not self.final_noise:
                y1 = jnp.where(_reaches_data_end(drift, t1), mean, y1)
        return y1, None, dict(y0=y0, y1=y1), None, RESULTS.successful
