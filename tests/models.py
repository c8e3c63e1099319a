"""Test helper: a model that looks trained, for comparing inference paths."""

from __future__ import annotations

import torch
from torch import nn

from spnrefine.model import ModelConfig, SPNRefiner


def trained_looking(config: ModelConfig, seed: int = 0) -> SPNRefiner:
    """A model whose batch norms and gate head are far from their initial values, as after
    training (an untrained head barely propagates, which would hide differences)."""
    torch.manual_seed(seed)
    model = SPNRefiner(config)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    nn.init.normal_(model.guidance.head.weight, std=0.3)
    return model.eval()
