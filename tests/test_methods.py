"""`--method bilinear|guided|crf`: the baselines run through the same data path as the model
(decode, upsample, class restriction, output naming, overlay, soft output), with no weights."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from pngs import listing, png_bytes
from typer.testing import CliRunner

from spnrefine.api import Refiner
from spnrefine.baselines import BASELINES, Baseline, available_baselines
from spnrefine.baselines.crf import crf_available
from spnrefine.cli import app
from spnrefine.errors import SpnrefineError
from spnrefine.io import load_coarse
from spnrefine.upsample import upsample_probs

CRF_MESSAGE = "--method crf needs pydensecrf: pip install 'spnrefine[crf]'"


def run(*args: object, tmp_path: Path):
    # Weights that do not exist: a baseline must not try to load any.
    env = {"SPNREFINE_WEIGHTS": str(tmp_path / "no-such-weights"), "NO_COLOR": "1"}
    return CliRunner().invoke(app, [str(a) for a in args], env=env, catch_exceptions=False)


def pair(folder: Path, name: str = "img", h: int = 48, w: int = 64) -> tuple[Path, Path]:
    """A bright disc on a dark ground and its mask shrunk ×4 (area average, thresholded)."""
    yy, xx = np.mgrid[:h, :w]
    disc = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (h / 3) ** 2
    image = np.where(disc[..., None], 220, 30).astype(np.uint8).repeat(3, axis=2)
    small = cv2.resize(disc.astype(np.float32), (w // 4, h // 4), interpolation=cv2.INTER_AREA)
    image_path, coarse_path = folder / f"{name}.png", folder / f"{name}_coarse.png"
    image_path.write_bytes(png_bytes(image))
    coarse_path.write_bytes(png_bytes((small >= 0.5).astype(np.uint8) * 255))
    return image_path, coarse_path


@pytest.fixture
def no_pydensecrf(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make `import pydensecrf` fail, as on a machine without the crf extra."""
    monkeypatch.setitem(sys.modules, "pydensecrf", None)
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)


def test_bilinear_method_is_the_upsampled_coarse_map_thresholded(tmp_path: Path):
    image, coarse = pair(tmp_path)
    result = Refiner.load(method="bilinear").refine(image, coarse)
    expected = upsample_probs(load_coarse(coarse).probs, (48, 64)).argmax(0) * 255
    np.testing.assert_array_equal(result.labels, expected)
    assert result.summary()["method"] == "bilinear"
    assert result.tiles.total == 0


def test_guided_method_moves_the_edge_towards_the_image(tmp_path: Path):
    image, coarse = pair(tmp_path)
    truth = np.asarray(Image.open(image))[..., 0] > 128
    guided = Refiner.load(method="guided").refine(image, coarse).labels > 0
    bilinear = Refiner.load(method="bilinear").refine(image, coarse).labels > 0
    assert np.count_nonzero(guided != truth) < np.count_nonzero(bilinear != truth)


def test_baselines_load_no_weights(tmp_path: Path):
    refiner = Refiner.load(tmp_path / "no-such-weights", method="guided")
    assert refiner.model is None and refiner.info is None


def test_unknown_method_is_refused():
    with pytest.raises(SpnrefineError, match="--method sharpen: expected one of spn, bilinear"):
        Refiner.load(method="sharpen")


@pytest.mark.parametrize("method", ["bilinear", "guided"])
def test_refine_method_writes_the_default_output_and_overlay(method: str, tmp_path: Path):
    image, coarse = pair(tmp_path)
    overlay = tmp_path / "overlay.jpg"
    result = run(
        "refine", image, coarse, "--method", method, "--overlay", overlay, tmp_path=tmp_path
    )
    assert result.exit_code == 0, result.stderr
    out = np.asarray(Image.open(tmp_path / "img_refined.png"))
    assert out.shape == (48, 64) and set(np.unique(out)) == {0, 255}
    assert Image.open(overlay).format == "JPEG"
    assert f"method {method}" in result.stderr


def test_refine_method_soft_json_record_names_the_method(tmp_path: Path):
    image, coarse = pair(tmp_path)
    out = tmp_path / "soft.png"
    result = run(
        "refine", image, coarse, "-o", out, "--method", "guided", "--soft", "--json",
        tmp_path=tmp_path,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["method"] == "guided" and record["out"] == str(out)
    soft = np.asarray(Image.open(out))
    assert len(np.unique(soft)) > 2  # probabilities, not a mask


def test_batch_method_names_outputs_as_the_model_would(tmp_path: Path):
    pair(tmp_path, "a")
    pair(tmp_path, "b")
    report = tmp_path / "report.json"
    result = run("batch", tmp_path, "--method", "guided", "--report", report, tmp_path=tmp_path)
    assert result.exit_code == 0, result.stderr
    assert listing(tmp_path / "refined") == ["a.png", "b.png"]
    data = json.loads(report.read_text())
    assert data["weights"] is None
    assert {p["method"] for p in data["pairs"]} == {"guided"}


def test_missing_pydensecrf_is_one_line_error(no_pydensecrf, tmp_path: Path):
    image, coarse = pair(tmp_path)
    for args in (["refine", image, coarse, "-o", tmp_path / "out.png"], ["batch", tmp_path]):
        result = run(*args, "--method", "crf", tmp_path=tmp_path)
        assert result.exit_code == 2
        assert result.stderr.strip() == f"error: {CRF_MESSAGE}"
    assert not (tmp_path / "out.png").exists() and not (tmp_path / "refined").exists()


def test_missing_pydensecrf_is_refused_by_the_api(no_pydensecrf):
    assert not crf_available()
    with pytest.raises(SpnrefineError, match="needs pydensecrf"):
        Refiner.load(method="crf")


@pytest.mark.skipif(not crf_available(), reason="pydensecrf is not installed (the crf extra)")
def test_crf_method_writes_a_mask(tmp_path: Path):
    image, coarse = pair(tmp_path)
    result = run(
        "refine", image, coarse, "--method", "crf", "-o", tmp_path / "crf.png", tmp_path=tmp_path
    )
    assert result.exit_code == 0, result.stderr
    out = np.asarray(Image.open(tmp_path / "crf.png"))
    assert out.shape == (48, 64) and set(np.unique(out)) <= {0, 255}


def test_a_baseline_registered_in_one_line_runs_through_the_api_and_bench(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    copy = Baseline("spnrefine.baselines.bilinear:refine_bilinear", "the coarse map again")
    monkeypatch.setitem(BASELINES, "copy", copy)
    image, coarse = pair(tmp_path)
    refiner = Refiner.load(method="copy")
    result = refiner.refine(image, coarse)
    plain = Refiner.load(method="bilinear").refine(image, coarse)
    np.testing.assert_array_equal(result.probs, plain.probs)
    assert "copy" in available_baselines()
    with pytest.raises(SpnrefineError, match="expected one of spn, bilinear, guided, crf, copy"):
        Refiner.load(method="nothing")
