"""scoreflow: declarative SDE/ODE mathematics for diffusion and flow matching, in JAX."""
# ruff: noqa: I001  (re-exports are grouped by concept, not alphabetically)

import importlib.metadata as _metadata

import sympy as sympy

from . import metrics as metrics, toy as toy
from ._process import (
    AbstractGaussianProcess as AbstractGaussianProcess,
    AbstractLinearProcess as AbstractLinearProcess,
    AbstractProcess as AbstractProcess,
    AbstractScalarProcess as AbstractScalarProcess,
    DeclaredProcess as DeclaredProcess,
    DeclaredSDE as DeclaredSDE,
    CLD as CLD,
    CosineVP as CosineVP,
    EDM as EDM,
    Interpolant as Interpolant,
    LinearSDE as LinearSDE,
    PriorMismatchWarning as PriorMismatchWarning,
    RectifiedFlow as RectifiedFlow,
    SDE as SDE,
    StationaryDensity as StationaryDensity,
    SubVP as SubVP,
    VE as VE,
    VP as VP,
)
from ._symbols import t as t, x as x
from ._time import (
    DDPMTimesteps as DDPMTimesteps,
    FlowMatchingTime as FlowMatchingTime,
    SigmaTime as SigmaTime,
    TimeConvention as TimeConvention,
)

from ._predictor import (
    convert as convert,
    AbstractPredictor as AbstractPredictor,
    Predictor as Predictor,
)

# --- predictions, losses, nets, training (issue 3) ---
from . import nets as nets, train as train
from ._loss import (
    AbstractLogSNRWeighting as AbstractLogSNRWeighting,
    AbstractLoss as AbstractLoss,
    AbstractTimeSampler as AbstractTimeSampler,
    AbstractWeighting as AbstractWeighting,
    cfm_loss as cfm_loss,
    check_data_scale as check_data_scale,
    ConstantWeighting as ConstantWeighting,
    DataScaleWarning as DataScaleWarning,
    elbo as elbo,
    elbo_loss as elbo_loss,
    dsm_loss as dsm_loss,
    EDMWeighting as EDMWeighting,
    hsm_loss as hsm_loss,
    LikelihoodImportance as LikelihoodImportance,
    LikelihoodWeighting as LikelihoodWeighting,
    LogitNormal as LogitNormal,
    LogNormalSigma as LogNormalSigma,
    LogSNRWeighting as LogSNRWeighting,
    MinSNR as MinSNR,
    ScheduledModel as ScheduledModel,
    learned_schedule as learned_schedule,
    ssm_loss as ssm_loss,
    standardize as standardize,
    UniformTime as UniformTime,
)
from ._precond import (
    EDMPreconditioner as EDMPreconditioner,
)

# --- dynamics, samplers, guidance (issue 4) ---
from ._sampling import (
    AbstractDiffusionSolver as AbstractDiffusionSolver,
    cfg as cfg,
    classifier_guidance as classifier_guidance,
    DDIM as DDIM,
    DDPM as DDPM,
    DPMSolverPP2M as DPMSolverPP2M,
    edm_grid as edm_grid,
    EDMHeun as EDMHeun,
    forward_sde as forward_sde,
    log_snr_grid as log_snr_grid,
    PredictorCorrector as PredictorCorrector,
    probability_flow as probability_flow,
    reverse_dynamics as reverse_dynamics,
    reverse_sde as reverse_sde,
    sample as sample,
    sde_convention as sde_convention,
    step as step,
    uniform_grid as uniform_grid,
)

# --- few-step sampling: multistep solvers, grids, equivalent paths (issue 13) ---
from ._sampling import (
    DPMSolverPP2MSDE as DPMSolverPP2MSDE,
    DPMSolverPP3M as DPMSolverPP3M,
    DPMSolverPP3MSDE as DPMSolverPP3MSDE,
    IPNDM as IPNDM,
    LMS as LMS,
    UniPC as UniPC,
    default_sampler as default_sampler,
    denoise_grid as denoise_grid,
    diffusers_grid as diffusers_grid,
    optimised_grid as optimised_grid,
    optimised_sampler as optimised_sampler,
    on_path as on_path,
    straight_path as straight_path,
)

# --- likelihood, checks, testing (issue 5) ---
from . import checks as checks
from ._likelihood import (
    bits_per_dim as bits_per_dim,
    log_likelihood as log_likelihood,
)
from ._chunk import chunked as chunked

# --- bridges and stochastic interpolants (issue 7) ---
from ._bridge import (
    bridge_loss as bridge_loss,
    brownian_gamma as brownian_gamma,
    StochasticInterpolant as StochasticInterpolant,
    transport as transport,
)

# --- one- and few-step generation (issue 17) ---
from ._distill import (
    AbstractFewStepModel as AbstractFewStepModel,
    consistency_loss as consistency_loss,
    ConsistencyModel as ConsistencyModel,
    few_step_grid as few_step_grid,
    few_step_sample as few_step_sample,
    meanflow_loss as meanflow_loss,
    MeanFlowMLP as MeanFlowMLP,
    MeanFlowModel as MeanFlowModel,
    progressive_loss as progressive_loss,
)


from . import internal as internal
from . import peers as peers

# Names that left the top level (issue 12): each keeps working for one release, with
# a DeprecationWarning naming its replacement. name -> the public spelling to use
# instead, besides `sf.internal.<name>` (None: only that).
_MOVED_TO_INTERNAL = {
    "AbstractDeclaredProcess": None,
    "AbstractGuidedPredictor": "sf.AbstractPredictor",
    "BridgeLoss": "sf.bridge_loss",
    "CFGPredictor": "sf.cfg",
    "CFMLoss": "sf.cfm_loss",
    "ClassifierGuidedPredictor": "sf.classifier_guidance",
    "DSMLoss": "sf.dsm_loss",
    "ELBO": "sf.elbo",
    "ELBOLoss": "sf.elbo_loss",
    "Endpoints": None,
    "LikelihoodInfo": "sf.log_likelihood(..., return_info=True)",
    "LinearDSMLoss": "sf.dsm_loss",
    "LOG_SNR_MAX": None,
    "LOG_SNR_MIN": None,
    "PREDICTIONS": None,
    "ReverseDiffusion": "sf.reverse_dynamics",
    "ReverseDrift": "sf.reverse_dynamics",
    "SSMLoss": "sf.ssm_loss",
    "Standardization": "sf.standardize",
    "SymbolicView": None,
    "check_time_grid": None,
    "edm_coefficients": None,
    "ot_coupling": None,
    "prediction_factor": None,
    "simulate_forward": None,
}


def __getattr__(name):
    # `scoreflow.testing` needs hypothesis, a dev dependency: import it on first use
    # (`sf.testing` or `import scoreflow.testing`), so `import scoreflow` does not.
    if name == "testing":
        import importlib

        return importlib.import_module(".testing", __name__)
    if name in _MOVED_TO_INTERNAL:
        import warnings

        also = _MOVED_TO_INTERNAL[name]
        instead = f"sf.internal.{name}" + (f" (or {also})" if also else "")
        warnings.warn(
            f"sf.{name} is deprecated; use {instead} instead.",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(internal, name)
    raise AttributeError(f"module 'scoreflow' has no attribute {name!r}")


try:
    __version__ = _metadata.version("scoreflow")
except _metadata.PackageNotFoundError:  # pragma: no cover
    __version__ = "0.0.0"
