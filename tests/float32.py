"""Run a test in scoreflow's default dtype (float32), although conftest.py turns on
float64 for the whole run: `with float32(): ...` or the `f32` fixture pattern

    @pytest.fixture
    def f32():
        with float32():
            yield
"""

import contextlib

import jax
import jax.numpy as jnp


@contextlib.contextmanager
def float32():
    """Disable `jax_enable_x64` inside the block (and check it took effect)."""
    with jax.enable_x64(False):
        assert jnp.asarray(1.0).dtype == jnp.float32
        yield
