"""Coarse sources for training: several real segmenters' maps per image plus the synthetic recipe.

A data folder may hold ``coarse-<source>/<stem>.png`` beside ``images/`` and ``masks/``, one
folder per segmenter and resolution (e.g. ``coarse-isnet1024-s8``, ``coarse-weak-k5-s16``).
Each map is kept at its own low resolution and warped straight into a training patch (one
bilinear warp does the upsampling and the patch's rotation and scale). A training patch draws
its coarse map from one of the sources its image has, or from the synthetic recipe, which is
always one source among them.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from spnrefine.errors import SpnrefineError
from spnrefine.io import load_coarse

SYNTHETIC = "synthetic"
PREFIX = "coarse-"


def source_folders(root: Path, patterns: Sequence[str]) -> dict[str, Path]:
    """The ``coarse-<name>/`` folders of ``root`` whose name matches a pattern (shell-style)."""
    found = [p.name[len(PREFIX) :] for p in root.iterdir() if p.name.startswith(PREFIX)]
    names = {n for pattern in patterns for n in fnmatch.filter(found, pattern)}
    return {n: root / f"{PREFIX}{n}" for n in sorted(names)}


def check_patterns(patterns: Sequence[str], found: dict[Path, list[str]]) -> None:
    """Every pattern must match a source in at least one data folder: a typo would otherwise
    train on the synthetic recipe alone without a word. ``found``: each folder's sources."""
    for pattern in patterns:
        if not any(fnmatch.filter(names, pattern) for names in found.values()):
            listed = sorted({n for names in found.values() for n in names})
            raise SpnrefineError(
                f"--coarse-source {pattern}: no data folder has a coarse-{pattern}/ folder "
                f"(sources there: {', '.join(listed) or 'none'})",
                next(iter(found), Path(".")),
            )


def read_coarse_map(
    path: Path, class_values: list[int], image_hw: tuple[int, int] | None = None
) -> np.ndarray:
    """A real coarse map as the data set's C×h×w probabilities, at the map's own size.

    Read by `spnrefine.io.load_coarse`, so every format `refine` takes can be trained on, with
    the same guards. What the set's masks are decides how an image is read: for a binary set
    a soft foreground (8-bit value / 255, 16-bit / 65535, float as is) or a 0/255 or 0/1
    mask; for a multi-class set class ids, mapped by the masks' values (ids the masks never
    hold, and void, carry no class). Arrays are read as `refine` reads them (``image_hw``
    helps find their channel axis) and must hold two classes, or the set's C.
    """
    binary = len(class_values) == 2
    if path.suffix.lower() in (".npy", ".npz"):
        coarse = load_coarse(path, image_hw=image_hw)
    else:
        try:
            coarse = load_coarse(path, coarse_type="auto" if binary else "labels")
        except SpnrefineError:
            if not binary:
                raise
            # auto refuses a map it cannot judge (one value, no edges); the masks say it is a
            # foreground map
            coarse = load_coarse(path, coarse_type="prob")
        if binary and coarse.kind == "labels" and coarse.palette is None:
            # A soft map with few levels looks like class ids to the auto rule; here the
            # masks have said what it is.
            coarse = load_coarse(path, coarse_type="prob")
    probs = coarse.probs
    if binary:
        if len(probs) != 2:
            raise SpnrefineError(
                f"coarse map holds {len(probs)} classes but the masks are binary", path
            )
        fg = np.clip(probs[1], 0, 1).astype(np.float32)
        return np.stack([1 - fg, fg])
    if coarse.kind == "labels":
        index = {value: i for i, value in enumerate(class_values)}
        small = np.zeros((len(class_values),) + probs.shape[1:], np.float32)
        for channel, label in enumerate(coarse.labels):
            if label in index:
                small[index[label]] = probs[channel]
        if coarse.ignore is not None:
            small[:, coarse.ignore] = 0
        return small
    if len(probs) != len(class_values):
        raise SpnrefineError(
            f"coarse map holds {len(probs)} classes but the masks hold {len(class_values)}; "
            "give class ids or one channel per class",
            path,
        )
    return probs.astype(np.float32, copy=False)


def warp_small(
    small: np.ndarray, image_hw: tuple[int, int], matrix: np.ndarray, tile: int
) -> np.ndarray:
    """A map at its own size → the ``tile``² patch that ``matrix`` cuts from the image.

    Equivalent to a bilinear upsampling to ``image_hw`` (half-pixel centres, as
    `spnrefine.upsample.upsample_probs`) followed by the warp, in one bilinear warp of the
    small map, so nothing at image size is ever held.
    """
    c, h, w = small.shape
    ry, rx = h / image_hw[0], w / image_hw[1]
    # image x = (small x + 0.5) / rx - 0.5, and the same for y
    to_image = np.array([[1 / rx, 0, 0.5 / rx - 0.5], [0, 1 / ry, 0.5 / ry - 0.5], [0, 0, 1]])
    composed = (np.vstack([matrix, [0, 0, 1]]) @ to_image)[:2]
    warp = {"dsize": (tile, tile), "flags": cv2.INTER_LINEAR, "borderMode": cv2.BORDER_REFLECT_101}
    return np.stack([cv2.warpAffine(channel, composed, **warp) for channel in small])


def pick_source(
    names: Sequence[str], rng: np.random.Generator, real_share: float | None = None
) -> str:
    """A patch's coarse source. With ``real_share`` None: each of the image's real sources or
    the synthetic recipe, alike. Otherwise one of the real sources (alike) with that
    probability, and the synthetic recipe with the rest."""
    if real_share is None:
        options = [SYNTHETIC, *names]
        return options[int(rng.integers(len(options)))]
    if not names or rng.random() >= real_share:
        return SYNTHETIC
    return names[int(rng.integers(len(names)))]
