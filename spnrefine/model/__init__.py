"""The learned part of spnrefine: guidance network, class-agnostic refiner, and its config."""

from spnrefine.model.config import ModelConfig
from spnrefine.model.guidance import GuidanceNet, coarse_cues
from spnrefine.model.refiner import SPNRefiner

__all__ = ["GuidanceNet", "ModelConfig", "SPNRefiner", "coarse_cues"]
