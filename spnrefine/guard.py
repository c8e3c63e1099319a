"""Do no harm: keep the refined map to what the coarse map leaves open. Where the coarse map is
sure, or unsure only along a band too narrow to hold a boundary worth moving, its
probabilities stay; islands and holes that the refined mask cuts where the coarse map has no
trace of them go back to the coarse map."""

from __future__ import annotations

import cv2
import numpy as np

DEFAULT_SURE = 0.02
"""Coarse uncertainty (1 − top probability) at and below which the coarse map is kept; the
refined map takes over linearly up to twice this."""
DEFAULT_NARROW = 1
"""px: a band of uncertainty narrower than 2·narrow + 1 px (an already sharp map: the ground
truth itself, or a ×2 one, whose upsampling leaves 2 px of doubt) is kept as the coarse map
has it (a morphological opening of the weight); a wider one (a ×4 or ×8 mask's ramp, a soft
segmenter map) is refined across its whole width."""
DEFAULT_TRACE = 0.3
"""Binary maps: a refined foreground island or background hole survives only where the coarse
map gives its class at least this probability somewhere inside it."""


def trust(
    coarse: np.ndarray, sure: float = DEFAULT_SURE, narrow: int = DEFAULT_NARROW
) -> np.ndarray:
    """H×W weight of the refined map against the C×H×W coarse one: 0 where the coarse map is
    sure (uncertainty ≤ `sure`), 1 from twice that, linear between; then opened with a disk
    of radius `narrow` px, which clears bands narrower than the disk and keeps wider ones
    whole."""
    uncertainty = 1.0 - coarse.max(axis=0)
    if sure > 0:
        weight = np.clip(uncertainty / sure - 1.0, 0.0, 1.0).astype(np.float32)
    else:
        weight = (uncertainty > 0).astype(np.float32)
    if narrow > 0:
        disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * narrow + 1, 2 * narrow + 1))
        weight = cv2.morphologyEx(weight, cv2.MORPH_OPEN, disk, borderType=cv2.BORDER_REPLICATE)
    return weight


def untraced_parts(
    labels: np.ndarray, coarse: np.ndarray, trace: float = DEFAULT_TRACE
) -> np.ndarray:
    """H×W bool: the connected parts of each class of `labels` (8-connected) in which the
    C×H×W `coarse` never gives that class `trace` or more."""
    out = np.zeros(labels.shape, bool)
    for c in np.flatnonzero(np.bincount(labels.ravel(), minlength=coarse.shape[0])):
        count, parts = cv2.connectedComponents((labels == c).view(np.uint8), connectivity=8)
        traced = np.zeros(count, bool)
        traced[np.unique(parts[coarse[c] >= trace])] = True
        traced[0] = True  # the pixels of the other classes
        out |= ~traced[parts]
    return out


def guard(
    coarse: np.ndarray,
    refined: np.ndarray,
    *,
    sure: float = DEFAULT_SURE,
    narrow: int = DEFAULT_NARROW,
    trace: float = DEFAULT_TRACE,
) -> np.ndarray:
    """C×H×W refined probabilities kept to what the C×H×W coarse ones leave open: blended
    into the coarse map by `trust`; then, on binary maps, the islands and holes of the result
    with no trace in the coarse map are set back to it. (On label maps a thin class that the
    coarse map's resolution lost is often right where the refiner brings it back, so no part
    is dropped there.)"""
    weight = trust(coarse, sure, narrow)
    out = weight * refined + (1.0 - weight) * coarse
    if coarse.shape[0] == 2 and trace > 0:
        untraced = untraced_parts(out.argmax(axis=0).astype(np.uint8), coarse, trace)
        out[:, untraced] = coarse[:, untraced]
    return out.astype(np.float32, copy=False)
