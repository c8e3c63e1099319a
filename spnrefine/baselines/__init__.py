"""Refiners we compare against: (C×H×W probabilities, RGB image) → refined C×H×W probabilities."""

from __future__ import annotations

import numpy as np

from spnrefine.baselines.crf import refine_crf
from spnrefine.baselines.guided import guided_filter, refine_guided


def refine_bilinear(image: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """The no-op baseline: the bilinearly upsampled coarse probabilities, unchanged."""
    return np.asarray(probs, dtype=np.float32).copy()


__all__ = ["guided_filter", "refine_bilinear", "refine_crf", "refine_guided"]
