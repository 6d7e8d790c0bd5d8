from ._base import AbstractProcess as AbstractProcess
from ._declared import (
    LOG_SNR_MAX as LOG_SNR_MAX,
    LOG_SNR_MIN as LOG_SNR_MIN,
    AbstractDeclaredProcess as AbstractDeclaredProcess,
    Endpoints as Endpoints,
    PriorMismatchWarning as PriorMismatchWarning,
    SymbolicView as SymbolicView,
)
from ._linear import (
    CLD as CLD,
    AbstractLinearProcess as AbstractLinearProcess,
    LinearSDE as LinearSDE,
)
from ._public import (
    EDM as EDM,
    SDE as SDE,
    VE as VE,
    VP as VP,
    CosineVP as CosineVP,
    Interpolant as Interpolant,
    RectifiedFlow as RectifiedFlow,
    SubVP as SubVP,
)
from ._stationary import StationaryDensity as StationaryDensity
