"""Speed where users meet it: whole `spnrefine` processes against dense CRF in the same run.

    python benchmarks/whole_process.py [--davis DIR] [--repeats 3] [--batch-repeats 1]
                                       [--sizes 854x480,1920x1080,4096x3072] [--skip-first-run]

DIR defaults to $SPNREFINE_DATA/davis, else shared/data/davis beside the checkout.

Every number is a whole process, started the way a user starts it, on real DAVIS frames
(854×480, and the same frames upscaled bicubically to 1920×1080 and 4096×3072; coarse masks:
the ground truth area-shrunk ×8 and thresholded, 0/255). Rows:

- one-shot: `spnrefine refine IMAGE COARSE -o OUT` against `benchmarks/densecrf_script.py`
  (pydensecrf, DeepLab parameters, 5 iterations) on the same frame at 854×480;
- batch: `spnrefine batch DIR -o OUT` over 8 frames against the CRF script over the same 8 in
  one process, at each size (with the mean IoU and boundary F of both against the ground
  truth, so neither side is fast by doing nothing);
- start-up: `--help`, `--version`, a missing input file, a bad option (`--tile 7`);
- first run after install: one-shot refine with an empty numba cache (NUMBA_CACHE_DIR);
- peak resident memory of a 1920×1080 binary one-shot refine (and of the CRF script).

Times are medians over the repeats (min–max beside them); spnrefine and the CRF alternate, so
both see the same load. Both commands run once untimed first, and every process runs with
bytecode, as an installed tool does (PYTHONDONTWRITEBYTECODE is left out of its
environment). The machine is shared: the load average is printed at the start and the end;
compare ratios within a run, not seconds across runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
# $SPNREFINE_DATA/davis (the development data), else shared/data/davis beside the checkout or
# beside a folder holding it (as for worktrees).
DEFAULT_DAVIS = (
    Path(os.environ["SPNREFINE_DATA"]) / "davis"
    if os.environ.get("SPNREFINE_DATA")
    else next(
        (p / "shared/data/davis" for p in HERE.parents[1:] if (p / "shared/data").is_dir()),
        HERE.parents[1] / "shared/data/davis",
    )
)
SIZES = ((854, 480), (1920, 1080), (4096, 3072))
FRAMES = 8
FACTOR = 8


@dataclass
class Runs:
    """Wall times (s) and peak resident sizes (MB) of repeated runs of one command."""

    seconds: list[float] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)
    codes: list[int] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def spread(self) -> str:
        if len(self.seconds) < 2:
            return ""
        return f" ({min(self.seconds):.2f}–{max(self.seconds):.2f})"


# Processes run as an installed tool runs: with its bytecode. An install compiles it; the
# PYTHONDONTWRITEBYTECODE that some shells (and this project's development machine) set would
# have every process compile the package's sources again (about 70 ms of a one-shot refine),
# a cost no installed tool pays. A first untimed run of each command writes the bytecode.
INSTALLED = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def run(cmd: list[str], runs: Runs, env: dict[str, str] | None = None) -> str:
    """Run `cmd` to the end, record its wall time, peak RSS and exit code; return its stderr."""
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env or INSTALLED)
        _, status, usage = os.wait4(proc.pid, 0)
        runs.seconds.append(time.perf_counter() - start)
        proc.returncode = os.waitstatus_to_exitcode(status)
        runs.rss_mb.append(usage.ru_maxrss / 1024)  # KiB on Linux
        runs.codes.append(proc.returncode)
        err.seek(0)
        return err.read().decode(errors="replace")


def spnrefine_command() -> list[str]:
    """The console script beside this interpreter (as installed), else its equivalent."""
    script = Path(sys.executable).parent / "spnrefine"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from spnrefine.cli import app; sys.exit(app())"]


def pick_frames(davis: Path) -> list[str]:
    """The middle frame of each of the first FRAMES sequences (sorted by name)."""
    images = davis / "images"
    if not images.is_dir() or not (davis / "masks").is_dir():
        sys.exit(f"{davis}: DAVIS frames not found (images/ and masks/); pass --davis DIR")
    sequences: dict[str, list[str]] = {}
    for path in sorted(images.glob("*.jpg")):
        sequences.setdefault(path.stem.rsplit("_", 1)[0], []).append(path.stem)
    chosen = [stems[len(stems) // 2] for _, stems in sorted(sequences.items())][:FRAMES]
    if len(chosen) < FRAMES:
        sys.exit(f"{davis}: {FRAMES} sequences needed, found {len(chosen)}")
    return chosen


def build_set(davis: Path, frames: list[str], size: tuple[int, int], folder: Path) -> list:
    """folder/images/NAME.jpg + folder/coarse/NAME.png at `size`; returns the 0/1 ground truths."""
    (folder / "images").mkdir(parents=True)
    (folder / "coarse").mkdir()
    truths = []
    for frame in frames:
        src = davis / "images" / f"{frame}.jpg"
        mask = cv2.imread(str(davis / "masks" / f"{frame}.png"), cv2.IMREAD_GRAYSCALE)
        if mask is None:
            sys.exit(f"{davis / 'masks' / frame}.png: cannot read it")
        gt = (mask > 127).astype(np.uint8)
        if size == (gt.shape[1], gt.shape[0]):
            shutil.copyfile(src, folder / "images" / f"{frame}.jpg")  # the original bytes
        else:
            image = cv2.resize(cv2.imread(str(src)), size, interpolation=cv2.INTER_CUBIC)
            cv2.imwrite(
                str(folder / "images" / f"{frame}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 95]
            )
            gt = cv2.resize(gt, size, interpolation=cv2.INTER_NEAREST)
        small = (round(size[0] / FACTOR), round(size[1] / FACTOR))
        coarse = cv2.resize(gt.astype(np.float32), small, interpolation=cv2.INTER_AREA) >= 0.5
        cv2.imwrite(str(folder / "coarse" / f"{frame}.png"), coarse.astype(np.uint8) * 255)
        truths.append(gt.astype(bool))
    return truths


def scores(out: Path, frames: list[str], truths: list) -> str:
    from spnrefine.metrics import boundary_f, iou

    pairs = []
    for frame, gt in zip(frames, truths, strict=True):
        pred = cv2.imread(str(out / f"{frame}.png"), cv2.IMREAD_GRAYSCALE)
        if pred is None:
            return "no output"
        pairs.append((iou(pred > 127, gt), boundary_f(pred > 127, gt)))
    m_iou, m_bf = np.mean(pairs, axis=0)
    return f"IoU {m_iou:.4f} BF {m_bf:.4f}"


def row(name: str, spn: Runs, crf: Runs | None, goal: str) -> None:
    spn_text = f"{spn.median:7.2f} s{spn.spread()}"
    if crf is None:
        print(f"{name:40} {spn_text:24} {'':24} {'':9} {goal}")
        return
    crf_text = f"{crf.median:7.2f} s{crf.spread()}"
    print(f"{name:40} {spn_text:24} {crf_text:24} {crf.median / spn.median:6.2f}x   {goal}")


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs"


def check(runs: Runs, stderr: str, what: str) -> None:
    if runs.codes[-1] != 0:
        line = stderr.strip().splitlines()[-1] if stderr.strip() else ""
        sys.exit(f"{what} failed (exit {runs.codes[-1]}): {line}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--davis", type=Path, default=DEFAULT_DAVIS, help="DAVIS images/ + masks/")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each one-shot command")
    parser.add_argument("--batch-repeats", type=int, default=1, help="runs of each batch")
    parser.add_argument(
        "--sizes",
        default=",".join(f"{w}x{h}" for w, h in SIZES),
        help="batch sizes, WxH comma-separated",
    )
    parser.add_argument("--skip-first-run", action="store_true", help="no fresh-cache run")
    args = parser.parse_args()
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",") if s]
    frames = pick_frames(args.davis)
    spn = spnrefine_command()
    crf_script = [sys.executable, str(HERE / "densecrf_script.py")]
    import spnrefine

    print(f"load average at start: {load()}")
    print(f"spnrefine {spnrefine.__version__} from {Path(spnrefine.__file__).parent}")
    print(f"frames: {', '.join(frames)}; coarse masks at 1/{FACTOR}, binary")
    print(f"{'':40} {'spnrefine':24} {'dense CRF':24} {'CRF/spn':9} goal")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sets = {}
        for size in dict.fromkeys([(854, 480), (1920, 1080), *sizes]):
            folder = tmp / f"{size[0]}x{size[1]}"
            sets[size] = (folder, build_set(args.davis, frames, size, folder))

        # Untimed: the bytecode of both commands is written, the files are in the page cache.
        folder = sets[(854, 480)][0]
        image, coarse = (
            folder / "images" / f"{frames[0]}.jpg",
            folder / "coarse" / f"{frames[0]}.png",
        )
        warm = Runs()
        check(
            warm,
            run([*spn, "refine", str(image), str(coarse), "-o", str(tmp / "w.png")], warm),
            "spnrefine refine",
        )
        check(
            warm,
            run([*crf_script, str(image), str(coarse), str(tmp / "w-crf.png")], warm),
            "the CRF script",
        )

        # One-shot at 854×480 (the first frame), then peak memory at 1920×1080.
        for size, name, goal in (
            ((854, 480), "one-shot 854x480", "ratio >= 1, <= ~1 s"),
            ((1920, 1080), "one-shot 1920x1080", ""),
        ):
            folder = sets[size][0]
            image = folder / "images" / f"{frames[0]}.jpg"
            coarse = folder / "coarse" / f"{frames[0]}.png"
            spn_runs, crf_runs = Runs(), Runs()
            for i in range(args.repeats):
                out = tmp / f"oneshot-{size[0]}-{i}"
                err = run(
                    [*spn, "refine", str(image), str(coarse), "-o", f"{out}-spn.png"], spn_runs
                )
                check(spn_runs, err, "spnrefine refine")
                err = run([*crf_script, str(image), str(coarse), f"{out}-crf.png"], crf_runs)
                check(crf_runs, err, "the CRF script")
            row(name, spn_runs, crf_runs, goal)
            if size == (1920, 1080):
                print(
                    f"{'peak RSS 1920x1080 binary':40} {max(spn_runs.rss_mb):7.0f} MB"
                    f"{'':14} {max(crf_runs.rss_mb):7.0f} MB{'':24} <= 300 MB"
                )

        for size in sizes:
            folder, truths = sets[size]
            spn_runs, crf_runs = Runs(), Runs()
            for i in range(args.batch_repeats):
                spn_out, crf_out = (
                    tmp / f"batch-spn-{size[0]}-{i}",
                    tmp / f"batch-crf-{size[0]}-{i}",
                )
                err = run([*spn, "batch", str(folder), "-o", str(spn_out), "--quiet"], spn_runs)
                check(spn_runs, err, "spnrefine batch")
                err = run([*crf_script, "--folder", str(folder), str(crf_out)], crf_runs)
                check(crf_runs, err, "the CRF script")
            goal = {(854, 480): ">= 3x", (1920, 1080): ">= 10x", (4096, 3072): ">= 15x"}
            row(f"batch {FRAMES} @ {size[0]}x{size[1]}", spn_runs, crf_runs, goal.get(size, ""))
            print(
                f"{'  accuracy (mean of 8)':40} {scores(spn_out, frames, truths):24} "
                f"{scores(crf_out, frames, truths):24}"
            )

        folder = sets[(854, 480)][0]
        image = str(folder / "images" / f"{frames[0]}.jpg")
        coarse = str(folder / "coarse" / f"{frames[0]}.png")
        out = str(tmp / "startup.png")
        for name, cmd in (
            ("--help", ["--help"]),
            ("--version", ["--version"]),
            ("missing file", ["refine", str(tmp / "missing.jpg"), coarse, "-o", out]),
            ("bad option (--tile 7)", ["refine", image, coarse, "-o", out, "--tile", "7"]),
        ):
            runs = Runs()
            for _ in range(args.repeats):
                run([*spn, *cmd], runs)
            codes = sorted(set(runs.codes))
            row(f"start-up {name} (exit {','.join(map(str, codes))})", runs, None, "<= 0.3 s")

        if not args.skip_first_run:
            runs = Runs()
            with tempfile.TemporaryDirectory() as cache:
                env = {**INSTALLED, "NUMBA_CACHE_DIR": cache}
                err = run([*spn, "refine", image, coarse, "-o", str(tmp / "first.png")], runs, env)
                check(runs, err, "first run")
            row("first run (empty numba cache)", runs, None, "<= 5 s")

    print(f"load average at the end: {load()}")


if __name__ == "__main__":
    main()
