import os

import jax
import jax.random as jr
import pytest

# Exactness tests run in float64; float32 behaviour is tested explicitly by casting.
jax.config.update("jax_enable_x64", True)
# Strict dtype promotion (library code never mixes dtypes implicitly) is opt-in for
# now: SCOREFLOW_STRICT_PROMOTION=1. Its fixes are in; the few-step samplers' float32
# paths with float64 process parameters still mix dtypes (issue 12, left).
if os.environ.get("SCOREFLOW_STRICT_PROMOTION") == "1":
    jax.config.update("jax_numpy_dtype_promotion", "strict")


@pytest.fixture
def getkey():
    """A fresh PRNG key on each call, deterministic per test."""
    state = {"key": jr.key(0)}

    def _getkey():
        state["key"], sub = jr.split(state["key"])
        return sub

    return _getkey
