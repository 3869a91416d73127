"""The network: a small MONAI 3D U-Net, and whole-volume prediction by sliding window."""

from __future__ import annotations

import numpy as np
import torch

OUT_CHANNELS = 5  # 3 affinities (nhood [[1,0,0],[0,1,0],[0,0,1]]) + 2 semantic classes (boundary, inside)


def make_model() -> torch.nn.Module:
    """A 3D U-Net with two down-samplings (patch edges must be multiples of 4), ~140k parameters."""
    from monai.networks.nets import UNet

    return UNet(spatial_dims=3, in_channels=1, out_channels=OUT_CHANNELS, channels=(16, 32, 64), strides=(2, 2),
                num_res_units=1)


@torch.no_grad()
def predict(model: torch.nn.Module, raw: np.ndarray, patch: int, overlap: float = 0.5) -> np.ndarray:
    """Logits ``[5, *raw.shape]`` of a whole region, by sliding window with Gaussian blending.

    Windows are ``patch`` voxels per axis (clipped to the region); the region is never padded
    with anything but MONAI's border padding, so a prediction reads only ``raw``.
    """
    from monai.inferers import sliding_window_inference

    model.eval()
    x = torch.from_numpy(np.ascontiguousarray(raw))[None, None]
    roi = tuple(min(patch, s) for s in raw.shape)
    out = sliding_window_inference(x, roi_size=roi, sw_batch_size=4, predictor=model, overlap=overlap,
                                   mode="gaussian")
    return out[0].numpy()
