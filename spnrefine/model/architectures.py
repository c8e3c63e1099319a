"""The model architectures by the name ``config.json`` gives them, and the contract the tiler
needs from any of them.

Adding an architecture is a module with its class and one line in `ARCHITECTURES` (and, where
it has a torch-free twin for CPU inference, one in `LEAN_ARCHITECTURES`); weights are loaded
(checkpoint.py), trained (train/) and run (tiling.py, predictor.py) through `build_model`,
`build_lean` and `TileModel` alone. Entries name their class as ``"module:Class"`` (or are the
class itself), so that reading this registry imports neither torch nor any model.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from spnrefine.model.config import ModelConfig

if TYPE_CHECKING:
    import numpy as np
    from torch import nn


@runtime_checkable
class TileModel(Protocol):
    """What tiling asks of a model.

    - ``tile_logits(tiles, probs)``: tiles N×3×T×T uint8 RGB, probs N×C×T×T class
      probabilities (numpy; any C ≥ 1; padding classes are all zero) → logits N×C×T×T, the
      classes independent of each other (tiling passes each tile only the classes present in it).
    - ``tile_multiple``: tile sides must be a multiple of this (the model's downsampling).
    - ``config``: its `ModelConfig` (``config.tile``: the tile size it was trained on).

    Optional, on a CPU: ``expect(maps)``, told an image's tile × class maps before its first
    ``tile_logits`` call, and ``expect_many(tiles=None)``, told that a batch of images is coming
    and, where known, each one's tile count (a model that has several kernel sets picks one by
    the work ahead, as `LeanRefiner` does).
    """

    config: ModelConfig

    @property
    def tile_multiple(self) -> int: ...

    def tile_logits(self, tiles: np.ndarray, probs: np.ndarray) -> np.ndarray: ...


# name → the torch model (training, GPU inference, and the CPU where no lean twin exists).
ARCHITECTURES: dict[str, Any] = {
    "spn-refiner": "spnrefine.model.refiner:SPNRefiner",
}
# name → the torch-free inference model of the same weights (OpenCV DNN + numba on a CPU).
LEAN_ARCHITECTURES: dict[str, Any] = {
    "spn-refiner": "spnrefine.model.lean:LeanRefiner",
}


def _resolve(entry: Any) -> type:
    if isinstance(entry, str):
        module, _, name = entry.partition(":")
        return getattr(importlib.import_module(module), name)
    return entry


def check_architecture(config: ModelConfig) -> None:
    """Refuse a config naming an architecture this spnrefine does not know (imports nothing)."""
    if config.architecture not in ARCHITECTURES:
        known = ", ".join(ARCHITECTURES)
        raise ValueError(
            f"unknown architecture {config.architecture!r}; this spnrefine knows {known}"
        )


def build_model(config: ModelConfig) -> nn.Module:
    """A fresh torch model of the architecture ``config`` names, built from ``config``."""
    check_architecture(config)
    return _resolve(ARCHITECTURES[config.architecture])(config)


def build_lean(config: ModelConfig, state: dict[str, np.ndarray]) -> TileModel | None:
    """The torch-free inference model of ``config``'s architecture with the weights ``state``
    (numpy), or None where the architecture has none (then the torch model runs on the CPU)."""
    check_architecture(config)
    entry = LEAN_ARCHITECTURES.get(config.architecture)
    return None if entry is None else _resolve(entry)(config, state)
