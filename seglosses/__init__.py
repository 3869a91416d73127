"""seglosses: memory-efficient, fused segmentation losses for PyTorch.

>>> from seglosses import MalisLoss, DiceLoss, CombinedLoss
"""

from . import _ops  # noqa: F401  (loads the compiled operators first)
from . import functional
from .dice import DiceLoss
from .bce import PerChannelBCEWithLogitsLoss, WeightedBCEWithLogitsLoss
from .combined import CombinedLoss, register_loss

__version__ = "0.1.0"

__all__ = [
    "CombinedLoss",
    "PerChannelBCEWithLogitsLoss",
    "WeightedBCEWithLogitsLoss",
    "register_loss",
    "DiceLoss",
    "functional",
]
