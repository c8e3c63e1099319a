"""Training data: image/mask folders, coarse maps synthesised from ground truth, 128×128 patches.

A data folder holds ``images/`` and ``masks/`` with the same stems (masks are label PNGs:
0/255 binary or class ids, 255 = ignore) and optionally ``coarse/`` with real coarse maps
from the user's own segmenter, ``coarse-<source>/`` folders with several segmenters' maps to
mix with the synthetic recipe (`spnrefine.train.sources`), and ``splits.txt``
(``stem<TAB>train|val``) to fix the split.
Without ``splits.txt``, a seeded share of *groups* goes to validation, where a stem's group is
the stem minus a trailing ``_<digits>`` (so frames of one video sequence stay together).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from spnrefine.errors import SpnrefineError
from spnrefine.io import load_image, load_label_ids
from spnrefine.io.coarse import VOID as IGNORE
from spnrefine.io.names import COARSE_EXTENSIONS, IMAGE_EXTENSIONS
from spnrefine.train import sources
from spnrefine.upsample import upsample_probs

VAL_FRACTION = 0.2  # share of groups held out when a folder has no splits.txt


@dataclass
class Sample:
    """One image with its label map (class indices 0..C-1, IGNORE) and optional real coarse."""

    stem: str
    image: np.ndarray  # H×W×3 uint8 RGB
    labels: np.ndarray  # H×W uint8
    coarse: np.ndarray | None = None  # C×H×W float32 at image size
    sources: dict[str, np.ndarray] = field(default_factory=dict)  # C×h×w, each at its own size
    boundary: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int32))


@dataclass
class Dataset:
    """The samples of one folder; every sample shares the folder's class count."""

    root: Path
    num_classes: int
    class_values: list[int]  # mask value of each class index
    train: list[Sample]
    val: list[Sample]
    sources: list[str] = field(default_factory=list)  # coarse-<source>/ folders it carries

    @property
    def binary(self) -> bool:
        return self.num_classes == 2


def _stems(folder: Path, extensions: tuple[str, ...]) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in extensions}


def group_of(stem: str) -> str:
    """A stem's group: the stem without a trailing ``_<digits>`` (a video's frames share one)."""
    return re.sub(r"_\d+$", "", stem)


def boundary_points(labels: np.ndarray, limit: int = 4000, seed: int = 0) -> np.ndarray:
    """Up to ``limit`` (y, x) pixels where two different labels meet (ignore excluded)."""
    valid = labels != IGNORE
    edge = np.zeros(labels.shape, bool)
    dy = (labels[1:] != labels[:-1]) & valid[1:] & valid[:-1]
    dx = (labels[:, 1:] != labels[:, :-1]) & valid[:, 1:] & valid[:, :-1]
    edge[1:] |= dy
    edge[:, 1:] |= dx
    points = np.argwhere(edge).astype(np.int32)
    if len(points) > limit:
        points = points[np.random.default_rng(seed).choice(len(points), limit, replace=False)]
    return points


def split_stems(root: Path, stems: list[str], val_fraction: float, seed: int) -> set[str]:
    splits = root / "splits.txt"
    if splits.is_file():
        val = set()
        for line in splits.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) == 2 and parts[1].strip() == "val":
                val.add(parts[0].strip())
        return val
    groups = sorted({group_of(s) for s in stems})
    rng = np.random.default_rng(seed)
    n_val = int(round(len(groups) * val_fraction))
    chosen = set(rng.permutation(groups)[:n_val].tolist()) if n_val else set()
    return {s for s in stems if group_of(s) in chosen}


def load_dataset(
    root: str | Path,
    val_fraction: float = VAL_FRACTION,
    seed: int = 0,
    coarse_sources: tuple[str, ...] = (),
) -> Dataset:
    """Read a whole data folder into memory and split it into train and validation samples.

    ``coarse_sources``: patterns of ``coarse-<source>/`` folders whose maps the training
    samples carry (validation keeps its fixed protocol).
    """
    root = Path(root)
    images_dir, masks_dir, coarse_dir = root / "images", root / "masks", root / "coarse"
    for folder in (images_dir, masks_dir):
        if not folder.is_dir():
            raise SpnrefineError(
                f"missing folder {folder.name}/ (a data folder needs images/ and masks/)", root
            )
    images = _stems(images_dir, IMAGE_EXTENSIONS)
    masks = _stems(masks_dir, IMAGE_EXTENSIONS)
    if not images:
        raise SpnrefineError("no images found", images_dir)
    missing = sorted(set(images) ^ set(masks))
    if missing:
        stem = missing[0]
        which = "mask" if stem in images else "image"
        raise SpnrefineError(
            f"{stem} has no {which} ({len(missing)} unpaired file(s) in all)", root
        )
    coarse = _stems(coarse_dir, COARSE_EXTENSIONS) if coarse_dir.is_dir() else {}
    folders = sources.source_folders(root, coarse_sources)
    source_maps = {name: _stems(folder, COARSE_EXTENSIONS) for name, folder in folders.items()}

    raw_masks = {}
    for stem, path in masks.items():
        raw_masks[stem] = load_label_ids(path)
    values = set().union(*(np.unique(m).tolist() for m in raw_masks.values()))
    lut = np.full(256, IGNORE, np.uint8)
    if values <= {0, 255}:  # a 0/255 mask: 255 is the foreground, not ignore
        class_values = [0, 255]
    elif values <= {0, 1, IGNORE}:
        class_values = [0, 1]
    else:
        class_values = list(range(max(values - {IGNORE}) + 1))
    lut[class_values] = np.arange(len(class_values))
    num_classes = len(class_values)

    val_stems = split_stems(root, list(images), val_fraction, seed)
    train, val = [], []
    for stem, path in images.items():
        image = load_image(path)
        labels = lut[raw_masks[stem]]
        if image.shape[:2] != labels.shape:
            raise SpnrefineError(
                f"image is {image.shape[1]}×{image.shape[0]} but its mask is "
                f"{labels.shape[1]}×{labels.shape[0]}",
                masks[stem],
            )
        sample = Sample(stem, image, labels, boundary=boundary_points(labels))
        if stem in coarse:
            sample.coarse = load_training_coarse(coarse[stem], labels.shape, class_values)
        if stem not in val_stems:
            sample.sources = {
                name: sources.read_coarse_map(maps[stem], class_values, labels.shape)
                for name, maps in source_maps.items()
                if stem in maps
            }
        (val if stem in val_stems else train).append(sample)
    return Dataset(root, num_classes, class_values, train, val, list(source_maps))


def load_training_coarse(
    path: Path, image_hw: tuple[int, int], class_values: list[int]
) -> np.ndarray:
    """A real coarse map as the data set's C×H×W probabilities at image size: the map as
    `spnrefine.train.sources.read_coarse_map` reads it, stretched to the image."""
    return upsample_probs(sources.read_coarse_map(path, class_values, image_hw), image_hw)


def one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """H×W class indices → C×H×W float32; IGNORE pixels get all zeros."""
    out = np.zeros((num_classes,) + labels.shape, np.float32)
    for c in range(num_classes):
        out[c] = labels == c
    return out


def downsample_probs(probs: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    return np.stack([cv2.resize(p, (w, h), interpolation=cv2.INTER_AREA) for p in probs])


def _renormalise(probs: np.ndarray) -> np.ndarray:
    total = probs.sum(0, keepdims=True)
    uniform = np.full_like(probs, 1.0 / probs.shape[0])
    return np.where(total > 1e-6, probs / np.maximum(total, 1e-6), uniform)


def perturb_labels(labels: np.ndarray, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Random local dilations of one class over its neighbours near boundaries (CascadePSP-like).

    Dilating a class inside a disk erodes whatever bordered it there, so this both grows and
    shrinks regions, and re-draws contour segments with a different shape.
    """
    out = labels.copy()
    points = boundary_points(labels, limit=200, seed=int(rng.integers(1 << 31)))
    if len(points) == 0:
        return out
    h, w = labels.shape
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(int(rng.integers(1, 6))):
        cy, cx = points[rng.integers(len(points))]
        radius = rng.uniform(4, 24)
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
        present = np.unique(out[disk])
        present = present[present != IGNORE]
        if len(present) == 0:
            continue
        c = int(rng.choice(present))
        k = int(rng.integers(1, 6)) * 2 + 1
        grown = cv2.dilate((out == c).astype(np.uint8), np.ones((k, k), np.uint8)) > 0
        out[disk & grown & (out != IGNORE)] = c
    return out


def _fill_ignore(labels: np.ndarray, max_steps: int = 32) -> np.ndarray:
    """Give void pixels a neighbouring label: a segmenter's coarse map has no void."""
    if not (labels == IGNORE).any():
        return labels
    filled = np.where(labels == IGNORE, -1, labels.astype(np.int16)).astype(np.int16)
    kernel = np.ones((3, 3), np.uint8)
    for _ in range(max_steps):
        holes = filled < 0
        if not holes.any():
            break
        grown = cv2.dilate(filled, kernel)
        filled[holes] = grown[holes]
    filled[filled < 0] = 0
    return filled.astype(labels.dtype)


@dataclass(frozen=True)
class Recipe:
    """The synthetic coarse maps of training: each ``factors[0]``–``factors[1]`` times smaller
    than its patch (log-uniform), its shapes perturbed in all but a ``clean`` share, and a
    ``hard`` share of them made hard: each small pixel its majority class, probability 1, as
    a segmenter's label map or 0/255 mask hands it over."""

    factors: tuple[float, float] = (4.0, 16.0)
    clean: float = 0.2
    hard: float = 0.0

    def check(self) -> str | None:
        """What is wrong with it, or None."""
        low, high = self.factors
        if not (1 <= low <= high and math.isfinite(high)):
            return f"--factors {low:g},{high:g}: expected 1 ≤ MIN ≤ MAX, both finite"
        if not 0 <= self.clean <= 1:  # a NaN fails it too
            return f"--clean-share {self.clean:g}: expected a share from 0 to 1"
        if not 0 <= self.hard <= 1:
            return f"--hard-share {self.hard:g}: expected a share from 0 to 1"
        return None


def synthesize_coarse(
    labels: np.ndarray,
    num_classes: int,
    rng: np.random.Generator | None = None,
    factor: float | None = None,
    recipe: Recipe = Recipe(),
) -> np.ndarray:
    """Coarse C×H×W probabilities from ground truth: perturb, downsample ×factor, upsample.

    With ``rng=None`` the map is deterministic: plain area downsampling by ``factor`` and
    bilinear upsampling, the protocol used for validation. With an ``rng``, ``recipe`` draws
    the factor (unless given) and whether the shapes are perturbed.
    """
    h, w = labels.shape
    labels = _fill_ignore(labels)
    if rng is not None:
        if rng.random() < 1 - recipe.clean:
            labels = perturb_labels(labels, num_classes, rng)
        low, high = recipe.factors
        factor = factor or float(np.exp(rng.uniform(np.log(low), np.log(high))))
    small = (max(2, int(round(h / factor))), max(2, int(round(w / factor))))
    probs = one_hot(labels, num_classes)
    coarse = _renormalise(downsample_probs(probs, small))
    # Drawn only when asked for, so that the maps of runs without it stay what they were.
    if rng is not None and recipe.hard > 0 and rng.random() < recipe.hard:
        majority = one_hot(coarse.argmax(0), num_classes)
        return _renormalise(upsample_probs(majority, (h, w)))
    if rng is not None and rng.random() < 0.5:
        # Segmenters are over- or under-confident; vary the temperature of the map.
        logits = np.log(np.clip(coarse, 1e-6, 1.0)) * rng.uniform(0.5, 2.0)
        coarse = np.exp(logits - logits.max(0, keepdims=True))
        coarse = _renormalise(coarse)
    return _renormalise(np.clip(upsample_probs(coarse, (h, w)), 0, 1))


@dataclass
class Patch:
    image: np.ndarray  # 3×T×T float32 in [0, 1]
    coarse: np.ndarray  # C×T×T float32
    labels: np.ndarray  # T×T int64 (IGNORE kept)


def sample_patch(
    sample: Sample,
    num_classes: int,
    rng: np.random.Generator,
    tile: int = 128,
    augment: bool = True,
    factor: float | None = None,
    real_share: float | None = None,
    recipe: Recipe = Recipe(),
) -> Patch | None:
    """A ``tile``² patch centred near a boundary, or None when it holds fewer than two labels.

    With ``augment``: rotation ±15°, scale ×0.5-1.5, horizontal flip, and a freshly
    perturbed coarse map. Without: an axis-aligned crop and the ×``factor`` protocol.
    ``real_share``: how often a patch takes one of its image's real coarse maps
    (`spnrefine.train.sources.pick_source`); ``recipe``: the synthetic maps of the others.
    """
    h, w = sample.labels.shape
    if len(sample.boundary):
        cy, cx = sample.boundary[rng.integers(len(sample.boundary))]
    else:
        cy, cx = rng.integers(h), rng.integers(w)
    angle, scale, flip = 0.0, 1.0, False
    if augment:
        angle = rng.uniform(-15, 15)
        scale = float(np.exp(rng.uniform(np.log(0.5), np.log(1.5))))
        flip = rng.random() < 0.5
    jitter = rng.uniform(-0.3, 0.3, size=2) * tile / scale
    centre = (float(cx + jitter[0]), float(cy + jitter[1]))
    matrix = cv2.getRotationMatrix2D(centre, angle, scale)
    matrix[:, 2] += np.array([tile / 2, tile / 2]) - np.array(centre)
    warp = {"dsize": (tile, tile), "borderMode": cv2.BORDER_REFLECT_101}
    image = cv2.warpAffine(sample.image, matrix, flags=cv2.INTER_LINEAR, **warp)
    labels = cv2.warpAffine(sample.labels, matrix, flags=cv2.INTER_NEAREST, **warp)
    present = np.unique(labels)
    if len(present[present != IGNORE]) < 2:
        return None
    source = sources.SYNTHETIC
    if augment and sample.sources:
        source = sources.pick_source(list(sample.sources), rng, real_share)
    if sample.coarse is not None:
        coarse = np.stack(
            [cv2.warpAffine(c, matrix, flags=cv2.INTER_LINEAR, **warp) for c in sample.coarse]
        )
        coarse = _renormalise(np.clip(coarse, 0, 1))
    elif source != sources.SYNTHETIC:
        coarse = sources.warp_small(sample.sources[source], (h, w), matrix, tile)
        coarse = _renormalise(np.clip(coarse, 0, 1))
    else:
        coarse = synthesize_coarse(labels, num_classes, rng if augment else None, factor, recipe)
    if flip:
        image, labels, coarse = image[:, ::-1], labels[:, ::-1], coarse[:, :, ::-1]
    return Patch(
        image=np.ascontiguousarray(image.transpose(2, 0, 1), np.float32) / 255.0,
        coarse=np.ascontiguousarray(coarse, np.float32),
        labels=np.ascontiguousarray(labels).astype(np.int64),
    )


def sample_batch(
    dataset: Dataset,
    rng: np.random.Generator,
    batch_size: int,
    tile: int = 128,
    split: str = "train",
    augment: bool = True,
    factor: float | None = None,
    real_share: float | None = None,
    recipe: Recipe = Recipe(),
) -> dict[str, np.ndarray]:
    """Stack ``batch_size`` boundary patches from one dataset's split."""
    samples = dataset.train if split == "train" else dataset.val
    if not samples:
        raise SpnrefineError(f"no {split} samples", dataset.root)
    patches: list[Patch] = []
    tries = 0
    while len(patches) < batch_size:
        tries += 1
        sample = samples[rng.integers(len(samples))]
        patch = sample_patch(
            sample, dataset.num_classes, rng, tile, augment, factor, real_share, recipe
        )
        if patch is not None:
            patches.append(patch)
        elif tries > 50 * batch_size:
            raise SpnrefineError("could not find patches where two labels meet", dataset.root)
    if dataset.num_classes > 2:
        patches = [_present_classes(p) for p in patches]
        width = max(len(p.coarse) for p in patches)
        for p in patches:  # absent classes are all-zero channels, as tiling would leave out
            p.coarse = np.concatenate(
                [p.coarse, np.zeros((width - len(p.coarse),) + p.labels.shape, np.float32)]
            )
    return {
        "image": np.stack([p.image for p in patches]),
        "coarse": np.stack([p.coarse for p in patches]),
        "labels": np.stack([p.labels for p in patches]),
    }


def _present_classes(patch: Patch, threshold: float = 0.02) -> Patch:
    """Keep only the classes the coarse patch holds, as inference does per tile.

    The model is class-agnostic, so this changes nothing it learns except the cost: a CamVid
    patch holds 3-5 of its 11 classes. Ground truth of a dropped class becomes ignore, since
    inference could not produce it either.
    """
    keep = np.flatnonzero(patch.coarse.max(axis=(1, 2)) > threshold)
    remap = np.full(256, IGNORE, np.int64)
    remap[keep] = np.arange(len(keep))
    coarse = patch.coarse[keep]
    coarse = coarse / np.maximum(coarse.sum(0, keepdims=True), 1e-6)
    return Patch(patch.image, np.ascontiguousarray(coarse, np.float32), remap[patch.labels])
