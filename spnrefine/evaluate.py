"""Scoring refined masks against ground truth: files paired by stem, binary scores (IoU,
boundary F, mBA) or multi-class ones (mIoU, per-class IoU, mean boundary F), and the same for
the coarse input upsampled, so that the gain shows."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from spnrefine.errors import SpnrefineError
from spnrefine.io import DEFAULT_MAX_PIXELS, load_coarse, load_image
from spnrefine.io.coarse import VOID
from spnrefine.io.names import COARSE_EXTENSIONS, COARSE_SUFFIXES, IMAGE_EXTENSIONS
from spnrefine.io.outputs import REFINED_SUFFIX
from spnrefine.labels import present_classes, restrict_classes, to_labels
from spnrefine.metrics import (
    DEFAULT_TOLERANCE_PX,
    ConfusionMatrix,
    IoUAccumulator,
    boundary_f,
    mba,
    mean_boundary_f,
)
from spnrefine.upsample import (
    check_class_pixels,
    check_coarse_size,
    upsample_ignore,
    upsample_probs,
)

# Label ids 0..254 have a row and a column; column 255 counts void predictions, which are
# misses of the ground truth's class (void ground truth is skipped).
_MATRIX_SIZE = VOID + 1
_SHOWN_NAMES = 5


@dataclass(frozen=True)
class EvalPair:
    """One scored image: the prediction, its ground truth, and optionally the coarse map it
    was refined from and the image."""

    name: str
    pred: Path
    gt: Path
    coarse: Path | None = None
    image: Path | None = None


@dataclass
class Pairing:
    """The pairs to score, the ground-truth files that no prediction matched, and the
    predictions that found no ground truth (left out, not scored)."""

    pairs: list[EvalPair]
    unmatched_gt: list[Path] = field(default_factory=list)
    unmatched_pred: list[Path] = field(default_factory=list)


def find_eval_pairs(
    pred: str | Path,
    gt: str | Path,
    *,
    coarse: str | Path | None = None,
    image: str | Path | None = None,
) -> Pairing:
    """Pair predictions with ground truth (and coarse maps, images) by file stem.

    Each argument is a folder or a single file. A prediction `NAME.png` (or `NAME_refined.png`,
    as `refine` names it) pairs with `NAME.*` in the ground-truth folder; the coarse map is
    `NAME.*` (or `NAME_coarse`, `_seg`, `_mask`) and the image `NAME.*`. A prediction without
    ground truth, and ground truth without a prediction, are left out and listed; one without
    its coarse map or image is an error.
    """
    pred, gt = Path(pred), Path(gt)
    if pred.is_dir():
        if not gt.is_dir():
            raise SpnrefineError(
                "the predictions are a folder, so the ground truth must be one too", gt
            )
        preds = sorted(_by_stem(pred, COARSE_EXTENSIONS).values())
        if not preds:
            raise SpnrefineError(f"no predictions found ({' '.join(COARSE_EXTENSIONS)})", pred)
    else:
        preds = [_existing_file(pred)]
    gt_files = _by_stem(gt, COARSE_EXTENSIONS) if gt.is_dir() else None
    coarse_files = _by_stem(Path(coarse), COARSE_EXTENSIONS) if _is_dir(coarse) else None
    image_files = _by_stem(Path(image), IMAGE_EXTENSIONS) if _is_dir(image) else None
    single = len(preds) == 1 and not pred.is_dir()

    pairs, missing = [], []
    for p in preds:
        if gt_files is None:
            gt_path = _existing_file(gt)
        else:
            gt_path = gt_files.get(p.stem) or gt_files.get(p.stem.removesuffix(REFINED_SUFFIX))
            if gt_path is None:
                missing.append(p)
                continue
        name = gt_path.stem
        pairs.append(
            EvalPair(
                name,
                p,
                gt_path,
                _partner(name, coarse, coarse_files, COARSE_SUFFIXES, "coarse map", single),
                _partner(name, image, image_files, (), "image", single),
            )
        )
    if not pairs:
        raise SpnrefineError(
            f"no prediction has ground truth in {gt}: " + _names([p.name for p in missing]),
            pred,
        )
    used = {pair.gt for pair in pairs}
    unmatched = [] if gt_files is None else [p for p in gt_files.values() if p not in used]
    return Pairing(pairs, sorted(unmatched), missing)


def _is_dir(path: str | Path | None) -> bool:
    return path is not None and Path(path).is_dir()


def _existing_file(path: Path) -> Path:
    if not path.is_file():
        raise SpnrefineError("file not found" if not path.exists() else "not a file", path)
    return path


def _by_stem(folder: Path, extensions: tuple[str, ...]) -> dict[str, Path]:
    if not folder.is_dir():
        raise SpnrefineError("folder not found", folder)
    found: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in extensions and path.is_file():
            found.setdefault(path.stem, []).append(path)
    clashes = [paths for paths in found.values() if len(paths) > 1]
    if clashes:
        raise SpnrefineError(
            f"several files named {clashes[0][0].stem}: "
            + ", ".join(p.name for p in clashes[0])
            + "; pairing is by name, so keep one",
            folder,
        )
    return {stem: paths[0] for stem, paths in found.items()}


def _partner(
    name: str,
    given: str | Path | None,
    files: dict[str, Path] | None,
    suffixes: tuple[str, ...],
    what: str,
    single: bool,
) -> Path | None:
    """The coarse map or image for `name`: from a folder by stem, or the file given."""
    if given is None:
        return None
    if files is None:
        if not single:
            raise SpnrefineError(
                f"with folders of predictions, the {what}s must be a folder", given
            )
        return _existing_file(Path(given))
    stems = [name, *(name + s for s in suffixes)]
    found = [files[s] for s in stems if s in files]
    if not found:
        raise SpnrefineError(f"no {what} for {name} (looked for {', '.join(stems)})", given)
    if len(found) > 1:
        raise SpnrefineError(
            f"several {what}s for {name}: {', '.join(p.name for p in found)}", given
        )
    return found[0]


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _names(names: list[str]) -> str:
    more = len(names) - _SHOWN_NAMES
    return ", ".join(names[:_SHOWN_NAMES]) + (f" and {more} more" if more > 0 else "")


@dataclass
class LabelMap:
    """A decoded prediction, ground truth or upsampled coarse map: H×W label ids (255 = void)
    and what kind of file it came from."""

    labels: np.ndarray
    kind: str

    @property
    def foreground(self) -> np.ndarray:
        """Binary reading: anything but 0 (and but void, in a label map)."""
        fg = self.labels != 0
        return fg & (self.labels != VOID) if self.kind == "labels" else fg

    @property
    def void(self) -> np.ndarray | None:
        """Void pixels of a label map; a 0/255 mask's 255 is its foreground, not void."""
        return self.labels == VOID if self.kind == "labels" else None

    @property
    def is_mask(self) -> bool:
        """A mask, soft map, or label map of ids 0 and 1 only (void aside): one foreground,
        however the file stores it (a 0/1 palette PNG is a mask, not two classes)."""
        return self.kind != "labels" or set(np.unique(self.labels).tolist()) <= {0, 1, VOID}


def read_labels(path: str | Path, *, as_ids: bool = False) -> LabelMap:
    """Decode a prediction or ground-truth file to label ids, as `refine` reads coarse maps.

    A 0/255 (or 0/1) mask keeps its values, a soft map is thresholded at 0.5, a C×H×W array
    takes its argmax, a label PNG keeps its ids with 255 as void. `as_ids` reads an 8-bit
    image as class ids without guessing (so that {0, 255} is class 0 and void).
    """
    path = Path(path)
    array = path.suffix.lower() in (".npy", ".npz")
    coarse = load_coarse(path, coarse_type="labels" if as_ids and not array else "auto")
    return LabelMap(to_labels(coarse.probs, coarse, coarse.ignore), coarse.kind)


def upsampled_coarse(
    path: str | Path, size_hw: tuple[int, int], *, stretch: bool = False
) -> LabelMap:
    """The coarse map at `size_hw` as `refine --method bilinear` writes it: bilinear
    probabilities, classes it never chose dropped, argmax, void kept."""
    coarse = load_coarse(path)
    check_coarse_size(coarse.probs.shape[1:], size_hw, coarse.source, stretch=stretch)
    check_class_pixels(coarse.probs.shape[0], size_hw, coarse.source, DEFAULT_MAX_PIXELS)
    ignore = upsample_ignore(coarse.ignore, size_hw) if coarse.ignore is not None else None
    probs = restrict_classes(upsample_probs(coarse.probs, size_hw), present_classes(coarse))
    return LabelMap(to_labels(probs, coarse, ignore), coarse.kind)


@dataclass
class Scores:
    """One source's scores (the predictions, or the coarse maps) over the data set."""

    binary: bool
    tolerance_px: float
    classes: int | None = None  # multi-class: the declared number of classes, if any
    ious: IoUAccumulator = field(default_factory=IoUAccumulator)
    confusion: ConfusionMatrix = field(default_factory=lambda: ConfusionMatrix(_MATRIX_SIZE))
    boundary: list[float] = field(default_factory=list)
    mba: list[float] = field(default_factory=list)

    def add(self, pred: LabelMap, gt: LabelMap) -> dict[str, float]:
        """Score one image; returns its row (binary: iou, boundary_f, mba; else miou,
        boundary_f)."""
        if self.binary:
            ignore = gt.void
            p, g = pred.foreground, gt.foreground
            row = {
                "iou": self.ious.update(p, g, ignore),
                "boundary_f": boundary_f(p, g, self.tolerance_px, ignore),
                "mba": mba(p, g, ignore),
            }
            self.mba.append(row["mba"])
        else:
            image = ConfusionMatrix(_MATRIX_SIZE)
            image.update(pred.labels, gt.labels)
            self.confusion.matrix += image.matrix
            row = {
                "miou": _nanmean(image.per_class_iou()[:VOID]),
                "boundary_f": mean_boundary_f(pred.labels, gt.labels, self.tolerance_px, VOID),
            }
        self.boundary.append(row["boundary_f"])
        return row

    def per_class_iou(self) -> dict[int, float]:
        """IoU of each class: 0..classes-1 when declared (NaN for one absent from both), else
        every class seen in the predictions or the ground truth."""
        per_class = self.confusion.per_class_iou()
        if self.classes is not None:
            return {c: float(per_class[c]) for c in range(self.classes)}
        return {c: float(per_class[c]) for c in range(VOID) if not math.isnan(per_class[c])}

    def summary(self) -> dict:
        if self.binary:
            return {
                "iou": self.ious.dataset_iou,
                "mean_iou": self.ious.mean_iou,
                "boundary_f": _nanmean(self.boundary),
                "mba": _nanmean(self.mba),
            }
        per_class = self.per_class_iou()
        return {
            "miou": _nanmean(list(per_class.values())),
            "boundary_f": _nanmean(self.boundary),
            "per_class_iou": per_class,
        }


def _nanmean(values: Iterable[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


class Evaluation:
    """Scores accumulated image by image: `add` each pair, then `summary`, `rows`, `to_csv`.

    Binary or multi-class is `binary=True`, `classes=N`, or else decided by the first ground
    truth: a label map of class ids means multi-class, a mask (0/255, 0/1, soft, or a label
    map of ids 0 and 1 only) binary.
    """

    def __init__(
        self,
        *,
        binary: bool = False,
        classes: int | None = None,
        tolerance_px: float = DEFAULT_TOLERANCE_PX,
        stretch: bool = False,
    ):
        if binary and classes is not None:
            raise SpnrefineError("--binary and --classes exclude each other")
        if classes is not None and not 1 <= classes <= VOID:
            raise SpnrefineError(f"--classes {classes}: must be between 1 and {VOID}")
        if not tolerance_px >= 0:
            raise SpnrefineError(f"--tolerance {tolerance_px}: must be at least 0")
        self.binary: bool | None = True if binary else (False if classes is not None else None)
        self.declared = binary or classes is not None
        self.classes = classes
        self.tolerance_px = tolerance_px
        self.stretch = stretch
        self.refined: Scores | None = None
        self.coarse: Scores | None = None
        self.rows: list[dict] = []

    @property
    def mode(self) -> str | None:
        return None if self.binary is None else ("binary" if self.binary else "multiclass")

    def add(self, pair: EvalPair) -> dict:
        """Score one pair and return its row (names, then the metrics). Raises SpnrefineError
        for unreadable files, sizes that differ, or labels that do not fit the mode."""
        gt = self._read_gt(pair.gt)
        size = gt.labels.shape
        pred = read_labels(pair.pred, as_ids=not self.binary)
        _check_size(pair.pred, "prediction", pred.labels.shape, size)
        if pair.image is not None:
            _check_size(pair.image, "image", load_image(pair.image).shape[:2], size)
        if not self.binary:
            self._check_ids(pair.gt, gt.labels)
            self._check_ids(pair.pred, pred.labels)
        if self.refined is None:
            self.refined = Scores(self.binary, self.tolerance_px, self.classes)
        row: dict = {"name": pair.name, "pred": str(pair.pred), "gt": str(pair.gt)}
        if pair.coarse is not None:
            row["coarse"] = str(pair.coarse)
        if pair.image is not None:
            row["image"] = str(pair.image)
        row.update(self.refined.add(pred, gt))
        if pair.coarse is not None:
            coarse = upsampled_coarse(pair.coarse, size, stretch=self.stretch)
            if not self.binary:
                self._check_ids(pair.coarse, coarse.labels)
            if self.coarse is None:
                if self.rows:
                    raise SpnrefineError("a coarse map for some images but not for others")
                self.coarse = Scores(self.binary, self.tolerance_px, self.classes)
            row.update({f"coarse_{k}": v for k, v in self.coarse.add(coarse, gt).items()})
        elif self.coarse is not None:
            raise SpnrefineError("no coarse map, where the other images have one", pair.pred)
        self.rows.append(row)
        return row

    def _read_gt(self, path: Path) -> LabelMap:
        if self.binary is None:
            gt = read_labels(path)
            self.binary = gt.is_mask
            return gt if self.binary else read_labels(path, as_ids=True)
        gt = read_labels(path, as_ids=not self.binary)
        if self.binary and not gt.is_mask and not self.declared:
            ids = ", ".join(str(k) for k in np.unique(gt.labels)[:6])
            raise SpnrefineError(
                f"ground truth holds class ids ({ids}) where the first was a binary mask; "
                "--classes N scores class ids, --binary scores nonzero as foreground",
                path,
            )
        return gt

    def _check_ids(self, path: Path, labels: np.ndarray) -> None:
        limit = self.classes if self.classes is not None else VOID
        top = int(labels[labels != VOID].max(initial=0))
        if top >= limit:
            where = f"below --classes {self.classes}" if self.classes else "at most 254"
            raise SpnrefineError(f"class id {top}: ids must be {where} (255 is void)", path)

    def summary(self) -> dict:
        """JSON-ready: mode, image count, tolerance, the scores of the predictions and (with
        coarse maps) of the coarse input and the gain, NaN as None."""
        data: dict = {
            "mode": self.mode,
            "images": len(self.rows),
            "tolerance_px": self.tolerance_px,
        }
        if not self.binary:
            data["classes"] = self.classes
        if self.refined is not None:
            data["refined"] = self.refined.summary()
        if self.coarse is not None:
            data["coarse"] = self.coarse.summary()
            data["gain"] = _gain(data["refined"], data["coarse"])
        return _json_ready(data)

    def to_csv(self) -> str:
        """One row per image: names, then each metric of the prediction (and coarse map)."""
        columns: list[str] = []
        for row in self.rows:
            columns += [k for k in row if k not in columns]
        out = io.StringIO()
        writer = csv.DictWriter(out, columns, lineterminator="\n")
        writer.writeheader()
        for row in self.rows:
            writer.writerow({k: _csv_cell(v) for k, v in row.items()})
        return out.getvalue()


def _check_size(path: Path, what: str, hw: tuple[int, ...], gt_hw: tuple[int, ...]) -> None:
    if tuple(hw) != tuple(gt_hw):
        raise SpnrefineError(
            f"{what} is {hw[1]}x{hw[0]} but the ground truth is {gt_hw[1]}x{gt_hw[0]}", path
        )


def _gain(refined: dict, coarse: dict) -> dict:
    gain: dict = {}
    for key, value in refined.items():
        if isinstance(value, dict):
            gain[key] = {c: value[c] - coarse[key].get(c, math.nan) for c in value}
        else:
            gain[key] = value - coarse[key]
    return gain


def _json_ready(value):
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 6)
    return value


def _csv_cell(value: object) -> object:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6f}"
    return value


def evaluate(
    pred: str | Path,
    gt: str | Path,
    *,
    coarse: str | Path | None = None,
    image: str | Path | None = None,
    binary: bool = False,
    classes: int | None = None,
    tolerance_px: float = DEFAULT_TOLERANCE_PX,
    stretch: bool = False,
) -> Evaluation:
    """Pair the files (`find_eval_pairs`) and score them all (`Evaluation`)."""
    evaluation = Evaluation(
        binary=binary, classes=classes, tolerance_px=tolerance_px, stretch=stretch
    )
    for pair in find_eval_pairs(pred, gt, coarse=coarse, image=image).pairs:
        evaluation.add(pair)
    return evaluation
