"""Score spnrefine against bilinear upsampling, the guided filter and dense CRF, on the same
items, in four groups of rows: in-domain, unseen-domain, unseen-segmenter and do-no-harm.

Run from the repository root:

    python benchmarks/quality.py --data DATA [--prepared PREPARED --unseen SET ...
        --val SET ... --segmenter SOURCE] [--split val] [--spn WEIGHTS] [--limit N]
        [--unguarded] [--groups ...] [--no-crf] [--tolerance PX] [--grid]

``--data`` is the folder with the training domains (``davis/``, ``horses/``, ``camvid/`` and
``davis-coarse/``, the real ISNet maps of DAVIS frames): the in-domain rows, ×8 coarse maps
from the ground truth, soft (area-downsampled) and hard (``×8 hard``: the label map or 0/255
mask of each small pixel's majority class, as a segmenter's label PNG), and the ISNet maps.
``--split val`` keeps only what the default model's
training held out (the seeded split of ``spnrefine train``: whole DAVIS sequences, CamVid
val, a fifth of the horses). ``--prepared`` is a folder of further data sets
(``<set>/{images,masks}/``, coarse maps in ``<set>/coarse-<source>/``): the ``--unseen`` sets
are whole domains kept out of training (every image scored, ×8 from the ground truth and
every coarse source they have), the ``--val`` sets are training domains of which the
validation split is scored. ``--segmenter`` names the coarse source kept out of training
(``mediapipe`` takes every ``coarse-mediapipe*-*/`` variant): its maps on the unseen and
validation images make the unseen-segmenter rows.

The do-no-harm rows feed every validation domain's ground truth in as the coarse map, as it
is and ×2 area-downsampled: an input that is already right must come out with IoU within
0.001 of the input's. Every row also counts the missed and false foreground (shares of the
true foreground) and the connected components and holes per image of the ground truth, the
coarse map and each method's output. ``--spn`` scores the model as `spnrefine refine` runs it,
with the do-no-harm guard (``spnrefine.guard``); ``--unguarded`` adds the model's own map
beside it. A data folder that is asked for and missing, or a row with no items, is an
error.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import cv2
import numpy as np

from spnrefine.api import Refiner
from spnrefine.baselines.bilinear import refine_bilinear
from spnrefine.baselines.crf import refine_crf
from spnrefine.baselines.guided import DEFAULT_EPS, DEFAULT_RADIUS, refine_guided
from spnrefine.metrics import (
    DEFAULT_TOLERANCE_PX,
    ConfusionMatrix,
    IoUAccumulator,
    boundary_f,
    boundary_map,
    count_components,
    count_holes,
    count_regions,
    foreground_errors,
    mba,
    mean_boundary_f,
    near,
)
from spnrefine.train.data import VAL_FRACTION, split_stems
from spnrefine.train.loss import THIN_WIDTH
from spnrefine.upsample import upsample_probs

SETS = ("davis", "horses", "camvid", "davis-coarse")
GROUPS = ("in-domain", "unseen-domain", "unseen-segmenter", "do-no-harm")
VOID = 255
FACTOR = 8
HARM_FACTOR = 2  # the do-no-harm check's downsampled input
HARM_TOLERANCE = 0.001  # IoU a right input may lose: 0.1 point
NEAR_PX, FAR_PX = 4, 32  # error bands: at the true boundary, and far from any
THIN_PX = THIN_WIDTH  # parts narrower than this count as thin, as `--thin-weight` trains
GRID_RADII = (1, 2, 4, 8, 16)
GRID_EPS = (1e-4, 1e-3, 1e-2, 1e-1)
IMAGE_SUFFIXES = (".jpg", ".png", ".jpeg")

RefineFn = Callable[[np.ndarray, np.ndarray, float], np.ndarray]  # image, probs, factor


def ignoring_factor(refine: Callable[..., np.ndarray]) -> RefineFn:
    """A baseline as a RefineFn: it does not look at how much the coarse map was upsampled."""
    return lambda image, probs, factor: refine(image, probs)


def spn_method(refiner: Refiner) -> RefineFn:
    """The model as `spnrefine refine` runs it: its guard knows the coarse map's factor."""
    return lambda image, probs, factor: refiner.refine_probs(image, probs, factor=factor)


class MissingData(SystemExit):
    """A data folder, set or row that the run asked for is not there."""

    def __init__(self, message: str):
        super().__init__(f"quality.py: {message}")


@dataclass
class Sample:
    image: np.ndarray  # H×W×3 uint8 RGB
    probs: np.ndarray  # C×H×W float32 coarse probabilities at image size
    gt: np.ndarray  # H×W labels (0/1 for binary sets, 255 = ignore)
    factor: float = 1.0  # how much the coarse map was upsampled to the image


def read_rgb(path: Path) -> np.ndarray:
    return np.ascontiguousarray(cv2.imread(str(path), cv2.IMREAD_COLOR)[..., ::-1])


def read_gray(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def pick(items: list, limit: int | None) -> list:
    """`limit` items spread evenly over the sorted list, so every sequence is represented."""
    if limit is None or limit >= len(items):
        return items
    return [items[i] for i in np.linspace(0, len(items) - 1, limit).round().astype(int)]


def onehot_of(labels: np.ndarray, classes: int) -> np.ndarray:
    """H×W class ids → C×H×W float32 one-hot; void (255) pixels are all zero."""
    return (labels[None] == np.arange(classes)[:, None, None]).astype(np.float32)


def area_downsample(onehot: np.ndarray, factor: int) -> np.ndarray:
    """C×H×W one-hot → each class's share of every factor×factor cell, C×h×w."""
    _, h, w = onehot.shape
    small_size = (max(1, round(w / factor)), max(1, round(h / factor)))
    # OpenCV 5's area resize takes at most 4 channels at a non-integer ratio: a plane at a time
    return np.stack(
        [cv2.resize(plane, small_size, interpolation=cv2.INTER_AREA) for plane in onehot]
    )


def coarse_from_onehot(onehot: np.ndarray, factor: int = FACTOR) -> np.ndarray:
    """C×H×W one-hot → area-downsample ×factor → bilinear back up → renormalised C×H×W."""
    return upsample_onehot(area_downsample(onehot, factor), onehot.shape[1:])


def hard_from_onehot(onehot: np.ndarray, factor: int = FACTOR) -> np.ndarray:
    """C×H×W one-hot → area-downsample ×factor → each small pixel's majority class (a label
    map or 0/255 mask at 1/factor, as a segmenter hands it over; void where void is the most)
    → bilinear back up → renormalised C×H×W."""
    small = area_downsample(onehot, factor)
    labels = np.where(1.0 - small.sum(0) > small.max(0), VOID, small.argmax(0))
    return upsample_onehot(onehot_of(labels, len(onehot)), onehot.shape[1:])


def upsample_onehot(small: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """C×h×w probabilities (void: all zero) → bilinear to H×W → renormalised; a pixel with no
    mass in any class (all void) is uniform."""
    c = small.shape[0]
    probs = upsample_probs(small.astype(np.float32), size)
    total = probs.sum(0, keepdims=True)
    return np.where(total > 1e-6, probs / np.maximum(total, 1e-6), 1.0 / c).astype(np.float32)


def as_is(onehot: np.ndarray) -> np.ndarray:
    """The ground truth itself as the coarse map (void: uniform)."""
    return upsample_onehot(onehot, onehot.shape[1:])


class Folder:
    """A data set: ``images/`` and ``masks/`` with the same stems (binary masks 0/255, or
    class ids with 255 = void), optional ``splits.txt`` and coarse-map folders."""

    def __init__(self, root: Path, classes: int | None = None):
        self.root = root
        self.name = root.name
        for sub in ("images", "masks"):
            if not (root / sub).is_dir():
                raise MissingData(f"{root}: no {sub}/ folder (a data set holds images/ and masks/)")
        self.images = {
            p.stem: p for p in sorted((root / "images").iterdir()) if p.suffix in IMAGE_SUFFIXES
        }
        self.masks = {p.stem: p for p in sorted((root / "masks").glob("*.png"))}
        self.stems = sorted(set(self.images) & set(self.masks))
        if not self.stems:
            raise MissingData(f"{root}: no image/mask pairs")
        self._classes = classes

    def classes(self, stems: list[str]) -> int:
        """2 for binary masks, else the largest class id of ``stems``' masks plus one."""
        if self._classes is None:
            values = set()
            for stem in stems:
                values |= set(np.unique(read_gray(self.masks[stem])).tolist())
            values.discard(VOID)
            binary = values <= {0, 255} or values <= {0, 1}
            self._classes = 2 if binary else int(max(values)) + 1
        return self._classes

    def gt(self, stem: str) -> np.ndarray:
        mask = read_gray(self.masks[stem])
        if self._classes == 2:
            return (mask > 127).astype(np.uint8) if mask.max() > 1 else mask.astype(np.uint8)
        return mask

    def image(self, stem: str) -> np.ndarray:
        return read_rgb(self.images[stem])

    def split(self, split: str, seed: int) -> list[str]:
        """The stems in the validation split of ``spnrefine train`` (or all)."""
        if split == "all":
            return self.stems
        val = split_stems(self.root, self.stems, VAL_FRACTION, seed)
        return [s for s in self.stems if s in val]


def coarse_file_probs(path: Path, classes: int, size: tuple[int, int]) -> tuple[np.ndarray, float]:
    """A coarse map file at any resolution → C×H×W probabilities at ``size`` (a soft 0-255
    foreground map for binary sets, class ids, 255 = void, for multi-class ones) and how much
    it was upsampled. Each axis is resized to the image's (segmenter maps may come from a
    stretched square input)."""
    coarse = read_gray(path)
    if coarse is None or coarse.ndim != 2:
        raise MissingData(f"{path}: not a single-channel PNG")
    factor = min(size[0] / coarse.shape[0], size[1] / coarse.shape[1])
    if classes == 2:
        fg = cv2.resize(coarse.astype(np.float32) / 255, size[::-1], cv2.INTER_LINEAR)
        return np.stack([1 - fg, fg]).astype(np.float32), factor
    return upsample_onehot(onehot_of(coarse, classes), size), factor


@dataclass
class Row:
    """One row of the report: a group, a data set, a kind of coarse map and its items."""

    group: str
    set_name: str
    coarse: str  # "×8", "gt", "×2", or the coarse source's name
    classes: int
    items: Callable[[], Iterator[Sample]]
    count: int

    @property
    def label(self) -> str:
        return f"{self.set_name} {self.coarse} ({self.count})"


def gt_row(
    group: str,
    folder: Folder,
    stems: list[str],
    factor: int,
    limit: int | None,
    hard: bool = False,
) -> Row:
    """Coarse maps made from the ground truth: area-downsampled ×factor (1: as it is), soft or
    (`hard`) as the label map or 0/255 mask of its majority classes."""
    classes = folder.classes(stems)
    stems = pick(stems, limit)
    if factor == 1:
        make = as_is
    else:
        make = partial(hard_from_onehot if hard else coarse_from_onehot, factor=factor)

    def items() -> Iterator[Sample]:
        for stem in stems:
            gt = folder.gt(stem)
            yield Sample(folder.image(stem), make(onehot_of(gt, classes)), gt, float(factor))

    name = "gt" if factor == 1 else f"×{factor}" + (" hard" if hard else "")
    return Row(group, folder.name, name, classes, items, len(stems))


def file_row(
    group: str,
    folder: Folder,
    stems: list[str],
    coarse_dir: Path,
    source: str,
    limit: int | None,
    set_name: str | None = None,
) -> Row:
    """Coarse maps read from ``coarse_dir`` (``<stem>.png``), for the stems that have one."""
    have = {p.stem for p in coarse_dir.glob("*.png")}
    stems = [s for s in stems if s in have]
    if not stems:
        raise MissingData(f"{coarse_dir}: no coarse map for any chosen image of {folder.name}")
    classes = folder.classes(stems)
    stems = pick(stems, limit)

    def items() -> Iterator[Sample]:
        for stem in stems:
            gt = folder.gt(stem)
            probs, factor = coarse_file_probs(coarse_dir / f"{stem}.png", classes, gt.shape)
            yield Sample(folder.image(stem), probs, gt, factor)

    return Row(group, set_name or folder.name, source, classes, items, len(stems))


def coarse_sources(root: Path) -> dict[str, Path]:
    """The coarse-map folders of a prepared set, by source name (``coarse-<source>/``)."""
    return {
        p.name.removeprefix("coarse-"): p
        for p in sorted(root.iterdir())
        if p.is_dir() and p.name.startswith("coarse-")
    }


def shared_rows(
    data: Path, sets: list[str], groups: list[str], split: str, seed: int, limit: int | None
) -> list[Row]:
    """In-domain rows (and their do-no-harm rows) from the training domains in ``data``."""
    missing = [s for s in sets if not (data / s).is_dir()]
    if missing:
        raise MissingData(f"{data}: missing {', '.join(f'{s}/' for s in missing)} (--data)")
    rows = []
    for name in sets:
        if name == "davis-coarse":
            if "in-domain" in groups:
                davis = Folder(data / "davis", classes=2)
                stems = davis.split(split, seed)
                coarse_dir = data / name
                rows.append(file_row("in-domain", davis, stems, coarse_dir, "isnet", limit, name))
            continue
        folder = Folder(data / name)
        stems = folder.split("val" if name == "camvid" else split, seed)
        if not stems:
            raise MissingData(f"{data / name}: no images in the {split} split")
        if "in-domain" in groups:
            rows.append(gt_row("in-domain", folder, stems, FACTOR, limit))
            rows.append(gt_row("in-domain", folder, stems, FACTOR, limit, hard=True))
        if "do-no-harm" in groups:
            rows.append(gt_row("do-no-harm", folder, stems, 1, limit))
            rows.append(gt_row("do-no-harm", folder, stems, HARM_FACTOR, limit))
    return rows


def held_out(source: str, segmenter: str | None) -> bool:
    """Whether a coarse source is the held-out segmenter's (its name, or a variant of it:
    ``mediapipe`` holds out ``mediapipe256-s8`` and ``mediapipe144-s16``)."""
    return bool(segmenter) and (source == segmenter or source.startswith(f"{segmenter}-"))


def prepared_rows(
    prepared: Path,
    unseen: list[str],
    val: list[str],
    segmenter: str | None,
    groups: list[str],
    seed: int,
    limit: int | None,
) -> list[Row]:
    """Unseen-domain, unseen-segmenter and do-no-harm rows from the prepared sets."""
    missing = [s for s in unseen + val if not (prepared / s).is_dir()]
    if missing:
        raise MissingData(f"{prepared}: missing {', '.join(f'{s}/' for s in missing)}")
    rows = []
    held_out_rows = 0
    for name in unseen + val:
        folder = Folder(prepared / name)
        stems = folder.stems if name in unseen else folder.split("val", seed)
        if not stems:
            raise MissingData(f"{folder.root}: no images in the validation split")
        sources = coarse_sources(folder.root)
        if name in unseen and "unseen-domain" in groups:
            rows.append(gt_row("unseen-domain", folder, stems, FACTOR, limit))
            for source, path in sources.items():
                if not held_out(source, segmenter):
                    rows.append(file_row("unseen-domain", folder, stems, path, source, limit))
        if "unseen-segmenter" in groups:
            for source, path in sources.items():
                have = {p.stem for p in path.glob("*.png")}
                if held_out(source, segmenter) and have.intersection(stems):
                    rows.append(file_row("unseen-segmenter", folder, stems, path, source, limit))
                    held_out_rows += 1
        if "do-no-harm" in groups:
            rows.append(gt_row("do-no-harm", folder, stems, 1, limit))
            rows.append(gt_row("do-no-harm", folder, stems, HARM_FACTOR, limit))
    if segmenter and "unseen-segmenter" in groups and not held_out_rows:
        raise MissingData(
            f"{prepared}: no coarse-{segmenter}*/ maps of the scored images of "
            f"{', '.join(unseen + val)} (--segmenter)"
        )
    return rows


def boundary_distance(gt: np.ndarray) -> np.ndarray:
    """Distance in pixels from every pixel to the nearest true boundary of a binary map."""
    valid = gt != VOID
    edge = boundary_map(gt == 1, valid) | boundary_map((gt == 0) & valid, valid)
    return cv2.distanceTransform((~edge).astype(np.uint8), cv2.DIST_L2, 5)


def thin_parts(gt: np.ndarray) -> np.ndarray:
    """Where a binary map is narrower than THIN_PX: foreground that an opening with a disk of
    that size removes, background that a closing fills, each grown by a pixel so that the
    boundary on either side of a thin gap counts."""
    fg = (gt == 1).astype(np.uint8)
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (THIN_PX, THIN_PX))
    opened = cv2.morphologyEx(fg, cv2.MORPH_OPEN, disk)
    closed = cv2.morphologyEx(fg, cv2.MORPH_CLOSE, disk)
    thin = ((fg > opened) | (closed > fg)).astype(np.uint8)
    return cv2.dilate(thin, np.ones((3, 3), np.uint8)) > 0


def topology(labels: np.ndarray, classes: int) -> np.ndarray:
    """Per image: (foreground components, holes) of a binary map; (regions, 0) of a label map."""
    if classes == 2:
        fg = labels == 1
        return np.array([count_components(fg), count_holes(fg)])
    return np.array([count_regions(labels), 0])


@dataclass
class Truth:
    """What the scores need of one ground truth and its coarse map, computed once per image."""

    gt: np.ndarray
    topology: np.ndarray  # of the ground truth
    coarse_topology: np.ndarray  # of the coarse map's argmax
    distance: np.ndarray | None = None  # boundary_distance(gt), binary sets
    edge: np.ndarray | None = None  # its boundary as the boundary F sees it
    thin: np.ndarray | None = None  # thin_parts(gt)

    @classmethod
    def of(cls, sample: Sample, classes: int) -> Truth:
        gt = sample.gt
        coarse = sample.probs.argmax(0).astype(np.uint8)
        tops = topology(gt, classes), topology(coarse, classes)
        if classes != 2:
            return cls(gt, *tops)
        edge = boundary_map(gt == 1, gt != VOID)
        return cls(gt, *tops, boundary_distance(gt), edge, thin_parts(gt))


def boundary_misses(
    pred: np.ndarray, truth: Truth, tolerance: float = DEFAULT_TOLERANCE_PX
) -> np.ndarray:
    """Both sides of the boundary F, in pixels. Recall side: the true boundary, that at thin
    parts, that with no predicted boundary within the tolerance (missed), and of it that at
    thin parts. Precision side: the predicted boundary, that with no true boundary within the
    tolerance (extra), and of it that at thin parts of the prediction."""
    pred_edge = boundary_map(pred == 1, truth.gt != VOID)
    missed = truth.edge & ~near(pred_edge, tolerance)
    extra = pred_edge & ~near(truth.edge, tolerance)
    edge, thin = truth.edge, truth.thin
    pred_thin = thin_parts(np.where(truth.gt == VOID, VOID, pred))
    return np.array(
        [
            edge.sum(),
            (edge & thin).sum(),
            missed.sum(),
            (missed & thin).sum(),
            pred_edge.sum(),
            extra.sum(),
            (extra & pred_thin).sum(),
        ]
    )


def error_bands(pred: np.ndarray, gt: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """Wrong pixels of a binary prediction: all, within NEAR_PX of the true boundary (where a
    refiner works), and beyond FAR_PX (a missed part or a spurious blob of the segmenter)."""
    wrong = (pred != gt) & (gt != VOID)
    return np.array(
        [wrong.sum(), (wrong & (distance <= NEAR_PX)).sum(), (wrong & (distance > FAR_PX)).sum()]
    )


@dataclass
class Scores:
    """What one method scored on one row."""

    classes: int
    tolerance: float = DEFAULT_TOLERANCE_PX  # of the boundary F, in pixels
    iou: IoUAccumulator = field(default_factory=IoUAccumulator)
    confusion: ConfusionMatrix | None = None
    boundary: list[float] = field(default_factory=list)
    mba: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    foreground: np.ndarray = field(
        default_factory=lambda: np.zeros(3, np.int64)
    )  # true, missed, false
    topology: np.ndarray = field(default_factory=lambda: np.zeros(2, np.int64))  # summed per image
    errors: np.ndarray = field(default_factory=lambda: np.zeros(3, np.int64))  # all, near, far
    missed: np.ndarray = field(default_factory=lambda: np.zeros(7, np.int64))  # boundary_misses

    def __post_init__(self) -> None:
        if self.multiclass and self.confusion is None:
            self.confusion = ConfusionMatrix(self.classes)

    @property
    def multiclass(self) -> bool:
        return self.classes != 2

    def update(self, pred: np.ndarray, truth: Truth) -> None:
        """Score one image."""
        gt = truth.gt
        ignore = gt == VOID
        pred = np.where(ignore, VOID, pred) if self.multiclass else pred
        self.topology += topology(pred, self.classes)
        if self.multiclass:
            self.confusion.update(pred, gt)
            self.boundary.append(mean_boundary_f(pred, gt, self.tolerance))
            return
        self.iou.update(pred, gt == 1, ignore)
        self.foreground += foreground_errors(pred == 1, gt == 1, ignore)
        self.boundary.append(boundary_f(pred, gt == 1, self.tolerance, ignore))
        self.mba.append(mba(pred, gt == 1, ignore))
        self.errors += error_bands(pred, gt, truth.distance)
        self.missed += boundary_misses(pred, truth, self.tolerance)

    def row(self) -> dict[str, float]:
        """IoU = ΣI/ΣU (binary) or mIoU (multi-class); F and mBA are per-image means; missed
        and false foreground are shares of the true foreground."""
        true, missed, false = self.foreground
        binary = not self.multiclass and true > 0
        return {
            "IoU": self.confusion.miou() if self.multiclass else self.iou.dataset_iou,
            "mIoU/img": math.nan if self.multiclass else self.iou.mean_iou,
            "F": float(np.nanmean(self.boundary)),
            "mBA": float(np.mean(self.mba)) if self.mba else math.nan,
            "missed": missed / true if binary else math.nan,
            "false": false / true if binary else math.nan,
            "ms/img": 1000 * float(np.mean(self.seconds)),
        }

    def quality(self) -> float:
        """Selection score for the grid: mean of the quality columns this set has."""
        row = self.row()
        return float(np.nanmean([row["IoU"], row["F"], row["mBA"]]))


@dataclass
class RowResult:
    row: Row
    scores: dict[str, Scores]
    gt_topology: np.ndarray = field(default_factory=lambda: np.zeros(2, np.int64))
    coarse_topology: np.ndarray = field(default_factory=lambda: np.zeros(2, np.int64))
    count: int = 0


def evaluate(
    row: Row, methods: dict[str, RefineFn], tolerance: float = DEFAULT_TOLERANCE_PX
) -> RowResult:
    result = RowResult(row, {name: Scores(row.classes, tolerance) for name in methods})
    for sample in row.items():
        truth = Truth.of(sample, row.classes)  # one per image
        result.gt_topology += truth.topology
        result.coarse_topology += truth.coarse_topology
        for name, refine in methods.items():
            start = time.perf_counter()
            out = refine(sample.image, sample.probs, sample.factor)
            result.scores[name].seconds.append(time.perf_counter() - start)
            result.scores[name].update(out.argmax(0).astype(np.uint8), truth)
        result.count += 1
        print(f"\r{row.group} {row.label}: {result.count}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    if not result.count:
        raise MissingData(f"{row.group} {row.set_name} {row.coarse}: no items")
    return result


def default_methods(radius: int, eps: float, with_crf: bool) -> dict[str, RefineFn]:
    methods: dict[str, RefineFn] = {
        "bilinear": ignoring_factor(refine_bilinear),
        "guided": ignoring_factor(partial(refine_guided, radius=radius, eps=eps)),
    }
    if with_crf:
        methods["crf"] = ignoring_factor(refine_crf)
    return methods


def grid_methods() -> dict[str, RefineFn]:
    methods: dict[str, RefineFn] = {"bilinear": ignoring_factor(refine_bilinear)}
    for radius, eps in itertools.product(GRID_RADII, GRID_EPS):
        guided = partial(refine_guided, radius=radius, eps=eps)
        methods[f"guided r={radius} eps={eps:g}"] = ignoring_factor(guided)
    return methods


def cell(value: float, digits: int, width: int = 9, percent: bool = False) -> str:
    if math.isnan(value):
        return f"{'-':>{width}}"
    return f"{value:>{width}.{digits}%}" if percent else f"{value:>{width}.{digits}f}"


def print_table(results: list[RowResult], tolerance: float) -> None:
    """Quality, and the components and holes per image (a label map's regions) beside the
    ground truth's and the coarse map's."""
    width = max(len(m) for r in results for m in r.scores) + 2
    label = max(len(r.row.label) for r in results) + 2
    titles = ["IoU", "mIoU/img", f"F@{tolerance:g}px", "mBA", "missed", "false"]
    titles += ["comp", "holes", "+comp", "+holes", "ms/img"]
    print(f"{'group':<18}{'set coarse (items)':<{label}}{'method':<{width}}", end="")
    print("".join(f"{t:>9}" for t in titles))
    for result in results:
        n = result.count
        head = f"{result.row.group:<18}{result.row.label:<{label}}"
        gt_comp, gt_holes = result.gt_topology / n
        coarse_comp, coarse_holes = result.coarse_topology / n
        blank = "".join(f"{'':>9}" for _ in range(6))
        print(f"{head}{'(truth)':<{width}}{blank}{gt_comp:>9.2f}{gt_holes:>9.2f}")
        for method, s in result.scores.items():
            row = s.row()
            comp, holes = s.topology / n
            cells = cell(row["IoU"], 4) + cell(row["mIoU/img"], 4) + cell(row["F"], 4)
            cells += cell(row["mBA"], 4) + cell(row["missed"], 2, percent=True)
            cells += cell(row["false"], 2, percent=True)
            cells += f"{comp:>9.2f}{holes:>9.2f}{comp - coarse_comp:>+9.2f}"
            cells += f"{holes - coarse_holes:>+9.2f}{row['ms/img']:>9.1f}"
            print(f"{head}{method:<{width}}{cells}")
    print(
        "\nIoU: ΣI/ΣU (mIoU for label maps); missed / false: foreground pixels missed and "
        "invented, shares of the true foreground; comp / holes: foreground components and "
        "holes per image (label maps: regions); +comp / +holes: added over the coarse map's "
        "argmax (bilinear's own row)."
    )


def print_harm(results: list[RowResult]) -> None:
    """The do-no-harm check: each method's IoU on an input that is already right, against the
    input's own (bilinear upsampling is the input)."""
    harm = [r for r in results if r.row.group == "do-no-harm"]
    if not harm:
        return
    print(f"\ndo-no-harm: IoU in → out (pass: no more than {HARM_TOLERANCE:g} lost)")
    for result in harm:
        given = result.scores["bilinear"].row()["IoU"]
        for method, s in result.scores.items():
            if method == "bilinear":
                continue
            out = s.row()["IoU"]
            verdict = "pass" if out >= given - HARM_TOLERANCE else "FAIL"
            print(
                f"{result.row.label:<28}{method:<14}{given:.4f} → {out:.4f} "
                f"({out - given:+.4f}) {verdict}"
            )


def print_error_bands(results: list[RowResult], tolerance: float) -> None:
    binary = [r for r in results if r.row.classes == 2 and r.row.group != "do-no-harm"]
    if not binary:
        return
    print(
        f"\nwrong pixels (binary sets): all, share within {NEAR_PX} px of the true boundary, "
        f"share beyond {FAR_PX} px"
    )
    for result in binary:
        for method, s in result.scores.items():
            total, close, far = s.errors
            if total:
                print(
                    f"{result.row.label:<28}{method:<14}{total:>10d}"
                    f"{close / total:>8.1%}{far / total:>8.1%}"
                )
    print(
        f"\nboundary F's misses at {tolerance:g} px (binary sets). Recall side: share "
        f"of the true boundary with no predicted boundary that near (missed), share of that at "
        f"parts under {THIN_PX} px wide (thin), share of the whole true boundary at such parts. "
        f"Precision side: share of the predicted boundary with no true boundary that near "
        f"(extra), share of that at thin parts of the prediction"
    )
    print(f"{'':42}{'missed':>8}{'thin':>8}{'thin/all':>10}{'extra':>8}{'thin':>8}")
    for result in binary:
        for method, s in result.scores.items():
            edge, thin, missed, missed_thin, pred_edge, extra, extra_thin = s.missed
            if not edge:
                continue
            print(
                f"{result.row.label:<28}{method:<14}{missed / edge:>8.1%}"
                f"{missed_thin / max(missed, 1):>8.1%}{thin / edge:>10.1%}"
                f"{extra / max(pred_edge, 1):>8.1%}{extra_thin / max(extra, 1):>8.1%}"
            )


def print_grid_ranking(results: list[RowResult], tolerance: float) -> None:
    methods = results[0].scores.keys()
    ranking = sorted(
        ((np.mean([r.scores[m].quality() for r in results]), m) for m in methods), reverse=True
    )
    print(f"\nmean over rows of mean(IoU, F@{tolerance:g}px, mBA):")
    for score, method in ranking:
        print(f"  {score:.4f}  {method}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=os.environ.get("SPNREFINE_DATA") or None,
        help="folder with the training domains: davis/, horses/, camvid/, "
        "davis-coarse/ (in-domain rows); default $SPNREFINE_DATA",
    )
    parser.add_argument("--sets", nargs="+", choices=SETS, default=list(SETS))
    parser.add_argument("--prepared", type=Path, help="folder of further prepared data sets")
    parser.add_argument(
        "--unseen", nargs="+", default=[], metavar="SET", help="prepared sets kept out of training"
    )
    parser.add_argument(
        "--val",
        nargs="+",
        default=[],
        metavar="SET",
        help="prepared training sets whose validation split is scored",
    )
    parser.add_argument(
        "--segmenter",
        metavar="SOURCE",
        help="the coarse source kept out of training: coarse-SOURCE/ and coarse-SOURCE-*/ of "
        "the prepared sets (on the validation split of --val sets, all of --unseen sets)",
    )
    parser.add_argument("--groups", nargs="+", choices=GROUPS, default=list(GROUPS))
    parser.add_argument("--limit", type=int, default=None, help="items per row (evenly spaced)")
    parser.add_argument("--radius", type=int, default=DEFAULT_RADIUS)
    parser.add_argument("--eps", type=float, default=DEFAULT_EPS)
    parser.add_argument("--no-crf", action="store_true", help="skip the dense CRF (slow)")
    parser.add_argument("--grid", action="store_true", help="grid-search guided r and eps")
    parser.add_argument("--split", choices=("all", "val"), default="all")
    parser.add_argument("--seed", type=int, default=0, help="the training run's --seed")
    parser.add_argument("--spn", metavar="WEIGHTS", help="also score spnrefine with these weights")
    parser.add_argument(
        "--unguarded",
        action="store_true",
        help="with --spn, also score the model's map without the do-no-harm guard",
    )
    parser.add_argument("--overlap", type=int, default=None, help="spnrefine tile overlap")
    parser.add_argument("--tile", type=int, default=None, help="spnrefine tile size")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE_PX,
        metavar="PX",
        help="boundary F tolerance in pixels (DAVIS's own benchmark: 0.008 of the diagonal, "
        "8 px at 854×480)",
    )
    args = parser.parse_args(argv)
    if args.data is None and args.prepared is None:
        parser.error(
            "no data to score: give --data or set $SPNREFINE_DATA (the folder with davis/, "
            "horses/, camvid/, davis-coarse/) and/or --prepared with --unseen or --val sets"
        )
    if (args.unseen or args.val or args.segmenter) and args.prepared is None:
        parser.error("--unseen, --val and --segmenter name sets under --prepared; give it")
    if args.prepared is not None and not (args.unseen or args.val):
        parser.error("--prepared: name its sets with --unseen and/or --val")
    return args


def rows_of(args: argparse.Namespace) -> list[Row]:
    rows = []
    for option, root in (("--data", args.data), ("--prepared", args.prepared)):
        if root is not None and not root.is_dir():
            raise MissingData(f"{option} {root}: no such folder")
    if args.data is not None:
        groups = ["in-domain"] if args.grid else args.groups
        rows += shared_rows(args.data, args.sets, groups, args.split, args.seed, args.limit)
    if args.prepared is not None and not args.grid:
        rows += prepared_rows(
            args.prepared,
            args.unseen,
            args.val,
            args.segmenter,
            args.groups,
            args.seed,
            args.limit,
        )
    if not rows:
        raise MissingData(f"no rows: --groups {' '.join(args.groups)} has nothing in this data")
    return rows


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    rows = rows_of(args)  # every folder is checked before anything runs
    with_crf = not args.no_crf and importlib.util.find_spec("pydensecrf") is not None
    if not with_crf and not args.no_crf:
        print("pydensecrf not installed: skipping the CRF", file=sys.stderr)
    methods = grid_methods() if args.grid else default_methods(args.radius, args.eps, with_crf)
    if args.spn:
        tiling = {
            name: value
            for name, value in (("overlap", args.overlap), ("tile", args.tile))
            if value is not None
        }
        refiner = Refiner.load(args.spn, **tiling)
        methods["spn"] = spn_method(refiner)
        if args.unguarded:
            methods["spn-unguarded"] = spn_method(Refiner.load(args.spn, guard=False, **tiling))
    results = [evaluate(row, methods, args.tolerance) for row in rows]
    print_table(results, args.tolerance)
    if args.grid:
        print_grid_ranking(results, args.tolerance)
        return
    print_harm(results)
    print_error_bands(results, args.tolerance)


if __name__ == "__main__":
    main()
