"""The learned part of spnrefine: guidance network, class-agnostic refiner, its config, and the
registry of architectures that builds a model from a config."""

from spnrefine.model.architectures import ARCHITECTURES, TileModel, build_model
from spnrefine.model.config import ModelConfig
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
