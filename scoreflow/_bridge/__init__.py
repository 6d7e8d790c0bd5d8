from ._interpolant import (
    StochasticInterpolant as StochasticInterpolant,
    brownian_gamma as brownian_gamma,
)
from ._loss import BridgeLoss as BridgeLoss, bridge_loss as bridge_loss
from ._transport import transport as transport
