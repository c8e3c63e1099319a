"""Score spnrefine against bilinear upsampling, the guided filter and dense CRF on shared/data.

Run from the repository root: python benchmarks/quality.py [--split val] [--spn WEIGHTS]
[--limit N] [--grid] [--no-crf] [--tolerance PX]. ``--split val`` keeps only what the default
model's training held out (the same seeded split as ``spnrefine train``: whole DAVIS
sequences, CamVid val, a fifth of the horses); davis-coarse is then restricted to the
held-out DAVIS sequences. On the binary sets it also reports where the wrong pixels lie (at
the true boundary or far from it) and how much of the true boundary has no predicted
boundary near it, and how much of that is at thin parts of the object or of the background.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import cv2
import numpy as np

from spnrefine.api import Refiner
from spnrefine.baselines import refine_bilinear, refine_crf, refine_guided
from spnrefine.baselines.guided import DEFAULT_EPS, DEFAULT_RADIUS
from spnrefine.metrics import (
    DEFAULT_TOLERANCE_PX,
    ConfusionMatrix,
    IoUAccumulator,
    boundary_f,
    boundary_map,
    mba,
    mean_boundary_f,
    near,
)
from spnrefine.train.data import VAL_FRACTION, split_stems
from spnrefine.train.loop import THIN_WIDTH

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SETS = ("davis", "horses", "camvid", "davis-coarse")
CAMVID_CLASSES = 11
FACTOR = 8
NEAR_PX, FAR_PX = 4, 32  # error bands: at the true boundary, and far from any
THIN_PX = THIN_WIDTH  # parts narrower than this count as thin, as `--thin-weight` trains
GRID_RADII = (1, 2, 4, 8, 16)
GRID_EPS = (1e-4, 1e-3, 1e-2, 1e-1)

RefineFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass
class Sample:
    image: np.ndarray  # H×W×3 uint8 RGB
    probs: np.ndarray  # C×H×W float32 coarse probabilities at image size
    gt: np.ndarray  # H×W labels (0/1 for binary sets, 255 = ignore)


def read_rgb(path: Path) -> np.ndarray:
    return np.ascontiguousarray(cv2.imread(str(path), cv2.IMREAD_COLOR)[..., ::-1])


def read_gray(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def pick(items: list, limit: int | None) -> list:
    """`limit` items spread evenly over the sorted list, so every sequence is represented."""
    if limit is None or limit >= len(items):
        return items
    return [items[i] for i in np.linspace(0, len(items) - 1, limit).round().astype(int)]


def coarse_from_onehot(onehot: np.ndarray) -> np.ndarray:
    """C×H×W one-hot → area-downsample ×FACTOR → bilinear back up → renormalised C×H×W."""
    c, h, w = onehot.shape
    small_size = (max(1, round(w / FACTOR)), max(1, round(h / FACTOR)))
    hwc = np.ascontiguousarray(onehot.transpose(1, 2, 0))
    small = cv2.resize(hwc, small_size, interpolation=cv2.INTER_AREA).reshape(*small_size[::-1], c)
    up = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR).reshape(h, w, c)
    probs = np.ascontiguousarray(up.transpose(2, 0, 1))
    # Void pixels are all-zero one-hots: renormalise, and call an all-void area uniform.
    total = probs.sum(0, keepdims=True)
    return np.where(total > 1e-6, probs / np.maximum(total, 1e-6), 1.0 / c).astype(np.float32)


def held_out(folder: str, stems: list[str], split: str, seed: int) -> list[str]:
    """``stems`` of ``folder`` in the validation split of ``spnrefine train`` (or all)."""
    if split == "all":
        return stems
    val = split_stems(DATA / folder, stems, VAL_FRACTION, seed)
    return [s for s in stems if s in val]


def binary_samples(folder: str, limit: int | None, split: str, seed: int) -> Iterator[Sample]:
    root = DATA / folder
    paths = {p.stem: p for p in sorted((root / "masks").glob("*.png"))}
    chosen = held_out(folder, sorted(paths), split, seed)
    for mask_path in pick([paths[s] for s in chosen], limit):
        gt = (read_gray(mask_path) > 127).astype(np.uint8)
        onehot = np.stack([1 - gt, gt]).astype(np.float32)
        image = read_rgb(root / "images" / f"{mask_path.stem}.jpg")
        yield Sample(image, coarse_from_onehot(onehot), gt)


def camvid_samples(limit: int | None) -> Iterator[Sample]:
    root = DATA / "camvid"
    lines = (root / "splits.txt").read_text().split("\n")
    names = sorted(n for n, _, split in (ln.partition("\t") for ln in lines) if split == "val")
    for name in pick(names, limit):
        gt = read_gray(root / "masks" / f"{name}.png")
        onehot = (gt[None] == np.arange(CAMVID_CLASSES)[:, None, None]).astype(np.float32)
        yield Sample(read_rgb(root / "images" / f"{name}.jpg"), coarse_from_onehot(onehot), gt)


def davis_coarse_samples(limit: int | None, split: str, seed: int) -> Iterator[Sample]:
    davis = DATA / "davis"
    paths = {p.stem: p for p in sorted((DATA / "davis-coarse").glob("*.png"))}
    all_davis = sorted(p.stem for p in (davis / "images").glob("*.jpg"))
    keep = set(held_out("davis", all_davis, split, seed))
    for coarse_path in pick([paths[s] for s in sorted(paths) if s in keep], limit):
        image = read_rgb(davis / "images" / f"{coarse_path.stem}.jpg")
        gt = (read_gray(davis / "masks" / coarse_path.name) > 127).astype(np.uint8)
        h, w = gt.shape
        # The maps come from a stretched square frame: resize each axis to the image's.
        fg = cv2.resize(read_gray(coarse_path).astype(np.float32) / 255, (w, h), cv2.INTER_LINEAR)
        yield Sample(image, np.stack([1 - fg, fg]).astype(np.float32), gt)


def samples(name: str, limit: int | None, split: str, seed: int) -> Iterator[Sample]:
    if name == "camvid":  # CamVid's own val split, whatever --split says
        return camvid_samples(limit)
    if name == "davis-coarse":
        return davis_coarse_samples(limit, split, seed)
    return binary_samples(name, limit, split, seed)


def boundary_distance(gt: np.ndarray) -> np.ndarray:
    """Distance in pixels from every pixel to the nearest true boundary of a binary map."""
    valid = gt != 255
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


@dataclass
class Truth:
    """What the binary scores need of one ground truth, computed once per image."""

    gt: np.ndarray
    distance: np.ndarray  # boundary_distance(gt)
    edge: np.ndarray  # its boundary as the boundary F sees it
    thin: np.ndarray  # thin_parts(gt)

    @classmethod
    def of(cls, gt: np.ndarray) -> Truth:
        edge = boundary_map(gt == 1, gt != 255)
        return cls(gt, boundary_distance(gt), edge, thin_parts(gt))


def boundary_misses(
    pred: np.ndarray, truth: Truth, tolerance: float = DEFAULT_TOLERANCE_PX
) -> np.ndarray:
    """Both sides of the boundary F, in pixels. Recall side: the true boundary, that at thin
    parts, that with no predicted boundary within the tolerance (missed), and of it that at
    thin parts. Precision side: the predicted boundary, that with no true boundary within the
    tolerance (extra), and of it that at thin parts of the prediction."""
    pred_edge = boundary_map(pred == 1, truth.gt != 255)
    missed = truth.edge & ~near(pred_edge, tolerance)
    extra = pred_edge & ~near(truth.edge, tolerance)
    edge, thin = truth.edge, truth.thin
    pred_thin = thin_parts(np.where(truth.gt == 255, 255, pred))
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
    wrong = (pred != gt) & (gt != 255)
    return np.array(
        [wrong.sum(), (wrong & (distance <= NEAR_PX)).sum(), (wrong & (distance > FAR_PX)).sum()]
    )


@dataclass
class Scores:
    """What one method scored on one set."""

    multiclass: bool
    tolerance: float = DEFAULT_TOLERANCE_PX  # of the boundary F, in pixels
    iou: IoUAccumulator = field(default_factory=IoUAccumulator)
    confusion: ConfusionMatrix = field(default_factory=lambda: ConfusionMatrix(CAMVID_CLASSES))
    boundary: list[float] = field(default_factory=list)
    mba: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    errors: np.ndarray = field(default_factory=lambda: np.zeros(3, np.int64))  # all, near, far
    missed: np.ndarray = field(default_factory=lambda: np.zeros(7, np.int64))  # boundary_misses

    def update(self, pred: np.ndarray, gt: np.ndarray, truth: Truth | None) -> None:
        """Score one image; ``truth`` is ``Truth.of(gt)`` on the binary sets."""
        if self.multiclass:
            self.confusion.update(pred, gt)
            self.boundary.append(mean_boundary_f(pred, gt, self.tolerance))
        else:
            self.iou.update(pred, gt)
            self.boundary.append(boundary_f(pred, gt, self.tolerance))
            self.mba.append(mba(pred, gt))
            self.errors += error_bands(pred, gt, truth.distance)
            self.missed += boundary_misses(pred, truth, self.tolerance)

    def row(self) -> dict[str, float]:
        """IoU = ΣI/ΣU (binary) or mIoU (multi-class); F and mBA are per-image means."""
        return {
            "IoU": self.confusion.miou() if self.multiclass else self.iou.dataset_iou,
            "mIoU/img": math.nan if self.multiclass else self.iou.mean_iou,
            "F": float(np.nanmean(self.boundary)),
            "mBA": float(np.mean(self.mba)) if self.mba else math.nan,
            "ms/img": 1000 * float(np.mean(self.seconds)),
        }

    def quality(self) -> float:
        """Selection score for the grid: mean of the quality columns this set has."""
        row = self.row()
        return float(np.nanmean([row["IoU"], row["F"], row["mBA"]]))


def evaluate(
    set_name: str,
    methods: dict[str, RefineFn],
    limit: int | None,
    split: str,
    seed: int,
    tolerance: float = DEFAULT_TOLERANCE_PX,
) -> dict[str, Scores]:
    multiclass = set_name == "camvid"
    scores = {name: Scores(multiclass, tolerance) for name in methods}
    count = 0
    for sample in samples(set_name, limit, split, seed):
        truth = None if multiclass else Truth.of(sample.gt)  # one per image
        for name, refine in methods.items():
            start = time.perf_counter()
            out = refine(sample.image, sample.probs)
            scores[name].seconds.append(time.perf_counter() - start)
            pred = out.argmax(0).astype(np.uint8)
            scores[name].update(pred, sample.gt, truth)
        count += 1
        print(f"\r{set_name}: {count}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return scores


def default_methods(radius: int, eps: float, with_crf: bool) -> dict[str, RefineFn]:
    methods: dict[str, RefineFn] = {
        "bilinear": refine_bilinear,
        "guided": partial(refine_guided, radius=radius, eps=eps),
        "guided-gray": partial(refine_guided, radius=radius, eps=eps, gray=True),
    }
    if with_crf:
        methods["crf"] = refine_crf
    return methods


def grid_methods() -> dict[str, RefineFn]:
    methods: dict[str, RefineFn] = {"bilinear": refine_bilinear}
    for radius, eps in itertools.product(GRID_RADII, GRID_EPS):
        methods[f"guided r={radius} eps={eps:g}"] = partial(refine_guided, radius=radius, eps=eps)
    return methods


def print_table(results: dict[str, dict[str, Scores]], tolerance: float) -> None:
    columns = ["IoU", "mIoU/img", "F", "mBA", "ms/img"]
    titles = [f"F@{tolerance:g}px" if c == "F" else c for c in columns]
    width = max(len(m) for scores in results.values() for m in scores) + 2
    print(f"{'set':<20}{'method':<{width}}" + "".join(f"{c:>10}" for c in titles))
    for set_name, scores in results.items():
        n = len(next(iter(scores.values())).seconds)
        for method, s in scores.items():
            row = s.row()
            cells = "".join(
                f"{'-':>10}" if math.isnan(row[c]) else f"{row[c]:>10.{1 if c == 'ms/img' else 4}f}"
                for c in columns
            )
            print(f"{set_name + f' ({n})':<20}{method:<{width}}{cells}")


def print_error_bands(results: dict[str, dict[str, Scores]], tolerance: float) -> None:
    print(
        f"\nwrong pixels (binary sets): all, share within {NEAR_PX} px of the true boundary, "
        f"share beyond {FAR_PX} px"
    )
    for set_name, scores in results.items():
        for method, s in scores.items():
            total, close, far = s.errors
            if s.multiclass or not total:
                continue
            print(f"{set_name:<20}{method:<14}{total:>10d}{close / total:>8.1%}{far / total:>8.1%}")
    print(
        f"\nboundary F's misses at {tolerance:g} px (binary sets). Recall side: share "
        f"of the true boundary with no predicted boundary that near (missed), share of that at "
        f"parts under {THIN_PX} px wide (thin), share of the whole true boundary at such parts. "
        f"Precision side: share of the predicted boundary with no true boundary that near "
        f"(extra), share of that at thin parts of the prediction"
    )
    print(f"{'':34}{'missed':>8}{'thin':>8}{'thin/all':>10}{'extra':>8}{'thin':>8}")
    for set_name, scores in results.items():
        for method, s in scores.items():
            edge, thin, missed, missed_thin, pred_edge, extra, extra_thin = s.missed
            if s.multiclass or not edge:
                continue
            print(
                f"{set_name:<20}{method:<14}{missed / edge:>8.1%}"
                f"{missed_thin / max(missed, 1):>8.1%}{thin / edge:>10.1%}"
                f"{extra / max(pred_edge, 1):>8.1%}{extra_thin / max(extra, 1):>8.1%}"
            )


def print_grid_ranking(results: dict[str, dict[str, Scores]], tolerance: float) -> None:
    methods = next(iter(results.values())).keys()
    ranking = sorted(
        ((np.mean([results[s][m].quality() for s in results]), m) for m in methods), reverse=True
    )
    print(f"\nmean over sets of mean(IoU, F@{tolerance:g}px, mBA):")
    for score, method in ranking:
        print(f"  {score:.4f}  {method}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--limit", type=int, default=None, help="images per set (evenly spaced)")
    parser.add_argument("--sets", nargs="+", choices=SETS, default=list(SETS))
    parser.add_argument("--radius", type=int, default=DEFAULT_RADIUS)
    parser.add_argument("--eps", type=float, default=DEFAULT_EPS)
    parser.add_argument("--no-crf", action="store_true", help="skip the dense CRF (slow)")
    parser.add_argument("--grid", action="store_true", help="grid-search guided r and eps")
    parser.add_argument("--split", choices=("all", "val"), default="all")
    parser.add_argument("--seed", type=int, default=0, help="the training run's --seed")
    parser.add_argument("--spn", metavar="WEIGHTS", help="also score spnrefine with these weights")
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
    args = parser.parse_args()

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
        methods["spn"] = refiner.refine_probs
    results = {
        name: evaluate(name, methods, args.limit, args.split, args.seed, args.tolerance)
        for name in args.sets
    }
    print_table(results, args.tolerance)
    if args.grid:
        print_grid_ranking(results, args.tolerance)
    else:
        print_error_bands(results, args.tolerance)


if __name__ == "__main__":
    main()
