"""The propagation engine: linear spatial propagation in four directions, on several backends."""

from __future__ import annotations

import torch

from spnrefine.propagation.dispatch import BACKENDS, propagate_directions
from spnrefine.propagation.normalize import normalize_gates
from spnrefine.propagation.reference import (
    DIRECTIONS,
    MODES,
    merge_directions,
    propagate_directions_ref,
    propagate_ref,
)

__all__ = [
    "BACKENDS",
    "DIRECTIONS",
    "MODES",
    "merge_directions",
    "normalize_gates",
    "propagate",
    "propagate_directions_ref",
    "propagate_ref",
]


def propagate(
    x: torch.Tensor,
    gates: torch.Tensor,
    mode: str = "three_way",
    directions: tuple[str, ...] = DIRECTIONS,
    merge: str | None = "max",
    backend: str | None = None,
) -> torch.Tensor:
    """Propagate x (B×C×H×W) with gates (B×G×D×3×H×W); see ``reference`` for the layout.

    ``merge="max"`` returns B×C×H×W (node-wise max over directions, the paper);
    ``merge=None`` returns the per-direction B×D×C×H×W, for a learned merge.
    ``backend``: a name in ``BACKENDS`` (``"cpu"``: numba, ``"cuda"``: numba.cuda,
    ``"reference"``: plain torch), or ``None``/``"auto"``: $SPNREFINE_BACKEND if set, else the
    kernel for the tensors' device.
    Every backend gives the same result and gradients.
    """
    if merge not in ("max", None):
        raise ValueError(f"unknown merge {merge!r}; expected 'max' or None")
    per_direction = propagate_directions(x, gates, mode, tuple(directions), backend)
    return merge_directions(per_direction, merge)
