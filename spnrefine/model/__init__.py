"""The learned part of spnrefine: guidance network, class-agnostic refiner, its config, and the
registry of architectures that builds a model from a config.

The torch modules are imported on first use: the config and the torch-free inference path
(`spnrefine.model.lean`) load without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from spnrefine.lazy import lazy_attributes
from spnrefine.model.architectures import ARCHITECTURES, TileModel, build_model
from spnrefine.model.config import ModelConfig

if TYPE_CHECKING:
    from spnrefine.model.guidance import GuidanceNet, coarse_cues
    from spnrefine.model.refiner import SPNRefiner

__all__ = [
    "ARCHITECTURES",
    "GuidanceNet",
    "ModelConfig",
    "SPNRefiner",
    "TileModel",
    "build_model",
    "coarse_cues",
]
_LAZY = {
    "GuidanceNet": "spnrefine.model.guidance",
    "coarse_cues": "spnrefine.model.guidance",
    "SPNRefiner": "spnrefine.model.refiner",
}


__getattr__ = lazy_attributes(__name__, _LAZY)
