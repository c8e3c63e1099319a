"""Reading images and coarse maps, the size check and upsampling, and writing outputs."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from bombs import npy_header_only, npz_header_only
from datasets import EXAMPLES, FIXTURES, dataset
from PIL import Image
from pngs import png_bytes

from spnrefine.errors import SpnrefineError
from spnrefine.io import (
    CoarseMap,
    check_output,
    default_palette,
    encode_label_png,
    encode_mask_png,
    encode_npy,
    encode_overlay,
    encode_prob_png,
    load_coarse,
    load_image,
    refuse_overwrite_input,
    write_atomic,
)
from spnrefine.upsample import (
    check_class_pixels,
    check_coarse_size,
    upsample_ignore,
    upsample_probs,
    upsample_rows,
)


def save(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def soft_disc(h: int = 40, w: int = 60) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    dist = np.hypot(yy - h / 2, xx - w / 2)
    return np.clip(255 * (h / 3 - dist) / 6 + 128, 0, 255).astype(np.uint8)


# --- images -------------------------------------------------------------------------------


def test_load_image_reads_jpeg_as_rgb_uint8():
    image = load_image(EXAMPLES / "coffee.jpg")
    assert image.shape == (400, 600, 3)
    assert image.dtype == np.uint8
    # cv2 decodes in BGR order: the loader must return the channels swapped back.
    bgr = cv2.imread(str(EXAMPLES / "coffee.jpg"))
    assert np.abs(image.astype(int) - bgr[:, :, ::-1].astype(int)).max() <= 2


@pytest.mark.parametrize(
    ("fmt", "options"),
    [("PNG", {}), ("TIFF", {}), ("WEBP", {"lossless": True})],
)
def test_load_image_lossless_formats_round_trip(fmt, options):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (9, 13, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt, **options)
    assert np.array_equal(load_image(buf.getvalue()), pixels)


def test_load_image_keeps_red_in_the_first_channel():
    pixels = np.zeros((4, 4, 3), np.uint8)
    pixels[..., 0] = 255
    assert load_image(png_bytes(pixels))[0, 0].tolist() == [255, 0, 0]


def test_load_image_applies_exif_orientation():
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = (255, 0, 0)
    pixels[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was turned: show the picture rotated 90° clockwise
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=95, exif=exif)

    image = load_image(buf.getvalue())

    assert image.shape == (40, 20, 3)
    # Rotating clockwise puts the left (red) half on top.
    assert image[5, 10, 0] > 200 and image[5, 10, 2] < 50
    assert image[35, 10, 2] > 200 and image[35, 10, 0] < 50


def test_load_image_turns_grayscale_into_equal_rgb_channels():
    gray = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
    image = load_image(png_bytes(gray))
    assert image.shape == (6, 8, 3)
    for channel in range(3):
        assert np.array_equal(image[..., channel], gray)


def test_load_image_drops_alpha_and_keeps_the_colour_under_it():
    rgba = np.zeros((5, 5, 4), np.uint8)
    rgba[..., :3] = (10, 200, 30)
    rgba[..., 3] = 0
    assert load_image(png_bytes(rgba))[2, 2].tolist() == [10, 200, 30]


def test_load_image_gray_with_alpha_becomes_rgb():
    buf = io.BytesIO()
    Image.new("LA", (3, 2), (77, 0)).save(buf, format="PNG")
    assert load_image(buf.getvalue()).tolist() == [[[77, 77, 77]] * 3] * 2


def test_load_image_expands_palette_images():
    ids = np.array([[0, 1], [1, 0]], np.uint8)
    image = load_image(png_bytes(ids, palette=[0, 0, 0, 250, 120, 5]))
    assert image[0, 1].tolist() == [250, 120, 5]
    assert image[0, 0].tolist() == [0, 0, 0]


def test_load_image_scales_16_bit_gray_to_8_bit():
    values = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 257 * 20).astype(np.uint16)
    image = load_image(png_bytes(values))
    assert image.dtype == np.uint8
    assert np.array_equal(image[..., 0], (values // 257).astype(np.uint8))


def test_load_image_scales_16_bit_rgb_to_8_bit():
    rgb16 = np.zeros((3, 4, 3), np.uint16)
    rgb16[..., 0] = 65535
    rgb16[..., 2] = 257 * 100
    ok, encoded = cv2.imencode(".png", rgb16[:, :, ::-1])  # cv2 writes BGR
    assert ok
    assert load_image(encoded.tobytes())[1, 1].tolist() == [255, 0, 100]


def test_load_image_from_bytes_names_stdin_in_errors():
    with pytest.raises(SpnrefineError, match="^<stdin>: "):
        load_image(b"not an image")
    with pytest.raises(SpnrefineError, match="^upload.png: "):
        load_image(b"not an image", name="upload.png")


def test_load_image_missing_file(tmp_path):
    path = tmp_path / "nothing.jpg"
    with pytest.raises(SpnrefineError, match="not found") as err:
        load_image(path)
    assert err.value.path == str(path)


def test_load_image_empty_file(tmp_path):
    with pytest.raises(SpnrefineError, match="empty file"):
        load_image(save(tmp_path / "empty.png", b""))


def test_load_image_not_an_image(tmp_path):
    with pytest.raises(SpnrefineError, match="not an image"):
        load_image(save(tmp_path / "notes.jpg", b"shopping list: milk, eggs\n"))


@pytest.mark.parametrize(
    "source", [EXAMPLES / "coffee.jpg", FIXTURES / "davis" / "dog_00000.png"], ids=["jpg", "png"]
)
def test_load_image_truncated_file_is_an_error(tmp_path, source):
    data = source.read_bytes()
    half = save(tmp_path / source.name, data[: len(data) // 2])
    with pytest.raises(SpnrefineError, match="truncated") as err:
        load_image(half)
    assert err.value.path == str(half)
    assert "\n" not in str(err.value)


def test_load_image_truncated_tiff_is_reported_as_truncated():
    # PIL only warns about a short TIFF read and then calls the file unidentifiable.
    pixels = np.random.default_rng(8).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="TIFF", compression="tiff_lzw")
    data = buf.getvalue()
    with pytest.raises(SpnrefineError, match="truncated"):
        load_image(data[: len(data) // 2])


def test_load_image_decompression_bomb_is_refused_with_the_size(tmp_path):
    path = save(tmp_path / "big.png", png_bytes(np.zeros((30, 40), np.uint8)))
    with pytest.raises(SpnrefineError, match="40x30") as err:
        load_image(path, max_pixels=1000)
    assert "--max-pixels" in str(err.value)
    assert load_image(path, max_pixels=1200).shape == (30, 40, 3)


def test_load_image_checks_the_pixel_limit_before_decoding():
    # A header claiming 100000x100000 pixels and no pixel data: decoding would fail as
    # truncated (or exhaust memory); the header check must refuse it first.
    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    header_only = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(100)))
    with pytest.raises(SpnrefineError, match="100000x100000 = 10,000,000,000 pixels"):
        load_image(b"\x89PNG\r\n\x1a\n" + header_only + chunk(b"IEND", b""))


# --- coarse maps: real files ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["astronaut_coarse.png", "coffee_coarse.png"])
def test_auto_reads_the_example_masks_as_probabilities(name):
    coarse = load_coarse(EXAMPLES / name)
    assert coarse.kind == "prob"
    raw = np.asarray(Image.open(EXAMPLES / name), dtype=np.float32) / 255
    assert np.allclose(coarse.probs[1], raw)


def assert_read_as_probabilities(paths: list[Path]) -> None:
    assert paths
    kinds = {p.name: load_coarse(p).kind for p in paths}
    assert set(kinds.values()) == {"prob"}, [n for n, k in kinds.items() if k != "prob"]


def assert_read_as_labels_with_void(paths: list[Path]) -> None:
    assert paths
    for path in paths:
        coarse = load_coarse(path)
        raw = np.asarray(Image.open(path))
        assert coarse.kind == "labels", path
        assert coarse.labels == sorted(set(np.unique(raw).tolist()) - {255})
        assert np.array_equal(coarse.ignore, raw == 255)
        assert np.array_equal(
            np.asarray(coarse.labels)[coarse.probs.argmax(0)][raw != 255], raw[raw != 255]
        )


def assert_read_as_binary(paths: list[Path]) -> None:
    assert paths
    for path in paths:
        coarse = load_coarse(path)
        assert coarse.kind == "binary", path
        assert coarse.labels == [0, 255]
        assert coarse.ignore is None
        assert np.array_equal(coarse.probs[1] == 1, np.asarray(Image.open(path)) == 255)


def test_auto_reads_real_soft_maps_with_few_values_or_ramps_as_probabilities():
    # tests/data holds the DAVIS coarse maps nearest the auto rule's limits.
    assert_read_as_probabilities(sorted((FIXTURES / "davis-coarse").glob("*.png")))


def test_auto_reads_real_camvid_masks_as_labels_with_void():
    assert_read_as_labels_with_void(sorted((FIXTURES / "camvid").glob("*.png")))


@pytest.mark.parametrize("folder", ["davis", "horses"])
def test_auto_reads_real_davis_and_horse_masks_as_binary(folder):
    assert_read_as_binary(sorted((FIXTURES / folder).glob("*.png")))


def test_auto_reads_every_davis_coarse_map_as_probabilities():
    paths = sorted(dataset("davis-coarse").glob("*.png"))
    assert len(paths) == 101
    assert_read_as_probabilities(paths)


def test_auto_reads_camvid_masks_as_labels_with_void():
    assert_read_as_labels_with_void(sorted((dataset("camvid") / "masks").glob("*.png"))[::20])


@pytest.mark.parametrize("folder", ["davis", "horses"])
def test_auto_reads_davis_and_horse_masks_as_binary(folder):
    assert_read_as_binary(sorted((dataset(folder) / "masks").glob("*.png"))[::60])


# --- coarse maps: formats -------------------------------------------------------------------


def assert_sums_to_one(probs: np.ndarray) -> None:
    assert probs.dtype == np.float32
    assert probs.ndim == 3 and probs.shape[0] >= 2
    assert np.allclose(probs.sum(0), 1, atol=1e-5)


def test_palette_png_is_class_ids_with_palette_and_void():
    ids = np.array([[0, 3, 3], [255, 7, 0]], np.uint8)
    palette = default_palette()
    coarse = load_coarse(png_bytes(ids, palette=palette))
    assert coarse.kind == "labels"
    assert coarse.labels == [0, 3, 7]
    assert coarse.palette[:9] == palette[:9]
    assert coarse.ignore.tolist() == [[False, False, False], [True, False, False]]
    assert_sums_to_one(coarse.probs)
    assert coarse.probs[:, 0, 1].tolist() == [0, 1, 0]
    assert np.allclose(coarse.probs[:, 1, 0], 1 / 3)


@pytest.mark.parametrize("foreground", [255, 1])
def test_binary_png(foreground):
    mask = np.zeros((6, 7), np.uint8)
    mask[2:5, 1:4] = foreground
    coarse = load_coarse(png_bytes(mask))
    assert coarse.kind == "binary"
    assert coarse.labels == [0, 255]
    assert np.array_equal(coarse.probs[1], (mask > 0).astype(np.float32))
    assert_sums_to_one(coarse.probs)


def test_8_bit_class_ids_are_labels():
    ids = np.zeros((12, 12), np.uint8)
    ids[:, 4:8] = 2
    ids[:, 8:] = 5
    ids[0, 0] = 255
    coarse = load_coarse(png_bytes(ids))
    assert (coarse.kind, coarse.labels) == ("labels", [0, 2, 5])
    assert coarse.ignore.sum() == 1


def test_8_bit_soft_map_is_probability():
    soft = soft_disc()
    coarse = load_coarse(png_bytes(soft))
    assert (coarse.kind, coarse.labels) == ("prob", [0, 255])
    assert np.allclose(coarse.probs[1], soft / 255)
    assert_sums_to_one(coarse.probs)


def voronoi_ids(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """A label map of `n` regions with ids 0..n-1 in random order, like a scene parser's."""
    rng = np.random.default_rng(seed)
    centres = rng.random((n, 2)) * [h, w]
    yy, xx = np.mgrid[:h, :w]
    nearest = ((yy[..., None] - centres[:, 0]) ** 2 + (xx[..., None] - centres[:, 1]) ** 2).argmin(
        -1
    )
    return rng.permutation(n)[nearest].astype(np.uint8)


@pytest.mark.parametrize(("n", "h", "w"), [(150, 120, 160), (255, 240, 320)])
def test_auto_reads_a_label_map_of_many_classes_as_labels(n, h, w):
    ids = voronoi_ids(n, h, w)
    coarse = load_coarse(png_bytes(ids))
    assert coarse.kind == "labels"
    expected = sorted(set(np.unique(ids).tolist()) - {255})
    assert coarse.labels == expected and len(expected) >= n - 1
    assert np.array_equal(
        np.asarray(coarse.labels)[coarse.probs.argmax(0)][ids != 255], ids[ids != 255]
    )


def test_auto_reads_a_sharp_soft_map_of_many_values_as_probability():
    # A disc anti-aliased from 8x its size: 0 and 255 with 63 middle values along its edge.
    yy, xx = np.mgrid[:480, :480]
    disc = (((yy - 240) ** 2 + (xx - 230) ** 2) < 150**2).astype(np.float32)
    soft = np.rint(cv2.resize(disc, (60, 60), interpolation=cv2.INTER_AREA) * 255)
    soft = soft.astype(np.uint8)
    coarse = load_coarse(png_bytes(soft))
    assert (coarse.kind, coarse.labels) == ("prob", [0, 255])


@pytest.mark.parametrize(
    ("values", "what"),
    [
        (np.full((1, 1), 200, np.uint8), "1x1 map of one value"),
        (np.full((5, 5), 3, np.uint8), "5x5 map of one value"),
        (np.array([[10, 200], [90, 0]], np.uint8), "2x2 map this small"),
    ],
)
def test_auto_refuses_a_map_without_edges_to_judge(values, what):
    with pytest.raises(SpnrefineError, match=f"{what}: no edges.*--coarse-type labels") as err:
        load_coarse(png_bytes(values), name="c.png")
    assert err.value.path == "c.png"
    assert load_coarse(png_bytes(values), coarse_type="prob").kind == "prob"
    assert load_coarse(png_bytes(values), coarse_type="labels").kind == "labels"


def test_auto_reads_a_one_pixel_wide_soft_map_as_probability():
    ramp = np.linspace(0, 255, 30).astype(np.uint8)[None]
    coarse = load_coarse(png_bytes(ramp))
    assert coarse.kind == "prob"
    assert np.allclose(coarse.probs[1, 0], ramp[0] / 255)
    assert load_coarse(png_bytes(ramp.T.copy())).kind == "prob"


def test_auto_refuses_many_values_whose_edges_and_regions_disagree():
    # 100 one-pixel lines of distinct values on 0: step edges, yet no value fills a region.
    lines = np.zeros((20, 200), np.uint8)
    lines[:, ::2] = np.arange(1, 101, dtype=np.uint8)
    with pytest.raises(SpnrefineError, match="cannot tell class ids from probabilities: 101"):
        load_coarse(png_bytes(lines))
    assert load_coarse(png_bytes(lines), coarse_type="labels").labels == list(range(101))


def test_uniform_all_255_map_is_an_all_foreground_mask():
    coarse = load_coarse(png_bytes(np.full((4, 6), 255, np.uint8)))
    assert coarse.kind == "binary"
    assert np.array_equal(coarse.probs[1], np.ones((4, 6)))


def cutout(alpha: np.ndarray, mode: str = "RGBA") -> bytes:
    colour = np.zeros((*alpha.shape, 3), np.uint8)
    colour[..., 0] = 180
    layers = [colour, alpha[..., None]] if mode == "RGBA" else [colour[..., :1], alpha[..., None]]
    buf = io.BytesIO()
    Image.fromarray(np.concatenate(layers, -1), mode).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_a_cutouts_alpha_channel_is_the_soft_foreground(mode):
    alpha = soft_disc()
    coarse = load_coarse(cutout(alpha, mode))
    assert (coarse.kind, coarse.labels) == ("prob", [0, 255])
    assert np.allclose(coarse.probs[1], alpha / 255)
    assert load_coarse(cutout(alpha, mode), coarse_type="prob").kind == "prob"


def test_a_hard_cutout_is_a_binary_mask():
    alpha = np.where(soft_disc() > 128, 255, 0).astype(np.uint8)
    coarse = load_coarse(cutout(alpha))
    assert (coarse.kind, coarse.labels) == ("binary", [0, 255])
    assert np.array_equal(coarse.probs[1], alpha / 255)


def test_an_opaque_rgba_image_or_a_cutout_as_labels_is_refused():
    with pytest.raises(SpnrefineError, match="RGBA image without transparency"):
        load_coarse(cutout(np.full((8, 8), 255, np.uint8)), name="c.png")
    with pytest.raises(SpnrefineError, match="cutout .alpha = foreground., not as class ids"):
        load_coarse(cutout(soft_disc()), coarse_type="labels")


def test_every_mask_and_foreground_probability_has_labels_0_and_255():
    fg = soft_disc().astype(np.float32) / 255
    for source in (
        png_bytes(soft_disc()),
        encode_npy(fg),
        encode_npy(fg.astype(np.float64)),
        encode_npy(fg > 0.5),
        png_bytes((fg > 0.5).astype(np.uint8)),
        encode_prob_png(fg, bits=16),
    ):
        assert load_coarse(source).labels == [0, 255]


def test_coarse_type_overrides_the_guess():
    soft = soft_disc()
    assert load_coarse(png_bytes(soft), coarse_type="labels").kind == "labels"
    mask = np.where(soft > 128, 255, 0).astype(np.uint8)
    forced = load_coarse(png_bytes(mask), coarse_type="labels")
    assert forced.kind == "labels"
    assert np.array_equal(forced.ignore, mask == 255)
    prob = load_coarse(png_bytes(mask), coarse_type="prob")
    assert prob.kind == "prob"
    assert np.array_equal(prob.probs[1], mask / 255)


def test_16_bit_png_is_probability():
    values = np.array([[0, 65535], [32768, 13107]], np.uint16)
    coarse = load_coarse(png_bytes(values))
    assert coarse.kind == "prob"
    assert np.allclose(coarse.probs[1], values / 65535)


def test_npy_foreground_probability():
    fg = np.random.default_rng(1).random((5, 8)).astype(np.float64)
    coarse = load_coarse(encode_npy(fg))
    assert (coarse.kind, coarse.labels) == ("prob", [0, 255])
    assert np.allclose(coarse.probs[1], fg)
    assert_sums_to_one(coarse.probs)


def test_npy_logits_go_through_sigmoid_and_softmax():
    logits = np.random.default_rng(2).normal(0, 30, (3, 5, 8)).astype(np.float32)
    coarse = load_coarse(encode_npy(logits), logits=True)
    assert np.allclose(coarse.probs, torch.softmax(torch.from_numpy(logits), 0).numpy(), atol=1e-6)
    single = load_coarse(encode_npy(logits[0]), logits=True)
    assert np.allclose(
        single.probs[1], torch.sigmoid(torch.from_numpy(logits[0])).numpy(), atol=1e-6
    )
    assert_sums_to_one(single.probs)


def test_npy_channels_first_and_last_give_the_same_map():
    rng = np.random.default_rng(3)
    probs = rng.random((4, 6, 9)).astype(np.float32)
    probs /= probs.sum(0)
    first = load_coarse(encode_npy(probs))
    last = load_coarse(encode_npy(probs.transpose(1, 2, 0)))
    assert first.labels == [0, 1, 2, 3]
    assert np.allclose(first.probs, probs)
    assert np.allclose(last.probs, probs)


def test_npy_channel_axis_follows_the_image_aspect_when_sizes_are_ambiguous():
    # 150 classes on a 60x107 map: the smaller end axis (107) would be wrong.
    probs = np.full((150, 60, 107), 1 / 150, np.float32)
    assert load_coarse(encode_npy(probs), image_hw=(480, 854)).probs.shape == (150, 60, 107)
    assert load_coarse(encode_npy(probs)).probs.shape == (107, 150, 60)


def test_npy_class_probabilities_are_normalised_per_pixel():
    probs = np.zeros((3, 4, 5), np.float32)
    probs[0, 0, 0] = 0.5
    probs[1, 0, 0] = 0.25
    coarse = load_coarse(encode_npy(probs))
    assert np.allclose(coarse.probs[:, 0, 0], [2 / 3, 1 / 3, 0])
    assert np.allclose(coarse.probs[:, 1, 1], 1 / 3)


@pytest.mark.parametrize(
    ("arrays", "expected_logits"),
    [({"probs": "p", "other": "x"}, False), ({"logits": "l"}, True), ({"mine": "p"}, False)],
)
def test_npz_picks_the_named_array(arrays, expected_logits):
    p = np.full((2, 3, 4), 0.5, np.float32)
    logit = np.zeros((2, 3, 4), np.float32)
    logit[1] = 10
    pick = {"p": p, "l": logit, "x": np.full((2, 3, 4), 7.0, np.float32)}
    coarse = load_coarse(npz_bytes(**{k: pick[v] for k, v in arrays.items()}))
    expected = torch.softmax(torch.from_numpy(logit), 0).numpy() if expected_logits else p
    assert np.allclose(coarse.probs, expected, atol=1e-6)


def test_integer_and_bool_arrays():
    ids = np.array([[0, 0, 4], [4, 9, 255]], np.int64)
    coarse = load_coarse(encode_npy(ids))
    assert (coarse.kind, coarse.labels) == ("labels", [0, 4, 9])
    mask = load_coarse(encode_npy(ids == 4))
    assert mask.kind == "binary"
    assert np.array_equal(mask.probs[1], (ids == 4).astype(np.float32))


def test_single_class_label_map_still_has_two_channels():
    coarse = load_coarse(png_bytes(np.full((4, 4), 3, np.uint8)), coarse_type="labels")
    assert coarse.labels == [0, 3]
    assert np.array_equal(coarse.probs[1], np.ones((4, 4)))


def test_float_tiff_is_probability(tmp_path):
    fg = np.linspace(0, 1, 20, dtype=np.float32).reshape(4, 5)
    path = tmp_path / "fg.tif"
    Image.fromarray(fg).save(path)
    assert np.allclose(load_coarse(path).probs[1], fg)


# --- coarse maps: errors --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.array([[0.2, np.nan], [0.1, 0.3]], np.float32), "NaN or infinite"),
        (np.array([[0.2, np.inf], [0.1, 0.3]], np.float32), "NaN or infinite"),
        (np.array([[0.2, -0.5], [0.1, 0.3]], np.float32), "negative probabilities"),
        (np.array([[0.2, 1.5], [0.1, 0.3]], np.float32), "above 1"),
        (np.zeros(5, np.float32), "has 1 dimension "),
        (np.zeros((2, 2, 2, 2), np.float32), "4 dimensions"),
        (np.zeros((0, 4), np.float32), "empty array"),
        (np.full((3, 3), 255, np.uint8), "every pixel is 255"),
        (np.zeros((2, 2), np.complex64), "expected floats"),
    ],
)
def test_bad_arrays_are_refused_naming_the_file(tmp_path, array, message):
    path = save(tmp_path / "coarse.npy", encode_npy(array))
    with pytest.raises(SpnrefineError, match=message) as err:
        load_coarse(path, coarse_type="labels" if array.dtype == np.uint8 else "auto")
    assert err.value.path == str(path)


@pytest.mark.parametrize(
    ("data", "size"),
    [
        (npy_header_only((100_000, 100_000)), "100000x100000"),
        (npz_header_only((20_000, 20_000)), "20000x20000"),
        (npz_header_only((3, 20_000, 20_000), key="logits"), "20000x20000"),
        (npy_header_only((20_000, 20_000, 2)), "20000x20000"),
        (npy_header_only((20_000, 20_000), dtype="|u1"), "20000x20000"),
    ],
    ids=["npy", "npz", "npz-chw", "npy-hwc", "npy-uint8"],
)
def test_array_shapes_are_checked_against_the_pixel_limit_before_the_data_is_read(data, size):
    # The data is 16 bytes: reading it first would fail as truncated or exhaust memory.
    with pytest.raises(SpnrefineError, match=f"^coarse.npz: coarse map is {size} = ") as err:
        load_coarse(data, name="coarse.npz")
    assert "--max-pixels" in str(err.value)


def test_array_pixel_limit_is_max_pixels():
    fg = np.full((30, 40), 0.5, np.float32)
    with pytest.raises(SpnrefineError, match="coarse map is 40x30 = 1,200 pixels"):
        load_coarse(npz_bytes(probs=fg), max_pixels=1199)
    assert load_coarse(npz_bytes(probs=fg), max_pixels=1200).probs.shape == (2, 30, 40)


def test_array_shorter_than_its_declared_shape_is_truncated():
    with pytest.raises(SpnrefineError, match=r"truncated.*needs 4,000 bytes, the file holds 16"):
        load_coarse(npy_header_only((20, 50)), name="c.npy")


def test_fortran_order_and_big_endian_arrays_read_as_written():
    fg = np.asfortranarray(np.random.default_rng(9).random((5, 7)).astype(">f8"))
    assert np.allclose(load_coarse(encode_npy(fg)).probs[1], fg)
    buf = io.BytesIO()
    np.save(buf, fg)
    assert np.allclose(load_coarse(buf.getvalue()).probs[1], fg)


def test_nan_logits_are_refused():
    with pytest.raises(SpnrefineError, match="NaN"):
        load_coarse(encode_npy(np.array([[0.0, np.nan]], np.float32)), logits=True)


def test_small_float_error_in_probabilities_is_tolerated():
    fg = np.array([[-1e-5, 1 + 1e-5]], np.float32)
    assert np.allclose(load_coarse(encode_npy(fg)).probs[1], [[0, 1]])


def test_object_array_is_refused():
    buf = io.BytesIO()
    np.save(buf, np.array([[{"a": 1}]], dtype=object), allow_pickle=True)
    with pytest.raises(SpnrefineError, match="Python objects"):
        load_coarse(buf.getvalue())


def test_truncated_npy_is_refused():
    data = encode_npy(np.zeros((20, 20), np.float32))
    with pytest.raises(SpnrefineError, match="<stdin>"):
        load_coarse(data[: len(data) // 2])


def test_rgb_coarse_png_is_refused_with_advice():
    colours = np.zeros((4, 4, 3), np.uint8)
    colours[:2, :, 0] = 128  # colour-coded classes: red above, black below
    with pytest.raises(SpnrefineError, match="unsupported image mode RGB.*palette"):
        load_coarse(png_bytes(colours))


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "LA"])
def test_a_gray_map_saved_in_colour_is_read_as_the_gray_map(mode):
    # Many tools write a mask or a probability map with three equal channels (and opaque
    # alpha): the same map as the single-channel PNG.
    fg = soft_disc()
    gray = load_coarse(png_bytes(fg))
    channels = {"RGB": 3, "RGBA": 3, "LA": 1}[mode]
    layers = [fg[..., None]] * channels + (
        [np.full_like(fg, 255)[..., None]] if "A" in mode else []
    )
    buf = io.BytesIO()
    Image.fromarray(np.concatenate(layers, -1), mode).save(buf, format="PNG")
    coarse = load_coarse(buf.getvalue())
    assert (coarse.kind, coarse.labels) == (gray.kind, gray.labels) == ("prob", [0, 255])
    assert np.array_equal(coarse.probs, gray.probs)
    mask = np.where(fg > 128, 255, 0).astype(np.uint8)
    hard = Image.fromarray(np.repeat(mask[..., None], 3, -1), "RGB")
    buf = io.BytesIO()
    hard.save(buf, format="PNG")
    assert load_coarse(buf.getvalue()).kind == "binary"


@pytest.mark.parametrize(
    ("data", "message"),
    [(None, "not found"), (b"", "empty file"), (b"junk", "not an image")],
)
def test_missing_empty_and_corrupt_coarse_files(tmp_path, data, message):
    path = tmp_path / "coarse.png"
    if data is not None:
        path.write_bytes(data)
    with pytest.raises(SpnrefineError, match=message) as err:
        load_coarse(path)
    assert err.value.path == str(path)


def test_truncated_coarse_png_is_refused(tmp_path):
    data = (EXAMPLES / "coffee_coarse.png").read_bytes()
    with pytest.raises(SpnrefineError, match="truncated"):
        load_coarse(data[: len(data) // 2], name="half.png")


# --- size check and upsampling ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("coarse_hw", "image_hw"),
    [
        ((480, 854), (480, 854)),
        ((60, 107), (480, 854)),
        ((61, 107), (480, 854)),
        ((60, 106), (480, 854)),
        ((200, 300), (400, 600)),
        ((1, 1), (480, 854)),
        # A panorama scaled by 0.01035 with each side rounded on its own.
        ((10, 311), (1000, 30000)),
    ],
)
def test_same_aspect_sizes_pass(coarse_hw, image_hw):
    check_coarse_size(coarse_hw, image_hw, "c.png")


@pytest.mark.parametrize(
    ("coarse_hw", "image_hw", "message"),
    [
        ((64, 64), (400, 600), "64x64 does not have the image's aspect ratio 600x400"),
        ((62, 107), (480, 854), "aspect ratio"),
        ((107, 60), (480, 854), "aspect ratio"),
        ((10, 340), (1000, 30000), "aspect ratio"),
        ((800, 1200), (400, 600), "larger than the image"),
        ((481, 854), (480, 854), "larger than the image"),
    ],
)
def test_other_sizes_are_refused_unless_stretched(coarse_hw, image_hw, message):
    with pytest.raises(SpnrefineError, match=message) as err:
        check_coarse_size(coarse_hw, image_hw, "c.png")
    assert "--stretch" in str(err.value)
    assert err.value.path == "c.png"
    check_coarse_size(coarse_hw, image_hw, "c.png", stretch=True)


def test_classes_at_the_image_size_are_capped_at_twice_max_pixels():
    check_class_pixels(2, (10_000, 10_000), "c.png", 100_000_000)
    check_class_pixels(150, (1080, 1920), "c.png", 200_000_000)
    with pytest.raises(SpnrefineError, match="150 classes at the image's 1920x1080") as err:
        check_class_pixels(150, (1080, 1920), "c.png", 100_000_000)
    assert err.value.path == "c.png"
    assert "--max-pixels raises the limit" in str(err.value)


def test_upsample_matches_torch_bilinear_with_half_pixel_centres():
    probs = np.random.default_rng(4).random((3, 6, 11)).astype(np.float32)
    ours = upsample_probs(probs, (48, 88))
    ref = F.interpolate(
        torch.from_numpy(probs)[None], size=(48, 88), mode="bilinear", align_corners=False
    )[0].numpy()
    assert np.allclose(ours, ref, atol=1e-5)


def test_upsample_stretches_each_axis_and_keeps_sums():
    coarse = load_coarse(EXAMPLES / "coffee_coarse.png")
    up = upsample_probs(coarse.probs, (400, 600))
    assert up.shape == (2, 400, 600)
    assert_sums_to_one(up)


def test_upsample_keeps_a_constant_map_constant():
    up = upsample_probs(np.full((2, 5, 7), 0.5, np.float32), (33, 41))
    assert np.allclose(up, 0.5)


def test_upsample_handles_more_channels_than_opencv_takes():
    probs = np.random.default_rng(5).random((515, 3, 4)).astype(np.float32)
    up = upsample_probs(probs, (6, 8))
    assert up.shape == (515, 6, 8)
    assert np.allclose(up[514], upsample_probs(probs[514:515], (6, 8))[0])
    assert np.allclose(up[7], upsample_probs(probs[7:8], (6, 8))[0])


def test_upsample_ignore_is_nearest_with_half_pixel_centres():
    mask = np.array([[True, False], [False, False]])
    up = upsample_ignore(mask, (4, 4))
    assert up.dtype == bool
    assert up.sum() == 4 and up[:2, :2].all()
    # 3 -> 5 is not a whole factor: sampling at pixel corners would shift the void right.
    odd = upsample_ignore(np.array([[False, True, False]]), (1, 5))
    assert odd.tolist() == [[False, False, True, False, False]]


# --- writing -----------------------------------------------------------------------------------


def test_write_atomic_writes_and_leaves_nothing_else(tmp_path):
    out = tmp_path / "out.png"
    write_atomic(out, b"hello")
    assert out.read_bytes() == b"hello"
    assert os.listdir(tmp_path) == ["out.png"]


def test_existing_output_is_kept_without_overwrite(tmp_path):
    out = save(tmp_path / "out.png", b"old")
    with pytest.raises(SpnrefineError, match="--overwrite"):
        write_atomic(out, b"new")
    with pytest.raises(SpnrefineError, match="--overwrite"):
        check_output(out)
    assert out.read_bytes() == b"old"
    write_atomic(out, b"new", overwrite=True)
    assert out.read_bytes() == b"new"


@pytest.mark.parametrize("make_parent", ["missing", "file"])
def test_unusable_output_folder_is_named(tmp_path, make_parent):
    parent = tmp_path / "parent"
    if make_parent == "file":
        parent.write_bytes(b"")
    with pytest.raises(SpnrefineError, match="output folder") as err:
        write_atomic(parent / "out.png", b"x")
    assert err.value.path == str(parent)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes anywhere")
def test_read_only_output_folder_is_named(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(SpnrefineError, match="permission denied") as err:
            write_atomic(folder / "out.png", b"x")
        assert err.value.path == str(folder)
    finally:
        folder.chmod(0o700)


def test_failed_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    out = save(tmp_path / "out.png", b"old")

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(SpnrefineError, match="No space left"):
        write_atomic(out, b"new", overwrite=True)
    assert os.listdir(tmp_path) == ["out.png"]
    assert out.read_bytes() == b"old"


def test_output_equal_to_an_input_is_refused(tmp_path, monkeypatch):
    image = save(tmp_path / "image.png", b"x")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SpnrefineError, match="overwrite the input"):
        refuse_overwrite_input("./sub/../image.png", [None, "-", image])
    link = tmp_path / "link.png"
    os.link(image, link)
    with pytest.raises(SpnrefineError, match="overwrite the input"):
        check_output(link, [image], overwrite=True)
    refuse_overwrite_input(tmp_path / "other.png", [image])
    refuse_overwrite_input("-", [image])


def test_label_png_round_trips_with_and_without_palette():
    ids = np.array([[0, 1, 2], [255, 2, 0]], np.uint8)
    plain = Image.open(io.BytesIO(encode_label_png(ids)))
    assert plain.mode == "L" and np.array_equal(np.asarray(plain), ids)
    palette = default_palette()
    coloured = Image.open(io.BytesIO(encode_label_png(ids, palette)))
    assert coloured.mode == "P" and np.array_equal(np.asarray(coloured), ids)
    assert coloured.getpalette()[3:6] == palette[3:6]
    again = load_coarse(encode_label_png(ids, palette))
    assert again.labels == [0, 1, 2] and again.ignore[1, 0]


def test_mask_png_is_0_or_255():
    mask = np.array([[True, False], [False, True]])
    for given in (mask, mask.astype(np.uint8) * 7):
        decoded = np.asarray(Image.open(io.BytesIO(encode_mask_png(given))))
        assert decoded.tolist() == [[255, 0], [0, 255]]


@pytest.mark.parametrize(("bits", "top"), [(8, 255), (16, 65535)])
def test_prob_png_round_trips_within_one_step(bits, top):
    prob = np.random.default_rng(6).random((7, 9)).astype(np.float32)
    coarse = load_coarse(encode_prob_png(prob, bits=bits), coarse_type="prob")
    assert np.abs(coarse.probs[1] - prob).max() <= 0.5 / top + 1e-7


def test_npy_round_trips():
    array = np.random.default_rng(7).random((2, 3, 4)).astype(np.float32)
    assert np.array_equal(np.load(io.BytesIO(encode_npy(array))), array)


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_overlay_tints_the_mask_and_outlines_it(fmt):
    image = np.full((40, 40, 3), 100, np.uint8)
    labels = np.zeros((40, 40), np.uint8)
    labels[10:30, 10:30] = 255
    overlay = np.asarray(Image.open(io.BytesIO(encode_overlay(image, labels, fmt=fmt))))
    assert overlay.shape == (40, 40, 3)
    tol = 0 if fmt == "png" else 12
    colour = np.asarray(default_palette()[765:768])
    assert np.abs(overlay[2, 2].astype(int) - 100).max() <= tol
    assert np.abs(overlay[20, 20].astype(int) - (0.55 * 100 + 0.45 * colour)).max() <= tol + 1
    # JPEG's chroma subsampling smears the one-pixel line, so only the lossless PNG shows it.
    if fmt == "png":
        assert overlay[10, 20].tolist() == colour.tolist()
        assert overlay[9, 20].tolist() == colour.tolist()


def test_a_label_map_keeps_its_ids_and_gives_one_hot_probabilities_when_asked():
    ids = np.array([[3, 3, 7], [255, 9, 7]], np.uint8)
    coarse = load_coarse(png_bytes(ids), coarse_type="labels")
    assert coarse.index is not None and coarse.index.dtype == np.uint8
    assert coarse.labels == [3, 7, 9] and coarse.channels == 3 and coarse.hw == (2, 3)
    expected = np.zeros((3, 2, 3), np.float32)
    expected[0, 0, :2] = expected[1, 0, 2] = expected[1, 1, 2] = expected[2, 1, 1] = 1
    expected[:, 1, 0] = 1 / 3  # void: uniform
    np.testing.assert_array_equal(coarse.probs, expected)
    np.testing.assert_array_equal(coarse.channel_rows(np.array([2, 0]), 1, 2), expected[[2, 0], 1:])
    assert coarse.channels_in_rows(0, 1).tolist() == [0, 1]
    assert coarse.channels_in_rows(1, 2).tolist() == [0, 1, 2]  # void holds every class


@pytest.mark.parametrize(
    ("h", "w", "big_h", "big_w"), [(12, 16, 96, 128), (7, 9, 50, 61), (8, 8, 8, 8)]
)
def test_upsampled_windows_are_windows_of_the_whole_upsampled_map(h, w, big_h, big_w):
    ids = np.random.default_rng(4).integers(0, 5, (h, w)).astype(np.uint8)
    soft = np.random.default_rng(5).dirichlet(np.ones(4), (h, w)).transpose(2, 0, 1)
    labels = load_coarse(png_bytes(ids), coarse_type="labels")
    probs = CoarseMap(soft.astype(np.float32), [0, 1, 2, 3], "prob", None, None, "x")
    for coarse in (labels, probs):
        whole = upsample_probs(coarse.probs, (big_h, big_w))
        channels = np.arange(coarse.channels)[::2]
        for start in range(0, big_h, 13):
            stop = min(big_h, start + 13)
            part = upsample_rows(coarse, channels, start, stop, (big_h, big_w))
            np.testing.assert_allclose(part, whole[channels, start:stop], atol=1e-6)
            for left in range(0, big_w, 17):  # and a window of those rows
                right = min(big_w, left + 17 + start % 3)
                part = upsample_rows(coarse, channels, start, stop, (big_h, big_w), left, right)
                expected = whole[channels, start:stop, left:right]
                np.testing.assert_allclose(part, expected, atol=1e-6)


def test_an_images_size_is_read_from_its_header_where_it_can_be(tmp_path: Path):
    from spnrefine.io.images import header_size

    Image.new("RGB", (40, 30)).save(tmp_path / "a.png")
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    assert header_size(str(tmp_path / "a.png")) == (30, 40)
    assert header_size(str(tmp_path / "bad.jpg")) is None
    assert header_size(str(tmp_path / "missing.png")) is None
    assert header_size("https://example.com/a.png") is None
    assert header_size("-") is None
