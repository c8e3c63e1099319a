"""The model architectures by the name ``config.json`` gives them, and the contract the tiler
needs from any of them.

Adding an architecture is a module with its class and one line in `ARCHITECTURES`; weights are
loaded (checkpoint.py), trained (train/) and run (tiling.py, predictor.py) through
`build_model` and `TileModel` alone.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import nn

from spnrefine.model.config import ModelConfig
from spnrefine.model.refiner import SPNRefiner


@runtime_checkable
class TileModel(Protocol):
    """What tiling asks of a model.

    - ``model(image, probs)``: image B×3×T×T float32 in [0, 1], probs B×C×T×T class
      probabilities (any C ≥ 1; padding classes are all zero) → logits B×C×T×T, the classes
      independent of each other (tiling passes each tile only the classes present in it).
    - ``tile_multiple``: tile sides must be a multiple of this (the model's downsampling).
    - ``config``: its `ModelConfig` (``config.tile``: the tile size it was trained on).
    """

    config: ModelConfig

    @property
    def tile_multiple(self) -> int: ...

    def __call__(self, image: torch.Tensor, probs: torch.Tensor) -> torch.Tensor: ...


ARCHITECTURES: dict[str, type[nn.Module]] = {
    "spn-refiner": SPNRefiner,
}


def build_model(config: ModelConfig) -> nn.Module:
    """A fresh model of the architecture ``config`` names, built from ``config``."""
    try:
        cls = ARCHITECTURES[config.architecture]
    except KeyError:
        known = ", ".join(ARCHITECTURES)
        raise ValueError(
            f"unknown architecture {config.architecture!r}; this spnrefine knows {known}"
        ) from None
    return cls(config)
