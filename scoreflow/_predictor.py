"""Predictors: a network (or a guided combination of networks) read in every
prediction type by exact conversion.

Every prediction type is converted to one hub, the pair $(\\hat x_0, \\hat\\varepsilon)$
with $x = \\alpha \\hat x_0 + \\sigma \\hat\\varepsilon$, and every output is read off
the hub. Each conversion is the linear solve that stays finite where its type is
well posed: `eps` near $\\sigma \\to 0$, `x0` near $\\alpha \\to 0$, and `velocity`/`v`
everywhere.
"""

import abc
from collections.abc import Callable
from typing import Any, Literal

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from ._custom_types import ScalarLike
from ._precond import EDMPreconditioner
from ._process import AbstractProcess, AbstractScalarProcess, require

PREDICTIONS = ("score", "eps", "x0", "velocity", "v")
"""The prediction types a network may output (`sf.Predictor(prediction=...)`)."""

PredictionType = Literal["score", "eps", "x0", "velocity", "v"]


def check_output_shape(out, x, where: str) -> None:
    """A model's output must be shaped like its (unbatched) input `x`."""
    if jnp.shape(out) != jnp.shape(x):
        raise ValueError(
            f"`{where}`: the model returned shape {jnp.shape(out)} for one example x of "
            f"shape {jnp.shape(x)}; model(t, x) must return an array shaped like x (it "
            "is called on one unbatched example; scoreflow vmaps). Check the model's "
            "output layer, or the `shape=` passed to sf.sample."
        )


def check_prediction(prediction: str, call: str) -> str:
    if prediction not in PREDICTIONS:
        raise ValueError(
            f"`{call}`: unknown prediction type {prediction!r}; expected one of "
            f"{', '.join(map(repr, PREDICTIONS))}. ('velocity' is the flow-matching "
            "velocity dx_t/dt = alpha' x0 + sigma' eps; 'v' is Salimans & Ho's "
            "alpha eps - sigma x0.)"
        )
    return prediction


def _as_time_and_state(t, x):
    x = jnp.asarray(x)
    return jnp.asarray(t, dtype=jnp.result_type(x.dtype, float)), x


def to_hub(process: AbstractProcess, prediction: str, t, x, out):
    r"""$(\hat x_0, \hat\varepsilon)$ from a prediction `out` of type `prediction`."""
    a, s = process.alpha(t), process.sigma(t)
    if prediction == "eps":
        eps = out
        x0 = (x - s * eps) / a
    elif prediction == "score":
        eps = -s * out
        x0 = (x - s * eps) / a
    elif prediction == "x0":
        x0 = out
        eps = (x - a * x0) / s
    elif prediction == "velocity":
        da, ds = process.alpha_dot(t), process.sigma_dot(t)
        det = a * ds - s * da
        x0 = (ds * x - s * out) / det
        eps = (a * out - da * x) / det
    elif prediction == "v":
        n = a**2 + s**2
        x0 = (a * x - s * out) / n
        eps = (s * x + a * out) / n
    else:  # pragma: no cover - validated at construction
        raise ValueError(prediction)
    return x0, eps


def from_hub(process: AbstractProcess, prediction: str, t, x, x0, eps):
    """Any prediction type from the hub pair."""
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    if prediction == "score":
        return -eps / process.sigma(t)
    if prediction == "velocity":
        return process.alpha_dot(t) * x0 + process.sigma_dot(t) * eps
    if prediction == "v":
        return process.alpha(t) * eps - process.sigma(t) * x0
    raise ValueError(prediction)  # pragma: no cover


def convert(
    process: AbstractProcess,
    t: ScalarLike,
    x: Float[ArrayLike, "*shape"],
    out: Float[ArrayLike, "*shape"],
    *,
    source: PredictionType,
    target: PredictionType,
) -> Float[Array, "*shape"]:
    """Convert one prediction `out` of type `source` at `(t, x)` to type `target`.

    **Arguments:** `process`; `t` a scalar time ($t = 0$ is data); `x` the noisy
    point; `out` the prediction; `source`/`target` prediction types.
    """
    check_prediction(source, "sf.convert")
    check_prediction(target, "sf.convert")
    t, x = _as_time_and_state(t, x)
    if source == target:
        return jnp.asarray(out)
    x0, eps = to_hub(process, source, t, x, jnp.asarray(out))
    return from_hub(process, target, t, x, x0, eps)


class AbstractPredictor(eqx.Module):
    r"""What a sampler, a likelihood or a loss reads a model through: the five
    prediction views of one denoising field, for a given forward process.

    A subclass owes the `process` and one method, `hub(t, x, cond=None)`, the pair
    $(\hat x_0, \hat\varepsilon)$ with $x = \alpha(t)\hat x_0 + \sigma(t)
    \hat\varepsilon$; every view (`score`, `eps`, `x0`, `velocity`, `v`) is read off
    the hub here, once. `map_models(fn)` must return the same predictor with each
    wrapped network `m` replaced by `fn(m)`.

    Final subclasses: [`scoreflow.Predictor`][] (one network), and the guided ones
    returned by [`scoreflow.cfg`][] and [`scoreflow.classifier_guidance`][].

    **Arguments of every view** `(t, x, cond=None)`: `t` a scalar time ($t = 0$ is
    data, $t = t_1$ the prior); `x` one unbatched noisy example; `cond` the label
    of a conditional model (`None`: unconditional).
    """

    process: eqx.AbstractVar[AbstractProcess]

    @abc.abstractmethod
    def hub(self, t, x, cond=None):
        r"""The pair $(\hat x_0, \hat\varepsilon)$ at `(t, x)`."""

    @abc.abstractmethod
    def map_models(self, fn: Callable[[Callable], Callable]) -> "AbstractPredictor":
        """The same predictor with every wrapped network `m` replaced by `fn(m)`
        (for example a wrapper that counts model evaluations)."""

    def _unconverted(self, target: str, t, x, cond):
        """The view `target` when it is available without conversion (the network's
        own output), else `None`: then it is read off `hub`."""
        return None

    def _as(self, target, t, x, cond):
        t, x = _as_time_and_state(t, x)
        out = self._unconverted(target, t, x, cond)
        if out is not None:
            return out
        x0, eps = self.hub(t, x, cond)
        return from_hub(self.process, target, t, x, x0, eps)

    def score(self, t, x, cond=None):
        r"""$\nabla_x \log p_t(x) = -\hat\varepsilon / \sigma(t)$."""
        return self._as("score", t, x, cond)

    def eps(self, t, x, cond=None):
        r"""$\hat\varepsilon = -\sigma(t)\,\nabla_x\log p_t(x)$."""
        return self._as("eps", t, x, cond)

    def x0(self, t, x, cond=None):
        r"""$\hat x_0 = E[x_0 \mid x_t = x]$ (Tweedie)."""
        return self._as("x0", t, x, cond)

    def velocity(self, t, x, cond=None):
        r"""Flow-matching velocity
        $E[\dot\alpha x_0 + \dot\sigma\varepsilon \mid x_t = x]
        = \dot\alpha \hat x_0 + \dot\sigma \hat\varepsilon$."""
        return self._as("velocity", t, x, cond)

    def v(self, t, x, cond=None):
        r"""Salimans & Ho's $v = \alpha\hat\varepsilon - \sigma\hat x_0$."""
        return self._as("v", t, x, cond)

    def as_prediction(self, target: PredictionType):
        """The method returning prediction type `target` (a `(t, x, cond)` callable)."""
        check_prediction(target, "Predictor.as_prediction")
        return getattr(self, target)


class Predictor(AbstractPredictor):
    r"""A network together with the process it was trained on and what it predicts.

    `model(t, x)` (or `model(t, x, cond)`) is unbatched: `t` a scalar array in
    scoreflow's time ($t = 0$ data), `x` one example. The methods return every other
    parameterisation by exact conversion through $(\hat x_0, \hat\varepsilon)$:

    - `score` $= -\hat\varepsilon / \sigma$,
    - `eps`, `x0`,
    - `velocity` $= \dot\alpha \hat x_0 + \dot\sigma \hat\varepsilon$ (flow matching),
    - `v` $= \alpha \hat\varepsilon - \sigma \hat x_0$ (Salimans & Ho 2022).

    **Arguments:**

    - `model`: the network.
    - `process`: the forward process it was trained on.
    - `prediction`: one of `"score"`, `"eps"`, `"x0"`, `"velocity"`, `"v"`.
    - `null_cond`: the label that means "unconditional" for a network trained with
      label dropout (used by [`scoreflow.cfg`][] when `cond=None`).
    - `precondition`: `None`, or `"edm"` to wrap `model` in
      [`scoreflow.EDMPreconditioner`][] (Karras et al. 2022, generalised through
      $\sigma/\alpha$ and $x/\alpha$); `prediction` must then be `"x0"`.
    - `sigma_data`: for `precondition="edm"` (default `process.sigma_data` or 1).

    **Raises:** `ValueError` for an unknown prediction type.

    ```python
    pred = sf.Predictor(model, sf.VP(), prediction="eps")
    pred.score(0.5, x)
    ```
    """

    model: Callable
    process: AbstractProcess
    prediction: str = eqx.field(static=True)
    null_cond: Any = None

    def __init__(
        self,
        model,
        process,
        prediction: PredictionType = "eps",
        null_cond=None,
        *,
        precondition: str | None = None,
        sigma_data: float | None = None,
    ):
        self.prediction = check_prediction(prediction, "sf.Predictor")
        if prediction != "score":
            require(
                process,
                AbstractScalarProcess,
                f"sf.Predictor(prediction={prediction!r})",
                hint=(
                    " Without scalar alpha, sigma to convert through, the model must "
                    "predict the score (prediction='score')."
                ),
            )
        if precondition == "edm":
            if prediction != "x0":
                raise ValueError(
                    "`sf.Predictor(precondition='edm')`: the preconditioned network "
                    f"is a denoiser, so prediction must be 'x0', got {prediction!r}."
                )
            model = EDMPreconditioner(model, process, sigma_data)
        elif precondition is not None:
            raise ValueError(
                "`sf.Predictor`: precondition must be None or 'edm', got "
                f"{precondition!r}."
            )
        self.model = model
        self.process = process
        self.null_cond = null_cond

    def raw(self, t, x, cond=None):
        """The network's own output (no conversion).

        **Raises:** `ValueError` (at trace time) if it is not shaped like `x`."""
        if cond is None:
            if self.null_cond is None:
                out = self.model(t, x)
            else:
                out = self.model(t, x, self.null_cond)
        else:
            out = self.model(t, x, cond)
        check_output_shape(out, x, "sf.Predictor")
        return out

    def hub(self, t, x, cond=None):
        r"""The pair $(\hat x_0, \hat\varepsilon)$."""
        t, x = _as_time_and_state(t, x)
        return to_hub(self.process, self.prediction, t, x, self.raw(t, x, cond))

    def _unconverted(self, target, t, x, cond):
        return self.raw(t, x, cond) if target == self.prediction else None

    def map_models(self, fn):
        """This predictor with `model` replaced by `fn(model)` (with
        `precondition="edm"`, `model` is the preconditioned network)."""
        return eqx.tree_at(lambda p: p.model, self, fn(self.model))
