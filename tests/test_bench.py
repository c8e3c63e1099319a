"""`spnrefine bench`: every case runs on tiny sizes and reports time, memory and ratios; the
generated inputs and the memory probe do what they say. Speed itself is not asserted."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from spnrefine.bench import COARSE_FACTOR, PeakMemory, parse_sizes, synthetic_case
from spnrefine.checkpoint import save_model
from spnrefine.cli import app
from spnrefine.errors import SpnrefineError
from spnrefine.io import load_coarse, load_image
from spnrefine.model import ModelConfig, SPNRefiner


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = SPNRefiner(ModelConfig(hidden=2, gate_groups=2, widths=(8, 16), readout=4))
    return save_model(model, tmp_path_factory.mktemp("weights"))


def run(*args: object, model_dir: Path):
    env = {"SPNREFINE_WEIGHTS": str(model_dir), "NO_COLOR": "1"}
    return CliRunner().invoke(app, [str(a) for a in args], env=env, catch_exceptions=False)


def test_quick_json_has_every_case_with_time_memory_and_ratios(model_dir: Path):
    from spnrefine.baselines import crf_available

    result = run("bench", "--quick", "--json", model_dir=model_dir)
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert {"machine", "weights", "repeats", "memory", "kernel_input", "results"} <= set(data)
    assert data["repeats"] == 1 and data["weights"]["source"]
    results = data["results"]
    sizes = {tuple(r["size"]) for r in results}
    assert sizes == {(96, 64), (160, 120)}
    baselines = ["bilinear", "guided"] + (["crf"] if crf_available() else [])
    for size in sizes:
        at = [r for r in results if tuple(r["size"]) == size]
        assert {r["name"] for r in at if r["kind"] == "kernel"} >= {"cpu", "reference"}
        refine = {r["name"]: r for r in at if r["kind"] == "refine"}
        assert set(refine) == {"spn", *baselines}
        for r in refine.values():
            assert set(r["ratios"]) == set(baselines)
            assert r["ratios"][r["name"]] == 1.0 if r["name"] != "spn" else True
        spn = refine["spn"]
        assert spn["ratios"]["bilinear"] == pytest.approx(
            spn["seconds"] / refine["bilinear"]["seconds"]
        )
    for r in results:
        assert r["seconds"] > 0 and r["peak_mb"] >= 0 and r["runs"] == 1
    assert "peak" in result.stderr  # the table, moved to stderr by --json


def test_table_on_stdout_names_the_memory_measure(model_dir: Path):
    result = run("bench", "--sizes", "64x48", "--repeats", "2", model_dir=model_dir)
    assert result.exit_code == 0, result.stderr
    assert "median of 2 runs" in result.stdout
    rows = [line.split() for line in result.stdout.splitlines()]
    assert ["64x48", "kernel", "cpu"] == rows[[r[:1] for r in rows].index(["64x48"])][:3]
    assert any(r[:2] == ["64x48", "guided"] and "1.00" in r[4:] for r in rows)
    assert "peak MB:" in result.stdout


def test_bad_sizes_are_a_one_line_error(model_dir: Path):
    result = run("bench", "--sizes", "512by512", model_dir=model_dir)
    assert result.exit_code == 2
    assert (
        result.stderr.strip()
        == "error: --sizes 512by512: expected WxH[,WxH...], each side at least 8"
    )


def test_parse_sizes_reads_width_by_height():
    assert parse_sizes("512x512, 1920X1080") == [(512, 512), (1920, 1080)]
    with pytest.raises(SpnrefineError):
        parse_sizes("4x4")


def test_synthetic_case_is_a_jpeg_with_a_mask_at_an_eighth():
    image, coarse = synthetic_case((160, 120))
    assert image[:2] == b"\xff\xd8" and load_image(image).shape == (120, 160, 3)
    mask = load_coarse(coarse)
    assert mask.kind == "binary"
    assert mask.probs.shape[1:] == (120 // COARSE_FACTOR, 160 // COARSE_FACTOR)
    assert 0 < mask.probs[1].mean() < 1


def test_peak_memory_sees_an_allocation_inside_the_block():
    with PeakMemory() as peak:
        block = np.ones(64 * 2**20 // 8)  # 64 MB, every page touched
        del block
    assert 60 * 2**20 < peak.peak_bytes < 200 * 2**20
