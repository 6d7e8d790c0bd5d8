"""Warnings attributed to the user's line, not to scoreflow's or equinox's frames."""

import os
import sys

import equinox

_INTERNAL = (
    os.path.dirname(os.path.abspath(__file__)),
    os.path.dirname(os.path.abspath(equinox.__file__)),
)


def user_stacklevel() -> int:
    """The `stacklevel` for `warnings.warn`, called from the function that warns, that
    points at the first frame outside scoreflow and equinox (equinox's module
    metaclass adds frames between a user's `sf.SDE(...)` and its `__init__`)."""
    frame = sys._getframe(1)  # the caller of this function: level 1 of its warn
    level = 1
    while frame is not None and frame.f_code.co_filename.startswith(_INTERNAL):
        frame = frame.f_back
        level += 1
    return level
