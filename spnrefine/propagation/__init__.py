"""The propagation engine: linear spatial propagation in four directions, on several backends."""

from spnrefine.propagation.normalize import normalize_gates
from spnrefine.propagation.reference import (
    DIRECTIONS,
    MODES,
    merge_directions,
    propagate_directions_ref,
    propagate_ref,
)

__all__ = [
    "DIRECTIONS",
    "MODES",
    "merge_directions",
    "normalize_gates",
    "propagate",
    "propagate_directions_ref",
    "propagate_ref",
]


def propagate(x, gates, mode="three_way", directions=DIRECTIONS, merge="max", backend=None):
    """Propagate x (B×C×H×W) with gates (B×G×D×3×H×W); see ``reference`` for the layout."""
    return propagate_ref(x, gates, mode, tuple(directions), merge)
