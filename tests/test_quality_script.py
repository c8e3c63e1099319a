"""benchmarks/quality.py: without its data it fails and says what is missing; on a small
prepared set it scores every group of rows (unseen domain, unseen segmenter, do no harm)."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "quality.py"


spec = importlib.util.spec_from_file_location("quality", SCRIPT)
quality_script = importlib.util.module_from_spec(spec)
sys.modules["quality"] = quality_script  # its dataclasses look their module up there
spec.loader.exec_module(quality_script)


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def quality(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch):
    """Run the script's main in this process (a subprocess would import torch each time)."""
    monkeypatch.delenv("SPNREFINE_DATA", raising=False)

    def run(*args: object) -> Result:
        code = 0
        try:
            quality_script.main([str(a) for a in args])
        except SystemExit as exit_:
            # A message, as `SystemExit("...")` carries, goes to stderr with status 1.
            code = exit_.code if isinstance(exit_.code, int) else 1
            message = "" if isinstance(exit_.code, int | None) else str(exit_.code)
        else:
            message = ""
        out, err = capsys.readouterr()
        return Result(code, out, err + message)

    return run


def make_set(root: Path, binary: bool, count: int = 2) -> Path:
    """A tiny data set of discs on noise, with coarse maps of two sources at 1/8."""
    rng = np.random.default_rng(0)
    for sub in ("images", "masks", "coarse-seen", "coarse-held-s8"):
        (root / sub).mkdir(parents=True)
    yy, xx = np.mgrid[:64, :96]
    for i in range(count):
        disc = (yy - 32) ** 2 + (xx - 40 - 8 * i) ** 2 < 18**2
        mask = disc.astype(np.uint8) * (255 if binary else 2)
        if not binary:
            mask[:, 80:] = 1
            mask[:4] = 255  # void
        image = rng.integers(0, 60, (64, 96, 3), dtype=np.uint8)
        image[disc] += 150
        cv2.imwrite(str(root / "images" / f"s{i}.jpg"), image)
        cv2.imwrite(str(root / "masks" / f"s{i}.png"), mask)
        small = cv2.resize(mask, (12, 8), interpolation=cv2.INTER_NEAREST)
        cv2.imwrite(str(root / "coarse-seen" / f"s{i}.png"), small)
        cv2.imwrite(str(root / "coarse-held-s8" / f"s{i}.png"), small)
    return root


def test_without_any_data_it_fails_and_names_the_options(quality):
    result = quality()
    assert result.returncode != 0
    assert "--data" in result.stderr and "--prepared" in result.stderr
    assert "SPNREFINE_DATA" in result.stderr


def test_a_data_folder_without_the_sets_fails_naming_them(quality, tmp_path: Path):
    result = quality("--data", tmp_path, "--no-crf")
    assert result.returncode != 0
    assert "davis/" in result.stderr and "camvid/" in result.stderr
    assert "Traceback" not in result.stderr
    result = quality("--data", tmp_path / "nowhere", "--no-crf")
    assert result.returncode != 0 and "no such folder" in result.stderr


def test_a_missing_prepared_set_or_segmenter_fails(quality, tmp_path: Path):
    make_set(tmp_path / "discs", binary=True)
    result = quality("--prepared", tmp_path, "--unseen", "cells", "--no-crf")
    assert result.returncode != 0 and "cells/" in result.stderr
    result = quality(
        "--prepared", tmp_path, "--unseen", "discs", "--segmenter", "other", "--no-crf"
    )
    assert result.returncode != 0 and "coarse-other*/" in result.stderr


@pytest.mark.parametrize("binary", [True, False])
def test_every_group_is_scored_on_a_prepared_set(quality, tmp_path: Path, binary: bool):
    make_set(tmp_path / "discs", binary=binary)
    result = quality("--prepared", tmp_path, "--unseen", "discs", "--segmenter", "held", "--no-crf")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for group, coarse in [
        ("unseen-domain", "×8"),
        ("unseen-domain", "seen"),
        ("unseen-segmenter", "held-s8"),
        ("do-no-harm", "gt"),
        ("do-no-harm", "×2"),
    ]:
        row = [ln for ln in lines if ln.startswith(group) and f"discs {coarse} (2)" in ln]
        assert {ln.split(")")[1].split()[0] for ln in row} == {"(truth", "bilinear", "guided"}
    assert not any(ln.startswith("unseen-domain") and "held" in ln for ln in lines)
    # The ground truth as input: bilinear upsampling returns it, IoU 1 and nothing added.
    gt_bilinear = next(
        ln for ln in lines if ln.startswith("do-no-harm") and "gt (2)" in ln and "bilinear" in ln
    )
    assert gt_bilinear.split()[5] == "1.0000"
    assert "+0.00" in gt_bilinear
    assert "do-no-harm: IoU in → out" in result.stdout


def test_hard_coarse_maps_are_the_majority_class_of_each_small_pixel():
    labels = np.zeros((32, 48), np.uint8)
    labels[5:21, 7:30] = 1  # a box whose edges cut the 8×8 cells (no cell half and half)
    labels[24:, 40:] = 255  # void in one corner cell, and less than half of another
    labels[30:, 32:40] = 255
    onehot = quality_script.onehot_of(labels, 2)
    hard = quality_script.hard_from_onehot(onehot, 8)
    small = quality_script.coarse_from_onehot(onehot, 8)  # the soft map, for contrast
    cells = cv2.resize(onehot[1], (6, 4), interpolation=cv2.INTER_AREA)
    expected = np.kron(cells >= 0.5, np.ones((8, 8), bool))  # nearest upsampling
    centres = (slice(4, None, 8), slice(4, None, 8))  # 15/16 a cell's own value
    assert np.array_equal(hard[1][centres] > 0.5, expected[centres])
    assert np.allclose(hard[:, 28:32, 44:48], 0.5)  # the void cell: uniform
    assert np.allclose(hard[0][28, 36], 1.0)  # a quarter void: background, the majority
    assert not np.allclose(small, hard)
