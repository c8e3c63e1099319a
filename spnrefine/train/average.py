"""Averages of weights: the moving average a run can validate and save (``--ema``), and the
mean of several trained models of one architecture (a "model soup").

Fine-tunes that start from the same weights stay close enough that their average is itself
a good model, often between or above them: the default weights are such an average.
"""

from __future__ import annotations

import copy
import dataclasses

import torch

from spnrefine.errors import SpnrefineError
from spnrefine.model import SPNRefiner
from spnrefine.weights import load_weights


def average_weights(specs: list[str]) -> SPNRefiner:
    """The element-wise mean of the weights (and BatchNorm statistics) of ``specs``."""
    if len(specs) < 2:
        raise SpnrefineError("give at least two sets of weights to average", ", ".join(specs))
    models = [load_weights(spec)[0] for spec in specs]
    first = models[0]

    def architecture(model: SPNRefiner):
        return dataclasses.replace(model.config, extra={})

    for spec, model in zip(specs[1:], models[1:], strict=True):
        if architecture(model) != architecture(first):
            raise SpnrefineError(f"not the architecture of {specs[0]}", spec)
    states = [model.state_dict() for model in models]
    averaged = {}
    for name, value in states[0].items():  # state_dict tensors carry no gradient
        if value.is_floating_point():
            averaged[name] = torch.stack([s[name] for s in states]).mean(0)
        else:  # counters such as num_batches_tracked: keep the first's
            averaged[name] = value
    first.load_state_dict(averaged)
    first.config.extra = {**first.config.extra, "averaged": list(specs)}
    return first


class WeightAverage:
    """An exponential moving average of a model's weights and BatchNorm statistics.

    The decay ramps up as (1 + n) / (10 + n) over the first updates, so the average is not
    dominated by where it started.
    """

    def __init__(self, model: SPNRefiner, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"--ema {decay}: must be between 0 and 1")
        self.decay = decay
        self.updates = 0
        self.model = copy.deepcopy(model)

    @torch.no_grad()
    def update(self, model: SPNRefiner) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        live = model.state_dict()
        for name, value in self.model.state_dict().items():
            if value.is_floating_point():
                value.lerp_(live[name], 1 - decay)
            else:
                value.copy_(live[name])
