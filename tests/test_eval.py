"""`spnrefine eval` and `spnrefine.evaluate`: pairing by name, scores against hand-computed
values (a one-pixel shift, an empty mask, a class absent from both, an ignore region), the
coarse input's scores and gain, the table, --csv, --json, and one-line errors."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from bombs import npz_header_only
from pngs import png_bytes
from typer.testing import CliRunner

from spnrefine.cli import app
from spnrefine.errors import SpnrefineError
from spnrefine.evaluate import Evaluation, evaluate, find_eval_pairs

SIDE = 10


def run(*args: object):
    env = {"NO_COLOR": "1"}
    return CliRunner().invoke(app, [str(a) for a in args], env=env, catch_exceptions=False)


def square(shift_x: int = 0, shape: tuple[int, int] = (40, 40)) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    mask[10 : 10 + SIDE, 10 + shift_x : 10 + SIDE + shift_x] = 255
    return mask


def write(folder: Path, name: str, array: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(png_bytes(array))
    return path


@pytest.fixture
def shifted(tmp_path: Path) -> Path:
    """Two masks: `a` predicted one pixel to the right, `b` exactly."""
    write(tmp_path / "gt", "a.png", square())
    write(tmp_path / "gt", "b.png", square())
    write(tmp_path / "pred", "a.png", square(1))
    write(tmp_path / "pred", "b.png", square())
    return tmp_path


def assert_one_line_error(result, *parts: str) -> None:
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for part in parts:
        assert part in lines[0]


# --- scores by hand --------------------------------------------------------------------------


def test_one_pixel_shift_scores_by_hand(shifted: Path):
    summary = evaluate(shifted / "pred", shifted / "gt", tolerance_px=0).summary()
    assert summary["mode"] == "binary" and summary["images"] == 2
    refined = summary["refined"]
    # a: I = s(s-1), U = s(s+1); b: I = U = s². Dataset ΣI/ΣU, and the mean of the two.
    assert refined["iou"] == pytest.approx((90 + 100) / (110 + 100), abs=1e-6)
    assert refined["mean_iou"] == pytest.approx((9 / 11 + 1) / 2, abs=1e-6)
    # At 0 px half of each shifted ring matches (P = R = 1/2); b is perfect.
    assert refined["boundary_f"] == pytest.approx(0.75, abs=1e-6)
    assert 0.5 < refined["mba"] < 1


def test_tolerance_of_one_pixel_forgives_a_one_pixel_shift(shifted: Path):
    result = run("eval", shifted / "pred", shifted / "gt", "--tolerance", "1", "--json", "-q")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["refined"]["boundary_f"] == pytest.approx(1.0)


def test_empty_ground_truth_with_an_object_predicted_scores_zero(tmp_path: Path):
    gt = write(tmp_path, "gt.png", np.zeros((40, 40), np.uint8))
    pred = write(tmp_path, "pred.png", square())
    summary = evaluate(pred, gt).summary()["refined"]
    assert summary == {"iou": 0.0, "mean_iou": 0.0, "boundary_f": 0.0, "mba": 0.0}


def test_empty_prediction_of_an_empty_mask_scores_one(tmp_path: Path):
    empty = write(tmp_path, "empty.png", np.zeros((40, 40), np.uint8))
    assert set(evaluate(empty, empty).summary()["refined"].values()) == {1.0}


def label_case(tmp_path: Path) -> tuple[Path, Path]:
    """8×8 ids: left half 0, right half 2, top row void. The prediction takes column 4 for
    class 0 (7 valid pixels wrong) and says 1 on the void row, where nothing counts."""
    gt = np.zeros((8, 8), np.uint8)
    gt[:, 4:] = 2
    gt[0] = 255
    pred = np.zeros((8, 8), np.uint8)
    pred[:, 5:] = 2
    pred[0] = 1
    return write(tmp_path / "pred", "x.png", pred), write(tmp_path / "gt", "x.png", gt)


def test_multiclass_iou_by_hand_with_absent_class_and_ignore_region(tmp_path: Path):
    pred, gt = label_case(tmp_path)
    summary = evaluate(pred, gt, classes=4).summary()
    refined = summary["refined"]
    assert summary["mode"] == "multiclass" and summary["classes"] == 4
    # Class 0: TP 28, FP 7 → 0.8; class 2: TP 21, FN 7 → 0.75; 1 (only under void) and 3 absent.
    assert refined["per_class_iou"] == {"0": 0.8, "1": None, "2": 0.75, "3": None}
    assert refined["miou"] == pytest.approx(0.775)


def test_label_maps_are_multiclass_without_being_told(tmp_path: Path):
    pred, gt = label_case(tmp_path)
    summary = evaluate(pred, gt).summary()
    assert summary["mode"] == "multiclass" and summary["classes"] is None
    assert summary["refined"]["per_class_iou"] == {"0": 0.8, "2": 0.75}


def test_void_in_the_prediction_is_a_miss(tmp_path: Path):
    gt = write(tmp_path, "gt.png", np.full((4, 4), 3, np.uint8))
    pred = np.full((4, 4), 3, np.uint8)
    pred[0, :2] = 255
    pred = write(tmp_path, "pred.png", pred)
    assert evaluate(pred, gt, classes=4).summary()["refined"]["miou"] == pytest.approx(14 / 16)


# --- coarse maps and the gain -------------------------------------------------------------------


def coarse_case(tmp_path: Path) -> Path:
    """A disc, its ground truth, a ×4 smaller coarse mask; the prediction is the truth."""
    yy, xx = np.mgrid[:48, :64]
    disc = (((yy - 24) ** 2 + (xx - 32) ** 2) < 15**2).astype(np.uint8) * 255
    image = np.repeat(np.where(disc > 0, 200, 40).astype(np.uint8)[..., None], 3, axis=2)
    write(tmp_path / "images", "d.png", image)
    write(tmp_path / "gt", "d.png", disc)
    write(tmp_path / "pred", "d_refined.png", disc)
    write(tmp_path / "coarse", "d_coarse.png", disc[2::4, 2::4])
    return tmp_path


def test_coarse_scores_are_the_bilinear_method_and_gain_is_the_difference(tmp_path: Path):
    root = coarse_case(tmp_path)
    bilinear = root / "bilinear"
    bilinear.mkdir()
    refined = run(
        "refine", root / "images" / "d.png", root / "coarse" / "d_coarse.png",
        "--method", "bilinear", "-o", bilinear / "d.png", "-q",
    )  # fmt: skip
    assert refined.exit_code == 0, refined.stderr
    as_coarse = evaluate(root / "pred", root / "gt", coarse=root / "coarse").summary()
    as_pred = evaluate(bilinear, root / "gt").summary()
    assert as_coarse["coarse"] == as_pred["refined"]
    assert as_coarse["refined"]["iou"] == 1.0
    assert as_coarse["coarse"]["iou"] < 1.0
    for key, gain in as_coarse["gain"].items():
        assert gain == pytest.approx(as_coarse["refined"][key] - as_coarse["coarse"][key])


def test_table_shows_refined_coarse_and_gain(tmp_path: Path):
    root = coarse_case(tmp_path)
    result = run(
        "eval", root / "pred", root / "gt", "--coarse", root / "coarse", "--image", root / "images"
    )
    assert result.exit_code == 0, result.stderr
    header = next(line for line in result.stdout.splitlines() if "metric" in line)
    assert header.split() == ["┃", "metric", "┃", "refined", "┃", "coarse", "┃", "gain", "┃"]
    iou_row = next(line for line in result.stdout.splitlines() if "IoU (ΣI/ΣU)" in line)
    assert "1.0000" in iou_row and "+0." in iou_row


def test_csv_has_a_row_per_image_and_json_the_summary(shifted: Path):
    write(shifted / "coarse", "a.png", square()[::4, ::4])
    write(shifted / "coarse", "b.png", square()[::4, ::4])
    table = shifted / "scores.csv"
    result = run(
        "eval", shifted / "pred", shifted / "gt", "--coarse", shifted / "coarse",
        "--csv", table, "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(table.read_text())))
    assert [r["name"] for r in rows] == ["a", "b"]
    assert list(rows[0])[:4] == ["name", "pred", "gt", "coarse"]
    assert float(rows[0]["iou"]) == pytest.approx(9 / 11, abs=1e-6)
    assert {"coarse_iou", "coarse_boundary_f", "coarse_mba"} <= set(rows[0])
    summary = json.loads(result.stdout)
    assert set(summary) == {
        "mode", "images", "tolerance_px", "refined", "coarse", "gain", "left_out"
    }  # fmt: skip
    assert "IoU (ΣI/ΣU)" in result.stderr  # the table moves to stderr when stdout is JSON


def test_csv_to_stdout(shifted: Path):
    result = run("eval", shifted / "pred", shifted / "gt", "--csv", "-", "-q")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines()[0] == "name,pred,gt,iou,boundary_f,mba"
    assert result.stderr == ""


# --- pairing and errors ----------------------------------------------------------------------


def test_ground_truth_without_prediction_is_left_out_and_said(shifted: Path):
    write(shifted / "gt", "c.png", square())
    result = run("eval", shifted / "pred", shifted / "gt", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["images"] == 2
    assert "1 ground-truth file without a prediction left out" in result.stderr


def test_refined_suffix_and_coarse_suffix_pair_by_name(tmp_path: Path):
    pairs = find_eval_pairs(
        coarse_case(tmp_path) / "pred", tmp_path / "gt", coarse=tmp_path / "coarse"
    ).pairs
    assert [(p.name, p.pred.name, p.gt.name, p.coarse.name) for p in pairs] == [
        ("d", "d_refined.png", "d.png", "d_coarse.png")
    ]


def test_prediction_without_ground_truth_is_left_out_counted_and_said(shifted: Path):
    write(shifted / "pred", "stray.png", square(3))
    result = run("eval", shifted / "pred", shifted / "gt", "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["images"] == 2
    assert summary["left_out"]["predictions_without_ground_truth"] == [
        str(shifted / "pred" / "stray.png")
    ]
    assert "1 prediction without ground truth left out: stray.png" in result.stderr
    (shifted / "pred" / "stray.png").unlink()
    without = run("eval", shifted / "pred", shifted / "gt", "--json")
    assert json.loads(without.stdout)["refined"] == summary["refined"]


def test_predictions_none_of_which_has_ground_truth_are_an_error(tmp_path: Path):
    write(tmp_path / "pred", "x.png", square())
    write(tmp_path / "gt", "y.png", square())
    result = run("eval", tmp_path / "pred", tmp_path / "gt")
    assert_one_line_error(result, "no prediction has ground truth", "x.png")


@pytest.mark.parametrize("palette", [True, False])
def test_ground_truth_of_ids_0_and_1_is_a_mask_scored_against_0_255_predictions(
    tmp_path: Path, palette: bool
):
    gt = np.where(square() > 0, 1, 0).astype(np.uint8)
    gt[0, :] = 255  # a void border, as VOC masks have
    (tmp_path / "gt").mkdir()
    (tmp_path / "gt" / "a.png").write_bytes(
        png_bytes(gt, palette=[0, 0, 0, 200, 0, 0] * 128 if palette else None)
    )
    write(tmp_path / "pred", "a.png", square())
    result = run("eval", tmp_path / "pred", tmp_path / "gt", "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["mode"] == "binary"
    assert summary["refined"]["iou"] == 1.0


def test_missing_coarse_map_is_an_error(shifted: Path):
    write(shifted / "coarse", "a.png", square()[::4, ::4])
    result = run("eval", shifted / "pred", shifted / "gt", "--coarse", shifted / "coarse")
    assert_one_line_error(result, "no coarse map for b")


def test_coarse_array_over_the_pixel_limit_is_refused_by_its_header(shifted: Path):
    coarse = shifted / "coarse"
    coarse.mkdir()
    (coarse / "a.npz").write_bytes(npz_header_only((20_000, 20_000)))
    write(coarse, "b.png", square())
    result = run("eval", shifted / "pred", shifted / "gt", "--coarse", coarse)
    assert_one_line_error(result, f"{coarse / 'a.npz'}: coarse map is 20000x20000")


def test_size_mismatch_is_an_error(shifted: Path):
    write(shifted / "pred", "b.png", square(shape=(40, 41)))
    result = run("eval", shifted / "pred", shifted / "gt")
    assert_one_line_error(result, "b.png", "prediction is 41x40 but the ground truth is 40x40")


def test_image_of_another_size_is_an_error(shifted: Path):
    for name in ("a", "b"):
        write(shifted / "images", f"{name}.png", np.zeros((20, 20, 3), np.uint8))
    result = run("eval", shifted / "pred", shifted / "gt", "--image", shifted / "images")
    assert_one_line_error(result, "image is 20x20 but the ground truth is 40x40")


def test_folder_of_predictions_needs_a_folder_of_ground_truth(shifted: Path):
    result = run("eval", shifted / "pred", shifted / "gt" / "a.png")
    assert_one_line_error(result, "must be one too")


def test_class_id_beyond_classes_is_an_error(tmp_path: Path):
    pred, gt = label_case(tmp_path)
    result = run("eval", pred, gt, "--classes", "2")
    assert_one_line_error(result, "class id 2: ids must be below --classes 2")


def test_class_ids_after_a_binary_first_ground_truth_need_a_mode(tmp_path: Path):
    write(tmp_path / "gt", "a.png", square())
    ids = np.zeros((8, 8), np.uint8)
    ids[:, 4:], ids[4:, :4] = 2, 5
    write(tmp_path / "gt", "b.png", ids)
    write(tmp_path / "pred", "a.png", square())
    write(tmp_path / "pred", "b.png", np.zeros((8, 8), np.uint8))
    result = run("eval", tmp_path / "pred", tmp_path / "gt")
    assert_one_line_error(result, "b.png", "--classes N")
    assert run("eval", tmp_path / "pred", tmp_path / "gt", "--binary", "-q").exit_code == 0


def test_binary_and_classes_exclude_each_other():
    with pytest.raises(SpnrefineError, match="exclude each other"):
        Evaluation(binary=True, classes=3)
