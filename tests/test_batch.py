"""spnrefine.batch and spnrefine.runner: pairing, the resume rule, the local loop and its
report, without the CLI in between. Pairs are refined by the bilinear baseline: real files,
no weights."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image
from pngs import small_pair

from spnrefine.api import Refiner
from spnrefine.batch import (
    collect_pairs,
    find_pairs,
    read_pair_lines,
    run_batch,
)
from spnrefine.errors import SpnrefineError
from spnrefine.pair import Pair, PairOptions, refine_pair
from spnrefine.runner import prepare_outputs, run_pairs


@pytest.fixture(scope="module")
def bilinear() -> Refiner:
    return Refiner.load(method="bilinear", device="cpu")


class Untouchable:
    """A refiner that fails the test if anything is refined."""

    info = None

    def refine_file(self, *args, **kwargs):
        raise AssertionError("a finished pair was refined again")


def test_find_pairs_reports_an_image_with_two_coarse_maps(tmp_path: Path):
    small_pair(tmp_path, "a")
    (tmp_path / "a_mask.png").write_bytes((tmp_path / "a_coarse.png").read_bytes())
    (pair,) = find_pairs(tmp_path)
    assert pair.problem is not None and "a_coarse.png" in pair.problem
    assert "a_mask.png" in pair.problem


def test_find_pairs_reports_images_whose_outputs_would_clash(tmp_path: Path):
    (tmp_path / "images").mkdir()
    (tmp_path / "coarse").mkdir()
    for name in ("a.png", "a.jpg"):
        Image.new("RGB", (8, 8)).save(tmp_path / "images" / name)
    Image.new("L", (8, 8)).save(tmp_path / "coarse" / "a.png")
    first, second = find_pairs(tmp_path)
    assert first.problem is None and "clash" in second.problem


def test_read_pair_lines_names_outputs_after_the_image_unless_given(tmp_path: Path):
    pairs = read_pair_lines(["x/cat.jpg\tx/cat.png", "d.jpg\td.png\tout/d.png"], tmp_path)
    assert (pairs[0].out, pairs[0].name_out) == (str(tmp_path / "cat"), True)
    assert (pairs[1].out, pairs[1].name_out) == ("out/d.png", False)


def test_collect_pairs_takes_a_folder_or_a_list_never_both(tmp_path: Path):
    small_pair(tmp_path, "a")
    with pytest.raises(SpnrefineError, match="one of the two"):
        collect_pairs()
    with pytest.raises(SpnrefineError, match="one of the two"):
        collect_pairs(tmp_path, from_="list.tsv")
    pairs, out_dir = collect_pairs(tmp_path)
    assert out_dir == tmp_path / "refined" and [p.image for p in pairs] == [str(tmp_path / "a.png")]
    listing = tmp_path / "list.tsv"
    listing.write_text(f"{tmp_path / 'a.png'}\t{tmp_path / 'a_coarse.png'}\n\n")
    pairs, out_dir = collect_pairs(from_=str(listing), out=tmp_path / "o")
    assert out_dir == tmp_path / "o" and pairs[0].out == str(tmp_path / "o" / "a")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpnrefineError, match="no images found"):
        collect_pairs(tmp_path / "empty")


def test_refine_pair_names_the_output_by_format_and_reports_it(bilinear, tmp_path: Path):
    image, coarse = small_pair(tmp_path)
    given = Pair(str(image), str(coarse), str(tmp_path / "given.png"))
    report = refine_pair(bilinear, given, PairOptions())
    assert report.status == "ok" and report.out == str(tmp_path / "given.png")
    named = Pair(str(image), str(coarse), str(tmp_path / "n"), name_out=True)
    report = refine_pair(bilinear, named, PairOptions())
    assert report.status == "ok" and report.out == str(tmp_path / "n.png")
    assert report.details["size"] == [56, 40] and report.details["method"] == "bilinear"


def test_a_pair_that_could_not_be_formed_fails_without_being_run(tmp_path: Path):
    report = refine_pair(
        Untouchable(), Pair("a.jpg", None, "a", problem="no coarse map"), PairOptions()
    )
    assert report.status == "failed" and report.error == "a.jpg: no coarse map"


def test_run_batch_reports_every_pair_in_order_past_a_bad_one(bilinear, tmp_path: Path):
    small_pair(tmp_path, "a")
    _, bad = small_pair(tmp_path, "b")
    bad.write_bytes(b"not a png")
    small_pair(tmp_path, "c")
    pairs = find_pairs(tmp_path)
    prepare_outputs(pairs, tmp_path / "refined", None)
    reports = list(run_batch(bilinear, pairs, PairOptions()))
    assert [r.status for r in reports] == ["ok", "failed", "ok"]
    assert str(bad) in reports[1].error
    again = list(run_batch(bilinear, pairs, PairOptions()))
    assert [r.status for r in again] == ["skipped", "failed", "skipped"]


def test_a_batch_of_several_pairs_tells_the_refiner_that_many_images_come(tmp_path: Path):
    from spnrefine.model.lean import NUMPY_MAPS, LeanRefiner

    small_pair(tmp_path, "a")
    small_pair(tmp_path, "b")
    refiner = Refiner.load(device="cpu")
    assert isinstance(refiner.model, LeanRefiner) and refiner.model.maps_expected == 0
    pairs = find_pairs(tmp_path)
    prepare_outputs(pairs, tmp_path / "refined", None)
    assert [r.status for r in run_batch(refiner, pairs[:1], PairOptions())] == ["ok"]
    assert refiner.model.maps_expected <= refiner.model.maps_done  # one image: its own maps
    # two small images (a tile each): each announced as it comes, no more
    assert [r.status for r in run_batch(refiner, pairs, PairOptions())] == ["skipped", "ok"]
    assert refiner.model.maps_expected <= refiner.model.maps_done
    # with an image of more tiles than the numpy kernels pay for (11 × 11), the refiner is
    # told before the first image
    small_pair(tmp_path, "c", 1200, 1200)
    pairs = find_pairs(tmp_path)
    prepare_outputs(pairs, tmp_path / "refined", None)
    fresh = Refiner.load(device="cpu")
    next(run_batch(fresh, pairs, PairOptions()))  # the first pair's report (a: done before)
    assert fresh.model.maps_expected > NUMPY_MAPS


def test_run_pairs_counts_and_writes_the_report_also_when_interrupted(bilinear, tmp_path: Path):
    for name in "abc":
        small_pair(tmp_path, name)
    pairs = find_pairs(tmp_path)
    prepare_outputs(pairs, tmp_path / "refined", tmp_path / "run.json")
    counts = run_pairs(bilinear, pairs[:2], PairOptions(), report=tmp_path / "run.json")
    assert (counts.ok, counts.skipped, counts.failed) == (2, 0, 0)
    seen = []

    def stop_after_two(report):
        seen.append(report)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_pairs(
            bilinear, pairs, PairOptions(), report=tmp_path / "run.json", on_report=stop_after_two
        )
    written = json.loads((tmp_path / "run.json").read_text())
    assert written["summary"]["pairs"] == 2 and written["summary"]["skipped"] == 2
    assert [p["status"] for p in written["pairs"]] == ["skipped", "skipped"]


def test_prepare_outputs_refuses_a_report_over_an_input(tmp_path: Path):
    image, coarse = small_pair(tmp_path)
    pairs = [Pair(str(image), str(coarse), str(tmp_path / "new" / "img"), name_out=True)]
    with pytest.raises(SpnrefineError, match="overwrite the input"):
        prepare_outputs(pairs, tmp_path / "new", coarse)
    prepare_outputs(pairs, tmp_path / "new", tmp_path / "report.json")
    assert (tmp_path / "new").is_dir()


@pytest.mark.parametrize("report", [False, True])
def test_a_nul_byte_in_a_list_line_is_one_clear_error_for_that_line(
    bilinear, tmp_path: Path, report: bool
):
    image, coarse = small_pair(tmp_path)
    listing = tmp_path / "list.tsv"
    listing.write_bytes(f"{image}\t{coarse}\n{image}\0x\t{coarse}\n".encode())
    pairs, out_dir = collect_pairs(from_=str(listing), out=tmp_path / "out")
    report_path = tmp_path / "run.json" if report else None
    prepare_outputs(pairs, out_dir, report_path)
    seen = []
    counts = run_pairs(bilinear, pairs, PairOptions(), report=report_path, on_report=seen.append)
    assert (counts.ok, counts.failed) == (1, 1)
    (failed,) = [r for r in seen if r.status == "failed"]
    assert failed.error == f"{image}\\0x\t{coarse}: line 2: a NUL byte in a path"
    assert "internal error" not in failed.error and "\0" not in failed.error


def test_stale_temporaries_of_this_batch_are_removed_on_start(tmp_path: Path):
    small_pair(tmp_path, "a")
    pairs = find_pairs(tmp_path)
    out = tmp_path / "refined"
    out.mkdir()
    stale = [
        out / ".a.png.0123abcd.tmp",
        out / ".a.npy.89abcdef.tmp",
        tmp_path / ".r.json.00ff00ff.tmp",
    ]
    fresh = out / ".a.png.fedcba98.tmp"  # a write in progress elsewhere
    others = [out / ".b.png.0123abcd.tmp", out / ".a.png.tmp", out / "a.png.0123abcd.tmp"]
    for path in [*stale, fresh, *others]:
        path.write_bytes(b"half")
    for path in [*stale, *others]:
        os.utime(path, (time.time() - 3600, time.time() - 3600))
    assert prepare_outputs(pairs, out, tmp_path / "r.json") == 3
    assert not any(p.exists() for p in stale)
    assert fresh.exists() and all(p.exists() for p in others)


def test_sigterm_ends_a_batch_as_ctrl_c_does_with_its_report(tmp_path: Path):
    for name in "abc":
        small_pair(tmp_path, name)
    script = f"""
import os, signal
from spnrefine.api import Refiner
from spnrefine.batch import find_pairs
from spnrefine.pair import PairOptions
from spnrefine.runner import run_pairs

pairs = find_pairs({str(tmp_path)!r})
os.mkdir({str(tmp_path / "refined")!r})
try:
    run_pairs(
        Refiner.load(method="bilinear"),
        pairs,
        PairOptions(),
        report={str(tmp_path / "r.json")!r},
        on_report=lambda report: os.kill(os.getpid(), signal.SIGTERM),
    )
except KeyboardInterrupt:
    raise SystemExit(130)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 130, done.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert [p["status"] for p in report["pairs"]] == ["ok"]
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # this process's handler untouched


def statuses(refiner, pairs, options: PairOptions | None = None):
    return [(r.status, r.error) for r in run_batch(refiner, pairs, options or PairOptions())]


def test_a_rerun_skips_only_outputs_made_from_the_same_inputs_and_settings(
    bilinear, tmp_path: Path
):
    small_pair(tmp_path, "a")
    _, b_coarse = small_pair(tmp_path, "b")
    pairs = find_pairs(tmp_path)
    prepare_outputs(pairs, tmp_path / "refined", None)
    assert [s for s, _ in statuses(bilinear, pairs)] == ["ok", "ok"]
    assert [s for s, _ in statuses(bilinear, pairs)] == ["skipped", "skipped"]
    # A changed input redoes its pair alone.
    b_coarse.write_bytes(b_coarse.read_bytes() + b"\0")
    assert [s for s, _ in statuses(bilinear, pairs)] == ["skipped", "ok"]
    # Other settings redo every pair, replacing the outputs of the earlier run.
    guided = Refiner.load(method="guided", device="cpu")
    before = (tmp_path / "refined" / "a.png").stat().st_mtime_ns
    assert [s for s, _ in statuses(guided, pairs)] == ["ok", "ok"]
    assert (tmp_path / "refined" / "a.png").stat().st_mtime_ns != before
    assert [s for s, _ in statuses(guided, pairs, PairOptions(soft=True))] == ["ok", "ok"]
    assert [s for s, _ in statuses(guided, pairs, PairOptions(soft=True))] == ["skipped"] * 2
    unguarded = Refiner.load(method="guided", device="cpu", guard=False)
    assert [s for s, _ in statuses(unguarded, pairs, PairOptions(soft=True))] == ["ok", "ok"]


def test_an_output_the_batch_did_not_write_is_never_taken_as_done(bilinear, tmp_path: Path):
    small_pair(tmp_path, "a")
    pairs = find_pairs(tmp_path)
    (tmp_path / "refined").mkdir()
    (tmp_path / "refined" / "a.png").write_bytes(b"someone else's")
    ((status, error),) = statuses(bilinear, pairs)
    assert status == "failed" and "already exists" in error
    assert (tmp_path / "refined" / "a.png").read_bytes() == b"someone else's"


def test_a_pair_killed_mid_way_is_redone_unless_its_output_was_written(bilinear, tmp_path: Path):
    small_pair(tmp_path, "a")
    pairs = find_pairs(tmp_path)
    prepare_outputs(pairs, tmp_path / "refined", None)
    assert [s for s, _ in statuses(bilinear, pairs)] == ["ok"]
    manifest = tmp_path / "refined" / ".spnrefine-manifest.jsonl"
    writing, done = (json.loads(line) for line in manifest.read_text().splitlines())
    assert (writing["state"], done["state"]) == ("writing", "done")
    written = (tmp_path / "refined" / "a.png").stat().st_mtime_ns
    # Killed after saying it would write, before the output was replaced: redone.
    manifest.write_text(json.dumps({**writing, "time": written + 10**9}) + "\n")
    assert [s for s, _ in statuses(bilinear, pairs)] == ["ok"]
    # Killed after the output was written, before it was recorded as done: kept.
    written = (tmp_path / "refined" / "a.png").stat().st_mtime_ns
    manifest.write_text(json.dumps({**writing, "time": written - 10**9}) + "\n")
    assert [s for s, _ in statuses(bilinear, pairs)] == ["skipped"]


def test_a_folder_refined_into_itself_never_takes_an_image_for_an_output(bilinear, tmp_path: Path):
    image, _ = small_pair(tmp_path, "a")
    before = image.read_bytes()
    pairs = find_pairs(tmp_path, out_dir=tmp_path)
    ((status, error),) = statuses(bilinear, pairs)
    assert status == "failed" and "is an input of this batch" in error
    assert image.read_bytes() == before


def test_list_lines_may_not_share_an_output_or_write_over_an_input(tmp_path: Path):
    lines = [
        "x/cat.jpg\tx/cat.png",
        "y/cat.jpg\ty/cat_coarse.png",  # named out/cat too
        "d.jpg\td.png\td.png",  # its output is its own coarse map
        "e.jpg\te.png\tx/cat.jpg",  # its output is another line's image
        "f.jpg\tf.png\tout/f.png",
    ]
    pairs = read_pair_lines(lines, tmp_path / "out")
    problems = [p.problem for p in pairs]
    assert problems[0] is None and problems[4] is None
    assert "also that of x/cat.jpg" in problems[1]
    assert "is an input of this batch" in problems[2] and "is an input" in problems[3]
