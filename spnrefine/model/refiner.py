"""The class-agnostic refiner: gates from the image, each class's map propagated along them.

Every class goes through the same weights: its probability map is embedded into ``hidden``
channels, propagated in four directions with the gates the guidance net predicted for the
tile, merged, and read out to one logit. A softmax across classes gives the refined map, so
one model serves a binary mask, a soft foreground map and a 150-class map alike.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from spnrefine.model.config import LOG_EPS, ModelConfig
from spnrefine.model.fast import cpu_inference, fused_tail
from spnrefine.model.guidance import GuidanceNet, activation, coarse_cues
from spnrefine.propagation import DIRECTIONS, propagate


class SPNRefiner(nn.Module):
    """Tile-level refiner: (image B×3×H×W in [0,1], probs B×C×H×W) → logits B×C×H×W."""

    def __init__(self, config: ModelConfig | None = None):
        super().__init__()
        self.config = config or ModelConfig()
        self.config.check()
        k, groups = self.config.hidden, self.config.gate_groups
        self.guidance = GuidanceNet(
            groups,
            self.config.widths,
            self.config.mode,
            self.config.guidance,
            self.config.activation,
        )
        # Per-class embedding (shared by all classes): probability and log-probability.
        self.embed = nn.Conv2d(2, k, 3, padding=1)
        if self.config.merge == "learned":
            self.merge = nn.Conv2d(len(DIRECTIONS) * k, k, 1)
        self.readout = nn.Sequential(
            nn.Conv2d(k + 2, self.config.readout, 1),
            activation(self.config.activation),
            nn.Conv2d(self.config.readout, 1, 1),
        )

    @property
    def tile_multiple(self) -> int:
        """Tile sides must divide by this: the guidance net halves the tile once per scale."""
        return 2 ** (len(self.config.widths) - 1)

    def gates(self, image: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        return self.guidance(image, coarse_cues(probs))

    def propagate_classes(
        self, probs: torch.Tensor, gates: torch.Tensor, backend: str | None = None
    ) -> torch.Tensor:
        """Refine the classes in ``probs`` (B×C×H×W) with precomputed gates → logits B×C×H×W.

        Classes are independent given the gates, so callers may pass any subset of them.
        """
        b, c, h, w = probs.shape
        k = self.config.hidden
        per_class = probs.reshape(b * c, 1, h, w)
        cue = torch.cat([per_class, torch.log(per_class.clamp_min(LOG_EPS))], 1)
        hidden = self.embed(cue).view(b, c * k, h, w)  # channel (class, j) uses gate set j % G
        merge = "max" if self.config.merge == "max" else None
        out = propagate(hidden, gates, self.config.mode, DIRECTIONS, merge, backend=backend)
        if merge is None and cpu_inference(out):
            return fused_tail(out, cue, self.merge, self.readout, self.config.activation)
        if merge is None:  # B×D×(C·k)×H×W → (B·C)×(D·k)×H×W for the learned merge
            d = out.shape[1]
            out = out.view(b, d, c, k, h, w).transpose(1, 2).reshape(b * c, d * k, h, w)
            out = self.readout[1](self.merge(out))  # the same activation as the readout
        else:
            out = out.view(b * c, k, h, w)
        logits = self.readout(torch.cat([out, cue], 1))
        return logits.view(b, c, h, w)

    def forward(
        self, image: torch.Tensor, probs: torch.Tensor, backend: str | None = None
    ) -> torch.Tensor:
        return self.propagate_classes(probs, self.gates(image, probs), backend)

    def tile_logits(
        self, tiles: np.ndarray, probs: np.ndarray, backend: str | None = None
    ) -> np.ndarray:
        """A batch of tiles N×3×t×t uint8 RGB and their probabilities (numpy) → logits, on the
        model's device (the tiler's model call, as `LeanRefiner.tile_logits`)."""
        from spnrefine import tiling

        device = next(self.parameters()).device
        with torch.no_grad():
            image = torch.from_numpy(tiles).to(device).float().div_(255.0)
            probs_t = torch.from_numpy(probs).to(device)
            # Classes are independent given the gates: the gates once per batch, then a few
            # classes at a time keep a 150-class tile's memory near a two-class batch's.
            gates = self.gates(image, probs_t)
            step = max(1, tiling.CLASS_TILES_PER_CALL // len(tiles))
            logits = torch.cat(
                [
                    self.propagate_classes(probs_t[:, s : s + step], gates, backend)
                    for s in range(0, probs_t.shape[1], step)
                ],
                1,
            )
        return logits.cpu().numpy()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
