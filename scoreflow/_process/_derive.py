"""Pure-sympy derivations: from (f, g) or (alpha, sigma) to every other coefficient.

Nothing here touches JAX. Results are cached on the (hashable) sympy inputs, so a
built-in process pays for its derivation once per Python session.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import hashlib
import itertools
import math
import os
import pathlib
import pickle
import signal
import threading
from collections.abc import Callable, Mapping

import mpmath
import numpy as np
import sympy
from sympy.codegen.cfunctions import expm1, log1p

from .._symbols import t, tau, x

SYMPY_TIMEOUT = 4.0
"""The default work budget of one sympy integral, limit, solve or simplification
before scoreflow falls back to numerics, in *work units* (see `WORK_UNIT`): roughly
seconds of sympy on an idle 2020s CPU, but counted, not timed, so the outcome is the
same on a fast, slow or loaded machine (issue 14, defect 2). The name is kept for
compatibility."""

WORK_UNIT = 40
"""Generation-0 garbage collections (about 700 net allocations of container objects
each) per work unit. sympy builds and drops many tuples and dicts, so the count
follows the amount of work done, whatever the wall-clock speed."""


def _cache_dir():
    """Where derivations are cached across Python processes (`SCOREFLOW_CACHE_DIR`,
    default `~/.cache/scoreflow`; set it to an empty string to disable)."""
    d = os.environ.get("SCOREFLOW_CACHE_DIR")
    if d == "":
        return None
    return pathlib.Path(d) if d else pathlib.Path.home() / ".cache" / "scoreflow"


BUILTIN_CACHE = pathlib.Path(__file__).parent / "_builtin_cache"
"""Derivations of the built-in processes (default parameters), shipped with the
package in the disk cache's format and read after the user's cache: a built-in is
derived without sympy on a fresh machine. Regenerate with
`python -m scoreflow._process._precompute` after a derivation change (and bump
`_CACHE_VERSION`); `tests/test_derive.py` checks them against a fresh derivation."""


def cache_key(name: str, args) -> str:
    """The disk cache's key of `name` called on `args`: a hash of the `srepr` of the
    sympy arguments (`repr` of the others), `_CACHE_VERSION` and the sympy version."""
    return hashlib.sha256(
        repr(
            (
                name,
                _CACHE_VERSION,
                sympy.__version__,
                [
                    sympy.srepr(a) if isinstance(a, sympy.Basic) else repr(a)
                    for a in args
                ],
            )
        ).encode()
    ).hexdigest()


_MISSING = object()


def cache_get(name: str, key: str):
    """The value stored under `key` in the user's cache, else in the shipped
    `BUILTIN_CACHE`, else `_MISSING`. Unreadable files count as missing."""
    d = _cache_dir()
    fname = f"{name}-{key[:32]}.pkl"
    for p in (None if d is None else d / fname, BUILTIN_CACHE / fname):
        if p is not None and p.exists():
            try:
                with open(p, "rb") as fh:
                    return pickle.load(fh)
            except Exception:
                pass
    return _MISSING


def cache_put(name: str, key: str, value) -> None:
    """Store `value` under `key` in the user's cache (atomically; failures ignored)."""
    d = _cache_dir()
    if d is None:
        return
    path = d / f"{name}-{key[:32]}.pkl"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            pickle.dump(value, fh)
        os.replace(tmp, path)
    except Exception:
        pass


def disk_cached(fn):
    """Memoise a pure sympy function in memory and on disk (pickle), keyed by the
    `srepr` of its arguments and the sympy version (`cache_key`); the shipped
    `BUILTIN_CACHE` is read when the user's cache misses. A fresh value is returned
    as it reads back from the disk cache, so the first session and later ones use
    the same expressions. Any cache failure is ignored."""
    memo: dict = {}

    @functools.wraps(fn)
    def wrapper(*args):
        key = cache_key(fn.__qualname__, args)
        if key in memo:
            return memo[key]
        out = cache_get(fn.__name__, key)
        if out is _MISSING:
            out = fn(*args)
            try:
                # What a later session will load: unpickling re-evaluates sympy
                # objects (e.g. 2*(a + b) becomes 2*a + 2*b), so a value is used in
                # the form it has once stored, the same in every session.
                out = pickle.loads(pickle.dumps(out))
            except Exception:
                pass
            cache_put(fn.__name__, key, out)
        memo[key] = out
        return out

    return wrapper


_CACHE_VERSION = 7  # bump when a derivation's logic changes


class _OutOfWork(BaseException):
    """A BaseException, so sympy's internal `except Exception` cannot swallow it."""


_INTERRUPTIBLE = (os.path.dirname(sympy.__file__), os.path.dirname(mpmath.__file__))


@contextlib.contextmanager
def _work_limit(units: float | None):
    """Count the body's work in generation-0 garbage collections; past
    `units * WORK_UNIT` of them the body is out of work (`state["out"]`), a
    deterministic measure, unlike a wall-clock limit (issue 14, defect 2).

    In the main thread the body is also interrupted then (`_OutOfWork` from a
    SIGALRM handler), but only in a sympy or mpmath frame: a signal landing in a
    `__del__` or a gc callback, where Python would print and swallow the exception
    (issue 14, defect 9), is re-sent 1 ms later. The *outcome* does not depend on
    when the interruption lands: `try_sympy` discards a result finished after the
    budget ran out."""
    state = {"count": 0, "out": False}
    if units is None:
        yield state
        return
    tid = threading.get_ident()
    budget = max(1, int(units * WORK_UNIT))
    interrupt = threading.current_thread() is threading.main_thread() and hasattr(
        signal, "SIGALRM"
    )

    def callback(phase, info):
        if phase != "stop" or state["out"] or threading.get_ident() != tid:
            return
        state["count"] += 1
        if state["count"] > budget:
            state["out"] = True
            if interrupt:
                signal.setitimer(signal.ITIMER_REAL, 1e-4)

    def handler(signum, frame):
        if frame is not None and frame.f_code.co_filename.startswith(_INTERRUPTIBLE):
            raise _OutOfWork
        signal.setitimer(signal.ITIMER_REAL, 1e-3)  # not here: try again shortly

    if interrupt:
        old = signal.signal(signal.SIGALRM, handler)
    was_enabled = gc.isenabled()
    gc.enable()  # the count needs the collector (restored below)
    gc.callbacks.append(callback)
    try:
        yield state
    finally:
        gc.callbacks.remove(callback)
        if not was_enabled:
            gc.disable()
        if interrupt:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)


def try_sympy(fn: Callable[[], sympy.Expr], seconds: float | None = SYMPY_TIMEOUT):
    """Run a sympy computation; `None` if it raises or exceeds its work budget
    (`seconds` work units, see `SYMPY_TIMEOUT`: counted, not timed; `None`: no
    budget)."""
    try:
        with _work_limit(seconds) as state:
            out = fn()
    except (_OutOfWork, Exception):
        return None
    return None if state["out"] else out


def _generic_branch(expr):
    """Drop `Piecewise` branches that only cover degenerate parameter values
    (sympy's `Piecewise((generic, Ne(...)), (degenerate, True))`)."""
    if expr is None or not expr.has(sympy.Piecewise):
        return expr

    def pick(*args):
        first_expr, first_cond = args[0]
        if isinstance(first_cond, sympy.Ne) or first_cond is sympy.true:
            return first_expr
        return sympy.Piecewise(*args)

    return expr.replace(sympy.Piecewise, pick)


def _abstract_constants(expr, var):
    """Replace each maximal `var`-free compound subexpression (e.g. log(smax/smin))
    by a dummy symbol, so sympy's integrator sees `C * exp(k * tau)` rather than
    symbolic powers. Returns the new expression and the back-substitution."""
    reps: dict = {}

    def visit(e):
        if e.is_Atom:
            return e
        if not e.has(var) and e.free_symbols:
            if e not in reps:
                reps[e] = sympy.Dummy(positive=e.is_positive, real=e.is_real)
            return reps[e]
        return e.func(*[visit(a) for a in e.args])

    return visit(expr), {d: e for e, d in reps.items()}


def _integrate(integrand, var, upper):
    """Definite integral from 0 to `upper`, or None (no closed form / out of time).
    Tries the integrand as given, then with its constants abstracted."""
    out = _generic_branch(
        try_sympy(lambda: sympy.integrate(integrand, (var, 0, upper)))
    )
    if out is not None and not out.has(sympy.Integral, sympy.Piecewise):
        return out
    abstract, back = _abstract_constants(sympy.powsimp(integrand, combine="exp"), var)
    out = _generic_branch(try_sympy(lambda: sympy.integrate(abstract, (var, 0, upper))))
    if out is None or out.has(sympy.Integral, sympy.Piecewise):
        return None
    return out.xreplace(back)


def _verified(f, g2, alpha, sigma2) -> bool:
    """Check the kernel ODEs alpha' = f alpha and (sigma^2)' = 2 f sigma^2 + g^2, and
    alpha(0) = 1, sigma^2(0) = 0, at sample points in 30-digit arithmetic (parameters
    set to arbitrary positive values): a guard against a wrong closed form."""
    others = sorted(
        (alpha.free_symbols | sigma2.free_symbols | f.free_symbols | g2.free_symbols)
        - {t},
        key=str,
    )
    vals = {s: sympy.Rational(7 + 3 * i, 10) for i, s in enumerate(others)}
    checks = (
        sympy.diff(alpha, t) - f * alpha,
        sympy.diff(sigma2, t) - 2 * f * sigma2 - g2,
    )
    scales = (alpha, g2)
    try:
        with mpmath.workdps(30):
            for tv in (
                sympy.Rational(1, 7),
                sympy.Rational(1, 2),
                sympy.Rational(6, 7),
            ):
                at = {**vals, t: tv}
                for chk, scale in zip(checks, scales):
                    r = abs(complex(chk.subs(at).evalf(30)))
                    m = abs(complex(scale.subs(at).evalf(30))) + 1e-30
                    if not r <= 1e-15 * m:
                        return False
            a0 = complex(alpha.subs({**vals, t: 0}).evalf(30))
            s0 = complex(sigma2.subs({**vals, t: 0}).evalf(30))
            return abs(a0 - 1) < 1e-20 and abs(s0) < 1e-20
    except (TypeError, ValueError, ZeroDivisionError):
        return False


def _has_unevaluated(expr) -> bool:
    return expr is None or expr.has(sympy.Integral) or expr.has(sympy.Limit)


# --------------------------------------------------------------------------- #
# Parsing user declarations
# --------------------------------------------------------------------------- #


def to_expr(
    value, *, call: str, argname: str, allowed: tuple[str, ...], params: Mapping
) -> sympy.Expr:
    """Sympify a declared expression and check its free symbols.

    Symbols *named* `t` or `x` are identified with `sf.t` / `sf.x`, so users may
    write `sympy.Symbol("t")` or a string.
    """
    local = {"t": t, "x": x}
    local.update({str(p): p for p in params})
    try:
        expr = sympy.sympify(value, locals=local)
    except (sympy.SympifyError, SyntaxError, TypeError) as e:
        raise ValueError(
            f"`{call}` could not parse {argname}={value!r} as a sympy expression: {e}"
        ) from None
    if not isinstance(expr, sympy.Expr):
        raise ValueError(
            f"`{call}` expects {argname} to be a sympy expression, got "
            f"{type(expr).__name__} ({expr!r})."
        )
    rename = {}
    for s in expr.free_symbols:
        if s.name == "t" and s != t:
            rename[s] = t
        elif s.name == "x" and s != x:
            rename[s] = x
        elif s.name in local and s != local[s.name]:
            rename[s] = local[s.name]
    expr = expr.xreplace(rename)
    param_syms = set(params)
    bad = {
        s for s in expr.free_symbols if s.name not in allowed and s not in param_syms
    }
    if bad:
        names = ", ".join(sorted(s.name for s in bad))
        allowed_txt = " and ".join(f"sf.{a}" for a in allowed)
        raise ValueError(
            f"`{call}`: {argname}={expr} has free symbol(s) {names}; it may only "
            f"depend on {allowed_txt}. Substitute numbers for the other symbols, or "
            f"declare them as trainable parameters with params={{{names}: value}}."
        )
    if expr.has(sympy.zoo, sympy.nan, sympy.oo, -sympy.oo):
        raise ValueError(f"`{call}`: {argname}={expr} contains an infinity or NaN.")
    return expr


# --------------------------------------------------------------------------- #
# Derivations
# --------------------------------------------------------------------------- #


@dataclasses.dataclass(frozen=True)
class Derivation:
    """Every coefficient of a scalar-coefficient process, as sympy expressions in `t`.

    `alpha`/`sigma` are `None` when the drift is not of the form `f(t) x`
    (`gaussian_reason` says why); `closed_form` is False when sympy found no closed
    form for the kernel integrals (they are then computed numerically).
    """

    source: str  # "sde" or "interpolant"
    drift: sympy.Expr  # full (Itô) drift f(t, x)
    g2: sympy.Expr  # squared diffusion g(t)^2 (or g(t, x)^2, elementwise)
    f: sympy.Expr | None  # linear coefficient: drift = f(t) x
    alpha: sympy.Expr | None
    sigma2: sympy.Expr | None
    closed_form: bool
    gaussian_reason: str  # empty when the kernel is Gaussian

    @property
    def gaussian(self) -> bool:
        return self.f is not None

    @functools.cached_property
    def sigma(self):
        if self.sigma2 is None:
            return None
        return sympy.sqrt(self.sigma2)

    @functools.cached_property
    def log_snr(self):
        if not self.closed_form or self.alpha is None:
            return None
        lam = 2 * sympy.log(self.alpha) - sympy.log(self.sigma2)
        # `expand_log(force=True)` gives the short forms (VP: -int beta - log(...)),
        # but it also turns log(u^2) into 2 log(u) where u < 0 (issue 14, defect 3):
        # keep a rewrite only where it has the value of the definition.
        for form in (
            lambda: _simplify(sympy.expand_log(lam, force=True)),
            lambda: _simplify(sympy.expand_log(lam)),
            lambda: _simplify(lam),
        ):
            out = form()
            if same_values(lam, out):
                return out
        return lam

    @functools.cached_property
    def alpha_dot(self):
        return None if not self.closed_form else _simplify(sympy.diff(self.alpha, t))

    @functools.cached_property
    def sigma_dot(self):
        return None if not self.closed_form else _simplify(sympy.diff(self.sigma, t))


def _simplify(expr):
    """`sympy.simplify`, unless it introduces a `Piecewise` (sympy2jax cannot compile
    one; e.g. d/dt |u(t)| simplified) or changes the value."""
    out = try_sympy(lambda: sympy.simplify(expr), SYMPY_TIMEOUT / 2)
    if out is None or (out.has(sympy.Piecewise) and not expr.has(sympy.Piecewise)):
        return expr
    return out


_PROBE_T = tuple(
    sympy.Rational(n, d) for n, d in ((1, 7), (1, 2), (6, 7), (3, 2), (5, 1), (40, 1))
)


def same_values(ref: sympy.Expr, form: sympy.Expr) -> bool:
    """Whether `form` has the value of `ref` (30 digits, relative 1e-12) at probe
    times in (0, 40] where `ref` is real and finite, with the parameters set to
    arbitrary positive values (as in `_verified`). A guard against rewrites, such as
    `expand_log(force=True)`, that are only valid for positive arguments."""
    if ref == form:
        return True
    others = sorted((ref.free_symbols | form.free_symbols) - {t}, key=str)
    vals = {s: sympy.Rational(7 + 3 * i, 10) for i, s in enumerate(others)}
    checked = 0
    with mpmath.workdps(30):
        for tv in _PROBE_T:
            at = {**vals, t: tv}
            try:
                r = complex(ref.subs(at).evalf(30))
            except (TypeError, ValueError, ZeroDivisionError):
                continue
            if not (cmath_isfinite(r) and abs(r.imag) <= 1e-25 * max(1.0, abs(r.real))):
                continue
            try:
                v = complex(form.subs(at).evalf(30))
            except (TypeError, ValueError, ZeroDivisionError):
                return False
            if not abs(v - r) <= 1e-12 * max(1.0, abs(r)):
                return False
            checked += 1
    return checked > 0 or not ref.has(t)


def cmath_isfinite(z: complex) -> bool:
    return math.isfinite(z.real) and math.isfinite(z.imag)


def _linear_part(drift: sympy.Expr) -> tuple[sympy.Expr | None, str]:
    second = _simplify(sympy.diff(drift, x, 2))
    if second != 0:
        return None, (
            f"the drift {drift} is not affine in x (d²f/dx² = {second} ≠ 0), so the "
            "transition kernel is not Gaussian"
        )
    offset = _simplify(drift.subs(x, 0))
    if offset != 0:
        return None, (
            f"the drift {drift} has an x-independent part {offset}; scoreflow's "
            "Gaussian kernels have the form alpha(t) x0 + sigma(t) eps, so the drift "
            "must be f(t) * x (shift the data instead)"
        )
    return _simplify(sympy.diff(drift, x)), ""


def _complete(d: Derivation) -> Derivation:
    """Compute the derived properties now, so they are cached (and pickled) with it."""
    for name in ("sigma", "log_snr", "alpha_dot", "sigma_dot"):
        getattr(d, name)
    return d


def derive_from_sde(drift: sympy.Expr, g: sympy.Expr) -> Derivation:
    """The full derivation from (f, g), cached in memory and on disk.

    **Raises:** `ValueError` when `g` is identically zero (no noise, no kernel).
    The check runs inside the cached function (a cache hit was checked when it was
    derived), so a cached derivation costs no sympy simplification."""
    return _derive_from_sde_cached(drift, g)


def _check_noise_sde(drift, g):
    if _simplify(g**2) == 0:
        raise ValueError(
            f"`sf.SDE(drift={drift}, diffusion={g})`: the diffusion is identically 0, "
            "so the process adds no noise: sigma(t) = 0 for every t, there is no "
            "Gaussian kernel, no score (grad log p_t) and no prior to sample from. "
            "Declare a diffusion g(t) > 0 on (0, t1], e.g. diffusion=sqrt(2)."
        )


def derive_from_interpolant(alpha: sympy.Expr, sigma: sympy.Expr) -> Derivation:
    """The full derivation from (alpha, sigma), cached in memory and on disk.

    **Raises:** `ValueError` when `sigma` is identically zero (no noise); checked
    inside the cached function, as in `derive_from_sde`."""
    return _derive_from_interpolant_cached(alpha, sigma)


def _check_noise_interpolant(alpha, sigma):
    if _simplify(sigma) == 0:
        raise ValueError(
            f"`sf.Interpolant(alpha={alpha}, sigma={sigma})`: sigma is identically 0, "
            "so x_t = alpha(t) x0 carries no noise: there is no Gaussian kernel, no "
            "score and no prior. Declare a sigma(t) > 0 on (0, t1], e.g. sigma=t."
        )


@disk_cached
def _derive_from_sde_cached(drift: sympy.Expr, g: sympy.Expr) -> Derivation:
    _check_noise_sde(drift, g)  # raises: nothing is cached
    return _complete(_derive_from_sde(drift, g))


@disk_cached
def _derive_from_interpolant_cached(alpha: sympy.Expr, sigma: sympy.Expr) -> Derivation:
    _check_noise_interpolant(alpha, sigma)
    return _complete(_derive_from_interpolant(alpha, sigma))


def _derive_from_sde(drift: sympy.Expr, g: sympy.Expr) -> Derivation:
    """alpha = exp(∫_0^t f),  sigma² = alpha² ∫_0^t g²/alpha²."""
    g2 = sympy.powsimp(sympy.expand(g**2))
    if g2.has(x):
        reason = (
            f"the diffusion g = {g} depends on x (state-dependent noise), so the "
            "transition kernel is not Gaussian"
        )
        return Derivation("sde", drift, g2, None, None, None, False, reason)
    f, reason = _linear_part(drift)
    if f is None:
        return Derivation("sde", drift, g2, None, None, None, False, reason)
    A = _integrate(f.subs(t, tau), tau, t)
    if _has_unevaluated(A):
        alpha = sympy.exp(sympy.Integral(f.subs(t, tau), (tau, 0, t)))
        sigma2 = alpha**2 * sympy.Integral((g2 / alpha**2).subs(t, tau), (tau, 0, t))
        return Derivation("sde", drift, g2, f, alpha, sigma2, False, "")
    A = _simplify(A)
    alpha = _simplify(sympy.exp(A))
    if not compilable(alpha):
        # e.g. f = -sqrt(1 + t^3): A is a hypergeometric function, which neither
        # sympy2jax nor the sigma^2 integral (tens of seconds of sympy for nothing)
        # can use. The numeric kernel, decided before any budget is spent.
        alpha = sympy.exp(sympy.Integral(f.subs(t, tau), (tau, 0, t)))
        sigma2 = alpha**2 * sympy.Integral((g2 / alpha**2).subs(t, tau), (tau, 0, t))
        return Derivation("sde", drift, g2, f, alpha, sigma2, False, "")
    integrand = sympy.powsimp(g2 * sympy.exp(-2 * A), combine="exp").subs(t, tau)
    I = _integrate(integrand, tau, t)
    if _has_unevaluated(I):
        sigma2 = alpha**2 * sympy.Integral(integrand, (tau, 0, t))
        return Derivation("sde", drift, g2, f, alpha, sigma2, False, "")
    sigma2 = sympy.expand(sympy.exp(2 * A) * I)
    if sigma2.has(sympy.Piecewise) or not _verified(f, g2, alpha, sigma2):
        sigma2 = alpha**2 * sympy.Integral(integrand, (tau, 0, t))
        return Derivation("sde", drift, g2, f, alpha, sigma2, False, "")
    return Derivation("sde", drift, g2, f, alpha, sigma2, True, "")


def _derive_from_interpolant(alpha: sympy.Expr, sigma: sympy.Expr) -> Derivation:
    """f = alpha'/alpha,  g² = (sigma²)' - 2 f sigma²."""
    sigma2 = _simplify(sigma**2)
    f = _simplify(sympy.diff(alpha, t) / alpha)
    g2 = _simplify(sympy.diff(sigma2, t) - 2 * f * sigma2)
    d = Derivation("interpolant", f * x, g2, f, alpha, sigma2, True, "")
    # Keep the declared sigma (not sqrt(sigma^2)), which is usually the stabler form.
    d.__dict__["sigma"] = sigma
    return d


# --------------------------------------------------------------------------- #
# Numerically stable forms, chosen by measured float32 accuracy
# --------------------------------------------------------------------------- #


def _stable_opts(form):
    """`form` with `expm1`/`log1p` substituted where they apply (sympy's codegen
    rewriting, imported here: it costs 30 ms at `import scoreflow`)."""
    from sympy.codegen.rewriting import expm1_opt, log1p_opt, optimize

    return optimize(form, [expm1_opt, log1p_opt])


def _exp_form(e):
    """Powers and hyperbolics as exp(...), exponents combined: exposes exp(u) - 1."""
    e = sympy.powsimp(e.rewrite(sympy.exp), combine="exp")
    return sympy.powsimp(sympy.expand_log(sympy.simplify(e), force=True), combine="exp")


_REWRITES = (
    sympy.simplify,
    sympy.factor,
    sympy.powsimp,
    lambda e: sympy.expand(e, power_exp=True),
    sympy.together,
    _exp_form,
    lambda e: sympy.factor(_exp_form(e)),
)


def _rewrites(expr):
    """Equal forms of `expr`, cheapest first (a generator: callers stop early)."""
    yield expr
    for rewrite in _REWRITES:
        out = try_sympy(lambda: rewrite(expr), 2.0)
        if out is not None:
            yield out
    # sqrt(E): also try sqrt of each rewrite of E, and pulling squares out of it.
    if isinstance(expr, sympy.Pow) and expr.exp == sympy.S.Half:
        for inner in _rewrites(expr.base):
            yield sympy.sqrt(inner)
            out = try_sympy(lambda: sympy.powdenest(sympy.sqrt(inner), force=True), 2.0)
            if out is not None:
                yield out


def _candidates(expr):
    """Each rewrite, first with expm1/log1p substituted where they apply."""
    seen = set()
    for form in _rewrites(expr):
        o = try_sympy(lambda: _stable_opts(form), 2.0)
        for f in (o, form):
            if f is not None and f not in seen:
                seen.add(f)
                yield f


def _probe_times(T: float) -> np.ndarray:
    near = np.geomspace(1e-7, 0.1, 25) * T
    return np.unique(np.concatenate([near, np.linspace(0, T, 33)[1:-1], T - near]))


def stable_form(
    expr: sympy.Expr, subs: tuple, T: float, hints: tuple = ()
) -> sympy.Expr:
    """Among algebraically equal rewrites of `expr` (with `expm1`/`log1p` where they
    apply, and any `hints` — candidate forms that are only accepted if they match),
    pick the one with the smallest float32 relative error on probe times near both
    endpoints, measured against 30-digit mpmath evaluation of `expr` itself.

    The choice is cached per symbolic expression (parameters as symbols), so new
    parameter values reuse it."""
    if expr.free_symbols - {t}.union(s for s, _ in subs) or not expr.has(t):
        return expr
    return _stable_form_cached(expr, hints, T, subs)


_STABLE_CACHE: dict = {}


def _stable_form_cached(expr, hints, T, subs):
    # Keyed without the parameter values: new values reuse the chosen form.
    key = (expr, hints, T)
    if key not in _STABLE_CACHE:
        _STABLE_CACHE[key] = _choose_form_disk(expr, hints, T, subs)
    return _STABLE_CACHE[key]


def _choose_form_disk(expr, hints, T, subs):
    return _choose_form_by_key(
        expr, hints, T, _first_subs.setdefault((expr, hints, T), subs)
    )


_first_subs: dict = {}


@disk_cached
def _choose_form_by_key(expr, hints, T, subs):
    return _choose_form(expr, subs, T, hints)


GOOD_ENOUGH = 1e-6  # float32 relative error at which the search for forms stops


def _choose_form(expr, subs, T, hints):
    sub = dict(subs)
    ts = _probe_times(T)
    with mpmath.workdps(30):
        ref_fn = sympy.lambdify(t, expr.subs(sub), modules="mpmath")
        ref = []
        for s in ts:
            try:
                v = complex(ref_fn(mpmath.mpf(float(s))))
                ref.append(v.real if abs(v.imag) < 1e-20 else np.nan)
            except (ZeroDivisionError, ValueError, TypeError, OverflowError):
                ref.append(np.nan)
    ref = np.asarray(ref)
    ok = np.isfinite(ref)
    if not ok.any():
        return expr
    best, best_err = expr, math.inf
    for form in itertools.chain(hints, _candidates(expr)):
        if best_err <= GOOD_ENOUGH:
            break
        if form.has(sympy.I) or not compilable(form):
            continue
        try:
            fn = sympy.lambdify(t, form.subs(sub), modules="numpy")
            with np.errstate(all="ignore"):
                val = np.broadcast_to(np.asarray(fn(ts.astype(np.float32))), ts.shape)
                if np.iscomplexobj(val):
                    continue
                val = val.astype(np.float64)
                err = np.abs(val[ok] - ref[ok]) / np.maximum(np.abs(ref[ok]), 1e-30)
            e = float(np.max(np.where(np.isfinite(err), err, 1e30)))
        except Exception:
            continue
        if e < best_err * 0.5 or (
            e <= best_err and sympy.count_ops(form) < sympy.count_ops(best)
        ):
            best, best_err = form, e
    return best


EXTRA_FUNCS = {expm1: "expm1", log1p: "log1p"}


def compilable(expr) -> bool:
    """Whether sympy2jax can turn `expr` into a JAX callable."""
    import jax.numpy as jnp
    import sympy2jax

    try:
        sympy2jax.SymbolicModule(
            expr, extra_funcs={k: getattr(jnp, v) for k, v in EXTRA_FUNCS.items()}
        )
    except (KeyError, TypeError, ValueError, NotImplementedError):
        return False
    return True


# --------------------------------------------------------------------------- #
# The inverse of the log-SNR
# --------------------------------------------------------------------------- #

LAM = sympy.Symbol("lam", real=True)
"""The log-SNR variable of `inverse_log_snr`'s result."""

INVERSE_WORK = 6.0
"""Work units (see `SYMPY_TIMEOUT`) for each `sympy.solve` of the inverse."""


def _rationalize_sqrt_differences(expr):
    """`sqrt(q) - a` as `(q - a^2) / (sqrt(q) + a)`: the quadratic formula's root
    without the cancellation at small discriminant changes (e.g. VP at t -> 0)."""

    def fix(e):
        if not isinstance(e, sympy.Add):
            return e
        roots = [
            a for a in e.args if isinstance(a, sympy.Pow) and a.exp == sympy.S.Half
        ]
        if len(roots) != 1:
            return e
        r = roots[0]
        rest = e - r
        return sympy.expand(r.base - rest**2) / (r - rest)

    return expr.replace(lambda e: isinstance(e, sympy.Add), fix)


def _inverse_candidates(sol, var):
    """`sol` (first) and equal rewrites of it, as a list."""
    out, seen = [], set()
    forms = [sol]
    V = sympy.Dummy("V", positive=True)

    def cancel_roots(e):  # e.g. (U - sqrt(U))/(U - 1) -> sqrt(U)/(sqrt(U) + 1)
        return sympy.cancel(e.xreplace({var: V**2})).xreplace({V: sympy.sqrt(var)})

    for rw in (_simplify, lambda e: sympy.expand_log(e, force=True), cancel_roots):
        new = try_sympy(lambda: rw(sol), 2.0)
        if new is not None and same_values(sol.subs(var, t), new.subs(var, t)):
            forms.append(new)
    for form in list(forms):
        rat = try_sympy(lambda: _rationalize_sqrt_differences(form), 2.0)
        if rat is not None:
            forms.append(rat)
    for form in forms:
        for f in (form, try_sympy(lambda: _stable_opts(form), 2.0)):
            if f is not None and f not in seen:
                seen.add(f)
                out.append(f)
    return out


@disk_cached
def inverse_log_snr(lam_expr: sympy.Expr, subs: tuple, t_range: tuple):
    r"""The closed-form inverse $t(\lambda)$ of the log-SNR `lam_expr` (a sympy
    expression in `t`), as a sympy expression in `LAM`, or `None` when sympy finds
    none within `INVERSE_WORK` (counted, not timed: the same answer on every machine).

    `subs` (parameter values, `((symbol, value), ...)`) and `t_range = (t0, t1)` pick
    sympy's branch (the one inverting `lam_expr` at interior times) and the most
    accurate float32 form on the log-SNR range of `[t0, t1]` (measured against
    30-digit mpmath; e.g. VP's root needs `log1p(exp(-lam))`, not
    `log((exp(-lam) + 1)**(2 (beta_max - beta_min)))`, which is 0.12% off at DDPM's
    first timestep). Cached in memory and on disk, like the derivations."""
    sub = dict(subs)
    t0, t1 = (float(v) for v in t_range)
    U = sympy.Dummy("U", positive=True)
    sols = []
    # sigma^2/alpha^2 = exp(-lam) = U is usually algebraic in t where lam is not.
    ratio = _simplify(sympy.exp(-lam_expr))
    for eq, to_u in (
        (lambda: sympy.solve(sympy.Eq(ratio, U), t), {}),
        (lambda: sympy.solve(sympy.Eq(lam_expr, LAM), t), {LAM: -sympy.log(U)}),
    ):
        found = try_sympy(eq, INVERSE_WORK)
        if found:
            # Stable forms are searched in U = exp(-lam) > 0, where e.g.
            # log((U + 1)^k) = k log1p(U) is valid; then U = exp(-lam).
            back = {U: sympy.exp(-LAM)}
            sols = []
            for sol in found:
                forms = [sol.xreplace(to_u)] + _inverse_candidates(
                    sol.xreplace(to_u), U
                )
                if to_u:
                    forms += _inverse_candidates(sol, LAM)
                    forms = [sol] + [f.xreplace(back) for f in forms]
                else:
                    forms = [f.xreplace(back) for f in forms]
                sols.append(forms)
            break
    if not sols:
        return None
    lam_fn = sympy.lambdify(t, lam_expr.subs(sub), modules="mpmath")
    interior = [t0 + (t1 - t0) * f for f in (0.1, 0.37, 0.63, 0.8)]
    with mpmath.workdps(30):
        lams = [lam_fn(mpmath.mpf(tv)) for tv in interior]
        # The float32 accuracy grid: log-SNR values of times across [t0, t1].
        ts = np.unique(
            np.concatenate(
                [t0 + (t1 - t0) * np.geomspace(1e-6, 1, 25), np.linspace(t0, t1, 17)]
            )
        )
        grid = np.asarray([float(lam_fn(mpmath.mpf(float(tv)))) for tv in ts])
    best, best_err = None, math.inf
    for forms in sols:
        sol = forms[0]
        fn = sympy.lambdify(LAM, sol.subs(sub), modules="mpmath")
        try:
            with mpmath.workdps(30):
                ok = all(
                    abs(complex(fn(lv)) - tv) < 1e-9 * max(1.0, t1)
                    for lv, tv in zip(lams, interior)
                )
        except (TypeError, ValueError, ZeroDivisionError, OverflowError):
            ok = False
        if not ok:
            continue
        for form in forms:
            if form.has(sympy.I) or not compilable(form.xreplace({LAM: t})):
                continue
            try:
                f32 = sympy.lambdify(LAM, form.subs(sub), modules="numpy")
                with np.errstate(all="ignore"):
                    val = np.asarray(f32(grid.astype(np.float32)), np.float64)
                err = np.abs(val - ts) / np.maximum(np.abs(ts), 1e-30)
                e = float(np.max(np.where(np.isfinite(err), err, 1e30)))
            except Exception:
                continue
            if e < best_err:
                best, best_err = form, e
    # A form that is not finite on the whole range (e.g. 0/0 at lam = 0) is no inverse.
    return best if best_err < 1e-3 else None
