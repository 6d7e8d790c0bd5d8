r"""How a declared process obtains its scalar Gaussian kernel
$x_t = \alpha(t)x_0 + \sigma(t)\varepsilon$: a strategy the process holds.

- [`ClosedFormKernel`][]: compiled expressions for $\alpha$, $\sigma$, their
  derivatives and (where derived) the log-SNR: sympy's closed forms, or a callable
  interpolant's own functions with derivatives by autodiff.
- [`MomentKernel`][]: the moment ODEs $d\log\alpha = f\,dt$,
  $d(\sigma^2/\alpha^2) = g^2/\alpha^2\,dt$ integrated by diffrax, for an SDE whose
  integrals have no closed form (or that was declared with callables).
"""

from __future__ import annotations

import abc

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp


class AbstractScalarKernel(eqx.Module):
    """Evaluates $\\alpha$, $\\sigma$ and their derivatives at `t` given the
    process's parameters."""

    @abc.abstractmethod
    def alpha(self, t, params): ...

    @abc.abstractmethod
    def sigma(self, t, params): ...

    @abc.abstractmethod
    def alpha_dot(self, t, params): ...

    @abc.abstractmethod
    def sigma_dot(self, t, params): ...

    def log_snr(self, t, params):
        return 2 * (jnp.log(self.alpha(t, params)) - jnp.log(self.sigma(t, params)))

    @abc.abstractmethod
    def checked(self) -> dict:
        """`{name: fn(t, params)}` of the compiled coefficients that declaration-time
        validation evaluates on a grid (elementwise in `t`)."""


class ClosedFormKernel(AbstractScalarKernel):
    alpha_fn: eqx.Module
    sigma_fn: eqx.Module
    alpha_dot_fn: eqx.Module
    sigma_dot_fn: eqx.Module
    log_snr_fn: eqx.Module | None = None

    def alpha(self, t, params):
        return self.alpha_fn(t, params)

    def sigma(self, t, params):
        return self.sigma_fn(t, params)

    def alpha_dot(self, t, params):
        return self.alpha_dot_fn(t, params)

    def sigma_dot(self, t, params):
        return self.sigma_dot_fn(t, params)

    def log_snr(self, t, params):
        if self.log_snr_fn is None:
            return super().log_snr(t, params)
        return self.log_snr_fn(t, params)

    def checked(self):
        out = dict(
            alpha=self.alpha_fn,
            sigma=self.sigma_fn,
            alpha_dot=self.alpha_dot_fn,
            sigma_dot=self.sigma_dot_fn,
        )
        if self.log_snr_fn is not None:
            out["log_snr"] = self.log_snr_fn
        return out


def solve_moments(vf, y0, t, *, rtol, atol, max_steps):
    """The moment ODE `dy/ds = vf(s, y)` from `y0` at $s = 0$ to the scalar time `t`
    (diffrax Tsit5, PID control at `rtol`/`atol`; at least 1e-6 / 1e-8 below
    float64): the one integrator behind the scalar and the matrix moment kernels.
    `t <= 0` returns `y0` (diffeqsolve needs `t1 > t0`, so it integrates to a tiny
    positive time and the result is replaced)."""
    dtype = jnp.result_type(t.dtype, float)
    t = t.astype(dtype)
    if dtype != jnp.float64:
        rtol, atol = max(rtol, 1e-6), max(atol, 1e-8)
    y0 = jax.tree.map(lambda y: jnp.asarray(y, dtype), y0)
    tiny = jnp.asarray(1e-30 if dtype == jnp.float64 else 1e-20, dtype)
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(vf),
        diffrax.Tsit5(),
        t0=jnp.zeros((), dtype),
        t1=jnp.maximum(t, tiny),
        dt0=None,
        y0=y0,
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        max_steps=max_steps,
        saveat=diffrax.SaveAt(t1=True),
    )
    return jax.tree.map(lambda y, y_0: jnp.where(t > 0, y[0], y_0), sol.ys, y0)


@eqx.filter_jit
def _moments_jit(ode, t, params):
    return ode._eval(t, params)


class MomentODE(eqx.Module):
    r"""alpha(t), sigma(t)² from the moment ODEs $d\log\alpha = f\,dt$,
    $d(\sigma^2/\alpha^2) = g^2/\alpha^2\,dt$, integrated by diffrax from 0 to t
    ([`solve_moments`][])."""

    f: eqx.Module
    g2: eqx.Module

    def __call__(self, t, params):
        return _moments_jit(self, jnp.asarray(t), params)

    def _eval(self, t, params):
        def vf(s, y, args):
            log_a, _ = y
            return self.f(s, params), self.g2(s, params) * jnp.exp(-2 * log_a)

        def solve(tt):
            log_a, s = solve_moments(
                vf, (0.0, 0.0), tt, rtol=1e-10, atol=1e-12, max_steps=4096
            )
            return jnp.exp(log_a), jnp.exp(2 * log_a) * s

        a, s2 = jax.vmap(solve)(jnp.ravel(t))
        return a.reshape(t.shape), s2.reshape(t.shape)


class MomentKernel(AbstractScalarKernel):
    moments: MomentODE

    def alpha(self, t, params):
        return self.moments(t, params)[0]

    def sigma(self, t, params):
        return jnp.sqrt(self.moments(t, params)[1])

    def alpha_dot(self, t, params):
        return self.moments.f(t, params) * self.alpha(t, params)

    def sigma_dot(self, t, params):
        # (sigma^2)' = 2 f sigma^2 + g^2
        s = self.sigma(t, params)
        return (2 * self.moments.f(t, params) * s**2 + self.moments.g2(t, params)) / (
            2 * s
        )

    def checked(self):
        return {}
