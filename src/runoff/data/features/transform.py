"""The input transform of torchvision's ImageNet backbones, as a module that sees one image at a time.

Its own module because it subclasses ``torch.nn.Module`` and so imports PyTorch at the top:
only :func:`runoff.data.features.spec.load_extractor` imports it, when it builds a preset
(which needs PyTorch anyway), so ``import runoff.data`` stays free of PyTorch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ExtractorError

__all__ = ["ImageNetInput"]


class ImageNetInput(nn.Module):
    """``(N, 1 or 3, H, W)`` in ``[0, 1]`` -> ``(N, 3, crop, crop)`` normalised as for ImageNet.

    Grey images are repeated to three channels; the shorter side is resized to ``resize``
    (bilinear, antialiased, the longer side in proportion and truncated, as torchvision's
    ``Resize(int)``), the centre ``crop x crop`` kept, then ``(x - mean) / std`` per channel.
    Every step acts on each image alone, so an embedding cannot depend on its batch.

    Parameters
    ----------
    resize, crop : int
    mean, std : sequence of 3 floats
    """

    def __init__(self, *, resize: int, crop: int, mean, std):
        super().__init__()
        if crop > resize:
            raise ExtractorError(f"the crop ({crop}) must not exceed the resize ({resize})")
        self.resize, self.crop = int(resize), int(crop)
        # buffers, so that the weights digest covers the normalisation too
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ExtractorError(f"torchvision backbones take grey or RGB images (N, 1 or 3, H, W); "
                                 f"got {tuple(x.shape)}")
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        h, w = x.shape[-2:]
        size = (self.resize, int(self.resize * w / h)) if h <= w else (int(self.resize * h / w), self.resize)
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        top = round((size[0] - self.crop) / 2.0)
        left = round((size[1] - self.crop) / 2.0)
        x = x[..., top:top + self.crop, left:left + self.crop]
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
