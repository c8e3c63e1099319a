"""A training run's settings: what `spnrefine train` was asked for, saved with the run."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from spnrefine.model import ModelConfig
from spnrefine.train.data import VAL_FRACTION, Recipe
from spnrefine.train.prefetch import Mix


@dataclass
class TrainConfig:
    """Everything a run was asked for; saved in its state and restored by a resume."""

    data: list[str]
    out: str
    steps: int = 3000
    val_every: int = 250
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup: int = 100
    seed: int = 0
    split_seed: int | None = None  # the validation split and patches (None: seed)
    val_fraction: float = VAL_FRACTION
    val_patches: int = 64
    val_factor: float = 8.0
    init: str | None = None  # fine-tune: start from these weights
    widen_to: tuple[int, ...] | None = None  # fine-tune: widen the init's guidance net first
    until: int | None = None  # stop after this step (a later --resume goes on)
    device: str = "cpu"
    workers: int = 0  # processes that prepare batches ahead of the model (0: in the loop)
    ema: float = 0.0  # decay of the weight average that is validated and saved (0: off)
    thin_weight: float = 0.0  # extra loss weight on parts thinner than THIN_WIDTH (0: off)
    coarse_sources: list[str] = field(default_factory=list)  # coarse-<pattern>/ folders to mix in
    data_weights: list[float] | None = None  # share of steps per data folder (None: alike)
    real_share: float | None = None  # patches on a real coarse map where one exists (None: alike)
    factors: tuple[float, float] = Recipe.factors  # synthetic maps: this much smaller, log-uniform
    clean_share: float = Recipe.clean  # synthetic maps whose shapes are not perturbed
    hard_share: float = Recipe.hard  # synthetic maps made hard (majority class per small pixel)
    model: ModelConfig = field(default_factory=ModelConfig)
    # Settings changed on a resume with override: {"step": N, "<setting>": [before, after]}.
    changes: list[dict] = field(default_factory=list)

    @property
    def mix(self) -> Mix:
        weights = tuple(self.data_weights) if self.data_weights else None
        return Mix(weights, self.real_share, self.recipe)

    @property
    def recipe(self) -> Recipe:
        return Recipe(tuple(self.factors), self.clean_share, self.hard_share)

    @property
    def held_out_seed(self) -> int:
        return held_out_seed(self.seed, self.split_seed)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        """The settings a run saved (fields added since then keep their defaults)."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known and k != "model"}
        config = cls(**values)
        if data.get("model") is not None:
            config.model = ModelConfig.from_dict(data["model"])
        if config.widen_to is not None:
            config.widen_to = tuple(config.widen_to)
        config.factors = tuple(config.factors)
        return config


def held_out_seed(seed: int, split_seed: int | None) -> int:
    """The seed of the validation split and patches: --split-seed, or else --seed."""
    return seed if split_seed is None else split_seed
