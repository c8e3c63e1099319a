"""The propagation engine: linear spatial propagation in four directions, on several backends.

The torch entry points are imported on first use, so that the numba CPU kernels
(`spnrefine.propagation.cpu`) load without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from spnrefine.lazy import lazy_attributes
from spnrefine.propagation.layout import DIRECTIONS, MODES

if TYPE_CHECKING:
    import torch

    from spnrefine.propagation.dispatch import BACKENDS
    from spnrefine.propagation.normalize import normalize_gates
    from spnrefine.propagation.reference import (
        merge_directions,
        propagate_directions_ref,
        propagate_ref,
    )

_LAZY = {
    "BACKENDS": "spnrefine.propagation.dispatch",
    "normalize_gates": "spnrefine.propagation.normalize",
    "merge_directions": "spnrefine.propagation.reference",
    "propagate_directions_ref": "spnrefine.propagation.reference",
    "propagate_ref": "spnrefine.propagation.reference",
}

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
    from spnrefine.propagation.dispatch import propagate_directions
    from spnrefine.propagation.reference import merge_directions

    per_direction = propagate_directions(x, gates, mode, tuple(directions), backend)
    return merge_directions(per_direction, merge)


__getattr__ = lazy_attributes(__name__, _LAZY)
