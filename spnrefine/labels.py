"""After the model: only the coarse map's classes are kept, and refined probabilities become
label ids (the argmax, with void passed through)."""

from __future__ import annotations

import numpy as np

from spnrefine.io.coarse import VOID, CoarseMap


def argmax_classes(probs: np.ndarray) -> np.ndarray:
    """H×W index of the largest of C×H×W probabilities (the first on ties, as np.argmax):
    one pass per class over whole planes, faster than ``argmax(axis=0)``, which walks the
    class axis pixel by pixel (1920×1080, two classes: 5 ms against 53 ms for a mask, 25 ms
    against 68 ms for random values)."""
    best = probs[0].copy()
    index = np.zeros(best.shape, np.uint8 if len(probs) <= 256 else np.int32)
    for c in range(1, len(probs)):
        index[probs[c] > best] = c
        np.maximum(best, probs[c], out=best)
    return index


def present_classes(coarse: CoarseMap) -> np.ndarray:
    """Bool per channel: the class wins the coarse map's argmax at some pixel that is not void.

    Only these may appear in the refined labels, as in the SPN paper's VOC experiments: the
    refiner sharpens boundaries, it does not invent classes the segmenter never chose.
    """
    winners = coarse.index if coarse.index is not None else argmax_classes(coarse.probs)
    if coarse.ignore is not None:
        winners = winners[~coarse.ignore]
    held = np.bincount(winners.ravel(), minlength=coarse.channels + 1)[: coarse.channels]
    return held > 0


def restrict_classes(probs: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Zero the channels of absent classes and renormalise each pixel over the rest (in place)."""
    if present.all():
        return probs
    probs[~present] = 0.0
    total = probs.sum(axis=0)
    # A pixel where only absent classes had mass falls back to the present ones, uniformly.
    empty = total <= 0
    if empty.any():
        for c in np.flatnonzero(present):
            probs[c][empty] = 1.0 / present.sum()
        total[empty] = 1.0
    probs /= total
    return probs


def label_lut(coarse: CoarseMap) -> np.ndarray:
    """The label id of each channel of `coarse`, as the labels' dtype (uint8 when every id
    fits, else int32): indexed by channel, it writes labels."""
    ids = np.asarray(coarse.labels)
    return ids.astype(np.uint8 if ids.max() <= 255 else np.int32)


def to_labels(
    probs: np.ndarray,
    coarse: CoarseMap,
    ignore: np.ndarray | None,
    classes: np.ndarray | None = None,
) -> np.ndarray:
    """H×W label ids (`coarse.labels` of the argmax); void pixels of the coarse map stay 255.
    ``classes``: the channel of the coarse map each of `probs`' stands for, when they are only
    some of them."""
    top = argmax_classes(probs)
    labels = label_lut(coarse)[top if classes is None else classes[top]]
    if ignore is not None:
        labels[ignore] = VOID
    return labels
