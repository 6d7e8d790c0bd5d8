"""How a declared process shows itself: its sympy expressions (`symbolic`), the
derived equations (`equations`, `describe`, `latex`) and its `repr`."""

from __future__ import annotations

import dataclasses

import sympy

from .._symbols import t as T_SYM, x as X_SYM
from . import _derive, _stationary
from ._build import declared_symbolically, ito_correction
from ._log_snr import as_number


@dataclasses.dataclass(frozen=True)
class SymbolicView:
    """Sympy expressions of a process (parameters substituted)."""

    f: sympy.Expr
    g: sympy.Expr
    g2: sympy.Expr
    alpha: sympy.Expr | None
    sigma: sympy.Expr | None
    log_snr: sympy.Expr | None
    closed_form: bool
    dg2_dx: sympy.Expr = sympy.Integer(0)
    r"""$\partial_x g^2$ (the divergence of $g g^\top$ for diagonal noise)."""
    f_stratonovich: sympy.Expr | None = None
    r"""The drift read in Stratonovich form, $f - \tfrac14\partial_x g^2$."""
    stationary_log_density: sympy.Expr | None = None
    r"""Unnormalised $\log p_\infty(x)$ when the prior is the stationary density."""


def symbolic(self) -> SymbolicView:
    """The sympy expressions `f` (drift), `g`, `g2`, `alpha`, `sigma`, `log_snr`,
    with the current parameter values substituted."""
    d = self._info.derivation
    if d is None:
        raise ValueError(
            f"`{self._info.call}` was declared with Python callables, so it has no "
            "symbolic form. Declare it with sympy expressions in sf.t (and sf.x) "
            "for symbolic derivations."
        )
    sub = {s: as_number(self.params[s.name]) for s in self._info.param_symbols}

    def S(e):
        return None if e is None else _derive._simplify(e.subs(sub))

    g2 = S(d.g2)
    f = S(d.drift)
    dg2 = _derive._simplify(sympy.diff(g2, X_SYM))
    stationary = None
    if isinstance(self.prior, _stationary.StationaryDensity):
        stationary = self.prior.expr
    return SymbolicView(
        f=f,
        g=_derive._simplify(sympy.sqrt(g2)),
        g2=g2,
        alpha=S(d.alpha),
        sigma=S(d.sigma),
        log_snr=S(d.log_snr),
        closed_form=d.closed_form,
        dg2_dx=dg2,
        f_stratonovich=_derive._simplify(f - ito_correction(g2)),
        stationary_log_density=stationary,
    )


def equations(self) -> dict[str, sympy.Eq]:
    """The forward SDE, the Gaussian kernel, the reverse SDE and the
    probability-flow ODE as sympy equations (for printing)."""
    s = symbolic(self)
    dx, dt, dW, dWbar = sympy.symbols("dx dt dW dWbar")
    score = sympy.Function("s")(T_SYM, X_SYM)
    eqs = {
        "forward SDE": sympy.Eq(dx, s.f * dt + s.g * dW),
        "reverse SDE": sympy.Eq(dx, (s.f - s.dg2_dx - s.g2 * score) * dt + s.g * dWbar),
        "probability-flow ODE": sympy.Eq(
            sympy.Derivative(sympy.Function("x")(T_SYM), T_SYM),
            s.f - s.dg2_dx / 2 - s.g2 / 2 * score,
        ),
    }
    if s.dg2_dx != 0:
        circ = sympy.Symbol("circ")
        eqs["forward SDE (Stratonovich)"] = sympy.Eq(
            dx, s.f_stratonovich * dt + s.g * circ * dW
        )
    if s.stationary_log_density is not None:
        eqs["stationary density"] = sympy.Eq(
            sympy.Function("p_inf")(X_SYM),
            sympy.exp(s.stationary_log_density) / sympy.Symbol("Z"),
        )
    if s.alpha is not None:
        x0, eps, xt = sympy.symbols("x_0 epsilon x_t")
        eqs["kernel"] = sympy.Eq(xt, s.alpha * x0 + s.sigma * eps)
    return eqs


def equation_rows(self, fmt, wrap, score, sub) -> list[tuple[str, str]]:
    s = symbolic(self)
    rows = [
        ("forward SDE", f"dx = {wrap(fmt(s.f))} dt + {wrap(fmt(s.g))} dW"),
    ]
    state_dep = s.dg2_dx != 0
    if state_dep:
        rows.append(
            (
                "Strat. form",
                f"dx = {wrap(fmt(s.f_stratonovich))} dt + {wrap(fmt(s.g))} {sub['circ']} dW",
            )
        )
    if s.alpha is not None:
        rows.append(
            (
                "kernel",
                f"x_t = {wrap(fmt(s.alpha))} x_0 + {wrap(fmt(s.sigma))} {sub['eps']}",
            )
        )
    div = f" - {wrap(fmt(s.dg2_dx))}" if state_dep else ""
    half_div = f" - {wrap(fmt(s.dg2_dx / 2))}" if state_dep else ""
    rows.append(
        (
            "reverse SDE",
            f"dx = [{fmt(s.f)}{div} - {wrap(fmt(s.g2))} {score}] dt + {wrap(fmt(s.g))} {sub['dWbar']}",
        )
    )
    rows.append(
        ("PF-ODE", f"dx/dt = {fmt(s.f)}{half_div} - {wrap(fmt(s.g2 / 2))} {score}")
    )
    if s.stationary_log_density is not None:
        rows.append(
            (
                "stationary",
                f"p_inf(x) = {wrap(fmt(_derive._simplify(sympy.exp(s.stationary_log_density))))} / Z",
            )
        )
    return rows


def describe(self) -> str:
    """A readable multi-line summary: declaration, derived equations, endpoints."""
    lines = [self._info.call]
    if (
        self._info.derivation is not None
        and self._info.derivation.source in ("sde", "interpolant")
        and declared_symbolically(self._info.derivation)
    ):
        rows = equation_rows(
            self,
            sympy.sstr,
            lambda e: f"({e})",
            "s(t, x)",
            {"eps": "eps", "dWbar": "dW_bar", "circ": "o"},
        )
        for name, text in rows:
            lines.append(f"  {name + ':':13s}{text}")
        lines.append(
            "  where s(t, x) = grad_x log p_t(x); the reverse SDE and the PF-ODE run "
            "from t1 down to t0 (dW_bar: reverse-time Brownian motion)"
        )
        if symbolic(self).dg2_dx != 0:
            lines.append(
                "  (Itô form; the extra term is the divergence d/dx g^2 of g g^T, "
                "Anderson 1982; 'o dW' marks the Stratonovich reading)"
            )
    if self._info.gaussian_reason:
        lines.append("  prior: " + _prior_text(self.prior))
    if self._info.numeric:
        lines.append(
            "  kernel integrals: no closed form; computed numerically (diffrax moment ODEs)"
        )
    for line in str(self.endpoints).splitlines()[:3]:
        lines.append("  " + line)
    return "\n".join(lines)


def latex(self) -> str:
    r"""The derived equations as a LaTeX `aligned` block."""
    rows = equation_rows(
        self,
        sympy.latex,
        lambda e: rf"\left({e}\right)",
        r"\nabla_x \log p_t(x)",
        {"eps": r"\varepsilon", "dWbar": r"d\bar W", "circ": r"\circ"},
    )
    body = " \\\\\n".join(rf"\text{{{name}}}:&\quad {text}" for name, text in rows)
    return "\\begin{aligned}\n" + body + "\n\\end{aligned}"


def call_repr(self):
    call = self._info.call
    head, inner = call[: call.index("(")], call[call.index("(") + 1 : -1]
    parts = ([inner] if inner else []) + [f"t0={self.t0:.6g}", f"t1={self.t1:.6g}"]
    return f"{head}({', '.join(parts)})"


# ---- conversions --------------------------------------------------------


def _prior_text(prior) -> str:
    if prior is None:
        return "none (pass prior= to sample from the reverse dynamics)"
    if isinstance(prior, _stationary.StationaryDensity):
        return (
            f"stationary density p_inf(x) ∝ exp({prior.expr}) (per coordinate); the "
            "terminal marginal p_t1 approaches it as t1 grows"
        )
    return f"user-supplied {type(prior).__name__}"
