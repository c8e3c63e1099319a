"""The refiner's hyper-parameters, stored beside the weights as ``config.json``.

``config.json`` names the architecture (a key of `spnrefine.model.architectures.ARCHITECTURES`;
a config without the name is today's refiner). Configs written by earlier releases are read
as the model they described: each field added since then stands, when absent, for what that
release built (`LEGACY`), not for today's default.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ACTIVATIONS = ("relu", "elu")
DEFAULT_ARCHITECTURE = "spn-refiner"

# Fixed shapes of the refiner, shared by the torch model and its torch-free twin (lean.py).
NUM_CUES = 2  # class-agnostic cues besides RGB: confidence and margin of the coarse map
FUSION_EXTRA = 4  # the light net's full-resolution fusion is widths[0] + this many channels wide
GATES_PER_GROUP = 4 * 3  # four directions × three neighbours
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)
LOG_EPS = 1e-4  # the floor under the log cue of each class map

# Fields added after the first release → what a config written before them meant. Every
# config that save_model wrote holds every field of its day, so an absent one dates it.
LEGACY: dict[str, Callable[[dict], object]] = {
    # First default (U-Net guidance, Nov 2026): one gate set per hidden channel, ELU.
    "gate_groups": lambda data: data.get("hidden", 8),
    "guidance": lambda data: "unet",
    # Light guidance and gate groups came with ELU; ReLU became the default later.
    "activation": lambda data: "elu",
}


@dataclass
class ModelConfig:
    """Everything needed to rebuild a refiner before its weights are loaded."""

    hidden: int = 8  # propagated channels per class
    gate_groups: int = 4  # gate sets; hidden channel j uses set j % gate_groups
    guidance: str = "light"  # guidance net shape: "light" or "unet" (see GuidanceNet)
    widths: tuple[int, ...] = (12, 24, 32, 48)  # guidance widths, one per scale, full res first
    mode: str = "three_way"
    merge: str = "learned"  # "max" (paper) or "learned" (1×1 conv over the four directions)
    readout: int = 16  # width of the per-class readout MLP
    activation: str = "relu"  # "relu" or "elu", in the guidance net and the per-class tail
    tile: int = 128
    architecture: str = DEFAULT_ARCHITECTURE  # the model class (see model/architectures.py)
    name: str = "spnrefine"
    extra: dict = field(default_factory=dict)  # free-form provenance (data, recipe)

    def check(self) -> None:
        """Raise ValueError for settings no refiner can be built from."""
        if self.hidden < 1 or self.gate_groups < 1 or self.hidden % self.gate_groups:
            raise ValueError(
                f"gate_groups {self.gate_groups} must be at least 1 and divide hidden {self.hidden}"
            )
        if self.guidance not in ("light", "unet"):
            raise ValueError(f"unknown guidance {self.guidance!r}; expected 'light' or 'unet'")
        if self.merge not in ("learned", "max"):
            raise ValueError(f"unknown merge {self.merge!r}; expected 'learned' or 'max'")
        if self.mode not in ("three_way", "one_way"):
            raise ValueError(f"unknown mode {self.mode!r}; expected 'three_way' or 'one_way'")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; expected relu or elu")
        if len(self.widths) < 2 or min(self.widths) < 1:
            raise ValueError(f"widths {self.widths}: need at least two positive widths")
        stride = max(8, 2 ** (len(self.widths) - 1))
        if self.tile < 16 or self.tile % stride:
            raise ValueError(f"tile {self.tile}: must be a multiple of {stride}, at least 16")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown model config keys: {', '.join(unknown)} (written by a newer spnrefine?)"
            )
        data = dict(data)
        for name, value in LEGACY.items():
            if name not in data:
                data[name] = value(data)
        if "widths" in data:
            data["widths"] = tuple(data["widths"])
        config = cls(**data)
        config.check()
        return config

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))
