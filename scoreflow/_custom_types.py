"""Type aliases used on the public API."""

from typing import TypeAlias

from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

Scalar: TypeAlias = Float[Array, ""]
ScalarLike: TypeAlias = Float[ArrayLike, ""] | float
Key: TypeAlias = PRNGKeyArray

__all__ = ["Array", "ArrayLike", "Float", "Key", "Scalar", "ScalarLike"]
