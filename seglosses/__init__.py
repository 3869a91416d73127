"""seglosses: memory-efficient, fused segmentation losses for PyTorch.

>>> from seglosses import MalisLoss, DiceLoss, CombinedLoss
"""

from . import _ops  # noqa: F401  (loads the compiled operators first)
from . import functional
from .dice import DiceLoss

__version__ = "0.1.0"

__all__ = [
    "DiceLoss",
    "functional",
]
