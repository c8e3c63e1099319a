"""spnrefine.tiling: tile placement, the blend window, and refine_tiled's skipping, batching
and blending, held against a model whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from spnrefine.tiling import TileStats, blend_window, refine_tiled, tile_starts


class EchoModel:
    """Returns the log of the probabilities it is given, so a softmax gives them back: tiling
    must then reproduce its input. Records each call's batch size."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def __call__(self, tiles: np.ndarray, probs: np.ndarray) -> np.ndarray:
        assert tiles.dtype == np.uint8 and tiles.shape[:1] + tiles.shape[2:] == (
            probs.shape[:1] + probs.shape[2:]
        )
        self.batches.append(tiles.shape[0])
        return np.log(np.maximum(probs, 1e-12))


class NeverCalled:
    def __call__(self, tiles: np.ndarray, probs: np.ndarray) -> np.ndarray:
        raise AssertionError("a confident tile went through the model")


def image(h: int, w: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)


def soft_map(h: int, w: int, classes: int = 2, seed: int = 1) -> np.ndarray:
    """Probabilities well inside (0, 1), so every class is present in every tile."""
    p = np.random.default_rng(seed).uniform(0.2, 1.0, (classes, h, w)).astype(np.float32)
    return p / p.sum(0, keepdims=True)


@pytest.mark.parametrize(
    ("length", "tile", "overlap"), [(300, 128, 16), (128, 128, 16), (50, 128, 0), (257, 64, 8)]
)
def test_tile_starts_cover_the_length_with_the_overlap(length: int, tile: int, overlap: int):
    starts = tile_starts(length, tile, overlap)
    assert starts[0] == 0
    covered = np.zeros(length, bool)
    for s in starts:
        covered[s : s + tile] = True
    assert covered.all()
    if length > tile:
        assert starts[-1] == length - tile  # the last tile ends at the edge, not past it
        assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:], strict=False))


def test_blend_window_is_symmetric_positive_and_flat_inside():
    w = blend_window(32, 8)
    assert w.shape == (32, 32)
    np.testing.assert_array_equal(w, w.T)
    np.testing.assert_array_equal(w, w[::-1, ::-1])
    assert w.min() > 0 and w[8:24, 8:24].min() == 1.0
    assert (blend_window(32, 0) == 1).all()


@pytest.mark.parametrize(("h", "w"), [(150, 200), (40, 56), (128, 128)])
def test_refine_tiled_gives_back_what_an_echo_model_returns(h: int, w: int):
    probs = soft_map(h, w, classes=3)
    stats = TileStats()
    out = refine_tiled(EchoModel(), image(h, w), probs.copy(), tile=64, overlap=16, stats=stats)
    assert out.shape == probs.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, probs, atol=1e-5)
    assert (
        stats.refined
        == stats.total
        == len(tile_starts(max(h, 64), 64, 16)) * len(tile_starts(max(w, 64), 64, 16))
    )


def test_confident_tiles_skip_the_model_and_keep_their_probabilities():
    probs = np.zeros((2, 100, 130), np.float32)
    probs[0] = 1.0
    stats = TileStats()
    out = refine_tiled(NeverCalled(), image(100, 130), probs, tile=64, overlap=16, stats=stats)
    np.testing.assert_array_equal(out, probs)
    assert stats.total > 0 and stats.refined == 0


def test_only_unsure_tiles_are_refined():
    probs = np.zeros((2, 64, 192), np.float32)
    probs[0] = 1.0
    probs[:, :, 150:] = 0.5  # unsure only in the right-hand tile
    stats = TileStats()
    model = EchoModel()
    out = refine_tiled(model, image(64, 192), probs, tile=64, overlap=0, stats=stats)
    assert (stats.total, stats.refined) == (3, 1)
    np.testing.assert_allclose(out, probs, atol=1e-6)


def test_tiles_go_through_the_model_in_batches_of_at_most_batch_size():
    model = EchoModel()
    refine_tiled(model, image(200, 200), soft_map(200, 200), tile=32, overlap=0, batch_size=5)
    assert max(model.batches) == 5
    assert sum(model.batches) == 7 * 7


@pytest.mark.parametrize(("tile", "overlap"), [(60, 8), (8, 0), (64, 64), (64, -1)])
def test_bad_tile_settings_are_refused(tile: int, overlap: int):
    with pytest.raises(ValueError):
        refine_tiled(EchoModel(), image(64, 64), soft_map(64, 64), tile=tile, overlap=overlap)


def stripes(h: int, w: int, classes: int) -> np.ndarray:
    """A label map of horizontal stripes of `classes` classes, one-hot, softened at the seams
    (a few pixels either side), so tiles on a seam are refined."""
    rows = np.minimum(np.arange(h) * classes // h, classes - 1)
    probs = np.zeros((classes, h, w), np.float32)
    probs[rows, np.arange(h)] = 1.0
    kernel = np.ones(5, np.float32) / 5
    for c in range(classes):
        probs[c] = np.apply_along_axis(np.convolve, 0, probs[c], kernel, mode="same")
    return probs / probs.sum(0, keepdims=True)


def window_of(probs: np.ndarray):
    """`refine_bands`' rows: a window of an array."""
    return lambda classes, start, stop, left, right: probs[classes, start:stop, left:right]


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize(
    ("h", "w", "tile", "overlap", "batch"),
    [(300, 200, 64, 16, 3), (40, 30, 128, 16, 16), (250, 70, 48, 40, 2), (1000, 12, 128, 16, 16)],
)
def test_cells_cover_every_pixel_once_in_order(h, w, tile, overlap, batch, sparse):
    from spnrefine.tiling import refine_bands

    probs = stripes(h, w, 6)
    cells = list(
        refine_bands(
            EchoModel(),
            image(h, w),
            window_of(probs),
            6,
            sparse=sparse,
            tile=tile,
            overlap=overlap,
            batch_size=batch,
        )
    )
    covered = np.zeros((max(h, tile), max(w, tile)), int)
    for cell in cells:
        covered[cell.start : cell.stop, cell.left : cell.right] += 1
        shape = (len(cell.classes), cell.stop - cell.start, cell.right - cell.left)
        assert cell.refined.shape == cell.coarse.shape == shape
    assert (covered[:h, :w] == 1).all()
    # Band by band, top to bottom; within a band, left to right (whole rows without sparse).
    order = [(c.start, c.left) for c in cells]
    assert order == sorted(order)
    if not sparse:
        assert all(c.left == 0 and c.right >= w for c in cells)


def test_sparse_cells_keep_only_the_classes_of_their_tiles_and_the_same_values():
    from spnrefine.tiling import refine_bands

    h, w = 600, 500
    # Stripes of 12 classes across the rows, and 4 classes across the columns in each.
    probs = stripes(h, w, 12)
    columns = stripes(w, h, 4).transpose(0, 2, 1)
    probs = (probs[:, None] * columns[None]).reshape(48, h, w)

    def run(sparse: bool) -> list:
        return list(
            refine_bands(
                EchoModel(), image(h, w), window_of(probs), 48, sparse=sparse, tile=64, overlap=16
            )
        )

    full = {c.start: c for c in run(False)}
    cells = run(True)
    assert {c.start for c in cells} == set(full)
    assert max(len(c.classes) for c in cells) <= 8  # the tiles over a cell meet few classes
    for part in cells:
        whole = full[part.start]
        columns = slice(part.left, part.right)
        here = probs[:, part.start : part.stop, columns]
        assert set(np.flatnonzero(here.max(axis=(1, 2)) > 0.02)) <= set(part.classes)
        np.testing.assert_allclose(
            part.refined, whole.refined[part.classes][:, :, columns], atol=1e-6
        )
        np.testing.assert_allclose(
            part.coarse, whole.coarse[part.classes][:, :, columns], atol=1e-6
        )
        left = np.setdiff1d(np.arange(48), part.classes)
        assert (
            whole.refined[left][:, :, columns] < 0.02
        ).all()  # what sparse leaves out is below the bar


def test_refine_tiled_is_the_bands_put_together():
    from spnrefine.tiling import refine_bands

    h, w = 200, 170
    probs = soft_map(h, w, 3)
    probs[:, :60] = np.array([0.99, 0.005, 0.005], np.float32)[:, None, None]  # sure rows
    whole = refine_tiled(EchoModel(), image(h, w), probs, tile=64, overlap=16)
    out = np.zeros_like(whole)
    for band in refine_bands(EchoModel(), image(h, w), window_of(probs), 3, tile=64, overlap=16):
        out[:, band.start : band.stop] = band.refined[:, :, :w]
    np.testing.assert_array_equal(out, whole)
    np.testing.assert_allclose(whole, probs, atol=1e-5)  # the echo gives the map back


class FlatModel:
    """Logits of zero: every refined pixel gets the classes' even share."""

    def __call__(self, tiles: np.ndarray, probs: np.ndarray) -> np.ndarray:
        return np.zeros(probs.shape, np.float32)


@pytest.mark.parametrize("sparse", [False, True])
def test_a_cell_is_its_coarse_map_to_the_bit_outside_the_spans_the_model_refined(sparse):
    from spnrefine.tiling import refine_bands

    h, w = 300, 420
    probs = np.zeros((2, h, w), np.float32)
    probs[1] = 0.999
    probs[0] = 1 - probs[1]
    probs[:, 100:140, 200:260] = 0.5  # unsure: the tiles over it go through the model
    cells = list(
        refine_bands(
            FlatModel(), image(h, w), window_of(probs), 2, sparse=sparse, tile=64, overlap=16
        )
    )
    covered = np.zeros((h, w), bool)
    for cell in cells:
        inside = np.zeros(cell.refined.shape[1:], bool)
        for a, b in cell.spans:
            assert 0 <= a < b <= cell.right - cell.left
            inside[:, a:b] = True
        np.testing.assert_array_equal(cell.refined[:, ~inside], cell.coarse[:, ~inside])
        rows, cols = slice(cell.start, cell.stop), slice(cell.left, cell.right)
        covered[rows, cols] |= inside[: h - cell.start, : w - cell.left]
        # Inside, the model's even share is blended in wherever a refined tile reaches.
        assert (np.abs(cell.refined[:, inside] - cell.coarse[:, inside]) > 0).any() or not len(
            cell.spans
        )
    assert covered[100:140, 200:260].all() and not covered[:, :128].any()
