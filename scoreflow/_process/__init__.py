from ._base import AbstractProcess as AbstractProcess
from ._declared import (
    AbstractDeclaredProcess as AbstractDeclaredProcess,
    Endpoints as Endpoints,
    LOG_SNR_MAX as LOG_SNR_MAX,
    LOG_SNR_MIN as LOG_SNR_MIN,
    PriorMismatchWarning as PriorMismatchWarning,
    SymbolicView as SymbolicView,
)
from ._public import (
    CosineVP as CosineVP,
    EDM as EDM,
    Interpolant as Interpolant,
    RectifiedFlow as RectifiedFlow,
    SDE as SDE,
    SubVP as SubVP,
    VE as VE,
    VP as VP,
)
