"""The training loss: cross-entropy weighted up where the coarse map is unsure, and on thin
parts."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from spnrefine.train.data import IGNORE

THIN_WIDTH = 9  # px: the width below which a part counts as thin (as quality.py reports)


def thin_parts(labels: torch.Tensor, num_classes: int, width: int = THIN_WIDTH) -> torch.Tensor:
    """Pixels of parts thinner than ``width``: what an opening with a width² square removes.

    Each class is opened on its own, so thin foreground and narrow background gaps both
    count. Ignored pixels may belong to any class (they erode nothing), and the square may
    hang half its width over the patch edge (a part cut by the edge is not thin for that).
    """
    ignore = labels == IGNORE
    pad = width // 2
    masks = [((labels == c) | ignore).float() for c in range(num_classes)]
    stack = torch.stack(masks, dim=1)
    eroded = -F.max_pool2d(-stack, width, stride=1, padding=pad)
    opened = F.max_pool2d(eroded, width, stride=1, padding=pad)
    own = F.one_hot(labels.clamp_max(num_classes - 1), num_classes).permute(0, 3, 1, 2).bool()
    return ((opened < 0.5) & own).any(dim=1) & ~ignore


def refinement_loss(
    logits: torch.Tensor, labels: torch.Tensor, coarse: torch.Tensor, thin_weight: float = 0.0
):
    """Cross-entropy, weighted up where the coarse map is unsure (that is where the work is).

    With ``thin_weight``, pixels of thin parts weigh that much more: a coarse map blurs them
    to a pixel or less, and they are a few per cent of a patch's pixels but hold most of the
    boundary a refiner still misses.
    """
    top = coarse.topk(2, dim=1).values
    weight = 1 + 3 * (1 - (top[:, 0] - top[:, 1]))
    if thin_weight:
        weight = weight + thin_weight * thin_parts(labels, logits.shape[1]).float()
    per_pixel = F.cross_entropy(logits, labels, ignore_index=IGNORE, reduction="none")
    valid = (labels != IGNORE).float()
    return (per_pixel * weight * valid).sum() / (weight * valid).sum().clamp_min(1)
