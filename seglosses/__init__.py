"""seglosses: memory-efficient, fused segmentation losses for PyTorch.

>>> from seglosses import MalisLoss, DiceLoss, CombinedLoss
"""

from . import _ops  # noqa: F401  (loads the compiled operators first)
from . import functional
from .bce import PerChannelBCEWithLogitsLoss, WeightedBCEWithLogitsLoss
from .combined import CombinedLoss
from .deep_supervision import DeepSupervisionLoss
from .dice import DiceCELoss, DiceLoss, GeneralizedDiceLoss, TverskyLoss
from .malis import (
    MalisLoss,
    affgraph_to_seg,
    malis_loss2d,
    malis_loss3d,
    malis_weights,
    mknhood2d,
    mknhood3d,
    release_malis_workspace,
    seg_to_affgraph,
)
from .registry import available_losses, register_loss

__version__ = "0.1.0"

__all__ = [
    "CombinedLoss",
    "DeepSupervisionLoss",
    "DiceCELoss",
    "DiceLoss",
    "GeneralizedDiceLoss",
    "MalisLoss",
    "PerChannelBCEWithLogitsLoss",
    "WeightedBCEWithLogitsLoss",
    "affgraph_to_seg",
    "available_losses",
    "functional",
    "malis_loss2d",
    "malis_loss3d",
    "malis_weights",
    "mknhood2d",
    "mknhood3d",
    "register_loss",
    "release_malis_workspace",
    "seg_to_affgraph",
    "TverskyLoss",
]
