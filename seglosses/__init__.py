"""seglosses: memory-efficient, fused segmentation losses for PyTorch.

>>> from seglosses import MalisLoss, DiceLoss, CombinedLoss
"""

from . import _ops  # noqa: F401  (loads the compiled operators first)
from . import functional
from .bce import PerChannelBCEWithLogitsLoss, WeightedBCEWithLogitsLoss
from .combined import CombinedLoss, register_loss
from .dice import DiceLoss
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

__version__ = "0.1.0"

__all__ = [
    "CombinedLoss",
    "DiceLoss",
    "MalisLoss",
    "PerChannelBCEWithLogitsLoss",
    "WeightedBCEWithLogitsLoss",
    "affgraph_to_seg",
    "functional",
    "malis_loss2d",
    "malis_loss3d",
    "malis_weights",
    "mknhood2d",
    "mknhood3d",
    "register_loss",
    "release_malis_workspace",
    "seg_to_affgraph",
]
