from ._cfm import CFMLoss as CFMLoss, cfm_loss as cfm_loss, ot_coupling as ot_coupling
from ._common import (
    TIME_CONVENTION as TIME_CONVENTION,
    AbstractLoss as AbstractLoss,
    DataScaleWarning as DataScaleWarning,
    Standardization as Standardization,
    check_data_scale as check_data_scale,
    standardize as standardize,
)
from ._dsm import DSMLoss as DSMLoss, dsm_loss as dsm_loss
from ._elbo import (
    ELBO as ELBO,
    ELBOLoss as ELBOLoss,
    ScheduledModel as ScheduledModel,
    elbo as elbo,
    elbo_loss as elbo_loss,
    learned_schedule as learned_schedule,
)
from ._linear_dsm import LinearDSMLoss as LinearDSMLoss, hsm_loss as hsm_loss
from ._ssm import (
    SSMLoss as SSMLoss,
    simulate_forward as simulate_forward,
    ssm_loss as ssm_loss,
)
from ._time_sampler import (
    AbstractTimeSampler as AbstractTimeSampler,
    LikelihoodImportance as LikelihoodImportance,
    LogitNormal as LogitNormal,
    LogNormalSigma as LogNormalSigma,
    UniformTime as UniformTime,
)
from ._weighting import (
    AbstractLogSNRWeighting as AbstractLogSNRWeighting,
    AbstractWeighting as AbstractWeighting,
    ConstantWeighting as ConstantWeighting,
    EDMWeighting as EDMWeighting,
    LikelihoodWeighting as LikelihoodWeighting,
    LogSNRWeighting as LogSNRWeighting,
    MinSNR as MinSNR,
    prediction_factor as prediction_factor,
)
