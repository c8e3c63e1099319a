"""The guidance network: a small U-Net that turns an image tile and coarse-map cues into gates."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from spnrefine.propagation import normalize_gates

# Class-agnostic cues the guidance net sees besides RGB: confidence and margin of the coarse map.
NUM_CUES = 2
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)


def coarse_cues(probs: torch.Tensor) -> torch.Tensor:
    """B×C×H×W class probabilities → B×2×H×W: top-1 probability and top-1 minus top-2."""
    if probs.shape[1] == 1:
        top = torch.cat([probs, 1 - probs], 1).topk(2, dim=1).values
    else:
        top = probs.topk(2, dim=1).values
    return torch.stack([top[:, 0], top[:, 0] - top[:, 1]], 1)


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ELU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ELU(inplace=True),
    )


class GuidanceNet(nn.Module):
    """RGB + cues at tile resolution → normalised gates B×hidden×4×3×H×W at the same resolution."""

    def __init__(self, hidden: int, widths: tuple[int, ...], mode: str = "three_way"):
        super().__init__()
        self.hidden = hidden
        self.mode = mode
        self.register_buffer("mean", torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGE_STD).view(1, 3, 1, 1), persistent=False)
        self.down = nn.ModuleList()
        cin = 3 + NUM_CUES
        for width in widths:
            self.down.append(_block(cin, width))
            cin = width
        self.up = nn.ModuleList()
        for skip, width in zip(reversed(widths[:-1]), reversed(widths[1:]), strict=True):
            self.up.append(_block(width + skip, skip))
        self.head = nn.Conv2d(widths[0], hidden * 4 * 3, 1)
        # Start near "no propagation" so early training does not smear the coarse map.
        nn.init.normal_(self.head.weight, std=1e-3)
        nn.init.zeros_(self.head.bias)

    def forward(self, image: torch.Tensor, cues: torch.Tensor) -> torch.Tensor:
        """image: B×3×H×W in [0, 1]; cues: B×NUM_CUES×H×W. H and W must divide by 2^(depth-1)."""
        x = torch.cat([(image - self.mean) / self.std, cues], 1)
        skips = []
        for i, block in enumerate(self.down):
            if i:
                x = F.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        for block, skip in zip(self.up, reversed(skips[:-1]), strict=True):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], 1))
        raw = self.head(x)
        b, _, h, w = raw.shape
        return normalize_gates(raw.view(b, self.hidden, 4, 3, h, w), self.mode)
