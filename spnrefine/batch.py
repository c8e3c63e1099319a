"""Many images at once: pairing images with coarse maps (no output twice, none over an input),
the local loop with its progress bar and the resume rule (spnrefine.resume), and the report.
Each pair is refined by spnrefine.pair, which any runner (this loop, or Ray workers) calls."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from spnrefine.errors import SpnrefineError
from spnrefine.io import write_atomic
from spnrefine.io.images import header_size
from spnrefine.io.names import COARSE_EXTENSIONS, COARSE_SUFFIXES, IMAGE_EXTENSIONS
from spnrefine.io.sources import read_source
from spnrefine.pair import Pair, PairOptions, PairReport, is_uri, refine_pair
from spnrefine.resume import Resume

if TYPE_CHECKING:
    from spnrefine.api import Refiner

__all__ = [
    "Pair",
    "PairOptions",
    "PairReport",
    "collect_pairs",
    "find_pairs",
    "mark_conflicts",
    "read_pair_lines",
    "refine_pair",
    "run_batch",
    "with_progress",
    "write_report",
]


def find_pairs(
    folder: str | Path, *, coarse_dir: str | Path | None = None, out_dir: str | Path | None = None
) -> list[Pair]:
    """Pair each image in `folder` with its coarse map by stem.

    With `folder/images` and `folder/coarse` (or `coarse_dir`), `images/NAME.jpg` pairs with
    `coarse/NAME.png` (or `NAME_coarse`, `_seg`, `_mask`; .png .npy .npz .tif). Otherwise images
    and maps sit side by side: `NAME.jpg` with `NAME_coarse.png` (or `_seg`, `_mask`). Outputs
    go to `out_dir` (default `folder/refined`) as NAME.png (NAME.npy for several --soft classes).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise SpnrefineError("not a folder" if folder.exists() else "folder not found", folder)
    has_maps = coarse_dir is not None or (folder / "coarse").is_dir()
    split = (folder / "images").is_dir() and has_maps
    image_dir = folder / "images" if split else folder
    if coarse_dir is not None:
        maps_dir = Path(coarse_dir)
    else:
        maps_dir = folder / "coarse" if split else folder
    if not maps_dir.is_dir():
        raise SpnrefineError("coarse-map folder not found", maps_dir)
    out_dir = Path(out_dir) if out_dir is not None else folder / "refined"
    side_by_side = image_dir.resolve() == maps_dir.resolve()

    maps: dict[str, list[Path]] = {}
    for path in _files(maps_dir, COARSE_EXTENSIONS):
        maps.setdefault(path.stem, []).append(path)
    images = [
        p
        for p in _files(image_dir, IMAGE_EXTENSIONS)
        if not (side_by_side and p.stem.endswith(COARSE_SUFFIXES))
    ]
    pairs, named = [], set()
    for image in images:
        stems = [image.stem + s for s in COARSE_SUFFIXES]
        if not side_by_side:
            stems.insert(0, image.stem)
        found = [p for stem in stems for p in maps.get(stem, [])]
        out = str(out_dir / image.stem)
        problem = None
        if not found:
            problem = f"no coarse map for it in {maps_dir} (looked for {', '.join(stems)})"
        elif len(found) > 1:
            problem = f"several coarse maps for it: {', '.join(p.name for p in found)}"
        elif image.stem in named:
            problem = f"another image is also named {image.stem}; their outputs would clash"
        named.add(image.stem)
        coarse = str(found[0]) if len(found) == 1 else None
        pairs.append(Pair(str(image), coarse, out, name_out=True, problem=problem))
    return mark_conflicts(pairs)


def collect_pairs(
    folder: str | Path | None = None,
    *,
    from_: str | None = None,
    coarse_dir: str | Path | None = None,
    out: str | Path | None = None,
) -> tuple[list[Pair], Path]:
    """A batch's pairs and its output folder: the images of `folder` paired by name
    (`find_pairs`), or the lines of the list `from_` (`read_pair_lines`; `-` reads stdin).
    Outputs named after their image go to `out`: by default FOLDER/refined, or ./refined for
    a list."""
    if (folder is None) == (from_ is None):
        raise SpnrefineError("give a folder or --from FILE, one of the two")
    if folder is not None:
        out_dir = Path(out) if out is not None else Path(folder) / "refined"
        pairs = find_pairs(folder, coarse_dir=coarse_dir, out_dir=out_dir)
        if not pairs:
            raise SpnrefineError("no images found (.jpg .png .webp .tif .bmp)", folder)
        return pairs, out_dir
    out_dir = Path(out) if out is not None else Path("refined")
    data = sys.stdin.buffer.read() if from_ == "-" else read_source(from_)[0]
    return read_pair_lines(data.decode("utf-8", "replace").splitlines(), out_dir), out_dir


def _files(folder: Path, extensions: tuple[str, ...]) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in extensions and p.is_file())


def read_pair_lines(lines: Iterable[str], out_dir: str | Path) -> list[Pair]:
    """Pairs from `image<TAB>coarse[<TAB>out]` lines (as `batch --from` reads them); without an
    out, the output is named in `out_dir` after the image. Blank lines are skipped."""
    pairs = []
    for number, line in enumerate(lines, 1):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        fields = line.split("\t")
        if "\0" in line:
            # No path holds a NUL byte; shown escaped, so the message stays one printable line.
            shown = line.replace("\0", "\\0")
            pairs.append(Pair(shown, None, "", problem=f"line {number}: a NUL byte in a path"))
        elif len(fields) not in (2, 3) or not all(fields):
            pairs.append(
                Pair(line, None, "", problem=f"line {number}: expected image<TAB>coarse[<TAB>out]")
            )
        elif len(fields) == 3:
            pairs.append(Pair(fields[0], fields[1], fields[2]))
        else:
            out = str(Path(out_dir) / Path(fields[0]).stem)
            pairs.append(Pair(fields[0], fields[1], out, name_out=True))
    return mark_conflicts(pairs)


def mark_conflicts(pairs: list[Pair]) -> list[Pair]:
    """Pairs whose output would be another pair's output, or an input of the batch, get a
    problem (the first pair to name an output keeps it): no output replaces an input, and no
    two pairs write one file."""
    inputs = {_key(path): path for pair in pairs for path in (pair.image, pair.coarse) if path}
    claimed: dict[str, Pair] = {}
    checked = []
    for pair in pairs:
        if pair.problem:
            checked.append(pair)
            continue
        outputs = pair.candidates(soft=True)
        problem = next(
            (f"its output {o} is an input of this batch" for o in outputs if _key(o) in inputs),
            None,
        )
        other = next((claimed[_key(o)] for o in outputs if _key(o) in claimed), None)
        if problem is None and other is not None:
            problem = f"its output is also that of {other.image}; give each pair its own"
        if problem is None:
            claimed.update({_key(o): pair for o in outputs})
        checked.append(replace(pair, problem=problem) if problem else pair)
    return checked


def _key(path: str | Path) -> str:
    """A local path as one spelling (absolute, links resolved), a URI as it is."""
    text = str(path)
    return text if is_uri(text) else os.path.realpath(text)


def run_batch(
    refiner: Refiner,
    pairs: list[Pair],
    options: PairOptions,
    *,
    console: Console | None = None,
) -> Iterator[PairReport]:
    """Refine the pairs in order, yielding each report as it is made; a pair the resume rule
    (spnrefine.resume) finds done is reported as skipped. A progress bar with ETA goes to
    `console` (stderr) unless it is None or quiet."""
    resume = Resume(refiner, options)
    if len(pairs) > 1 and hasattr(refiner, "expect_many"):
        # Kernels that pay for their loading over many images, unless the images are a few
        # small ones (their sizes read from their headers, as far as the refiner needs).
        refiner.expect_many(header_size(pair.image) for pair in pairs)

    def reports() -> Iterator[PairReport]:
        for pair, done in resume.plan(pairs):
            if done is not None:
                yield PairReport(pair.image, pair.coarse, str(done), "skipped", 0.0)
                continue
            report = refine_pair(refiner, pair, options)
            resume.record(pair, report)
            yield report

    yield from with_progress(reports(), len(pairs), console)


def with_progress(
    reports: Iterable[PairReport], total: int, console: Console | None
) -> Iterator[PairReport]:
    """Pass `reports` through, advancing a progress bar with ETA on `console` (stderr) for each;
    none when `console` is None or quiet. Every batch runner shows the same bar."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    show = console is not None and not console.quiet
    # stdout is not redirected into the bar: with --json it carries the results.
    progress = Progress(
        *columns, console=console, disable=not show, redirect_stdout=False, redirect_stderr=False
    )
    with progress:
        task = progress.add_task("refining", total=total)
        for report in reports:
            progress.advance(task)
            yield report


def write_report(
    path: str | Path, reports: list[PairReport], *, weights: dict | None, seconds: float
) -> None:
    """`--report FILE.json`: every pair with status, time and error, and the totals."""
    counts = {status: 0 for status in ("ok", "skipped", "failed")}
    for r in reports:
        counts[r.status] += 1
    data = {
        "summary": {**counts, "pairs": len(reports), "seconds": round(seconds, 3)},
        "weights": weights,
        "pairs": [r.to_dict() for r in reports],
    }
    text = json.dumps(data, indent=2) + "\n"
    # The report describes the latest run, so a rerun that resumes replaces it.
    write_atomic(path, text.encode(), overwrite=True)
