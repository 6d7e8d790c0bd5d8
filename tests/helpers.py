"""Registries the tests parametrise over, so a new built-in inherits the suite.

Processes are built once per test session (their sympy derivation takes seconds).
"""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp

import scoreflow as sf

BUILTIN_NAMES = ("VP", "SubVP", "VE", "CosineVP", "RectifiedFlow", "EDM")


@functools.cache
def builtin(name: str) -> sf.AbstractProcess:
    return getattr(sf, name)()


def builtins() -> dict:
    return {name: builtin(name) for name in BUILTIN_NAMES}


def to_float32(tree):
    """Cast every floating-point array leaf (process parameters, sympy2jax
    constants, network weights) to float32."""
    return jax.tree_util.tree_map(
        lambda leaf: leaf.astype(jnp.float32) if eqx.is_inexact_array(leaf) else leaf,
        tree,
    )
