"""The command line end to end on real and generated files: `refine`, `batch`, `weights`,
pipelines, and every bad input ending in one line on stderr with nothing written."""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from bombs import npz_header_only
from PIL import Image
from pngs import listing, png_bytes, small_pair
from typer.testing import CliRunner

from spnrefine.checkpoint import CONFIG_FILE, WEIGHTS_FILE, save_model, sha256_file
from spnrefine.cli import app
from spnrefine.model import ModelConfig, SPNRefiner

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
ASTRONAUT, ASTRONAUT_COARSE = EXAMPLES / "astronaut.jpg", EXAMPLES / "astronaut_coarse.png"
COFFEE, COFFEE_COARSE = EXAMPLES / "coffee.jpg", EXAMPLES / "coffee_coarse.png"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = SPNRefiner(ModelConfig(hidden=2, gate_groups=2, widths=(8, 16), readout=4))
    return save_model(model, tmp_path_factory.mktemp("weights"))


@pytest.fixture
def cli(model_dir: Path) -> Callable:
    """Run the CLI in-process with the tiny test weights; bytes in, bytes and text out."""

    def run(*args: object, input: bytes | str | None = None, env: dict | None = None):
        runner = CliRunner()
        full_env = {"SPNREFINE_WEIGHTS": str(model_dir), "NO_COLOR": None, **(env or {})}
        # catch_exceptions=False: an escaping exception is a traceback, and fails the test.
        return runner.invoke(
            app, [str(a) for a in args], input=input, env=full_env, catch_exceptions=False
        )

    return run


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width×height pixels but holds almost no data: a decompression bomb's
    header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def assert_one_line_error(result, culprit: str) -> None:
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert culprit in lines[0]
    assert "Traceback" not in result.output


# --- refine on the example files ------------------------------------------------------------


@pytest.fixture(scope="module")
def astronaut_run(model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """One refine of the real example, with an overlay and --json (the model pass is the
    slow part, so the tests below share it)."""
    out_dir = tmp_path_factory.mktemp("astronaut")
    result = CliRunner().invoke(
        app,
        [
            "refine",
            str(ASTRONAUT),
            str(ASTRONAUT_COARSE),
            "-o",
            str(out_dir / "mask.png"),
            "--overlay",
            str(out_dir / "overlay.png"),
            "--json",
            "--weights",
            str(model_dir),
        ],
        catch_exceptions=False,
    )
    return result, out_dir


def test_refine_example_writes_a_0_255_mask_at_image_size(astronaut_run):
    result, out_dir = astronaut_run
    assert result.exit_code == 0, result.stderr
    mask = Image.open(out_dir / "mask.png")
    assert mask.size == (512, 512) and mask.mode == "L"
    assert set(np.unique(np.asarray(mask))) <= {0, 255}


def test_refine_example_writes_the_overlay_picture(astronaut_run):
    _, out_dir = astronaut_run
    overlay = Image.open(out_dir / "overlay.png")
    assert overlay.size == (512, 512) and overlay.mode == "RGB"
    assert not np.array_equal(np.asarray(overlay), np.asarray(Image.open(ASTRONAUT)))


def test_json_prints_one_object_per_result_on_stdout(astronaut_run):
    result, out_dir = astronaut_run
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["status"] == "ok" and record["error"] is None
    assert record["out"] == str(out_dir / "mask.png")
    assert record["overlay"] == str(out_dir / "overlay.png")
    assert record["size"] == [512, 512]
    assert record["kind"] == "prob"
    assert record["tiles"] >= record["tiles_refined"] > 0


def test_coffee_needs_stretch_and_refines_with_it(cli, tmp_path: Path):
    out = tmp_path / "coffee.png"
    refused = cli("refine", COFFEE, COFFEE_COARSE, "-o", out)
    assert_one_line_error(refused, str(COFFEE_COARSE))
    assert "64x64" in refused.stderr and "600x400" in refused.stderr
    assert not out.exists()
    stretched = cli("refine", COFFEE, COFFEE_COARSE, "-o", out, "--stretch")
    assert stretched.exit_code == 0, stretched.stderr
    assert Image.open(out).size == (600, 400)
    assert "wrote" in stretched.stderr


def test_default_output_is_named_after_the_image(cli, tmp_path: Path):
    image, coarse = small_pair(tmp_path)
    result = cli("refine", image, coarse)
    assert result.exit_code == 0, result.stderr
    assert Image.open(tmp_path / "img_refined.png").size == (56, 40)


def test_coarse_from_stdin_and_png_to_stdout(cli, tmp_path: Path):
    image, coarse = small_pair(tmp_path)
    result = cli("refine", image, "-", "-o", "-", "-q", input=coarse.read_bytes())
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    out = Image.open(io.BytesIO(result.stdout_bytes))
    assert out.format == "PNG" and out.size == (56, 40)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.png", "img_coarse.png"]


def test_coarse_array_from_stdin_is_refused_by_its_declared_size(cli, tmp_path: Path):
    image, _ = small_pair(tmp_path)
    result = cli("refine", image, "-", "-o", "-", input=npz_header_only((20_000, 20_000)))
    assert result.exit_code != 0
    assert result.stdout_bytes == b""
    assert result.stderr.strip().splitlines() == [
        "error: <stdin>: coarse map is 20000x20000 = 400,000,000 pixels, more than the limit "
        "of 100,000,000; --max-pixels raises the limit"
    ]


def test_soft_several_classes_to_stdout_is_an_npy(cli, tmp_path: Path):
    image, _ = small_pair(tmp_path)
    probs = np.random.default_rng(0).random((3, 10, 14)).astype(np.float32)
    probs /= probs.sum(0, keepdims=True)
    result = cli("refine", image, "-", "-o", "-", "--soft", input=npy_bytes(probs))
    assert result.exit_code == 0, result.stderr
    soft = np.load(io.BytesIO(result.stdout_bytes))
    assert soft.shape == (3, 40, 56)


@pytest.mark.parametrize("verb", ["refine", "batch"])
def test_16_bits_without_soft_is_refused_before_any_work(cli, tmp_path: Path, verb: str):
    image, coarse = small_pair(tmp_path)
    args = [image, coarse, "-o", tmp_path / "out.png"] if verb == "refine" else [tmp_path]
    result = cli(verb, *args, "--bits", "16")
    assert result.exit_code != 0
    assert result.stderr.strip().splitlines() == [
        "error: --bits 16 is the depth of a --soft probability PNG; labels and masks are 8-bit "
        "PNGs: add --soft, or leave --bits out"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.png", "img_coarse.png"]


def test_soft_one_class_writes_a_16_bit_png(cli, tmp_path: Path):
    image, coarse = small_pair(tmp_path)
    out = tmp_path / "soft.png"
    result = cli("refine", image, coarse, "-o", out, "--soft", "--bits", "16")
    assert result.exit_code == 0, result.stderr
    assert Image.open(out).mode.startswith("I")


def test_quiet_success_prints_nothing(cli, tmp_path: Path):
    image, coarse = small_pair(tmp_path)
    result = cli("refine", image, coarse, "-o", tmp_path / "out.png", "--quiet")
    assert result.exit_code == 0
    assert result.stdout == "" and result.stderr == ""


def test_no_color_turns_colour_off_on_stderr(cli, tmp_path: Path):
    missing = tmp_path / "missing.jpg"
    coloured = cli("refine", missing, missing, env={"FORCE_COLOR": "1"})
    assert "\x1b[" in coloured.stderr
    plain = cli("refine", missing, missing, env={"FORCE_COLOR": "1", "NO_COLOR": "1"})
    assert "\x1b[" not in plain.stderr


def test_overwrite_replaces_an_existing_output(cli, tmp_path: Path):
    image, coarse = small_pair(tmp_path)
    out = tmp_path / "out.png"
    out.write_bytes(b"old")
    refused = cli("refine", image, coarse, "-o", out)
    assert_one_line_error(refused, str(out))
    assert "--overwrite" in refused.stderr
    assert out.read_bytes() == b"old"
    assert cli("refine", image, coarse, "-o", out, "--overwrite").exit_code == 0
    assert Image.open(out).size == (56, 40)


def test_failed_overwrite_keeps_the_existing_output(cli, tmp_path: Path):
    image, _ = small_pair(tmp_path)
    out = tmp_path / "out.png"
    out.write_bytes(b"old")
    bad = tmp_path / "bad.npy"
    bad.write_bytes(npy_bytes(np.full((10, 14), np.nan, np.float32)))
    result = cli("refine", image, bad, "-o", out, "--overwrite")
    assert_one_line_error(result, str(bad))
    assert out.read_bytes() == b"old"


def test_failed_refine_still_prints_its_json_record(cli, tmp_path: Path):
    image, _ = small_pair(tmp_path)
    bad = tmp_path / "bad.npy"
    bad.write_bytes(npy_bytes(-np.ones((10, 14), np.float32)))
    result = cli("refine", image, bad, "-o", tmp_path / "out.png", "--json")
    assert result.exit_code == 2
    record = json.loads(result.stdout)
    assert record["status"] == "failed" and str(bad) in record["error"]


# --- bad input: one line naming the file, exit ≠ 0, nothing written ---------------------------


def _damaged(data: bytes) -> bytes:
    """Bytes flipped inside the compressed pixel data (a PNG's IDAT), header intact."""
    start = data.index(b"IDAT") + 20
    return data[:start] + bytes(b ^ 0x5A for b in data[start : start + 40]) + data[start + 40 :]


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _weights_with(model_dir: Path, folder: Path, change: Callable[[Path], None]) -> Path:
    shutil.copytree(model_dir, folder)
    change(folder)
    return folder


def _flip_last_byte(folder: Path) -> None:
    data = bytearray((folder / WEIGHTS_FILE).read_bytes())
    data[-1] ^= 0xFF
    (folder / WEIGHTS_FILE).write_bytes(bytes(data))


def _other_architecture(folder: Path) -> None:
    config = json.loads((folder / CONFIG_FILE).read_text())
    config["hidden"] = 4
    config["weights_sha256"] = sha256_file(folder / WEIGHTS_FILE)
    (folder / CONFIG_FILE).write_text(json.dumps(config))


# Each case: (tmp folder, test weights) → (arguments after "refine", the file the error names).
BAD_INPUTS: dict[str, Callable[[Path, Path], tuple[list, Path]]] = {
    "missing image": lambda t, w: ([t / "nope.jpg", ASTRONAUT_COARSE], t / "nope.jpg"),
    "missing coarse": lambda t, w: ([ASTRONAUT, t / "nope.png"], t / "nope.png"),
    "image is not an image": lambda t, w: (
        [_write(t / "notes.jpg", b"just some text\n"), ASTRONAUT_COARSE],
        t / "notes.jpg",
    ),
    "coarse is not an image": lambda t, w: (
        [ASTRONAUT, _write(t / "notes.png", b"just some text\n")],
        t / "notes.png",
    ),
    "empty image": lambda t, w: ([_write(t / "e.jpg", b""), ASTRONAUT_COARSE], t / "e.jpg"),
    "empty coarse": lambda t, w: ([ASTRONAUT, _write(t / "e.png", b"")], t / "e.png"),
    "truncated jpeg": lambda t, w: (
        [_write(t / "cut.jpg", ASTRONAUT.read_bytes()[:20000]), ASTRONAUT_COARSE],
        t / "cut.jpg",
    ),
    "truncated png": lambda t, w: (
        [ASTRONAUT, _write(t / "cut.png", ASTRONAUT_COARSE.read_bytes()[:300])],
        t / "cut.png",
    ),
    "corrupt png": lambda t, w: (
        [ASTRONAUT, _write(t / "bad.png", _damaged(ASTRONAUT_COARSE.read_bytes()))],
        t / "bad.png",
    ),
    "decompression bomb": lambda t, w: (
        [_write(t / "bomb.png", png_header_only(30000, 30000)), ASTRONAUT_COARSE],
        t / "bomb.png",
    ),
    "over --max-pixels": lambda t, w: (
        [ASTRONAUT, ASTRONAUT_COARSE, "--max-pixels", 100_000],
        ASTRONAUT,
    ),
    "wrong aspect ratio": lambda t, w: ([COFFEE, COFFEE_COARSE], COFFEE_COARSE),
    "coarse larger than image": lambda t, w: (
        [_write(t / "tiny.png", png_bytes(np.zeros((32, 32, 3), np.uint8))), ASTRONAUT_COARSE],
        ASTRONAUT_COARSE,
    ),
    "nan values": lambda t, w: (
        [ASTRONAUT, _write(t / "nan.npy", npy_bytes(np.full((64, 64), np.nan, np.float32)))],
        t / "nan.npy",
    ),
    "infinite values": lambda t, w: (
        [ASTRONAUT, _write(t / "inf.npy", npy_bytes(np.full((2, 64, 64), np.inf, np.float32)))],
        t / "inf.npy",
    ),
    "negative probabilities": lambda t, w: (
        [ASTRONAUT, _write(t / "neg.npy", npy_bytes(np.full((64, 64), -0.5, np.float32)))],
        t / "neg.npy",
    ),
    "array of rank 4": lambda t, w: (
        [ASTRONAUT, _write(t / "r4.npy", npy_bytes(np.zeros((1, 2, 64, 64), np.float32)))],
        t / "r4.npy",
    ),
    "array of rank 1": lambda t, w: (
        [ASTRONAUT, _write(t / "r1.npy", npy_bytes(np.zeros(64, np.float32)))],
        t / "r1.npy",
    ),
    "output folder missing": lambda t, w: (
        [ASTRONAUT, ASTRONAUT_COARSE, "-o", t / "no" / "out.png"],
        t / "no",
    ),
    "output folder is a file": lambda t, w: (
        [ASTRONAUT, ASTRONAUT_COARSE, "-o", _write(t / "f", b"x") / "out.png"],
        t / "f",
    ),
    "output is the coarse input": lambda t, w: (
        [ASTRONAUT, _write(t / "c.png", ASTRONAUT_COARSE.read_bytes()), "-o", t / "c.png"]
        + ["--overwrite"],
        t / "c.png",
    ),
    "output type cannot hold labels": lambda t, w: (
        [ASTRONAUT, ASTRONAUT_COARSE, "-o", t / "out.jpg"],
        t / "out.jpg",
    ),
    "overlay type unknown": lambda t, w: (
        [ASTRONAUT, ASTRONAUT_COARSE, "-o", t / "o.png", "--overlay", t / "o.gif"],
        t / "o.gif",
    ),
    "weights fail their checksum": lambda t, w: (
        [ASTRONAUT, ASTRONAUT_COARSE, "--weights", _weights_with(w, t / "wc", _flip_last_byte)],
        t / "wc" / WEIGHTS_FILE,
    ),
    "weights do not match the config": lambda t, w: (
        [
            ASTRONAUT,
            ASTRONAUT_COARSE,
            "--weights",
            _weights_with(w, t / "wa", _other_architecture),
        ],
        t / "wa" / WEIGHTS_FILE,
    ),
    "weights are a pickle": lambda t, w: (
        [ASTRONAUT, ASTRONAUT_COARSE, "--weights", _write(t / "model.pth", b"\x80\x04.")],
        t / "model.pth",
    ),
}


# What each error says about the problem, besides naming the file.
PROBLEMS = {
    "missing image": "file not found",
    "missing coarse": "file not found",
    "image is not an image": "not an image",
    "coarse is not an image": "not an image",
    "empty image": "empty file",
    "empty coarse": "empty file",
    "truncated jpeg": "truncated",
    "truncated png": "truncated",
    "corrupt png": "corrupt",
    "decompression bomb": "more than the limit",
    "over --max-pixels": "--max-pixels",
    "wrong aspect ratio": "aspect ratio",
    "coarse larger than image": "larger than the image",
    "nan values": "NaN",
    "infinite values": "infinite",
    "negative probabilities": "negative probabilities",
    "array of rank 4": "4 dimensions",
    "array of rank 1": "1 dimension ",
    "output folder missing": "does not exist",
    "output folder is a file": "not a folder",
    "output is the coarse input": "overwrite the input",
    "output type cannot hold labels": "cannot write .jpg",
    "overlay type unknown": ".png or .jpg",
    "weights fail their checksum": "checksum",
    "weights do not match the config": "do not match config.json",
    "weights are a pickle": "pickles are not loaded",
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_error_and_writes_nothing(
    cli, model_dir: Path, tmp_path: Path, case: str
):
    work = tmp_path / "work"
    work.mkdir()
    args, culprit = BAD_INPUTS[case](work, model_dir)
    before = {p: p.read_bytes() for p in work.rglob("*") if p.is_file()}
    if "-o" not in args:
        args += ["-o", work / "out.png"]
    result = cli("refine", *args)
    assert_one_line_error(result, str(culprit))
    assert PROBLEMS[case] in result.stderr
    after = {p: p.read_bytes() for p in work.rglob("*") if p.is_file()}
    assert after == before  # nothing written, nothing replaced, no temporary files left


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes anywhere")
def test_read_only_output_folder_is_refused_before_any_work(cli, tmp_path: Path):
    image, coarse = small_pair(tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        result = cli("refine", image, coarse, "-o", locked / "out.png")
    finally:
        locked.chmod(0o755)
    assert_one_line_error(result, str(locked))
    assert "permission denied" in result.stderr
    assert list(locked.iterdir()) == []


def test_max_pixels_can_be_raised_for_a_large_input(cli, tmp_path: Path):
    image = np.zeros((40, 56, 3), np.uint8)
    image_path = _write(tmp_path / "img.png", png_bytes(image))
    mask = _write(tmp_path / "m.png", png_bytes(np.zeros((10, 14), np.uint8)))
    refused = cli("refine", image_path, mask, "-o", tmp_path / "a.png", "--max-pixels", 1000)
    assert_one_line_error(refused, str(image_path))
    assert "--max-pixels" in refused.stderr
    raised = cli("refine", image_path, mask, "-o", tmp_path / "a.png", "--max-pixels", 3000)
    assert raised.exit_code == 0, raised.stderr


# --- weights -----------------------------------------------------------------------------------


def test_weights_command_shows_name_source_checksum_and_config(cli, model_dir: Path):
    result = cli("weights", "--json")
    assert result.exit_code == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["sha256"] == sha256_file(model_dir / WEIGHTS_FILE)
    assert info["config"]["hidden"] == 2
    assert "SPNREFINE_WEIGHTS" in info["source"]
    text = cli("weights").stdout
    for key in ("name:", "source:", "revision:", "sha256:", "config:"):
        assert key in text


@pytest.mark.skipif(
    not (REPO / "weights" / WEIGHTS_FILE).is_file(), reason="weights/ not bundled yet"
)
def test_bundled_weights_refine_the_example_end_to_end(cli, tmp_path: Path):
    out = tmp_path / "astronaut.png"
    result = cli("refine", ASTRONAUT, ASTRONAUT_COARSE, "-o", out, env={"SPNREFINE_WEIGHTS": None})
    assert result.exit_code == 0, result.stderr
    mask = np.asarray(Image.open(out)) > 0
    coarse = np.asarray(Image.open(ASTRONAUT_COARSE).resize((512, 512), Image.BILINEAR)) > 127
    # Trained weights keep the mask where the coarse map put it (the person, not the wall).
    assert (mask & coarse).sum() / max((mask | coarse).sum(), 1) > 0.8


# --- batch -------------------------------------------------------------------------------------


def test_batch_pairs_side_by_side_files_into_the_refined_folder(cli, tmp_path: Path):
    small_pair(tmp_path, "a")
    small_pair(tmp_path, "b")
    result = cli("batch", tmp_path, "-q")
    assert result.exit_code == 0, result.stderr
    assert listing(tmp_path / "refined") == ["a.png", "b.png"]


def test_batch_pairs_images_and_coarse_folders(cli, tmp_path: Path):
    (tmp_path / "images").mkdir()
    (tmp_path / "coarse").mkdir()
    image, coarse = small_pair(tmp_path / "images", "x")
    coarse.rename(tmp_path / "coarse" / "x.png")
    result = cli("batch", tmp_path, "--out", tmp_path / "outs", "-q")
    assert result.exit_code == 0, result.stderr
    assert Image.open(tmp_path / "outs" / "x.png").size == (56, 40)


def test_batch_resumes_by_skipping_finished_outputs(cli, tmp_path: Path):
    small_pair(tmp_path, "a")
    small_pair(tmp_path, "b")
    assert cli("batch", tmp_path, "-q").exit_code == 0
    done_before = (tmp_path / "refined" / "a.png").stat().st_mtime_ns
    (tmp_path / "refined" / "b.png").unlink()
    result = cli("batch", tmp_path, "--json")
    assert result.exit_code == 0, result.stderr
    records = {Path(r["image"]).name: r for r in map(json.loads, result.stdout.splitlines())}
    assert records["a.png"]["status"] == "skipped"
    assert records["b.png"]["status"] == "ok"
    assert (tmp_path / "refined" / "a.png").stat().st_mtime_ns == done_before
    assert "1 refined, 1 already done, 0 failed" in result.stderr


def test_batch_json_stays_on_stdout_while_the_progress_bar_draws(cli, tmp_path: Path):
    small_pair(tmp_path, "a")
    # FORCE_COLOR makes rich treat stderr as a terminal, so the live progress bar runs.
    result = cli("batch", tmp_path, "--json", env={"FORCE_COLOR": "1"})
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["status"] == "ok"
    assert "ETA" in result.stderr


def test_batch_goes_on_past_a_bad_pair_reports_it_and_exits_nonzero(cli, tmp_path: Path):
    small_pair(tmp_path, "a")
    _, bad = small_pair(tmp_path, "b")
    bad.write_bytes(b"broken")
    small_pair(tmp_path, "c")
    (tmp_path / "lonely.png").write_bytes(png_bytes(np.zeros((8, 8, 3), np.uint8)))
    report = tmp_path / "report.json"
    result = cli("batch", tmp_path, "--report", report)
    assert result.exit_code == 1
    assert listing(tmp_path / "refined") == ["a.png", "c.png"]
    data = json.loads(report.read_text())
    by_image = {Path(p["image"]).name: p for p in data["pairs"]}
    assert by_image["b.png"]["status"] == "failed"
    assert str(bad) in by_image["b.png"]["error"]
    assert "no coarse map" in by_image["lonely.png"]["error"]
    assert by_image["a.png"]["status"] == "ok" and by_image["a.png"]["seconds"] > 0
    assert data["summary"] == {**data["summary"], "ok": 2, "failed": 2, "skipped": 0}
    assert str(bad) in result.stderr and "Traceback" not in result.output


def test_batch_from_stdin_reads_tab_separated_lines(cli, tmp_path: Path):
    a_image, a_coarse = small_pair(tmp_path, "a")
    b_image, b_coarse = small_pair(tmp_path, "b")
    lines = f"{a_image}\t{a_coarse}\t{tmp_path / 'mine.png'}\n\n{b_image}\t{b_coarse}\nonly-one\n"
    result = cli("batch", "--from", "-", "--out", tmp_path / "outs", "--json", input=lines)
    assert result.exit_code == 1  # the malformed line is a failed pair
    assert (tmp_path / "mine.png").exists()
    assert (tmp_path / "outs" / "b.png").exists()
    statuses = [json.loads(line)["status"] for line in result.stdout.splitlines()]
    assert statuses == ["ok", "ok", "failed"]


def test_batch_soft_names_npy_for_several_classes_and_png_for_a_mask(cli, tmp_path: Path):
    small_pair(tmp_path, "mask")
    image, coarse = small_pair(tmp_path, "multi")
    probs = np.random.default_rng(0).random((3, 10, 14)).astype(np.float32)
    coarse.unlink()
    (tmp_path / "multi_seg.npy").write_bytes(npy_bytes(probs / probs.sum(0)))
    result = cli("batch", tmp_path, "--soft", "-q")
    assert result.exit_code == 0, result.stderr
    assert listing(tmp_path / "refined") == ["mask.png", "multi.npy"]
    again = cli("batch", tmp_path, "--soft", "--json")
    assert {json.loads(r)["status"] for r in again.stdout.splitlines()} == {"skipped"}


def test_batch_of_a_missing_folder_is_a_one_line_error(cli, tmp_path: Path):
    assert_one_line_error(cli("batch", tmp_path / "nowhere"), str(tmp_path / "nowhere"))


def test_batch_from_a_list_with_a_nul_byte_reports_that_line(cli, tmp_path: Path):
    image, coarse = small_pair(tmp_path)
    listing = tmp_path / "list.tsv"
    listing.write_bytes(f"{image}\t{coarse}\n{image}\0\t{coarse}\n".encode())
    result = cli(
        "batch", "--from", listing, "-o", tmp_path / "out", "--report", tmp_path / "r.json"
    )
    assert result.exit_code == 1
    assert result.stderr.count("error:") == 1 and "line 2: a NUL byte in a path" in result.stderr
    assert "internal error" not in result.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert [p["status"] for p in report["pairs"]] == ["ok", "failed"]


FAULTS_SCRIPT = """
import resource, sys
import numpy as np
if sys.argv[1] == "hold":
    from spnrefine.cli.common import hold_freed_memory
    hold_freed_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def call():  # a model call's arrays: several of the gates' size at once, then all freed
    held = [np.ones(3 * 2**20, np.float32) for _ in range(3)]
    del held
for _ in range(2):  # let malloc settle on the sizes
    call()
before = faults()
for _ in range(10):
    call()
print(faults() - before)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's malloc")
def test_a_refining_process_reuses_freed_memory_instead_of_faulting_it_in_again():
    import subprocess

    def faults(mode: str) -> int:
        run = subprocess.run(
            [sys.executable, "-c", FAULTS_SCRIPT, mode], capture_output=True, text=True, check=True
        )
        return int(run.stdout)

    pages = 10 * 3 * 12 * 2**20 // 4096  # what the calls allocate, in pages
    assert faults("plain") > pages // 20  # the heap's top given back and faulted in again
    assert faults("hold") < pages // 200
