"""The refiner's hyper-parameters, stored beside the weights as ``config.json``."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ModelConfig:
    """Everything needed to rebuild a refiner before its weights are loaded."""

    hidden: int = 8  # propagated channels per class; each has its own gate set
    widths: tuple[int, ...] = (16, 32, 48, 64)  # guidance U-Net widths, one per scale
    mode: str = "three_way"
    merge: str = "learned"  # "max" (paper) or "learned" (1×1 conv over the four directions)
    readout: int = 16  # width of the per-class readout MLP
    tile: int = 128
    name: str = "spnrefine"
    extra: dict = field(default_factory=dict)  # free-form provenance (data, recipe)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model config keys: {', '.join(unknown)}")
        data = dict(data)
        if "widths" in data:
            data["widths"] = tuple(data["widths"])
        return cls(**data)

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))
