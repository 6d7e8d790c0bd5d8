r"""The continuous-time variational bound (Kingma et al. 2021) and learned schedules.

For any process with a Gaussian kernel $x_t = \alpha(t)x_0 + \sigma(t)\varepsilon$
the negative ELBO of one data point $x$ is

$$-\log p(x) \le \underbrace{\tfrac{D}{2}\big(\log 2\pi + 1 - \lambda(t_0)\big)}_{
\text{reconstruction}}
+ \underbrace{\tfrac12 e^{\lambda(t_1)}\|x\|^2}_{\text{prior}}
+ \underbrace{\tfrac12\int_{t_0}^{t_1} -\lambda'(t)\,
  \mathbb{E}_\varepsilon\|\varepsilon - \hat\varepsilon(t, x_t)\|^2\,dt}_{
\text{diffusion}},$$

with $\lambda = \log(\alpha^2/\sigma^2)$, the decoder
$p(x \mid x_{t_0}) = N(x_{t_0}/\alpha(t_0), e^{-\lambda(t_0)} I)$ and the prior
$N(0, \sigma(t_1)^2 I)$ (scoreflow's prior). For a model that sees the noise level
$\lambda$ rather than $t$, the diffusion term depends on the schedule only through its
end points $\lambda(t_0)$, $\lambda(t_1)$ (VDM, eq. 21). scoreflow's networks take
$t$, so for a fixed network the shape of the schedule also moves the value; trained
jointly here, the shape weights follow the bound's gradient, or, with
`sf.ScheduledModel(..., variance=...)`, VDM's gradient of the estimator's variance.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import sympy

from .._predictor import PredictionType, check_prediction, to_hub
from .._process import (
    AbstractDeclaredProcess,
    AbstractProcess,
    AbstractScalarProcess,
    Interpolant,
    require,
)
from .._symbols import t as _t
from ._common import (
    SSM_HINT,
    AbstractLoss,
    as_float_data,
    call_model,
    check_dropout,
)

_LN2 = math.log(2.0)


# ---------------------------------------------------------------- the schedule


_BASIS = (_t, 1 - (1 - _t) ** 2, _t**2, 1 - (1 - _t) ** 3, _t**3)


def learned_schedule(
    *,
    log_snr_max: float = 13.3,
    log_snr_min: float = -5.0,
    num_basis: int = 3,
    t0: float = 0.0,
    t1: float = 1.0,
):
    r"""A variance-preserving process whose log-SNR schedule is trainable and
    monotone for *every* value of its parameters (Kingma et al. 2021, sec. 3.4):

    $$\lambda(t) = \lambda_\max - e^{\rho}\sum_{k=1}^K \operatorname{softmax}(w)_k\,
      \phi_k(t),\qquad \alpha = \sqrt{\operatorname{sigmoid}\lambda},\quad
      \sigma = \sqrt{\operatorname{sigmoid}(-\lambda)},$$

    with increasing basis functions $\phi_k(0) = 0$, $\phi_k(1) = 1$ ($t$,
    $1 - (1-t)^2$, $t^2$, $1 - (1 - t)^3$, $t^3$, the first `num_basis` of them).
    So $\lambda(0) = \lambda_\max$ and $\lambda(1) = \lambda_\max - e^\rho =
    \lambda_\min$ exactly, $\lambda' < 0$ and $g^2 = -\lambda'\sigma^2 > 0$ whatever
    the parameters: gradient steps cannot make the schedule invalid, and its end
    points are parameters, not something the optimiser can silently move.

    It is an ordinary [`scoreflow.Interpolant`][] declared in sympy, with the
    parameters `log_snr_max` ($\lambda_\max$), `log_range` ($\rho$) and
    `w1, ..., wK` as trainable leaves (`p.params`). Train it jointly with a network
    by wrapping both in [`scoreflow.ScheduledModel`][] under
    [`scoreflow.elbo_loss`][].

    **Arguments:**

    - `log_snr_max`, `log_snr_min`: the initial end points $\lambda(t_0)$ and
      $\lambda(t_1)$ (`log_snr_max > log_snr_min`). The defaults are VDM's.
    - `num_basis`: $K \in \{1, \dots, 5\}$; $K = 1$ is a linear log-SNR.
    - `t0`, `t1`: the time range (default $[0, 1]$; $\sigma(0) > 0$ here, so $t_0 = 0$
      is safe).

    **Returns:** an `sf.Interpolant`.

    **Raises:** `ValueError` for `log_snr_max <= log_snr_min` or a bad `num_basis`.

    ```python
    p = sf.learned_schedule(log_snr_max=10.0, log_snr_min=-6.0)
    p.params   # {'log_snr_max': 10.0, 'log_range': 2.77, 'w1': 0.0, ...}
    ```
    """
    call = "sf.learned_schedule"
    if not (isinstance(num_basis, int) and 1 <= num_basis <= len(_BASIS)):
        raise ValueError(
            f"`{call}(num_basis=...)` must be an int in [1, {len(_BASIS)}], got "
            f"{num_basis!r}."
        )
    if not float(log_snr_max) > float(log_snr_min):
        raise ValueError(
            f"`{call}`: log_snr_max must exceed log_snr_min (the log-SNR decreases "
            f"from data to noise), got log_snr_max={log_snr_max!r}, "
            f"log_snr_min={log_snr_min!r}."
        )
    lmax, rho = sympy.symbols("log_snr_max log_range", real=True)
    ws = sympy.symbols(f"w1:{num_basis + 1}", real=True)
    basis = _BASIS[:num_basis]
    if num_basis == 1:
        shape = basis[0]
        params = {}
    else:
        shape = sum(sympy.exp(w) * b for w, b in zip(ws, basis)) / sum(
            sympy.exp(w) for w in ws
        )
        params = {w: 0.0 for w in ws}
    # time rescaled to [0, 1] on [t0, t1]
    u = (_t - t0) / (t1 - t0) if (t0, t1) != (0.0, 1.0) else _t
    lam = lmax - sympy.exp(rho) * shape.subs(_t, u)
    params = {
        lmax: float(log_snr_max),
        rho: math.log(float(log_snr_max) - float(log_snr_min)),
        **params,
    }
    return Interpolant(
        alpha=sympy.sqrt(1 / (1 + sympy.exp(-lam))),
        sigma=sympy.sqrt(1 / (1 + sympy.exp(lam))),
        t0=t0,
        t1=t1,
        params=params,
    )


class _ByIdentity:
    """Holds an object as static pytree data, hashed and compared by identity (so a
    large sympy2jax expression tree is neither flattened nor hashed per call)."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def __hash__(self):
        return id(self.value)

    def __eq__(self, other):
        return isinstance(other, _ByIdentity) and other.value is self.value


class ScheduledModel(eqx.Module):
    r"""A network and the process it is trained under, as one trainable pytree, so
    that [`scoreflow.train.fit`][] (or any optax loop over
    `eqx.filter(m, eqx.is_inexact_array)`) updates the network's weights and the
    process's `params` together. Calling it calls the network.

    **Arguments:** `model` (unbatched `model(t, x[, cond])`), `process` (e.g.
    [`scoreflow.learned_schedule`][], any process with `params`), `frozen`: names in
    `process.params` that keep their value (their gradient is stopped), e.g.
    `("log_snr_max", "log_range")` to learn only the shape; `variance`: names trained,
    as in VDM (Kingma et al. 2021, sec. 5.2), to minimise the variance of the
    Monte Carlo estimate of the bound's diffusion term rather than its value — the
    shape parameters, e.g. `("w1", "w2", "w3")` for `sf.learned_schedule()` (whose
    end points stay on the bound). Under [`scoreflow.elbo_loss`][] their gradient is
    $\nabla\,\mathbb{E}[L_\text{diff}^2]$, at the cost of a second network evaluation
    per example; the loss value and every other gradient are unchanged.

    Only the network and `process.params` are leaves: the compiled expressions of
    the process stay static, so a training step costs what it costs for the network
    alone. After training, `result.ema.process` is the learned process:
    `sf.Predictor(result.ema.model, result.ema.process, prediction="eps")`.
    """

    model: eqx.Module
    params: dict
    template: _ByIdentity = eqx.field(static=True)
    frozen: tuple[str, ...] = eqx.field(static=True)
    variance: tuple[str, ...] = eqx.field(static=True)

    def __init__(
        self,
        model,
        process: AbstractProcess,
        frozen: tuple[str, ...] = (),
        variance: tuple[str, ...] = (),
    ):
        require(
            process,
            AbstractDeclaredProcess,
            "sf.ScheduledModel",
            need="a declared process with trainable `params` (sf.SDE, sf.Interpolant, "
            "sf.learned_schedule())",
        )
        params = process.params
        if not params:
            raise ValueError(
                "`sf.ScheduledModel`: the process has no trainable `params`; declare "
                "its constants with `params=` (or use `sf.learned_schedule()`)."
            )
        for arg, names in (("frozen", frozen), ("variance", variance)):
            unknown = [n for n in names if n not in params]
            if unknown:
                raise ValueError(
                    f"`sf.ScheduledModel({arg}=...)`: {unknown} are not parameters of "
                    f"the process; it has {sorted(params)}."
                )
        both = set(frozen) & set(variance)
        if both:
            raise ValueError(
                f"`sf.ScheduledModel`: {sorted(both)} are both frozen and trained for "
                "variance; pick one."
            )
        self.model = model
        self.params = dict(params)
        self.template = _ByIdentity(process)
        self.frozen = tuple(frozen)
        self.variance = tuple(variance)

    def __call__(self, t, x, *cond):
        return self.model(t, x, *cond)

    @property
    def process(self) -> AbstractProcess:
        """The process with the current parameters."""
        return eqx.tree_at(lambda p: p.params, self.template.value, dict(self.params))

    def trained_process(self, only: tuple[str, ...] | None = None) -> AbstractProcess:
        """The process with the gradient of the `frozen` (and, for the bound, the
        `variance`) parameters stopped; with `only`, of every parameter not in it."""
        if only is None:
            stop = set(self.frozen) | set(self.variance)
        else:
            stop = set(self.params) - set(only)
        params = {
            k: jax.lax.stop_gradient(v) if k in stop else v
            for k, v in self.params.items()
        }
        return eqx.tree_at(lambda p: p.params, self.template.value, params)


# ------------------------------------------------------------------- the bound


def _log_snr_and_slope(process, t):
    return jax.jvp(process.log_snr, (t,), (jnp.ones_like(t),))


def _eps_error(process, net, prediction, t, x0, eps, cond):
    xt = process.marginal(x0, eps, t)
    out = call_model(net, t, xt, cond)
    _, eps_hat = to_hub(process, prediction, t, xt, out)
    return jnp.sum((eps - eps_hat) ** 2)


def _end_log_snrs(process, dtype):
    lam0 = process.log_snr(jnp.asarray(process.t0, dtype))
    lam1 = process.log_snr(jnp.asarray(process.t1, dtype))
    return lam0, lam1


def _end_terms(lams, x0):
    lam0, lam1 = lams
    recon = 0.5 * x0.size * (math.log(2 * math.pi) + 1.0 - lam0)
    prior = 0.5 * jnp.exp(lam1) * jnp.sum(x0**2)
    return recon, prior


def _stratified_times(key, process, n, dtype):
    """`n` times covering $[t_0, t_1]$ evenly (VDM's low-discrepancy sampler): one
    uniform shift, then equal spacing modulo the interval."""
    u = jr.uniform(key, (), dtype)
    frac = jnp.mod(u + jnp.arange(n, dtype=dtype) / n, 1.0)
    return process.t0 + (process.t1 - process.t0) * frac


class ELBO(eqx.Module):
    r"""The terms of the negative ELBO of one data point (nats), from
    [`scoreflow.elbo`][]. `total = reconstruction + prior + diffusion` is an upper
    bound on $-\log p(x)$ in expectation; `stderr` is the Monte Carlo standard
    error of `diffusion` (the other two terms are exact)."""

    total: jax.Array
    reconstruction: jax.Array
    prior: jax.Array
    diffusion: jax.Array
    stderr: jax.Array
    dim: int = eqx.field(static=True)

    @property
    def bits_per_dim(self):
        """`total` in bits per dimension."""
        return self.total / (self.dim * _LN2)


def elbo(
    key,
    process: AbstractProcess,
    predictor,
    x,
    *,
    num_times: int = 128,
    cond=None,
) -> ELBO:
    r"""The continuous-time negative ELBO (Kingma et al. 2021, eq. 17) of one data
    point under `process` and a model, in nats:

    $$\tfrac{D}{2}\big(\log 2\pi + 1 - \lambda(t_0)\big) + \tfrac12 e^{\lambda(t_1)}
    \|x\|^2 + \tfrac12\int_{t_0}^{t_1}-\lambda'(t)\,\mathbb{E}\|\varepsilon -
    \hat\varepsilon(t, \alpha x + \sigma\varepsilon)\|^2 dt$$

    (decoder $N(x_{t_0}/\alpha(t_0), e^{-\lambda(t_0)}I)$, prior
    $N(0, \sigma(t_1)^2 I)$). The integral is estimated with `num_times`
    stratified times, each with its own $\varepsilon$. Works for any process with a
    Gaussian kernel; compare it with the exact [`scoreflow.log_likelihood`][] of the
    probability-flow ODE, which is a different model of the same data.

    **Arguments:** `key`; `process`; `predictor` (an [`scoreflow.Predictor`][]; its
    `eps` is used); `x` one unbatched data point ($t = 0$ is data); `num_times`;
    `cond` for a conditional predictor.

    **Returns:** an [`scoreflow.internal.ELBO`][] (`.total`, `.bits_per_dim`, the three
    terms and the standard error of the estimate). vmap it over a batch.
    """
    require(process, AbstractScalarProcess, "sf.elbo")
    x = as_float_data(x)
    dtype = x.dtype
    k_t, k_e = jr.split(key)
    ts = _stratified_times(k_t, process, num_times, dtype)
    eps = jr.normal(k_e, (num_times,) + x.shape, dtype)

    def one(t, e):
        _, slope = _log_snr_and_slope(process, t)
        xt = process.marginal(x, e, t)
        eh = predictor.eps(t, xt, cond) if cond is not None else predictor.eps(t, xt)
        return 0.5 * (process.t1 - process.t0) * (-slope) * jnp.sum((e - eh) ** 2)

    terms = jax.vmap(one)(ts, eps)
    diffusion = jnp.mean(terms)
    stderr = jnp.std(terms) / math.sqrt(num_times)
    recon, prior = _end_terms(_end_log_snrs(process, dtype), x)
    return ELBO(
        total=recon + prior + diffusion,
        reconstruction=recon,
        prior=prior,
        diffusion=diffusion,
        stderr=stderr,
        dim=int(x.size),
    )


class ELBOLoss(AbstractLoss):
    r"""The negative ELBO per dimension (see [`scoreflow.elbo_loss`][])."""

    process: AbstractProcess
    prediction: str = eqx.field(static=True)
    stratified: bool = eqx.field(static=True)
    cond_dropout: float = eqx.field(static=True)
    null_cond: object
    check_scale: bool = eqx.field(static=True)

    def split(self, model):
        """`(network, process)`: a [`scoreflow.ScheduledModel`][] brings its own
        (trainable) process, any other model is trained under `self.process`."""
        if isinstance(model, ScheduledModel):
            return model.model, model.trained_process()
        return model, self.process

    def per_example(self, model, x0, key, cond=None):
        x0 = as_float_data(x0)
        dtype, n = x0.dtype, x0.shape[0]
        net, process = self.split(model)
        k_t, k_eps, k_drop, _ = self._keys(key)
        if self.stratified:
            t = _stratified_times(k_t, process, n, dtype)
        else:
            t = jr.uniform(k_t, (n,), dtype, minval=process.t0, maxval=process.t1)
        eps = jr.normal(k_eps, x0.shape, dtype)
        cond = self._labels(k_drop, cond)
        span = process.t1 - process.t0
        pred = self.prediction
        lams = _end_log_snrs(process, dtype)

        def diffusion(proc, net, x0, eps, t, c):
            _, slope = _log_snr_and_slope(proc, t)
            err = _eps_error(proc, net, pred, t, x0, eps, c)
            return 0.5 * span * (-slope) * err

        def one(x0, eps, t, c):
            recon, prior = _end_terms(lams, x0)
            return (recon + prior + diffusion(process, net, x0, eps, t, c)) / x0.size

        out = jax.vmap(one)(x0, eps, t, cond)
        if isinstance(model, ScheduledModel) and model.variance:
            # VDM's variance gradient: the same diffusion terms, differentiable in the
            # `variance` parameters only; adding L^2 - stop_gradient(L^2) leaves the
            # value alone and gives those parameters the gradient of E[L^2].
            proc_v = model.trained_process(only=model.variance)
            net_v = jax.tree_util.tree_map(
                lambda v: jax.lax.stop_gradient(v) if eqx.is_array(v) else v, net
            )
            d = jax.vmap(lambda *a: diffusion(proc_v, net_v, *a))(x0, eps, t, cond)
            sq = (d / x0[0].size) ** 2
            out = out + sq - jax.lax.stop_gradient(sq)
        return out


def elbo_loss(
    process: AbstractProcess,
    *,
    prediction: PredictionType = "eps",
    stratified: bool = True,
    cond_dropout: float = 0.0,
    null_cond=None,
    check_scale: bool = True,
) -> ELBOLoss:
    r"""The continuous-time negative ELBO of variational diffusion models (Kingma et
    al. 2021) as a training loss, in nats per dimension, for any process with a
    Gaussian kernel — and for a trainable schedule trained jointly with the network.

    Per example, with $t$ drawn uniformly on $[t_0, t_1]$ (stratified over the batch
    when `stratified=True`, VDM's low-discrepancy sampler):

    $$\frac1D\Big[\tfrac{D}{2}(\log 2\pi + 1 - \lambda(t_0)) + \tfrac12
    e^{\lambda(t_1)}\|x_0\|^2 + \tfrac{t_1 - t_0}{2}(-\lambda'(t))\,
    \|\varepsilon - \hat\varepsilon(t, x_t)\|^2\Big].$$

    Its diffusion part is the `"likelihood"` weighting of [`scoreflow.dsm_loss`][]
    ($-\lambda' = g^2/\sigma^2$); the end terms make it a bound whose value depends
    on where the schedule starts and ends, so the end points of a trainable schedule
    are learned by it.

    **Arguments:**

    - `process`: the process used for a plain model. To learn the schedule, pass
      the model as `sf.ScheduledModel(net, process)`: the loss then uses (and
      differentiates) that process.
    - `prediction`: what the network outputs (`"eps"`, `"x0"`, `"v"`, `"score"`,
      `"velocity"`); converted exactly to $\hat\varepsilon$.
    - `stratified`, `cond_dropout`, `null_cond`, `check_scale`: as in
      `sf.dsm_loss`.

    **Returns:** an `ELBOLoss`, `loss(model, x0, key[, cond])` → scalar.

    ```python
    sched = sf.learned_schedule()
    joint = sf.ScheduledModel(sf.nets.MLP(2, key=k1), sched)
    fit = sf.train.fit(sf.elbo_loss(sched), joint, data, key=k2, steps=5000)
    learned = fit.ema.process
    ```
    [arXiv:2107.00630](https://arxiv.org/abs/2107.00630)
    """
    call = "sf.elbo_loss"
    prediction = check_prediction(prediction, call)
    require(process, AbstractScalarProcess, call, hint=SSM_HINT)
    return ELBOLoss(
        process=process,
        prediction=prediction,
        stratified=bool(stratified),
        cond_dropout=check_dropout(cond_dropout, call),
        null_cond=null_cond,
        check_scale=check_scale,
    )
