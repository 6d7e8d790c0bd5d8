"""scoreflow: declarative SDE/ODE mathematics for diffusion and flow matching, in JAX."""
# ruff: noqa: I001  (re-exports are grouped by concept, not alphabetically)

import importlib.metadata

import sympy as sympy

from . import metrics as metrics, toy as toy
from ._process import (
    AbstractDeclaredProcess as AbstractDeclaredProcess,
    AbstractLinearProcess as AbstractLinearProcess,
    AbstractProcess as AbstractProcess,
    CLD as CLD,
    CosineVP as CosineVP,
    EDM as EDM,
    Endpoints as Endpoints,
    Interpolant as Interpolant,
    LOG_SNR_MAX as LOG_SNR_MAX,
    LinearSDE as LinearSDE,
    LOG_SNR_MIN as LOG_SNR_MIN,
    PriorMismatchWarning as PriorMismatchWarning,
    RectifiedFlow as RectifiedFlow,
    SDE as SDE,
    StationaryDensity as StationaryDensity,
    SubVP as SubVP,
    SymbolicView as SymbolicView,
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
    PREDICTIONS as PREDICTIONS,
    Predictor as Predictor,
)

# --- predictions, losses, nets, training (issue 3) ---
from . import nets as nets, train as train
from ._loss import (
    AbstractLogSNRWeighting as AbstractLogSNRWeighting,
    AbstractLoss as AbstractLoss,
    AbstractTimeSampler as AbstractTimeSampler,
    AbstractWeighting as AbstractWeighting,
    CFMLoss as CFMLoss,
    cfm_loss as cfm_loss,
    check_data_scale as check_data_scale,
    ConstantWeighting as ConstantWeighting,
    DataScaleWarning as DataScaleWarning,
    DSMLoss as DSMLoss,
    ELBO as ELBO,
    elbo as elbo,
    ELBOLoss as ELBOLoss,
    elbo_loss as elbo_loss,
    dsm_loss as dsm_loss,
    EDMWeighting as EDMWeighting,
    hsm_loss as hsm_loss,
    LikelihoodImportance as LikelihoodImportance,
    LikelihoodWeighting as LikelihoodWeighting,
    LinearDSMLoss as LinearDSMLoss,
    LogitNormal as LogitNormal,
    LogNormalSigma as LogNormalSigma,
    LogSNRWeighting as LogSNRWeighting,
    MinSNR as MinSNR,
    ot_coupling as ot_coupling,
    prediction_factor as prediction_factor,
    simulate_forward as simulate_forward,
    ScheduledModel as ScheduledModel,
    learned_schedule as learned_schedule,
    SSMLoss as SSMLoss,
    ssm_loss as ssm_loss,
    Standardization as Standardization,
    standardize as standardize,
    UniformTime as UniformTime,
)
from ._precond import (
    edm_coefficients as edm_coefficients,
    EDMPreconditioner as EDMPreconditioner,
)

# --- dynamics, samplers, guidance (issue 4) ---
from ._sampling import (
    AbstractDiffusionSolver as AbstractDiffusionSolver,
    AbstractGuidedPredictor as AbstractGuidedPredictor,
    cfg as cfg,
    CFGPredictor as CFGPredictor,
    check_time_grid as check_time_grid,
    classifier_guidance as classifier_guidance,
    ClassifierGuidedPredictor as ClassifierGuidedPredictor,
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
    ReverseDiffusion as ReverseDiffusion,
    ReverseDrift as ReverseDrift,
    sample as sample,
    sde_convention as sde_convention,
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
    on_path as on_path,
    PathPredictor as PathPredictor,
    SamplerConfig as SamplerConfig,
    straight_path as straight_path,
)

# --- likelihood, checks, testing (issue 5) ---
from . import checks as checks
from ._likelihood import (
    bits_per_dim as bits_per_dim,
    LikelihoodInfo as LikelihoodInfo,
    log_likelihood as log_likelihood,
)

# --- bridges and stochastic interpolants (issue 7) ---
from ._bridge import (
    bridge_loss as bridge_loss,
    BridgeLoss as BridgeLoss,
    brownian_gamma as brownian_gamma,
    StochasticInterpolant as StochasticInterpolant,
    transport as transport,
)


def __getattr__(name):
    # `scoreflow.testing` needs hypothesis, a dev dependency: import it on first use
    # (`sf.testing` or `import scoreflow.testing`), so `import scoreflow` does not.
    if name == "testing":
        import importlib

        return importlib.import_module(".testing", __name__)
    raise AttributeError(f"module 'scoreflow' has no attribute {name!r}")


try:
    __version__ = importlib.metadata.version("scoreflow")
except importlib.metadata.PackageNotFoundError:  # pragma: no cover
    __version__ = "0.0.0"
