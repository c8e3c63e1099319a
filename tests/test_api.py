"""The Python API: `Refiner.load(...).refine(image, coarse)` and `refine_file`, and the post
step (class restriction, void, label ids, soft outputs)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pngs import png_bytes

from spnrefine import tiling
from spnrefine.api import Refiner, RefineResult
from spnrefine.checkpoint import save_model
from spnrefine.errors import SpnrefineError
from spnrefine.io import CoarseMap, encode_npy, load_coarse
from spnrefine.labels import present_classes, restrict_classes, to_labels
from spnrefine.model import ModelConfig, SPNRefiner
from spnrefine.tiling import TileStats

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


class IdentityRefiner(Refiner):
    """The model replaced by "change nothing" (each tile's logits are its log-probabilities),
    so the data path around it can be checked; `calls` counts model calls."""

    calls = 0

    def _place(self, model):
        super()._place(model)

        def same(tiles, probs):
            type(self).calls += 1
            return np.log(np.maximum(probs, 1e-30))

        self._tile_logits = same


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = SPNRefiner(ModelConfig(hidden=2, gate_groups=2, widths=(8, 16), readout=4))
    return save_model(model, tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="module")
def refiner(model_dir: Path) -> Refiner:
    return Refiner.load(model_dir, device="cpu")


@pytest.fixture
def identity(model_dir: Path) -> IdentityRefiner:
    return IdentityRefiner(Refiner.load(model_dir).model, device="cpu")


def gradient_image(h: int = 48, w: int = 64) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return np.stack([xx * 4 % 256, yy * 5 % 256, (xx + yy) % 256], -1).astype(np.uint8)


def test_refiner_is_exported_from_the_package():
    import spnrefine

    assert spnrefine.Refiner is Refiner
    assert spnrefine.RefineResult is RefineResult


def test_refine_example_gives_a_mask_at_the_image_size(refiner: Refiner):
    result = refiner.refine(EXAMPLES / "astronaut.jpg", EXAMPLES / "astronaut_coarse.png")
    assert result.labels.shape == (512, 512)
    assert result.kind == "prob"
    assert set(np.unique(result.labels)) <= {0, 255}
    assert result.probs.shape == (2, 512, 512)
    np.testing.assert_allclose(result.probs.sum(0), 1.0, atol=1e-4)
    assert 0 < result.tiles.refined < result.tiles.total


def test_binary_mask_is_upsampled_and_written_as_0_255(identity: Refiner, tmp_path: Path):
    coarse = np.zeros((12, 16), np.uint8)
    coarse[3:9, 4:12] = 255
    result = identity.refine(gradient_image(), png_bytes(coarse))
    assert result.kind == "binary"
    # With the model pass an identity, the output is the bilinear upsample thresholded.
    assert result.labels[24, 32] == 255 and result.labels[2, 2] == 0
    result.save(tmp_path / "out.png")
    written = np.asarray(Image.open(tmp_path / "out.png"))
    assert set(np.unique(written)) == {0, 255}
    assert written.shape == (48, 64)


def test_palette_label_map_keeps_its_ids_and_palette(identity: Refiner, tmp_path: Path):
    ids = np.zeros((12, 16), np.uint8)
    ids[:, 8:] = 7
    ids[4:8, 2:6] = 15
    palette = [(k * 37) % 256 for k in range(768)]
    result = identity.refine(gradient_image(), png_bytes(ids, palette))
    assert set(np.unique(result.labels)) == {0, 7, 15}
    result.save(tmp_path / "out.png")
    written = Image.open(tmp_path / "out.png")
    assert written.mode == "P"
    assert written.getpalette()[:48] == palette[:48]


def test_void_pixels_pass_through_as_255(identity: Refiner):
    ids = np.full((12, 16), 1, np.uint8)
    ids[:, :8] = 2
    ids[0:4, 0:4] = 255
    result = identity.refine(gradient_image(), png_bytes(ids), coarse_type="labels")
    assert (result.labels[0:16, 0:16] == 255).all()
    assert set(np.unique(result.labels)) == {1, 2, 255}


def test_labels_only_hold_classes_present_in_the_coarse_map(model_dir: Path):
    class FavoursClassTwo(Refiner):
        def _place(self, model):
            super()._place(model)

            def favour(tiles, probs):
                out = probs * 0.2
                out[:, 2] = 0.8
                return np.log(np.maximum(out, 1e-30))

            self._tile_logits = favour

    probs = np.zeros((3, 12, 16), np.float32)
    probs[0, :, :8] = 0.6
    probs[1, :, 8:] = 0.6
    probs[2] = 0.4  # never the argmax: class 2 is not in the coarse map
    probs /= probs.sum(0, keepdims=True)
    refiner = FavoursClassTwo(Refiner.load(model_dir).model, device="cpu")
    result = refiner.refine(gradient_image(), probs)
    assert set(np.unique(result.labels)) == {0, 1}
    assert (result.probs[2] == 0).all()
    np.testing.assert_allclose(result.probs.sum(0), 1.0, atol=1e-6)


def test_restrict_classes_renormalises_and_falls_back_to_present_classes():
    probs = np.array([[[0.2, 0.0]], [[0.3, 0.0]], [[0.5, 1.0]]], np.float32)
    out = restrict_classes(probs, np.array([True, True, False]))
    np.testing.assert_allclose(out[:, 0, 0], [0.4, 0.6, 0.0])
    # All the mass was on the absent class: the present ones share it.
    np.testing.assert_allclose(out[:, 0, 1], [0.5, 0.5, 0.0])


def test_present_classes_ignore_void_pixels():
    ids = np.array([[3, 255], [3, 3]], np.uint8)
    coarse = load_coarse(png_bytes(ids), coarse_type="labels")
    assert coarse.labels == [0, 3]  # a lone class gets an empty partner channel
    assert present_classes(coarse).tolist() == [False, True]
    labels = to_labels(coarse.probs, coarse, coarse.ignore)
    assert labels.tolist() == [[3, 255], [3, 3]]


def test_soft_output_of_one_class_is_a_foreground_png_in_8_or_16_bits(
    identity: Refiner, tmp_path: Path
):
    fg = np.linspace(0, 1, 16 * 12, dtype=np.float32).reshape(12, 16)
    result = identity.refine(gradient_image(), fg)
    result.save(tmp_path / "p8.png", soft=True)
    result.save(tmp_path / "p16.png", soft=True, bits=16)
    p8 = np.asarray(Image.open(tmp_path / "p8.png"))
    p16 = np.asarray(Image.open(tmp_path / "p16.png"))
    assert p8.dtype == np.uint8
    assert p16.max() == 65535
    np.testing.assert_allclose(p8 / 255, result.probs[1], atol=1 / 255)
    np.testing.assert_allclose(p16 / 65535, result.probs[1], atol=1e-4)


def test_16_bits_without_soft_is_refused(identity: Refiner, tmp_path: Path):
    calls = IdentityRefiner.calls
    with pytest.raises(SpnrefineError, match="--bits 16 is the depth of a --soft"):
        identity.refine_file(
            gradient_image(), np.zeros((12, 16), bool), tmp_path / "o.png", bits=16
        )
    assert IdentityRefiner.calls == calls and not (tmp_path / "o.png").exists()
    result = identity.refine(gradient_image(), np.zeros((12, 16), bool))
    with pytest.raises(SpnrefineError, match="--bits 16"):
        result.save(tmp_path / "o.png", bits=16)
    with pytest.raises(SpnrefineError, match="--bits 16"):
        result.encode(bits=16)


def test_soft_output_of_several_classes_is_a_chw_npy(identity: Refiner, tmp_path: Path):
    probs = np.random.default_rng(0).random((3, 12, 16)).astype(np.float32)
    probs /= probs.sum(0, keepdims=True)
    result = identity.refine(gradient_image(), probs)
    with pytest.raises(SpnrefineError, match=r"name it \.npy"):
        result.save(tmp_path / "soft.png", soft=True)
    result.save(tmp_path / "soft.npy", soft=True)
    saved = np.load(tmp_path / "soft.npy")
    assert saved.shape == (3, 48, 64)
    np.testing.assert_allclose(saved, result.probs)
    assert result.encode(soft=True)[:6] == b"\x93NUMPY"


def test_image_and_coarse_can_be_arrays_or_bytes(identity: Refiner):
    image = gradient_image()
    fg = np.zeros((12, 16), np.float32)
    fg[4:8, 4:12] = 1.0
    from_arrays = identity.refine(image, fg)
    from_bytes = identity.refine(png_bytes(image), png_bytes((fg * 255).astype(np.uint8)))
    assert from_arrays.labels.shape == from_bytes.labels.shape == (48, 64)
    assert ((from_arrays.labels != 0) == (from_bytes.labels != 0)).all()


def test_a_mask_or_foreground_probability_gives_0_255_labels_whatever_its_type(
    identity: Refiner,
):
    image = gradient_image()
    yy, xx = np.mgrid[:12, :16]
    fg = np.clip((4 - np.hypot(yy - 6, xx - 8)) / 3 + 0.5, 0, 1).astype(np.float32)
    results = [
        identity.refine(image, coarse)
        for coarse in (fg, fg.astype(np.float64), (fg * 255).astype(np.uint8), fg > 0.5)
    ]
    for result in results:
        assert result.coarse.labels == [0, 255]
        assert set(np.unique(result.labels).tolist()) == {0, 255}
    assert np.array_equal(results[0].labels, results[1].labels)


def test_many_classes_at_a_large_size_are_refused_before_refining(model_dir: Path):
    refiner = IdentityRefiner(Refiner.load(model_dir).model, device="cpu", max_pixels=10_000)
    ids = np.arange(12 * 16, dtype=np.int32).reshape(12, 16) % 7
    calls = IdentityRefiner.calls
    with pytest.raises(SpnrefineError, match="^<array>: 7 classes at the image's 64x48"):
        refiner.refine(gradient_image(), ids)
    assert IdentityRefiner.calls == calls
    assert refiner.refine(gradient_image(), ids % 6).labels.shape == (48, 64)


def test_array_coarse_maps_get_the_checks_files_get(identity: Refiner):
    bad = np.full((12, 16), np.nan, np.float32)
    with pytest.raises(SpnrefineError, match="NaN") as err:
        identity.refine(gradient_image(), bad)
    assert str(err.value).startswith("<array>: ")


def test_decoded_coarse_map_is_accepted(identity: Refiner):
    coarse = load_coarse(EXAMPLES / "coffee_coarse.png")
    assert isinstance(coarse, CoarseMap)
    result = identity.refine(EXAMPLES / "coffee.jpg", coarse, stretch=True)
    assert result.labels.shape == (400, 600)


def test_aspect_mismatch_needs_stretch(identity: Refiner):
    with pytest.raises(SpnrefineError, match="600x400.*--stretch"):
        identity.refine(EXAMPLES / "coffee.jpg", EXAMPLES / "coffee_coarse.png")


def test_refine_probs_keeps_probabilities_a_distribution(refiner: Refiner):
    probs = np.random.default_rng(1).random((2, 150, 200)).astype(np.float32)
    probs /= probs.sum(0, keepdims=True)
    stats = TileStats()
    out = refiner.refine_probs(gradient_image(150, 200), probs, stats)
    assert out.shape == probs.shape
    np.testing.assert_allclose(out.sum(0), 1.0, atol=1e-4)
    assert stats.total == 4  # 128-pixel tiles overlapping by 32 on a 150×200 image: 2×2


def test_a_tile_larger_than_the_image_shrinks_to_cover_the_image(model_dir: Path):
    refiner = Refiner.load(model_dir, device="cpu", tile=512)
    seen = []
    original = refiner._tile_logits
    refiner._tile_logits = lambda tiles, probs: seen.append(tiles.shape) or original(tiles, probs)
    probs = np.random.default_rng(2).random((2, 40, 50)).astype(np.float32)
    probs /= probs.sum(0, keepdims=True)
    stats = TileStats()
    out = refiner.refine_probs(gradient_image(40, 50), probs, stats)
    # One tile of 56×56 (50 rounded up to the model's multiple of 8), not 512×512 of padding.
    assert seen == [(1, 3, 56, 56)]
    assert stats.total == 1 and out.shape == (2, 40, 50)
    assert np.array_equal(
        out,
        Refiner.load(model_dir, device="cpu", tile=56).refine_probs(gradient_image(40, 50), probs),
    )


def test_classes_propagated_a_few_at_a_time_give_the_same_map(model_dir: Path, monkeypatch):
    # The torch model's tile call (a GPU's): the gates once, then the classes a few at a time.
    from spnrefine.checkpoint import load_model

    model = load_model(model_dir)
    probs = np.random.default_rng(3).random((1, 5, 72, 72)).astype(np.float32)
    probs /= probs.sum(1, keepdims=True)
    tiles = np.ascontiguousarray(gradient_image(72, 72).transpose(2, 0, 1)[None])
    whole = model.tile_logits(tiles, probs)
    monkeypatch.setattr(tiling, "CLASS_TILES_PER_CALL", 2)
    calls = []
    original = model.propagate_classes
    monkeypatch.setattr(
        model,
        "propagate_classes",
        lambda probs, *args, **kwargs: (
            calls.append(probs.shape[1]) or original(probs, *args, **kwargs)
        ),
    )
    np.testing.assert_allclose(model.tile_logits(tiles, probs), whole, atol=1e-5)
    assert calls == [2, 2, 1]  # one 72×72 tile of 5 classes, two at a time


def test_refine_file_checks_outputs_before_the_model_runs(identity: Refiner, tmp_path: Path):
    out = tmp_path / "out.png"
    out.write_bytes(b"keep me")
    IdentityRefiner.calls = 0
    with pytest.raises(SpnrefineError, match="already exists"):
        identity.refine_file(EXAMPLES / "astronaut.jpg", EXAMPLES / "astronaut_coarse.png", out)
    assert IdentityRefiner.calls == 0
    assert out.read_bytes() == b"keep me"


def test_refine_file_refuses_to_write_over_an_input(identity: Refiner, tmp_path: Path):
    coarse = tmp_path / "coarse.png"
    coarse.write_bytes((EXAMPLES / "astronaut_coarse.png").read_bytes())
    before = coarse.read_bytes()
    with pytest.raises(SpnrefineError, match="overwrite the input"):
        identity.refine_file(EXAMPLES / "astronaut.jpg", coarse, coarse, overwrite=True)
    assert coarse.read_bytes() == before


def test_refine_file_writes_output_and_overlay(identity: Refiner, tmp_path: Path):
    result = identity.refine_file(
        EXAMPLES / "astronaut.jpg",
        EXAMPLES / "astronaut_coarse.png",
        tmp_path / "mask.png",
        overlay=tmp_path / "look.jpg",
    )
    assert result.out == str(tmp_path / "mask.png")
    assert Image.open(tmp_path / "mask.png").size == (512, 512)
    assert Image.open(tmp_path / "look.jpg").format == "JPEG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["look.jpg", "mask.png"]


def test_refine_file_writes_to_a_binary_stream(identity: Refiner):
    buf = io.BytesIO()
    identity.refine_file(EXAMPLES / "coffee.jpg", EXAMPLES / "coffee_coarse.png", buf, stretch=True)
    assert Image.open(io.BytesIO(buf.getvalue())).size == (600, 400)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tile": 100}, "--tile"),
        ({"tile": 8}, "--tile"),
        ({"overlap": 32, "tile": 32}, "--overlap"),
        ({"overlap": -1}, "--overlap"),
        ({"batch_size": 0}, "batch size"),
        ({"device": "tpu"}, "--device"),
    ],
)
def test_invalid_settings_are_one_line_errors(model_dir: Path, kwargs: dict, message: str):
    with pytest.raises(SpnrefineError, match=message):
        Refiner.load(model_dir, **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_without_a_gpu_is_an_error(model_dir: Path):
    with pytest.raises(SpnrefineError, match="no CUDA GPU"):
        Refiner.load(model_dir, device="cuda")


def test_auto_device_is_the_cpu_without_a_gpu(model_dir: Path):
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert Refiner.load(model_dir).device == expected


@pytest.mark.parametrize("classes", [1, 2, 3, 11])
def test_argmax_classes_is_numpys_argmax_ties_included(classes: int):
    from spnrefine.labels import argmax_classes

    rng = np.random.default_rng(classes)
    probs = rng.random((classes, 30, 40)).astype(np.float32)
    probs[:, :5, :5] = 0.25  # every class ties: the first wins
    probs[-1, 5:8, :] = probs[0, 5:8, :]  # the last ties with the first
    got = argmax_classes(probs)
    assert np.array_equal(got, probs.argmax(axis=0))
    assert got.dtype == np.uint8


def voronoi_labels(h: int, w: int, classes: int, seed: int = 0) -> np.ndarray:
    """h×w class ids 0..classes-1, each the region nearest one of `classes` random points."""
    points = np.random.default_rng(seed).uniform(0, 1, (classes, 2)) * [h, w]
    yy, xx = np.mgrid[:h, :w]
    distance = (yy[None] - points[:, 0, None, None]) ** 2 + (
        xx[None] - points[:, 1, None, None]
    ) ** 2
    return distance.argmin(0).astype(np.uint8)


def test_labels_alone_are_the_labels_of_the_full_map(refiner: Refiner):
    image = gradient_image(200, 264)
    ids = voronoi_labels(25, 33, 9)
    ids[:3, :5] = 255  # some void
    full = refiner.refine(image, png_bytes(ids), coarse_type="labels")
    alone = refiner.refine(image, png_bytes(ids), coarse_type="labels", probs=False)
    assert alone.probs is None and full.probs.shape == (9, 200, 264)
    assert np.array_equal(alone.labels, full.labels)
    assert alone.tiles == full.tiles
    assert len(np.unique(full.labels)) == 10  # the 9 classes and void
    with pytest.raises(ValueError, match="without probabilities"):
        alone.encode(soft=True)


@pytest.mark.parametrize("kernels", ["numpy", "numba"])
def test_labels_alone_match_the_map_refined_whole(refiner: Refiner, kernels, monkeypatch):
    # The band-by-band path against refine_probs on the whole upsampled map, restricted. Both
    # on one kernel set: on "auto" the set follows the maps the module's refiner has done
    # so far, and the two sets differ in float rounding.
    from spnrefine.upsample import upsample_probs

    monkeypatch.setattr(refiner.model, "kernels", kernels)

    image = gradient_image(150, 180)
    ids = voronoi_labels(19, 23, 7, seed=3)
    coarse = load_coarse(png_bytes(ids), coarse_type="labels")
    whole = refiner.refine_probs(image, upsample_probs(coarse.probs, (150, 180)), factor=150 / 19)
    expected = to_labels(restrict_classes(whole, present_classes(coarse)), coarse, None)
    got = refiner.refine(image, coarse, probs=False).labels
    assert (got != expected).mean() < 1e-4  # float rounding may flip a tie


def labels_alone_traced(refiner: Refiner, image: np.ndarray, ids: np.ndarray):
    """The labels of a label map refined alone, and the peak of Python's allocations."""
    import tracemalloc

    tracemalloc.start()
    try:
        result = refiner.refine(image, ids, coarse_type="labels", probs=False)
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_many_classes_refine_in_bands_without_holding_them_all(refiner: Refiner):
    # 200 classes in blocks 2.5 coarse rows tall, two abreast: a band of rows meets ~16.
    h, w, classes = 2000, 320, 200
    ids = (np.arange(250)[:, None] * 2 // 5 * 2 + (np.arange(40) >= 20)).astype(np.uint8)
    result, peak = labels_alone_traced(refiner, gradient_image(h, w), ids)
    assert len(np.unique(result.labels)) == classes
    one_copy = classes * h * w * 4  # the float32 map of every class at the image's size
    assert peak < one_copy / 8, f"{peak / 2**20:.0f} MiB held"


def test_many_classes_side_by_side_hold_only_the_classes_of_each_cell(refiner: Refiner):
    # 60 classes in stripes 48 px wide, side by side in one row of tiles: a band meets them
    # all, the tiles over a cell (two tile columns) a few.
    h, w, classes = 128, 60 * 48, 60
    ids = np.repeat(np.arange(classes, dtype=np.uint8), 6)[None].repeat(16, 0)  # at 1/8
    result, peak = labels_alone_traced(refiner, gradient_image(h, w), ids)
    assert len(np.unique(result.labels)) == classes
    band = classes * h * w * 4  # one float32 copy of a band of every class it meets
    assert peak < band, f"{peak / 2**20:.0f} MiB held"  # (whole bands took 4 such copies)


def test_many_classes_are_refused_only_when_their_probabilities_are_asked_for(
    model_dir: Path, tmp_path: Path
):
    refiner = Refiner.load(model_dir, device="cpu", max_pixels=10_000)
    ids = np.arange(12 * 16, dtype=np.int32).reshape(12, 16) % 7
    assert refiner.refine(gradient_image(), ids, probs=False).labels.shape == (48, 64)
    refiner.refine_file(gradient_image(), ids, tmp_path / "out.png")
    with pytest.raises(SpnrefineError, match="7 classes at the image's 64x48"):
        refiner.refine_file(gradient_image(), ids, tmp_path / "soft.npy", soft=True)
    assert not (tmp_path / "soft.npy").exists()


@pytest.mark.parametrize("factor", [8, 2])
def test_a_binary_map_refined_band_by_band_is_the_map_refined_whole(refiner: Refiner, factor):
    # predict holds only the foreground planes and runs the guard's part rules on them;
    # refine_probs holds both classes whole: the same labels and probabilities. At ×2 the
    # guard reads the map's slopes too (stripes: steep; the disc's rim: gentle).
    from spnrefine.upsample import upsample_probs

    image = gradient_image(160, 200)
    h, w = 160 // factor, 200 // factor
    yy, xx = np.mgrid[:h, :w] * (8 / factor)
    fg = np.clip(1.2 - np.hypot(yy - 10, xx - 12) / 6, 0, 1).astype(np.float32)
    s = 8 // factor  # coarse pixels per ×8 one
    fg[2 * s : 4 * s, 20 * s : 22 * s] = 0.45
    if factor == 2:  # strokes across the first band's last rows (32)
        fg[14:22, 60:90] = (np.arange(8)[:, None] % 3 == 0) * 0.8 + (np.arange(30) % 4 == 0) * 0.2
    coarse = load_coarse(encode_npy(fg))
    whole = refiner.refine_probs(image, upsample_probs(coarse.probs, (160, 200)), factor=factor)
    expected = to_labels(restrict_classes(whole, present_classes(coarse)), coarse, None)
    result = refiner.refine(image, coarse)
    assert np.array_equal(result.labels, expected)
    np.testing.assert_allclose(result.probs, whole, atol=1e-5)
    assert refiner.refine(image, coarse, probs=False).labels.tolist() == expected.tolist()
