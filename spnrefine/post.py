"""After the model: class restriction, argmax to label ids, void pass-through, and the output
file's bytes (label PNG with the palette kept, 0/255 mask, soft probabilities, overlay)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from spnrefine.errors import SpnrefineError
from spnrefine.io import (
    CoarseMap,
    encode_label_png,
    encode_mask_png,
    encode_npy,
    encode_overlay,
    encode_prob_png,
)
from spnrefine.io.coarse import VOID

OutputFormat = Literal["png", "npy"]
OVERLAY_FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg"}


def present_classes(coarse: CoarseMap) -> np.ndarray:
    """Bool per channel: the class wins the coarse map's argmax at some pixel that is not void.

    Only these may appear in the refined labels, as in the SPN paper's VOC experiments: the
    refiner sharpens boundaries, it does not invent classes the segmenter never chose.
    """
    winners = coarse.probs.argmax(axis=0)
    if coarse.ignore is not None:
        winners = winners[~coarse.ignore]
    present = np.zeros(coarse.probs.shape[0], bool)
    present[np.unique(winners)] = True
    return present


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


def to_labels(probs: np.ndarray, coarse: CoarseMap, ignore: np.ndarray | None) -> np.ndarray:
    """H×W label ids (`coarse.labels` of the argmax); void pixels of the coarse map stay 255."""
    ids = np.asarray(coarse.labels)
    lut = ids.astype(np.uint8 if ids.max() <= 255 else np.int32)
    labels = lut[probs.argmax(axis=0)]
    if ignore is not None:
        labels[ignore] = VOID
    return labels


def is_foreground_map(coarse: CoarseMap) -> bool:
    """True for one class against background (a binary or soft mask, or ids {0, k}): its soft
    output is the foreground probability alone."""
    return len(coarse.labels) == 2 and coarse.labels[0] == 0


def output_format(out: str | Path, coarse: CoarseMap, *, soft: bool = False) -> OutputFormat:
    """The format `out` will be written in, or an error saying why it cannot hold the result.

    Labels and masks are PNGs. `soft` writes a foreground probability PNG for one class, and a
    C×H×W .npy for several; a name ending in .npy asks for the array in either case. `-`
    (stdout) takes whichever fits.
    """
    suffix = "" if str(out) == "-" else Path(out).suffix.lower()
    several = soft and not is_foreground_map(coarse)
    if suffix == ".npy" and not soft:
        raise SpnrefineError(".npy outputs hold --soft probabilities; name labels .png", out)
    if suffix not in ("", ".png", ".npy"):
        raise SpnrefineError(
            f"cannot write {suffix or 'a file without an extension'}: labels and masks are "
            "written as .png, --soft probabilities as .png (one class) or .npy",
            out,
        )
    if suffix == ".png" and several:
        raise SpnrefineError(
            f"--soft output of {len(coarse.labels)} classes is a C×H×W array; name it .npy", out
        )
    if not soft and max(coarse.labels) > 255:
        raise SpnrefineError(
            f"class id {max(coarse.labels)} does not fit an 8-bit label PNG; use --soft", out
        )
    return "npy" if suffix == ".npy" or several else "png"


def overlay_format(path: str | Path, coarse: CoarseMap) -> Literal["png", "jpeg"]:
    """The picture format for `--overlay`, by the file's extension."""
    fmt = OVERLAY_FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise SpnrefineError("an overlay is written as .png or .jpg", path)
    if max(coarse.labels) > 255:
        raise SpnrefineError(f"class id {max(coarse.labels)} has no overlay colour", path)
    return fmt


def encode_output(
    probs: np.ndarray,
    labels: np.ndarray,
    coarse: CoarseMap,
    fmt: OutputFormat,
    *,
    soft: bool = False,
    bits: Literal[8, 16] = 8,
) -> bytes:
    """The bytes of the output file: the same kind as the coarse input unless `soft`."""
    if soft:
        fg_only = is_foreground_map(coarse)
        if fmt == "npy":
            return encode_npy(probs[1] if fg_only else probs)
        return encode_prob_png(probs[1], bits)
    if coarse.kind == "labels":
        return encode_label_png(labels, coarse.palette)
    return encode_mask_png(labels)


def encode_overlay_of(
    image: np.ndarray, labels: np.ndarray, coarse: CoarseMap, fmt: Literal["png", "jpeg"]
) -> bytes:
    """The refined mask drawn over the image; void is left clear, masks get one vivid colour."""
    if coarse.kind == "labels":
        ids = np.where(labels == VOID, 0, labels).astype(np.uint8)
        return encode_overlay(image, ids, coarse.palette, fmt=fmt)
    return encode_overlay(image, labels != 0, fmt=fmt)
