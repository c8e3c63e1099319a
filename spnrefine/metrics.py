"""Segmentation quality metrics: IoU, boundary F, mBA on binary masks (nonzero = foreground);
confusion-matrix mIoU and mean boundary F on label maps."""

from __future__ import annotations

import math

import cv2
import numpy as np

from spnrefine.settings import DEFAULT_TOLERANCE_PX

"""Boundary F tolerance. Fixed in pixels rather than DAVIS's 0.008 × diagonal (8 px at 854×480):
refiners differ by a few pixels, and 8 px lets a ×8 bilinear upsample score nearly perfectly."""


def _binary_inputs(
    pred: np.ndarray, gt: np.ndarray, ignore: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # cv2 needs C-contiguous input; uint8 0/255 masks become bool here too.
    pred = np.ascontiguousarray(pred, dtype=bool)
    gt = np.ascontiguousarray(gt, dtype=bool)
    if pred.shape != gt.shape or pred.ndim != 2:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} must be the same 2-D shape")
    if ignore is None:
        return pred, gt, np.ones_like(gt)
    ignore = np.ascontiguousarray(ignore, dtype=bool)
    if ignore.shape != gt.shape:
        raise ValueError(f"ignore {ignore.shape} must have the shape of gt {gt.shape}")
    return pred, gt, ~ignore


def _intersection_union(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray) -> tuple[int, int]:
    inter = int(np.count_nonzero(pred & gt & valid))
    union = int(np.count_nonzero((pred | gt) & valid))
    return inter, union


def iou(pred: np.ndarray, gt: np.ndarray, ignore: np.ndarray | None = None) -> float:
    """Foreground IoU of two H×W masks over pixels not under `ignore`; 1.0 when both are empty."""
    return IoUAccumulator().update(pred, gt, ignore)


class IoUAccumulator:
    """Binary IoU over a data set: dataset-level ΣI/ΣU and the mean of per-image IoUs."""

    def __init__(self) -> None:
        self.intersection = 0
        self.union = 0
        self.per_image: list[float] = []

    def update(self, pred: np.ndarray, gt: np.ndarray, ignore: np.ndarray | None = None) -> float:
        """Add one image; returns its IoU (1.0 when pred and gt are both empty)."""
        inter, union = _intersection_union(*_binary_inputs(pred, gt, ignore))
        self.intersection += inter
        self.union += union
        score = 1.0 if union == 0 else inter / union
        self.per_image.append(score)
        return score

    @property
    def dataset_iou(self) -> float:
        """ΣI/ΣU; NaN before any update, 1.0 if every image had empty pred and gt."""
        if not self.per_image:
            return math.nan
        return 1.0 if self.union == 0 else self.intersection / self.union

    @property
    def mean_iou(self) -> float:
        """Mean of per-image IoUs; NaN before any update."""
        return float(np.mean(self.per_image)) if self.per_image else math.nan


def boundary_map(mask: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """1-px inner contour: valid foreground pixels with a 4-neighbour that is valid background.

    The image border is not a boundary, and neither is an edge against an invalid (ignored)
    pixel, so predictions inside an ignore region cannot create or hide boundaries.
    """
    mask = np.asarray(mask).astype(bool, copy=False)
    if valid is None:
        valid = np.ones_like(mask)
    background = ~mask & valid
    touches = np.zeros_like(mask)
    touches[1:, :] |= background[:-1, :]
    touches[:-1, :] |= background[1:, :]
    touches[:, 1:] |= background[:, :-1]
    touches[:, :-1] |= background[:, 1:]
    return mask & valid & touches


def davis_tolerance(height: int, width: int) -> int:
    """The DAVIS benchmark's tolerance, ceil(0.008 × image diagonal): 8 px at 854×480."""
    return math.ceil(0.008 * math.hypot(height, width))


def _disk(radius: float) -> np.ndarray:
    r = int(math.floor(radius))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return (xx * xx + yy * yy <= radius * radius).astype(np.uint8)


def near(targets: np.ndarray, tolerance_px: float = DEFAULT_TOLERANCE_PX) -> np.ndarray:
    """Pixels within `tolerance_px` (Euclidean, inclusive) of a True pixel of the bool map
    `targets`: where a boundary pixel counts as matched by the boundary F."""
    # Dilating by a Euclidean disk is exact for integer pixel offsets and ~20x faster than a
    # precise distance transform of the whole image.
    return cv2.dilate(targets.view(np.uint8), _disk(tolerance_px)) > 0


def _matched_fraction(points: np.ndarray, targets: np.ndarray, tolerance_px: float) -> float:
    return np.count_nonzero(points & near(targets, tolerance_px)) / np.count_nonzero(points)


def boundary_f(
    pred: np.ndarray,
    gt: np.ndarray,
    tolerance_px: float = DEFAULT_TOLERANCE_PX,
    ignore: np.ndarray | None = None,
) -> float:
    """DAVIS-style boundary F-measure of two H×W masks.

    Boundaries are `boundary_map` contours (ignored pixels take no part). Precision is the
    fraction of predicted boundary pixels within `tolerance_px` (Euclidean, inclusive) of a GT
    boundary pixel, recall the converse, F = 2PR/(P+R). If neither mask has a boundary F is 1;
    if only one has, F is 0. Default tolerance 2 px; `davis_tolerance` gives the DAVIS one.
    """
    pred, gt, valid = _binary_inputs(pred, gt, ignore)
    pred_b = boundary_map(pred, valid)
    gt_b = boundary_map(gt, valid)
    has_pred, has_gt = pred_b.any(), gt_b.any()
    if not (has_pred or has_gt):
        return 1.0
    if not (has_pred and has_gt):
        return 0.0
    precision = _matched_fraction(pred_b, gt_b, tolerance_px)
    recall = _matched_fraction(gt_b, pred_b, tolerance_px)
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def mba_radii(height: int, width: int) -> list[int]:
    """CascadePSP's band radii: 1 + int((R - 1) / 5 · i) for i = 0..4, R = (w + h) / 300."""
    max_radius = (width + height) / 300
    return [1 + int((max_radius - 1) / 5 * i) for i in range(5)]


def mba(pred: np.ndarray, gt: np.ndarray, ignore: np.ndarray | None = None) -> float:
    """Mean boundary accuracy as in CascadePSP's eval_post.py.

    For each radius r in `mba_radii` (854×480 → 1, 1, 2, 3, 3) the band is the morphological
    gradient (dilation − erosion) of the GT mask with an elliptical (2r+1)×(2r+1) kernel, i.e.
    pixels within r of both GT classes; the score is pixel accuracy of pred inside the band,
    averaged over the five radii. Ignored pixels are dropped from the band. Extension for
    CascadePSP's 0/0 case: an empty band scores 1 if pred equals gt on every valid pixel, else 0.
    """
    pred, gt, valid = _binary_inputs(pred, gt, ignore)
    gt_u8 = gt.view(np.uint8)
    correct = pred == gt
    accuracy: dict[int, float] = {}
    for radius in set(mba_radii(*gt.shape)):
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
        band = (cv2.morphologyEx(gt_u8, cv2.MORPH_GRADIENT, kernel) > 0) & valid
        n = np.count_nonzero(band)
        if n:
            accuracy[radius] = np.count_nonzero(correct & band) / n
        else:
            accuracy[radius] = float(bool(correct[valid].all()))
    return float(np.mean([accuracy[r] for r in mba_radii(*gt.shape)]))


class ConfusionMatrix:
    """Multi-class confusion matrix (rows = GT, columns = prediction) accumulated over images."""

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, pred: np.ndarray, gt: np.ndarray) -> None:
        """Add one H×W pair of integer label maps; GT pixels equal to `ignore_index` are skipped."""
        pred = np.asarray(pred)
        gt = np.asarray(gt)
        if pred.shape != gt.shape:
            raise ValueError(f"pred {pred.shape} and gt {gt.shape} must have the same shape")
        valid = gt != self.ignore_index
        p = pred[valid].astype(np.int64)
        g = gt[valid].astype(np.int64)
        n = self.num_classes
        if p.size and (p.min() < 0 or p.max() >= n or g.min() < 0 or g.max() >= n):
            raise ValueError(
                f"labels outside 0..{n - 1} (and not ignore_index {self.ignore_index})"
            )
        self.matrix += np.bincount(g * n + p, minlength=n * n).reshape(n, n)

    def per_class_iou(self) -> np.ndarray:
        """TP / (TP + FP + FN) per class; NaN for a class absent from both pred and gt."""
        tp = np.diag(self.matrix).astype(np.float64)
        denom = self.matrix.sum(0) + self.matrix.sum(1) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(denom > 0, tp / denom, np.nan)

    def miou(self) -> float:
        """Mean of `per_class_iou` over classes that occurred (NaNs excluded)."""
        per_class = self.per_class_iou()
        return float(np.nanmean(per_class)) if np.isfinite(per_class).any() else math.nan


def mean_boundary_f(
    pred: np.ndarray,
    gt: np.ndarray,
    tolerance_px: float = DEFAULT_TOLERANCE_PX,
    ignore_index: int = 255,
) -> float:
    """Per-image mean over classes of binary `boundary_f(pred == c, gt == c)`.

    Classes are those present in gt or pred on non-ignored pixels; GT pixels equal to
    `ignore_index` are excluded. NaN when the image has no valid pixel.
    """
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    ignore = gt == ignore_index
    valid = ~ignore
    present = np.union1d(np.unique(pred[valid]), np.unique(gt[valid]))
    if present.size == 0:
        return math.nan
    scores = [boundary_f(pred == c, gt == c, tolerance_px, ignore) for c in present]
    return float(np.mean(scores))


def count_components(mask: np.ndarray) -> int:
    """Connected parts of a binary mask (8-connected): foreground islands and fragments."""
    mask = np.ascontiguousarray(mask, dtype=bool)
    if not mask.any():
        return 0
    count, _ = cv2.connectedComponents(mask.view(np.uint8), connectivity=8)
    return count - 1


def count_holes(mask: np.ndarray) -> int:
    """Background regions of a binary mask (4-connected, the dual of 8-connected foreground)
    that do not touch the image border: holes cut into the foreground."""
    background = np.ascontiguousarray(~np.asarray(mask, dtype=bool)).view(np.uint8)
    if not background.any():
        return 0
    count, labels = cv2.connectedComponents(background, connectivity=4)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return count - 1 - int(np.count_nonzero(border))


def count_regions(labels: np.ndarray, ignore_index: int = 255) -> int:
    """Connected regions of a label map: `count_components` of each class summed (pixels equal
    to `ignore_index` belong to none)."""
    labels = np.asarray(labels)
    present = np.flatnonzero(np.bincount(labels.ravel().astype(np.int64)))
    return sum(count_components(labels == c) for c in present if c != ignore_index)


def foreground_errors(
    pred: np.ndarray, gt: np.ndarray, ignore: np.ndarray | None = None
) -> tuple[int, int, int]:
    """(true foreground, missed foreground, false foreground) pixel counts of two binary masks,
    over pixels not under `ignore`: missed is true foreground predicted as background, false is
    background predicted as foreground. Shares are taken of the true foreground."""
    pred, gt, valid = _binary_inputs(pred, gt, ignore)
    return (
        int(np.count_nonzero(gt & valid)),
        int(np.count_nonzero(gt & ~pred & valid)),
        int(np.count_nonzero(~gt & pred & valid)),
    )
