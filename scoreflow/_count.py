"""Counting network evaluations, shared by `sf.sample` and `sf.log_likelihood`.

Counts are taken at trace time, outside the numerical code: the predictor's
networks are wrapped in `CountedModel`, which adds one to the active counter each
time it is traced, and a function is traced (`jax.eval_shape`) under a fresh counter.
Runge--Kutta solvers are counted from their tableau.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import diffrax
import equinox as eqx
import jax

from ._predictor import AbstractPredictor

_COUNTER: list[int] = []


@contextlib.contextmanager
def _counting():
    _COUNTER.append(0)
    box = {}
    try:
        yield box
    finally:
        box["n"] = _COUNTER.pop()


class CountedModel(eqx.Module):
    """Calls the model; at trace time, counts the call when a counter is active."""

    model: Callable

    def __call__(self, *args):
        if _COUNTER:
            _COUNTER[-1] += 1
        return self.model(*args)


def counted(predictor):
    """The predictor with each of its networks wrapped in `CountedModel`
    (`AbstractPredictor.map_models`); anything else is returned as it is."""
    if isinstance(predictor, AbstractPredictor):
        return predictor.map_models(CountedModel)
    return predictor


def traced_calls(fn: Callable[[], object]) -> int:
    """How many counted network calls tracing `fn()` makes."""
    with _counting() as box:
        jax.eval_shape(fn)
    return box["n"]


def runge_kutta_evaluations(solver) -> tuple[int, int] | None:
    """`(vector-field evaluations per step, extra ones on the first step)` of a
    diffrax Runge--Kutta solver (ODE or SRK), from its tableau; `None` for any other
    solver (scoreflow's samplers are counted by tracing their `step`)."""
    if isinstance(solver, diffrax.AbstractRungeKutta) and hasattr(solver.tableau, "c"):
        stages = len(solver.tableau.c) + 1
        fsal = bool(getattr(solver.tableau, "fsal", False))
        return stages - fsal, int(fsal)
    if isinstance(solver, diffrax.AbstractSRK):
        return len(solver.tableau.c) + 1, 0
    if type(solver) is diffrax.Euler:
        return 1, 0
    return None
