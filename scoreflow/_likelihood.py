r"""Exact log-likelihoods by the instantaneous change of variables, and bits/dim.

Along the probability-flow ODE $\dot x_t = v(t, x_t)$ the log-density obeys
$\tfrac{d}{dt}\log p_t(x_t) = -\nabla\cdot v(t, x_t)$, so

$$\log p_{t_0}(x) = \log p_{t_1}(x_{t_1}) + \int_{t_0}^{t_1} \nabla\cdot v(t, x_t)\,dt,
\qquad x_{t_0} = x,$$

integrated forward in time (data to noise) with diffrax, together with the state.
(Chen et al. 2018, [arXiv:1806.07366](https://arxiv.org/abs/1806.07366); Grathwohl
et al. 2019, [arXiv:1810.01367](https://arxiv.org/abs/1810.01367); Song et al. 2021,
[arXiv:2011.13456](https://arxiv.org/abs/2011.13456), appendix D.2.)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, Literal

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from ._count import runge_kutta_evaluations
from ._custom_types import Scalar
from ._process import AbstractProcess, AbstractScalarProcess, DeclaredSDE, require

TraceType = Literal["exact", "hutchinson", "hutch++"]
ProbeType = Literal["rademacher", "gaussian"]

_TRACES = ("exact", "hutchinson", "hutch++")
_PROBES = ("rademacher", "gaussian")

# Solvers that only make sense for SDEs (the likelihood ODE has no noise term).
_SDE_SOLVERS = (
    diffrax.AbstractSRK,
    diffrax.EulerHeun,
    diffrax.ItoMilstein,
    diffrax.StratonovichMilstein,
)


# --------------------------------------------------------------------------- #
# Divergence estimators
# --------------------------------------------------------------------------- #


def draw_probes(
    key: PRNGKeyArray, shape: tuple[int, ...], num: int, probe: str, dtype
) -> Array:
    """`num` probe vectors of `shape`: Rademacher (±1) or standard Gaussian."""
    if probe == "rademacher":
        return jr.rademacher(key, (num, *shape), dtype=dtype)
    return jr.normal(key, (num, *shape), dtype=dtype)


def divergence(
    fn: Callable[[Array], Array],
    x: Array,
    *,
    trace: str = "exact",
    probes: Array | None = None,
    per_probe: bool = False,
) -> tuple[Array, Array]:
    r"""$(\,f(x),\ \nabla\cdot f(x))$ for $f: \mathbb{R}^{\text{shape}} \to
    \mathbb{R}^{\text{shape}}$, with the divergence computed by `trace`:

    - `"exact"`: $\sum_i \partial_i f_i$ from one Jacobian-vector product per
      coordinate (`jax.linearize` + `vmap`), so memory is $O(d^2)$ only for the
      basis, never a stored graph per coordinate.
    - `"hutchinson"`: $\frac1m\sum_{j=1}^m z_j^\top J z_j$ over the $m$ given probes
      $z_j$ (`probes`, shape `(m, *shape)`) — unbiased when
      $E[z z^\top] = I$ (Hutchinson 1989).
    - `"hutch++"`: Meyer et al. 2021 ([arXiv:2010.09649](https://arxiv.org/abs/2010.09649)).
      The probes are split in thirds $(S, G, \cdot)$; $Q = \mathrm{orth}(J S)$;
      the estimate is $\mathrm{tr}(Q^\top J Q) +
      \frac1{k}\mathrm{tr}(G^\top (I - QQ^\top) J (I - QQ^\top) G)$ with $k$ probes
      in $G$. It is unbiased for any (also non-symmetric) $J$, since
      $\mathrm{tr}(J) = \mathrm{tr}(PJ) + \mathrm{tr}((I-P)J(I-P))$ for the
      projector $P = QQ^\top$, and exact once $k \ge d$.

    With `per_probe=True` the second output holds the estimate of each probe (of
    each probe in $G$ for Hutch++; one entry for `"exact"`), whose mean is the
    divergence.

    Uses `3 k` Jacobian-vector products for `hutch++` with `m = 3k` probes, `m` for
    `hutchinson`, `d` for `exact`.
    """
    shape = x.shape
    flat = x.reshape(-1)
    d = flat.size

    def flat_fn(z):
        return fn(z.reshape(shape)).reshape(-1)

    out, jvp = jax.linearize(flat_fn, flat)
    if trace == "exact":
        eye = jnp.eye(d, dtype=flat.dtype)
        cols = jax.vmap(jvp)(eye)  # row i = J e_i
        terms = jnp.trace(cols)[None]
    elif trace == "hutchinson":
        z = probes.reshape(probes.shape[0], d)
        jz = jax.vmap(jvp)(z)
        terms = jnp.sum(z * jz, axis=-1)  # one estimate per probe
    elif trace == "hutch++":
        z = probes.reshape(probes.shape[0], d)
        k = z.shape[0] // 3
        S, G = z[:k], z[k : 2 * k]
        JS = jax.vmap(jvp)(S)  # (k, d), rows J s_i
        Q, _ = jnp.linalg.qr(JS.T)  # (d, min(d, k)), orthonormal columns
        JQ = jax.vmap(jvp)(Q.T)  # rows J q_i
        low_rank = jnp.sum(Q.T * JQ)  # tr(Q^T J Q)
        Gp = G - (G @ Q) @ Q.T  # rows (I - QQ^T) g_i
        JGp = jax.vmap(jvp)(Gp)
        JGp = JGp - (JGp @ Q) @ Q.T
        terms = low_rank + jnp.sum(Gp * JGp, axis=-1)  # one per probe in G
    else:  # pragma: no cover - validated by the caller
        raise ValueError(trace)
    if per_probe:
        return out.reshape(shape), terms
    return out.reshape(shape), jnp.mean(terms)


# --------------------------------------------------------------------------- #
# Likelihood
# --------------------------------------------------------------------------- #


class LikelihoodInfo(eqx.Module):
    r"""What [`scoreflow.log_likelihood`][] did, returned with `return_info=True`.

    - `prior_log_prob`: $\\log p_{t_1}(x_{t_1})$ under the prior (or the given
      terminal density).
    - `delta_log_prob`: $\\int_{t_0}^{t_1}\\nabla\\cdot v\\,dt$ (the estimate, for a
      stochastic trace).
    - `std_error`: the standard error of a stochastic estimate from this one call:
      the divergence integral is carried once per probe, and this is their sample
      standard deviation over $\sqrt{m}$ ($m$ probes; for Hutch++ the $k$ probes of
      $G$, conditional on the sketch $S$). `nan` for a single probe, 0 for
      `"exact"`.
    - `x1`: the end point $x_{t_1}$ of the flow.
    - `num_steps`, `num_accepted_steps`, `num_rejected_steps`, `max_steps`:
      diffrax's statistics; `num_vector_field_evals` counts calls of the velocity
      (per solver stage; each evaluates the velocity once plus `num_jvp_per_eval`
      Jacobian-vector products).
    - `result`: the `diffrax.RESULTS` of the solve.
    - `t0`, `t1`, `rtol`, `atol`, `trace`, `num_probes`, `probe`: the settings used.
    """

    prior_log_prob: Scalar
    delta_log_prob: Scalar
    std_error: Scalar
    x1: Array
    num_steps: Array
    num_accepted_steps: Array
    num_rejected_steps: Array
    max_steps: int = eqx.field(static=True)
    num_vector_field_evals: Array
    num_jvp_per_eval: int = eqx.field(static=True)
    result: Any
    t0: float = eqx.field(static=True)
    t1: float = eqx.field(static=True)
    rtol: float | None = eqx.field(static=True)
    atol: float | None = eqx.field(static=True)
    trace: str = eqx.field(static=True)
    num_probes: int = eqx.field(static=True)
    probe: str = eqx.field(static=True)


class _ScoreVelocity(eqx.Module):
    r"""The PF-ODE velocity from a score, for processes without a Gaussian kernel:
    the process's reverse drift at $\eta = 0$."""

    process: AbstractProcess
    predictor: Any

    def __call__(self, t, x):
        return self.process.reverse_drift(t, x, self.predictor.score(t, x))


@functools.singledispatch
def _velocity_for(process, predictor) -> Callable:
    """The PF-ODE velocity: the predictor's own (exact through the kernel) where
    the process has a scalar kernel and the predictor converts; else from its
    score."""
    return _velocity_fn(predictor)


@_velocity_for.register
def _(process: DeclaredSDE, predictor) -> Callable:
    if callable(getattr(predictor, "score", None)):
        return _ScoreVelocity(process, predictor)
    return _velocity_fn(predictor)


def _velocity_fn(predictor) -> Callable:
    if hasattr(predictor, "velocity") and callable(predictor.velocity):
        return predictor.velocity
    if callable(predictor):
        return predictor
    raise TypeError(
        "`sf.log_likelihood`: `predictor` must be an `sf.Predictor` (anything with a "
        "`.velocity(t, x)` method) or a velocity callable `v(t, x)`, got "
        f"{type(predictor).__name__}."
    )


def log_likelihood(
    key: PRNGKeyArray | None,
    process: AbstractProcess,
    predictor,
    x: Float[ArrayLike, "*shape"],
    *,
    trace: TraceType = "exact",
    num_probes: int = 1,
    probe: ProbeType = "rademacher",
    method: Literal["ode"] = "ode",
    solver: diffrax.AbstractSolver = diffrax.Tsit5(),
    rtol: float = 1e-5,
    atol: float = 1e-5,
    dt0: float | None = None,
    stepsize_controller: diffrax.AbstractStepSizeController | None = None,
    adjoint: diffrax.AbstractAdjoint = diffrax.RecursiveCheckpointAdjoint(),
    max_steps: int = 4096,
    t0: float | None = None,
    t1: float | None = None,
    prior_log_prob: Callable[[Array], Scalar] | None = None,
    return_info: bool = False,
    throw: bool = True,
) -> Scalar | tuple[Scalar, LikelihoodInfo]:
    r"""The log-density $\log p_{t_0}(x)$ of one example under the model, by the
    instantaneous change of variables along the probability-flow ODE:

    $$\log p_{t_0}(x) = \log p_{\text{prior}}(x_{t_1}) +
      \int_{t_0}^{t_1}\nabla\cdot v(t, x_t)\,dt,\qquad
      \dot x_t = v(t, x_t),\ x_{t_0} = x,$$

    integrated with diffrax forward in time (data at $t_0$ to noise at $t_1$), where
    $v = f x - \tfrac12 g^2\nabla\log p_t = \dot\alpha\hat x_0 + \dot\sigma\hat
    \varepsilon$ is `predictor.velocity`. The result is the density at $t_0$ (e.g.
    $10^{-5}$ for VP), not at $t = 0$; with `t0=0.0` for processes that allow it.

    **Arguments:**

    - `key`: a PRNG key, used only to draw the probe vectors of a stochastic trace
      (once, fixed for the whole solve); may be `None` for `trace="exact"`.
    - `process`: the forward process.
    - `predictor`: an `sf.Predictor` (its `.velocity` is used; for a process
      without a Gaussian kernel, its `.score` in the PF-ODE velocity
      $f - \tfrac12(\partial_x g^2 + g^2\nabla\log p_t)$), or a velocity
      callable `v(t, x)` (time first, unbatched). The prior is
      `process.prior_log_prob` (e.g. the stationary density) unless given.
    - `x`: ONE unbatched example, any shape (`jax.vmap` for batches; pass the keys
      batched too, `jax.vmap(lambda k, x: ...)`).
    - `trace`: `"exact"` (Jacobian trace by `d` JVPs: small `d`), `"hutchinson"`
      (unbiased, `num_probes` probes averaged) or `"hutch++"` (Meyer et al. 2021;
      `num_probes` a multiple of 3, at least 3).
    - `num_probes`: probe vectors per divergence evaluation.
    - `probe`: `"rademacher"` (default, smallest variance) or `"gaussian"`.
    - `method`: must be `"ode"`; the likelihood is defined by the probability-flow
      ODE, so `"sde"` (and SDE-only solvers) raise.
    - `solver`, `rtol`, `atol`, `dt0`, `stepsize_controller`, `adjoint`,
      `max_steps`: diffrax settings. The default controller is
      `diffrax.PIDController(rtol, atol)`; the default adjoint
      (`RecursiveCheckpointAdjoint`) makes the result differentiable with respect
      to the model's parameters (likelihood training); `diffrax.BacksolveAdjoint()`
      trades accuracy of the gradient for memory.
    - `t0`, `t1`: the integration range; defaults `process.t0`, `process.t1`.
    - `prior_log_prob`: the terminal log-density $x_{t_1} \mapsto \log p(x_{t_1})$;
      default `process.prior_log_prob` ($N(0, \sigma(t_1)^2 I)$).
    - `return_info`: also return a [`scoreflow.internal.LikelihoodInfo`][] with solver
      statistics.
    - `throw`: raise (inside jit, `EqxRuntimeError`) when the solve fails or the
      value is not finite, as diffrax's `throw=`; with `False` the value may be NaN
      and `info.result` says what happened.

    **Returns:** the scalar $\log p_{t_0}(x)$ in nats (its stochastic estimate for
    Hutchinson traces), or `(value, info)`.

    **Raises:** `ValueError` for `method="sde"`, an SDE-only solver, an unknown
    `trace`/`probe`, too few probes, or a missing key for a stochastic trace; inside
    jit, an `EqxRuntimeError` if the solve fails ("Try increasing `max_steps`").

    ```python
    pred = sf.Predictor(model, sf.VP(), prediction="eps")
    ll = sf.log_likelihood(key, sf.VP(), pred, x, trace="hutchinson", num_probes=4)
    lls = jax.vmap(lambda k, x: sf.log_likelihood(k, vp, pred, x))(keys, xs)
    ```
    """
    call = "sf.log_likelihood"
    require(
        process,
        (AbstractScalarProcess, DeclaredSDE),
        call,
        need="a process with scalar (elementwise) coefficients",
    )
    if method != "ode":
        raise ValueError(
            f"`{call}(method={method!r})`: the likelihood is defined by the "
            "probability-flow ODE only; an SDE path does not carry a density by the "
            "change of variables. Use method='ode'."
        )
    if isinstance(solver, _SDE_SOLVERS):
        raise ValueError(
            f"`{call}(solver={type(solver).__name__}())`: this is an SDE solver; the "
            "likelihood integrates the probability-flow ODE. Use an ODE solver such as "
            "diffrax.Tsit5() or diffrax.Dopri5()."
        )
    if trace not in _TRACES:
        raise ValueError(f"`{call}(trace={trace!r})`: expected one of {_TRACES}.")
    if probe not in _PROBES:
        raise ValueError(f"`{call}(probe={probe!r})`: expected one of {_PROBES}.")
    if (
        isinstance(num_probes, bool)
        or not isinstance(num_probes, int)
        or num_probes < 1
    ):
        raise ValueError(f"`{call}(num_probes={num_probes!r})`: must be an int >= 1.")
    if trace == "hutch++" and (num_probes < 3 or num_probes % 3):
        raise ValueError(
            f"`{call}(trace='hutch++', num_probes={num_probes})`: Hutch++ splits its "
            "matrix-vector products in three equal parts; num_probes must be a "
            "multiple of 3 (at least 3)."
        )
    if trace != "exact" and key is None:
        raise ValueError(
            f"`{call}(trace={trace!r})`: a stochastic trace needs a PRNG key for its "
            "probe vectors (randomness is explicit); pass one as the first argument."
        )
    velocity = _velocity_for(process, predictor)
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    dtype = x.dtype
    t0 = process.t0 if t0 is None else float(t0)
    t1 = process.t1 if t1 is None else float(t1)
    if not t0 < t1:
        raise ValueError(f"`{call}`: need t0 < t1, got t0={t0}, t1={t1}.")
    prior = process.prior_log_prob if prior_log_prob is None else prior_log_prob

    if trace == "exact":
        probes = None
        num_probes_used = 0
        jvps = x.size
    else:
        probes = draw_probes(key, x.shape, num_probes, probe, dtype)
        num_probes_used = num_probes
        jvps = num_probes

    if stepsize_controller is None:
        stepsize_controller = diffrax.PIDController(rtol=rtol, atol=atol)
        tols = (rtol, atol)
    else:
        tols = (
            getattr(stepsize_controller, "rtol", None),
            getattr(stepsize_controller, "atol", None),
        )
    if trace == "exact":
        num_terms = 1
    elif trace == "hutchinson":
        num_terms = num_probes
    else:
        num_terms = num_probes // 3
    zero = jnp.zeros((num_terms,), dtype)  # one divergence integral per probe
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(_AugmentedField(velocity, trace)),
        solver,
        t0=jnp.asarray(t0, dtype),
        t1=jnp.asarray(t1, dtype),
        dt0=dt0,
        y0=(x, zero),
        args=probes,
        stepsize_controller=stepsize_controller,
        adjoint=adjoint,
        max_steps=max_steps,
        saveat=diffrax.SaveAt(t1=True),
        throw=throw,
    )
    x1, per_probe = (leaf[0] for leaf in sol.ys)
    delta = jnp.mean(per_probe)
    if num_terms > 1:
        std_error = jnp.std(per_probe, ddof=1) / math.sqrt(num_terms)
    elif trace == "exact":
        std_error = jnp.zeros((), dtype)
    else:
        std_error = jnp.full((), jnp.nan, dtype)
    prior_lp = jnp.asarray(prior(x1)).astype(dtype)
    value = prior_lp + delta
    if throw:
        value = eqx.error_if(
            value,
            ~jnp.isfinite(value),
            "sf.log_likelihood: the log-likelihood is not finite (a NaN or inf from "
            "the model's velocity or the prior); check the model's output on this "
            "example, or pass throw=False to get the value and `info.result`.",
        )
    if not return_info:
        return value
    rk = runge_kutta_evaluations(solver)
    steps = sol.stats["num_steps"]
    info = LikelihoodInfo(
        prior_log_prob=prior_lp,
        delta_log_prob=delta,
        std_error=std_error,
        x1=x1,
        num_steps=steps,
        num_accepted_steps=sol.stats["num_accepted_steps"],
        num_rejected_steps=sol.stats["num_rejected_steps"],
        max_steps=max_steps,
        num_vector_field_evals=(
            steps * rk[0] + rk[1] if rk is not None else jnp.asarray(-1)
        ),
        num_jvp_per_eval=jvps,
        result=sol.result,
        t0=t0,
        t1=t1,
        rtol=tols[0],
        atol=tols[1],
        trace=trace,
        num_probes=num_probes_used,
        probe=probe,
    )
    return value, info


class _AugmentedField(eqx.Module):
    r"""The augmented vector field $(x, \ell) \mapsto (v(t, x), \nabla\cdot v(t, x))$.

    A module (not a closure) so that repeated calls with the same structure hit
    diffrax's compilation cache; the probes travel as `args`."""

    velocity: Callable
    trace: str = eqx.field(static=True)

    def __call__(self, t, y, probes):
        xt, _ = y
        dtype = xt.dtype
        v, terms = divergence(
            lambda z: jnp.asarray(self.velocity(t, z)).astype(dtype),
            xt,
            trace=self.trace,
            probes=probes,
            per_probe=True,
        )
        return v, terms.astype(dtype)


# --------------------------------------------------------------------------- #
# Bits per dimension
# --------------------------------------------------------------------------- #

_DEQUANT = ("uniform", "none")


def bits_per_dim(
    key: PRNGKeyArray,
    process: AbstractProcess,
    predictor,
    x: Float[ArrayLike, "*shape"],
    *,
    num_bits: int = 8,
    dequantization: Literal["uniform", "none"] = "uniform",
    data_range: tuple[float, float] = (-1.0, 1.0),
    return_info: bool = False,
    **likelihood_kwargs,
):
    r"""Bits per dimension of one discrete example, with explicit dequantisation.

    `x` holds integer levels $k \in \{0, \dots, 2^b - 1\}$ ($b$ = `num_bits`), e.g.
    the raw pixel values of an 8-bit image. Level $k$ is the cell
    $[k, k + 1)$, mapped affinely to the model's space `data_range` $= [l, h)$:
    $y = l + (h - l)(k + u)/2^b$, cell volume $\Delta = (h - l)/2^b$ per dimension.

    - `dequantization="uniform"`: $u \sim U[0, 1)^D$ drawn from `key` (Theis et
      al. 2016, [arXiv:1511.01844](https://arxiv.org/abs/1511.01844)). Then
      $-\log_2 p(y) - D\log_2\Delta$ is, in expectation over $u$, an upper bound on
      $-\log_2 P(k)$ of the discrete data: the number the literature reports.
    - `dequantization="none"`: $u = 1/2$ (cell centres) — the midpoint
      approximation $P(k) \approx p(y)\Delta^D$, which is *not* a bound: a model
      whose density concentrates on the grid points gets arbitrarily negative
      bits/dim (the pitfall of reporting continuous densities of discrete data).

    $$\text{bpd} = -\frac{\log p_{t_0}(y) + D\log\Delta}{D\log 2}.$$

    **Arguments:**

    - `key`: PRNG key (split for the dequantisation noise and the trace probes).
    - `process`, `predictor`: as for [`scoreflow.log_likelihood`][].
    - `x`: one example of integer levels (any shape; floats holding integers work).
    - `num_bits`: bit depth $b$ of the data (8 for usual images).
    - `dequantization`: `"uniform"` or `"none"`, see above.
    - `data_range`: `(low, high)`, the model-space interval the levels map to; the
      default `(-1, 1)` is the usual image scaling.
    - `return_info`: also return `dict(y=..., log_likelihood=..., info=...)`.
    - `**likelihood_kwargs`: passed to [`scoreflow.log_likelihood`][].

    **Returns:** the scalar bits/dim (or `(bpd, extras)`).
    """
    call = "sf.bits_per_dim"
    if dequantization not in _DEQUANT:
        raise ValueError(
            f"`{call}(dequantization={dequantization!r})`: expected one of {_DEQUANT}."
        )
    if isinstance(num_bits, bool) or not isinstance(num_bits, int) or num_bits < 1:
        raise ValueError(f"`{call}(num_bits={num_bits!r})`: must be an int >= 1.")
    low, high = (float(v) for v in data_range)
    if not high > low:
        raise ValueError(f"`{call}(data_range={data_range!r})`: need low < high.")
    levels = 2**num_bits
    x = jnp.asarray(x)
    dtype = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.result_type(float)
    k = x.astype(dtype)
    if not isinstance(k, jax.core.Tracer):
        kk = jax.device_get(k)
        if (kk < 0).any() or (kk > levels - 1).any() or (kk != jnp.round(kk)).any():
            raise ValueError(
                f"`{call}`: x must hold integer levels in [0, {levels - 1}] for "
                f"num_bits={num_bits} (got values in [{float(kk.min())}, "
                f"{float(kk.max())}]). Pass the raw discrete data, not the model-space "
                "values; `data_range` says how levels map to the model's space."
            )
    dkey, lkey = jr.split(key)
    if dequantization == "uniform":
        u = jr.uniform(dkey, k.shape, dtype)
    else:
        u = jnp.full(k.shape, 0.5, dtype)
    cell = (high - low) / levels
    y = low + cell * (k + u)
    ll, info = log_likelihood(
        lkey, process, predictor, y, return_info=True, **likelihood_kwargs
    )
    D = k.size
    bpd = -(ll + D * math.log(cell)) / (D * math.log(2.0))
    if return_info:
        return bpd, dict(y=y, log_likelihood=ll, info=info)
    return bpd
