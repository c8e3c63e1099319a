"""The guidance network: a small U-Net that turns an image tile and coarse-map cues into gates."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from spnrefine.model.config import FUSION_EXTRA, GATES_PER_GROUP, IMAGE_MEAN, IMAGE_STD, NUM_CUES
from spnrefine.model.fast import cpu_inference
from spnrefine.propagation import normalize_gates


def coarse_cues(probs: torch.Tensor) -> torch.Tensor:
    """B×C×H×W class probabilities → B×2×H×W: top-1 probability and top-1 minus top-2."""
    if probs.shape[1] == 1:
        top = torch.cat([probs, 1 - probs], 1).topk(2, dim=1).values
    else:
        top = probs.topk(2, dim=1).values
    return torch.stack([top[:, 0], top[:, 0] - top[:, 1]], 1)


def activation(name: str) -> nn.Module:
    return nn.ReLU(inplace=True) if name == "relu" else nn.ELU(inplace=True)


def _block(cin: int, cout: int, act: str) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        activation(act),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        activation(act),
    )


def _conv(inputs: tuple[int, ...], cout: int, act: str, stride: int = 1) -> nn.Sequential:
    """Convolution → batch norm → activation over the concatenation of ``inputs`` channels."""
    conv = nn.Conv2d(sum(inputs), cout, 3, stride=stride, padding=1, bias=False)
    conv.input_segments = inputs  # where each input sits, for model/grow.py
    return nn.Sequential(conv, nn.BatchNorm2d(cout), activation(act))


def _upsample(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


class GuidanceNet(nn.Module):
    """RGB + cues at tile resolution → normalised gates B×groups×4×3×H×W at the same resolution.

    Two shapes (``arch``):

    - ``"light"`` (default): one convolution at full resolution (``widths[0]`` channels, the
      edges), an encoder of strided convolutions at ½, ¼, ⅛ (``widths[1:]``), a decoder that
      comes back up with skips, and one full-resolution fusion of the decoder with the edge
      features before the gate head. Most of the work runs at ½ resolution or below.
    - ``"unet"``: a classic U-Net with two convolutions per scale at every scale, full
      resolution included: about twice the cost per tile.
    """

    def __init__(
        self,
        groups: int,
        widths: tuple[int, ...],
        mode: str = "three_way",
        arch: str = "light",
        act: str = "relu",
    ):
        super().__init__()  # the settings are checked by ModelConfig.check
        self.groups = groups
        self.mode = mode
        self.arch = arch
        self.register_buffer("mean", torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGE_STD).view(1, 3, 1, 1), persistent=False)
        cin = 3 + NUM_CUES
        self.down = nn.ModuleList()
        self.up = nn.ModuleList()
        if arch == "unet":
            for width in widths:
                self.down.append(_block(cin, width, act))
                cin = width
            for skip, width in zip(reversed(widths[:-1]), reversed(widths[1:]), strict=True):
                self.up.append(_block(width + skip, skip, act))
            head_in = widths[0]
        else:
            self.down.append(_conv((cin,), widths[0], act))
            for prev, width in zip(widths[:-1], widths[1:], strict=True):
                self.down.append(
                    nn.Sequential(_conv((prev,), width, act, 2), _conv((width,), width, act))
                )
            # Decoder: [upsampled deeper features, skip] → the skip's width.
            for skip, width in zip(reversed(widths[1:-1]), reversed(widths[2:]), strict=True):
                self.up.append(_conv((width, skip), skip, act))
            # Full resolution: decoder context + edge features → the gate features.
            head_in = widths[0] + FUSION_EXTRA
            self.up.append(_conv((widths[1], widths[0]), head_in, act))
        self.head = nn.Conv2d(head_in, groups * GATES_PER_GROUP, 1)
        self.head.input_segments = (head_in,)
        # Start near "no propagation" so early training does not smear the coarse map.
        nn.init.normal_(self.head.weight, std=1e-3)
        nn.init.zeros_(self.head.bias)

    def forward(self, image: torch.Tensor, cues: torch.Tensor) -> torch.Tensor:
        """image: B×3×H×W in [0, 1]; cues: B×NUM_CUES×H×W. H and W must divide by 2^(depth-1)."""
        x = torch.cat([(image - self.mean) / self.std, cues], 1)
        fast = cpu_inference(x)
        if fast:  # oneDNN's convolutions for few channels run faster on channels-last tensors
            x = x.contiguous(memory_format=torch.channels_last)
        skips = []
        for i, block in enumerate(self.down):
            if i and self.arch == "unet":
                x = F.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        for block, skip in zip(self.up, reversed(skips[:-1]), strict=True):
            x = block(torch.cat([_upsample(x, skip), skip], 1))
        raw = self.head(x).contiguous()
        b, _, h, w = raw.shape
        raw = raw.view(b, self.groups, 4, 3, h, w)
        return normalize_gates(raw, self.mode, may_overwrite=True)  # raw is this call's own
