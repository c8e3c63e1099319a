import sys

import cv2
import numpy as np
import pytest

from spnrefine.baselines.bilinear import refine_bilinear
from spnrefine.baselines.crf import refine_crf
from spnrefine.baselines.guided import guided_filter, refine_guided
from spnrefine.errors import SpnrefineError
from spnrefine.metrics import iou


def random_probs(rng: np.random.Generator, c: int, h: int, w: int) -> np.ndarray:
    p = rng.random((c, h, w)).astype(np.float32) + 0.01
    return p / p.sum(0)


def step_scene(h: int = 48, w: int = 64, edge: int = 32, coarse_edge: int = 26):
    """Dark left / bright right image, true mask = right part, coarse map = a soft ramp that
    puts the object edge `edge - coarse_edge` px too far left."""
    image = np.full((h, w, 3), 40, dtype=np.uint8)
    image[:, edge:] = (210, 190, 170)
    truth = np.zeros((h, w), dtype=bool)
    truth[:, edge:] = True
    x = np.arange(w, dtype=np.float32)
    fg = np.broadcast_to(1 / (1 + np.exp(-(x - coarse_edge) / 3)), (h, w))
    probs = np.stack([1 - fg, fg]).astype(np.float32)
    return image, truth, probs


def reference_guided_filter(guide, src, radius, eps):
    """Per-pixel ridge regression solved with np.linalg.solve, in float64."""
    box = lambda x: cv2.blur(x, (2 * radius + 1, 2 * radius + 1))  # noqa: E731
    mean_i = np.stack([box(guide[..., k]) for k in range(3)], -1)
    sigma = np.empty(guide.shape[:2] + (3, 3))
    for i in range(3):
        for j in range(3):
            sigma[..., i, j] = box(guide[..., i] * guide[..., j]) - mean_i[..., i] * mean_i[..., j]
    sigma += eps * np.eye(3)
    mean_p = box(src)
    cov = np.stack([box(guide[..., k] * src) - mean_i[..., k] * mean_p for k in range(3)], -1)
    a = np.linalg.solve(sigma, cov[..., None])[..., 0]
    b = mean_p - (a * mean_i).sum(-1)
    return sum(box(a[..., k]) * guide[..., k] for k in range(3)) + box(b)


def test_colour_guided_filter_matches_per_pixel_solve():
    rng = np.random.default_rng(0)
    guide = rng.random((20, 24, 3))
    src = rng.random((2, 20, 24))
    out = guided_filter(guide, src, radius=2, eps=1e-3)
    for c in range(2):
        np.testing.assert_allclose(
            out[c], reference_guided_filter(guide, src[c], 2, 1e-3), atol=1e-5
        )


@pytest.mark.parametrize("guide_shape", [(30, 40), (30, 40, 3)])
def test_constant_guide_gives_box_mean_of_box_mean(guide_shape):
    # With no guide variance a = 0 and b = mean(p), so q = mean(mean(p)).
    rng = np.random.default_rng(1)
    src = rng.random((30, 40)).astype(np.float32)
    out = guided_filter(np.full(guide_shape, 0.5), src, radius=3, eps=1e-2)
    expected = cv2.blur(cv2.blur(src, (7, 7)), (7, 7))
    np.testing.assert_allclose(out, expected, atol=1e-5)


@pytest.mark.parametrize("colour", [False, True])
def test_step_edge_guide_keeps_the_edge_that_a_box_filter_blurs(colour):
    step = np.zeros((32, 64), dtype=np.float32)
    step[:, 32:] = 1.0
    guide = np.repeat(step[..., None], 3, axis=2) if colour else step
    out = guided_filter(guide, step, radius=6, eps=1e-3)
    box = cv2.blur(cv2.blur(step, (13, 13)), (13, 13))
    near_edge = slice(26, 38)
    guided_err = np.abs(out - step)[:, near_edge].max()
    box_err = np.abs(box - step)[:, near_edge].max()
    assert guided_err < 0.05
    assert box_err > 0.3


@pytest.mark.parametrize("gray", [False, True])
@pytest.mark.parametrize("classes", [2, 4])
def test_refine_guided_returns_probabilities(gray, classes):
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    probs = random_probs(rng, classes, 24, 32)
    out = refine_guided(image, probs, radius=4, eps=1e-3, gray=gray)
    assert out.shape == probs.shape and out.dtype == np.float32
    assert out.min() >= 0
    np.testing.assert_allclose(out.sum(0), 1.0, atol=1e-5)
    assert not np.allclose(out, probs)


def test_refine_guided_keeps_a_constant_map_constant():
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    probs = np.full((3, 24, 32), 1 / 3, dtype=np.float32)
    np.testing.assert_allclose(refine_guided(image, probs), probs, atol=1e-5)


def test_refine_guided_moves_a_coarse_edge_to_the_image_edge():
    image, truth, probs = step_scene()
    out = refine_guided(image, probs, radius=8, eps=1e-3)
    # A window of radius 8 only partly sees an edge 6 px away: it moves part of the way.
    assert iou(out[1] > 0.5, truth) > iou(probs[1] > 0.5, truth) + 0.02


def test_refine_bilinear_is_the_identity():
    rng = np.random.default_rng(4)
    probs = random_probs(rng, 3, 8, 8)
    out = refine_bilinear(np.zeros((8, 8, 3), np.uint8), probs)
    np.testing.assert_array_equal(out, probs)
    assert out is not probs


def test_crf_without_pydensecrf_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pydensecrf", None)
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    image, _, probs = step_scene()
    with pytest.raises(SpnrefineError, match=r"spnrefine\[crf\]"):
        refine_crf(image, probs)


def test_crf_returns_probabilities():
    pytest.importorskip("pydensecrf.densecrf")
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    probs = random_probs(rng, 3, 24, 32)
    out = refine_crf(image, probs)
    assert out.shape == probs.shape and out.dtype == np.float32
    assert out.min() >= 0
    np.testing.assert_allclose(out.sum(0), 1.0, atol=1e-4)


def test_crf_moves_a_coarse_edge_to_the_image_edge():
    pytest.importorskip("pydensecrf.densecrf")
    image, truth, probs = step_scene()
    out = refine_crf(image, probs)
    before = iou(probs[1] > 0.5, truth)
    after = iou(out[1] > 0.5, truth)
    assert after > before + 0.05
    assert after > 0.95


def test_crf_accepts_a_read_only_image():
    pytest.importorskip("pydensecrf")
    image = np.zeros((12, 16, 3), np.uint8)
    image.setflags(write=False)  # as the decoder returns it
    probs = np.full((2, 12, 16), 0.5, np.float32)
    out = refine_crf(image, probs, iterations=1)
    np.testing.assert_allclose(out.sum(0), 1, atol=1e-4)
