"""Reverse-time dynamics, samplers and guidance."""

from ._dynamics import (
    AbstractReverseTerm as AbstractReverseTerm,
    ReverseDiffusion as ReverseDiffusion,
    ReverseDrift as ReverseDrift,
    ReverseDriftTerm as ReverseDriftTerm,
    ReverseSDETerm as ReverseSDETerm,
    forward_sde as forward_sde,
    probability_flow as probability_flow,
    reverse_dynamics as reverse_dynamics,
    reverse_sde as reverse_sde,
    sde_convention as sde_convention,
)
from ._grids import (
    check_time_grid as check_time_grid,
    denoise_grid as denoise_grid,
    diffusers_grid as diffusers_grid,
    edm_grid as edm_grid,
    log_snr_grid as log_snr_grid,
    uniform_grid as uniform_grid,
)
from ._guidance import (
    AbstractGuidedPredictor as AbstractGuidedPredictor,
    CFGPredictor as CFGPredictor,
    ClassifierGuidedPredictor as ClassifierGuidedPredictor,
    cfg as cfg,
    classifier_guidance as classifier_guidance,
)
from ._learned import (
    LearnedAdams as LearnedAdams,
    optimised_sampler as optimised_sampler,
)
from ._multistep import (
    IPNDM as IPNDM,
    LMS as LMS,
    DPMSolverPP2MSDE as DPMSolverPP2MSDE,
    DPMSolverPP3M as DPMSolverPP3M,
    DPMSolverPP3MSDE as DPMSolverPP3MSDE,
    UniPC as UniPC,
)
from ._optimise import optimised_grid as optimised_grid
from ._paths import (
    PathPredictor as PathPredictor,
    on_path as on_path,
    straight_path as straight_path,
)
from ._sample import (
    SamplerConfig as SamplerConfig,
    default_sampler as default_sampler,
    sample as sample,
)
from ._solvers import (
    DDIM as DDIM,
    DDPM as DDPM,
    AbstractDiffusionSolver as AbstractDiffusionSolver,
    DPMSolverPP2M as DPMSolverPP2M,
    EDMHeun as EDMHeun,
    PredictorCorrector as PredictorCorrector,
)
from ._step import GivenNormals as GivenNormals, step as step
