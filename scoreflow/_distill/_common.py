"""What the few-step objectives share: one solver step of a teacher's PF-ODE, the
metric, argument checks."""

from __future__ import annotations

import diffrax
import jax.numpy as jnp

from .._predictor import Predictor
from .._sampling import probability_flow


def teacher_step(process, teacher, solver, t, s, x, cond=None):
    r"""One step of `solver` on the teacher's probability-flow ODE from time `t` to
    time `s` ($t = 0$ data; $s < t$ steps towards data), through
    [`scoreflow.probability_flow`][] (integrated in flipped time $t_1 - t$)."""
    term = probability_flow(process, teacher)
    t1 = jnp.asarray(process.t1, x.dtype)
    a, b = t1 - t, t1 - s
    state = solver.init(term, a, b, x, cond)
    y, *_ = solver.step(term, a, b, x, cond, state, False)
    return y.astype(x.dtype)


def check_teacher(teacher, process, call):
    if teacher is None:
        return None
    if not isinstance(teacher, Predictor):
        raise TypeError(
            f"`{call}(teacher=...)` must be an `sf.Predictor` (the trained network "
            f"with its process and prediction type), got {type(teacher).__name__}. "
            "Wrap it: `sf.Predictor(net, process, prediction=...)`."
        )
    return teacher


def check_solver(solver, call):
    if not isinstance(solver, diffrax.AbstractSolver):
        raise TypeError(
            f"`{call}(solver=...)` must be a diffrax solver instance such as "
            f"diffrax.Heun() or sf.DDIM(), got {solver!r}."
        )
    return solver


def check_model(model, cls, call, hint):
    if not isinstance(model, cls):
        raise TypeError(
            f"`{call}`: the model must be an `sf.{cls.__name__}` (it carries the "
            f"parametrisation), got {type(model).__name__}. {hint}"
        )


def no_cond(cond, call):
    if cond is not None:
        raise ValueError(
            f"`{call}`: conditional training (cond=...) is not supported by the "
            "few-step objectives yet; train an unconditional model."
        )


def pseudo_huber(diff, c):
    r"""$\sqrt{\|d\|^2/D + c^2} - c$ per example (Song & Dhariwal 2023 with the
    squared norm averaged over the $D$ entries), or $\|d\|^2/D$ for `c=None`."""
    msq = jnp.mean(diff**2)
    if c is None:
        return msq
    return jnp.sqrt(msq + c**2) - c


__all__ = [
    "check_model",
    "check_solver",
    "check_teacher",
    "no_cond",
    "pseudo_huber",
    "teacher_step",
]
