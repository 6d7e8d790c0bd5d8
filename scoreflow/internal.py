"""`scoreflow.internal`: names for annotations, subclassing and tests, **with no
stability promise** — they may change or move in any release without a deprecation.

What is here: the classes that the public factories return (`sf.dsm_loss` returns a
`DSMLoss`, `sf.cfg` a `CFGPredictor`, ...), for annotating with; the result and
report types (`Endpoints`, `SymbolicView`, `LikelihoodInfo`, `ELBO`,
`Standardization`); the building blocks of the public functions (`ReverseDrift`,
`ReverseDiffusion`, `check_time_grid`, `prediction_factor`, `simulate_forward`,
`ot_coupling`, `edm_coefficients`); and constants (`LOG_SNR_MAX`, `LOG_SNR_MIN`,
`PREDICTIONS`). Until the release after next, each of these is also reachable as
`sf.<name>` with a `DeprecationWarning` (see the renames page of the docs).

```python
import scoreflow as sf

loss: sf.internal.DSMLoss = sf.dsm_loss(sf.VP())
```
"""

# ruff: noqa: I001  (grouped by concept, as in scoreflow/__init__.py)

# --- processes: base class of the declared processes, reports, constants ---
from ._process import (
    AbstractDeclaredProcess as AbstractDeclaredProcess,
    AbstractDeclaredScalarProcess as AbstractDeclaredScalarProcess,
    Endpoints as Endpoints,
    LOG_SNR_MAX as LOG_SNR_MAX,
    LOG_SNR_MIN as LOG_SNR_MIN,
    SymbolicView as SymbolicView,
    TabulatedVP as TabulatedVP,
)

# --- predictions ---
from ._predictor import PREDICTIONS as PREDICTIONS
from ._precond import edm_coefficients as edm_coefficients

# --- losses: the classes the factories return, and their building blocks ---
from ._loss import (
    CFMLoss as CFMLoss,
    DSMLoss as DSMLoss,
    ELBO as ELBO,
    ELBOLoss as ELBOLoss,
    LinearDSMLoss as LinearDSMLoss,
    SSMLoss as SSMLoss,
    Standardization as Standardization,
    ot_coupling as ot_coupling,
    prediction_factor as prediction_factor,
    simulate_forward as simulate_forward,
)
from ._loss._time_sampler import DiscreteTime as DiscreteTime
from ._bridge import BridgeLoss as BridgeLoss
from ._distill import (
    ConsistencyLoss as ConsistencyLoss,
    MeanFlowLoss as MeanFlowLoss,
    ProgressiveLoss as ProgressiveLoss,
    meanflow_target as meanflow_target,
)

# --- dynamics, sampling, guidance ---
from ._sampling import (
    AbstractGuidedPredictor as AbstractGuidedPredictor,
    CFGPredictor as CFGPredictor,
    ClassifierGuidedPredictor as ClassifierGuidedPredictor,
    AbstractReverseTerm as AbstractReverseTerm,
    GivenNormals as GivenNormals,
    LearnedAdams as LearnedAdams,
    ReverseDiffusion as ReverseDiffusion,
    ReverseDrift as ReverseDrift,
    ReverseDriftTerm as ReverseDriftTerm,
    ReverseSDETerm as ReverseSDETerm,
    PathPredictor as PathPredictor,
    SamplerConfig as SamplerConfig,
    check_time_grid as check_time_grid,
)
from ._likelihood import LikelihoodInfo as LikelihoodInfo
