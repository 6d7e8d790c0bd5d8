# Package-level helpers for the rest of scoreflow (not re-exported by `scoreflow`).
from ._build import params_dict as params_dict
from ._builtins import (
    EDM as EDM,
    VE as VE,
    VP as VP,
    CosineVP as CosineVP,
    RectifiedFlow as RectifiedFlow,
    SubVP as SubVP,
)
from ._declared import (
    SDE as SDE,
    AbstractDeclaredProcess as AbstractDeclaredProcess,
    AbstractDeclaredScalarProcess as AbstractDeclaredScalarProcess,
    DeclaredProcess as DeclaredProcess,
    DeclaredSDE as DeclaredSDE,
    Interpolant as Interpolant,
)
from ._derive import try_sympy as try_sympy
from ._describe import SymbolicView as SymbolicView
from ._endpoints import (
    Endpoints as Endpoints,
    PriorMismatchWarning as PriorMismatchWarning,
)
from ._expr import Expr as Expr
from ._ladder import (
    AbstractGaussianProcess as AbstractGaussianProcess,
    AbstractProcess as AbstractProcess,
    AbstractScalarProcess as AbstractScalarProcess,
    require as require,
)
from ._linear import (
    CLD as CLD,
    AbstractLinearProcess as AbstractLinearProcess,
    LinearSDE as LinearSDE,
    apply_blocks as apply_blocks,
)
from ._log_snr import LOG_SNR_MAX as LOG_SNR_MAX, LOG_SNR_MIN as LOG_SNR_MIN
from ._stationary import StationaryDensity as StationaryDensity
from ._table import TabulatedVP as TabulatedVP
