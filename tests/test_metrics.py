import math

import numpy as np
import pytest

from spnrefine.metrics import (
    ConfusionMatrix,
    IoUAccumulator,
    boundary_f,
    boundary_map,
    count_components,
    count_holes,
    count_regions,
    davis_tolerance,
    foreground_errors,
    iou,
    mba,
    mba_radii,
    mean_boundary_f,
    near,
)

SIDE = 10


def square(shift_x: int = 0, shape: tuple[int, int] = (40, 40)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[10 : 10 + SIDE, 10 + shift_x : 10 + SIDE + shift_x] = True
    return mask


def disk(shape=(64, 80), centre=(30, 40), radius=17.5) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def test_iou_of_square_shifted_one_pixel():
    # I = s(s-1), U = s(s+1)
    assert iou(square(1), square()) == pytest.approx((SIDE - 1) / (SIDE + 1))


def test_boundary_of_square_is_its_inner_ring():
    ring = boundary_map(square())
    assert ring.sum() == 4 * (SIDE - 1)
    assert not ring[11:19, 11:19].any()


def test_near_is_the_euclidean_disk_inclusive():
    point = np.zeros((9, 9), bool)
    point[4, 4] = True
    yy, xx = np.mgrid[-4:5, -4:5]
    expected = xx * xx + yy * yy <= 4  # offsets (0, ±2) count, (±1, ±2) and (±2, ±2) do not
    assert np.array_equal(near(point, 2), expected)
    assert near(point, 2).sum() == 13


def test_boundary_f_of_shifted_square_by_hand():
    # Rings of 4(s-1) px share their top and bottom rows minus one pixel each: 2(s-1) exact
    # matches, so P = R = 1/2 at tolerance 0; every pixel is within 1 px of the other ring.
    assert boundary_f(square(1), square(), tolerance_px=0) == pytest.approx(0.5)
    assert boundary_f(square(1), square(), tolerance_px=1) == pytest.approx(1.0)
    # Shifted by 2, at 1 px: s-1 px of each long row match, plus the two pixels of the shifted
    # side column that touch the other ring's rows; P = R = 2s / 4(s-1).
    expected = 2 * SIDE / (4 * (SIDE - 1))
    assert boundary_f(square(2), square(), tolerance_px=1) == pytest.approx(expected)


def test_mba_radii_follow_cascadepsp():
    assert mba_radii(480, 854) == [1, 1, 2, 3, 3]
    assert mba_radii(40, 40) == [1, 1, 1, 1, 1]
    assert mba_radii(1500, 1500) == [1, 2, 4, 6, 8]


def test_mba_of_shifted_square_by_hand():
    # Radius 1 (cross kernel) band = inner ring 4(s-1) + 4-adjacent outer ring 4s = 8s-4 px;
    # the shift is wrong on one GT column (s px) and one outside column (s px).
    expected = 1 - 2 * SIDE / (8 * SIDE - 4)
    assert mba(square(1), square()) == pytest.approx(expected)


def test_perfect_prediction_scores_one():
    gt = disk()
    assert iou(gt, gt) == 1.0
    assert boundary_f(gt, gt, tolerance_px=0) == 1.0
    assert mba(gt, gt) == 1.0


@pytest.mark.parametrize("metric", [iou, boundary_f, mba])
def test_both_empty_scores_one(metric):
    empty = np.zeros((20, 30), dtype=bool)
    assert metric(empty, empty) == 1.0


@pytest.mark.parametrize("metric", [iou, boundary_f])
def test_empty_prediction_of_an_object_scores_zero(metric):
    empty = np.zeros((40, 40), dtype=bool)
    assert metric(empty, square()) == 0.0


def test_mba_of_empty_prediction_is_the_outer_half_of_the_band():
    # Only the outer ring (4s of the 8s-4 band pixels) is right.
    empty = np.zeros((40, 40), dtype=bool)
    assert mba(empty, square()) == pytest.approx(4 * SIDE / (8 * SIDE - 4))


@pytest.mark.parametrize("metric", [iou, boundary_f, mba])
def test_object_predicted_on_empty_gt_scores_zero(metric):
    empty = np.zeros((40, 40), dtype=bool)
    assert metric(square(), empty) == 0.0


@pytest.mark.parametrize("metric", [iou, boundary_f, mba])
def test_errors_under_ignore_do_not_count(metric):
    gt = square()
    pred = gt.copy()
    pred[20:35, 5:35] = True  # touches the square, so the errors lie in mBA's band
    ignore = np.zeros_like(gt)
    ignore[20:36, 4:36] = True
    assert metric(pred, gt) < 0.9
    assert metric(pred, gt, ignore=ignore) == 1.0


def test_uint8_masks_are_read_as_nonzero_foreground():
    assert iou(square(1).astype(np.uint8) * 255, square()) == iou(square(1), square())


def test_mismatched_shapes_are_rejected():
    with pytest.raises(ValueError):
        iou(np.zeros((4, 5), bool), np.zeros((5, 4), bool))


def test_davis_tolerance_at_480p():
    assert davis_tolerance(480, 854) == 8


def test_accumulator_separates_dataset_and_per_image_iou():
    acc = IoUAccumulator()
    assert math.isnan(acc.dataset_iou) and math.isnan(acc.mean_iou)
    gt = np.zeros((4, 4), bool)
    gt[0, 0] = True
    pred = gt.copy()
    pred[0, 1] = True  # I = 1, U = 2
    assert acc.update(pred, gt) == 0.5
    big = np.ones((3, 3), bool)  # I = U = 9
    assert acc.update(big, big) == 1.0
    empty = np.zeros((3, 3), bool)  # counts as 1 per image, adds nothing to the sums
    assert acc.update(empty, empty) == 1.0
    assert acc.dataset_iou == pytest.approx(10 / 11)
    assert acc.mean_iou == pytest.approx(2.5 / 3)


def two_halves(shape=(10, 12)) -> np.ndarray:
    labels = np.zeros(shape, dtype=np.uint8)
    labels[:, shape[1] // 2 :] = 1
    return labels


def test_confusion_matrix_iou_by_hand_with_absent_class():
    gt = two_halves()
    pred = gt.copy()
    pred[4:6, 1:3] = 2  # 4 px of class 0 predicted as 2
    cm = ConfusionMatrix(num_classes=4)
    cm.update(pred, gt)
    per_class = cm.per_class_iou()
    assert per_class[:3] == pytest.approx([56 / 60, 1.0, 0.0])
    assert math.isnan(per_class[3])  # absent from both pred and gt
    assert cm.miou() == pytest.approx((56 / 60 + 1.0 + 0.0) / 3)


def test_confusion_matrix_skips_ignore_label_and_accumulates():
    gt = two_halves()
    gt[:, 5:7] = 255
    pred = two_halves()
    pred[:, 5:7] = 3  # wrong, but only where gt is void
    cm = ConfusionMatrix(num_classes=4)
    cm.update(pred, gt)
    cm.update(pred, gt)
    assert cm.matrix.sum() == 2 * 10 * 10
    assert cm.miou() == 1.0


def test_confusion_matrix_rejects_labels_out_of_range():
    cm = ConfusionMatrix(num_classes=2)
    with pytest.raises(ValueError):
        cm.update(np.full((3, 3), 2), np.zeros((3, 3), int))


def test_mean_boundary_f_by_hand():
    gt = two_halves()
    pred = gt.copy()
    pred[4:6, 1:3] = 2
    # class 1: perfect. class 2: only predicted, F = 0. class 0: GT boundary is column 5
    # (10 px), pred adds the 8 px around the hole: P = 10/18, R = 1, F = 5/7.
    assert mean_boundary_f(pred, gt, tolerance_px=0) == pytest.approx((5 / 7 + 1 + 0) / 3)


def test_mean_boundary_f_ignores_void_and_uses_tolerance():
    gt = two_halves()
    pred = gt.copy()
    pred[:, 6] = 0  # the class edge one column right
    assert mean_boundary_f(pred, gt, tolerance_px=0) == 0.0
    assert mean_boundary_f(pred, gt, tolerance_px=1) == 1.0
    gt[:, 5:8] = 255  # the edge now lies in a void stripe
    assert mean_boundary_f(pred, gt, tolerance_px=0) == 1.0


def test_components_count_islands_and_diagonal_touch_joins():
    mask = np.zeros((20, 20), bool)
    assert count_components(mask) == 0
    mask[2:5, 2:5] = True
    mask[10:12, 10:12] = True
    assert count_components(mask) == 2
    mask[5, 5] = True  # touches the first square at a corner only: one part (8-connected)
    assert count_components(mask) == 2
    mask[18, 0] = True
    assert count_components(mask) == 3


def test_holes_are_enclosed_background_not_the_outside():
    mask = np.zeros((20, 20), bool)
    assert count_holes(mask) == 0  # all background, touching the border: no hole
    mask[2:12, 2:12] = True
    assert count_holes(mask) == 0
    mask[4:6, 4:6] = False
    mask[8, 8] = False
    assert count_holes(mask) == 2
    # A gap through the ring to the outside is no longer a hole.
    mask[4, 2:4] = False
    assert count_holes(mask) == 1
    # Background touching only diagonally is separate (4-connected background).
    ring = np.ones((5, 5), bool)
    ring[1, 1] = ring[2, 2] = False
    assert count_holes(ring) == 2
    assert count_holes(np.ones((3, 3), bool)) == 0


def test_regions_of_a_label_map_skip_void():
    labels = np.zeros((10, 10), np.uint8)
    labels[:, 5:] = 1
    labels[2:4, 1:3] = 2
    labels[7:9, 1:3] = 2
    assert count_regions(labels) == 4  # class 0 (one, with holes), class 1, two of class 2
    labels[0:10, 4] = 255  # void splits nothing here; it is no region itself
    assert count_regions(labels) == 4
    labels[5, 0:4] = 255  # void cuts class 0 in two
    assert count_regions(labels) == 5


def test_foreground_errors_count_missed_and_false_pixels():
    gt = square()
    pred = square(2)  # two columns missed on the left, two false on the right
    assert foreground_errors(pred, gt) == (SIDE * SIDE, 2 * SIDE, 2 * SIDE)
    ignore = np.zeros_like(gt)
    ignore[:, 20:] = True  # hides the false columns
    assert foreground_errors(pred, gt, ignore) == (SIDE * SIDE, 2 * SIDE, 0)
