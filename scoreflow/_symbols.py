"""The sympy symbols processes are declared in: time `t` and (elementwise) state `x`."""

import sympy

t = sympy.Symbol("t", nonnegative=True)
"""Time. `t = 0` is data, `t = t1` is the prior (scoreflow's fixed convention)."""

x = sympy.Symbol("x", real=True)
"""One coordinate of the state; drifts act elementwise on it."""

# Integration variable used inside derivations (never part of a user expression).
tau = sympy.Symbol("tau", nonnegative=True)
