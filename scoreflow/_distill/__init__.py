"""One- and few-step generation derived from a declared process: consistency models,
MeanFlow, progressive distillation, and their sampler."""

from ._consistency import (
    ConsistencyLoss as ConsistencyLoss,
    consistency_loss as consistency_loss,
)
from ._meanflow import (
    MeanFlowLoss as MeanFlowLoss,
    meanflow_loss as meanflow_loss,
    meanflow_target as meanflow_target,
)
from ._models import (
    AbstractFewStepModel as AbstractFewStepModel,
    ConsistencyModel as ConsistencyModel,
    MeanFlowMLP as MeanFlowMLP,
    MeanFlowModel as MeanFlowModel,
)
from ._progressive import (
    ProgressiveLoss as ProgressiveLoss,
    progressive_loss as progressive_loss,
)
from ._sample import (
    few_step_grid as few_step_grid,
    few_step_sample as few_step_sample,
)
