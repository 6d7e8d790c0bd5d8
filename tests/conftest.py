import os

import jax
import jax.random as jr
import pytest

# Exactness tests run in float64; float32 behaviour is tested explicitly by casting.
jax.config.update("jax_enable_x64", True)
# Strict dtype promotion: library code never mixes dtypes implicitly (a float32
# path that silently computes in float64, or the reverse, fails here).
# SCOREFLOW_STRICT_PROMOTION=0 turns it off for a local experiment.
if os.environ.get("SCOREFLOW_STRICT_PROMOTION", "1") != "0":
    jax.config.update("jax_numpy_dtype_promotion", "strict")


@pytest.fixture
def getkey():
    """A fresh PRNG key on each call, deterministic per test."""
    state = {"key": jr.key(0)}

    def _getkey():
        state["key"], sub = jr.split(state["key"])
        return sub

    return _getkey
