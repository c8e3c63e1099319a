"""spnrefine.io.outputs, the output rules: format by name and coarse map, the names of outputs
given without one, the checks before any work, and writing to a file or a stream."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spnrefine.errors import SpnrefineError
from spnrefine.evaluate import find_eval_pairs
from spnrefine.io import CoarseMap
from spnrefine.io.outputs import (
    check_outputs,
    default_output,
    encode_output,
    name_output,
    natural_format,
    output_candidates,
    output_format,
    write_output,
)


def coarse(labels: list[int], kind: str = "prob") -> CoarseMap:
    probs = np.full((len(labels), 4, 6), 1 / len(labels), np.float32)
    return CoarseMap(probs, labels, kind, None, None, "coarse.png")


MASK, CLASSES = coarse([0, 255], "binary"), coarse([0, 3, 7], "labels")


@pytest.mark.parametrize(
    ("out", "cmap", "soft", "expected"),
    [
        ("o.png", MASK, False, "png"),
        ("o.png", MASK, True, "png"),
        ("o.npy", MASK, True, "npy"),
        ("o.npy", CLASSES, True, "npy"),
        ("o.PNG", CLASSES, False, "png"),
        ("-", MASK, True, "png"),
        ("-", CLASSES, True, "npy"),
        ("o", CLASSES, True, "npy"),
    ],
)
def test_output_format_follows_the_name_and_the_coarse_map(out, cmap, soft, expected):
    assert output_format(out, cmap, soft=soft) == expected


@pytest.mark.parametrize(
    ("out", "cmap", "soft", "message"),
    [
        ("o.npy", MASK, False, "hold --soft"),
        ("o.jpg", MASK, False, "cannot write .jpg"),
        ("o.png", CLASSES, True, "name it .npy"),
        ("o.png", coarse([0, 300], "labels"), False, "8-bit label PNG"),
    ],
)
def test_output_format_says_why_a_name_cannot_hold_the_result(out, cmap, soft, message):
    with pytest.raises(SpnrefineError, match=message):
        output_format(out, cmap, soft=soft)


def test_names_given_without_extension_get_the_natural_format():
    assert natural_format(MASK, soft=True) == natural_format(CLASSES) == "png"
    assert natural_format(CLASSES, soft=True) == "npy"
    assert name_output("out/a", MASK, soft=True) == "out/a.png"
    assert name_output("out/a", CLASSES, soft=True) == "out/a.npy"
    # Every name an output can get is among the candidates the resume rule looks at.
    for cmap in (MASK, CLASSES):
        for soft in (False, True):
            assert Path(name_output("a", cmap, soft=soft)) in output_candidates("a", soft=soft)
    assert output_candidates("a") == [Path("a.png")]


def test_default_output_is_named_so_that_eval_pairs_it_with_its_ground_truth(tmp_path: Path):
    (tmp_path / "gt").mkdir()
    Image.new("L", (6, 4)).save(tmp_path / "gt" / "cat.png")
    base = default_output(tmp_path / "photos" / "cat.jpg")
    assert Path(base).parent == tmp_path / "photos"
    pred = Path(name_output(base, MASK))
    pred.parent.mkdir()
    Image.new("L", (6, 4)).save(pred)
    (pair,) = find_eval_pairs(pred.parent, tmp_path / "gt").pairs
    assert pair.gt == tmp_path / "gt" / "cat.png"


def test_check_outputs_refuses_an_input_an_existing_file_and_overlay_on_output(tmp_path: Path):
    image, out = tmp_path / "a.jpg", tmp_path / "a.png"
    image.write_bytes(b"jpeg")
    with pytest.raises(SpnrefineError, match="overwrite the input"):
        check_outputs(image, None, [image], overwrite=True)
    with pytest.raises(SpnrefineError, match="same file"):
        check_outputs(out, out, [image])
    out.write_bytes(b"old")
    with pytest.raises(SpnrefineError, match="already exists"):
        check_outputs(out, None, [image])
    check_outputs(out, None, [image], overwrite=True)
    with pytest.raises(SpnrefineError, match="output folder does not exist"):
        check_outputs(tmp_path / "no" / "x.png", None, [])
    check_outputs("-", None, [image])
    check_outputs(io.BytesIO(), None, [image])


def test_check_outputs_of_a_name_without_extension(tmp_path: Path):
    (tmp_path / "a.png").write_bytes(b"old")
    with pytest.raises(SpnrefineError, match="already exists"):
        check_outputs(tmp_path / "a", None, [], auto_suffix=True)
    # With --soft the output may still be a.npy: only the folder can be checked before reading.
    check_outputs(tmp_path / "a", None, [], auto_suffix=True, soft=True)
    with pytest.raises(SpnrefineError, match="same file"):
        check_outputs(tmp_path / "b", tmp_path / "b.png", [], auto_suffix=True)


def test_write_output_writes_a_path_atomically_or_a_stream_as_is(tmp_path: Path):
    data = encode_output(MASK.probs, np.zeros((4, 6), np.uint8), MASK, "png")
    assert write_output(tmp_path / "m.png", data) == str(tmp_path / "m.png")
    assert (tmp_path / "m.png").read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.png"]  # no temporary left
    with pytest.raises(SpnrefineError, match="already exists"):
        write_output(tmp_path / "m.png", b"other")
    stream = io.BytesIO()
    assert write_output(stream, data) is None
    assert stream.getvalue() == data


def test_encode_output_keeps_the_kind_of_the_coarse_map():
    labels = np.array([[0, 3], [7, 255]], np.uint8)
    cmap = coarse([0, 3, 7], "labels")
    cmap.probs = np.zeros((3, 2, 2), np.float32)
    ids = np.asarray(Image.open(io.BytesIO(encode_output(cmap.probs, labels, cmap, "png"))))
    np.testing.assert_array_equal(ids, labels)
    mask = np.asarray(Image.open(io.BytesIO(encode_output(None, labels, MASK, "png"))))
    np.testing.assert_array_equal(mask, np.where(labels != 0, 255, 0))
    soft = np.load(io.BytesIO(encode_output(cmap.probs, labels, cmap, "npy", soft=True)))
    assert soft.shape == (3, 2, 2)
