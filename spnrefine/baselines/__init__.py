"""Refiners we compare against: (RGB image, C×H×W probabilities) → refined C×H×W probabilities."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from spnrefine.baselines.crf import crf_available, refine_crf
from spnrefine.baselines.guided import guided_filter, refine_guided


def refine_bilinear(image: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """The no-op baseline: the bilinearly upsampled coarse probabilities, unchanged."""
    return np.asarray(probs, dtype=np.float32).copy()


BASELINES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "bilinear": refine_bilinear,
    "guided": refine_guided,
    "crf": refine_crf,
}
"""The baselines by the name `--method` gives them, each with its default settings."""

__all__ = [
    "BASELINES",
    "crf_available",
    "guided_filter",
    "refine_bilinear",
    "refine_crf",
    "refine_guided",
]
