"""Float32 paths of the grid builders and time adapters (the suite runs in float64
otherwise): every built-in, in the default dtype."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import scoreflow as sf

BUILTINS = ("VP", "SubVP", "VE", "CosineVP", "RectifiedFlow", "EDM")


@pytest.mark.parametrize("name", BUILTINS)
def test_grids_and_time_adapters_in_float32(name):
    """Issue 14, defect 1: `sf.CosineVP()` in float32 raised "The root is not
    contained in [lower, upper]" from every inverse-log-SNR path (the bisection
    bracketed [0, horizon], where cos(pi/2) < 0 in float32 makes the log-SNR NaN).
    The inverse now brackets [t0, t1] and checks its root."""
    with jax.enable_x64(False):
        p = getattr(sf, name)()
        for grid in (sf.log_snr_grid(p, 20), sf.edm_grid(p, 10), sf.uniform_grid(p, 8)):
            g = np.asarray(grid)
            assert g.dtype == np.float32
            assert np.all(np.isfinite(g)) and np.all(np.diff(g) < 0), (name, g)
            assert g[0] <= p.t1 and g[-1] >= p.t0
        lam = jnp.linspace(p.log_snr(p.t1), p.log_snr(p.t0), 9)
        t = p.t_from_log_snr(lam)
        assert t.dtype == jnp.float32 and np.all(np.isfinite(t))
        np.testing.assert_allclose(p.log_snr(t), lam, rtol=1e-3, atol=1e-3)
        t_mid = p.t_from_log_snr(0.0)
        assert p.t0 < float(t_mid) < p.t1
        np.testing.assert_allclose(float(p.log_snr(t_mid)), 0.0, atol=1e-3)
        u = sf.SigmaTime(p).to_t(1.0)
        assert np.isfinite(float(u)) and p.t0 <= float(u) <= p.t1
        ddpm = sf.DDPMTimesteps.linear(p)
        ts = ddpm.to_t(jnp.arange(0, 900, 100))
        assert np.all(np.isfinite(ts)) and np.all(np.diff(ts) > 0)


def test_log_snr_outside_the_range_raises_in_float32():
    """A log-SNR the process never reaches on [t0, t1] is an error, not t > t1
    (issue 14: `VP.t_from_log_snr(-20)` returned 1.41)."""
    with jax.enable_x64(False):
        p = sf.VP()
        with pytest.raises(Exception, match="outside the process's range"):
            jax.block_until_ready(p.t_from_log_snr(-20.0))
