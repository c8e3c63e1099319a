"""A batch as `spnrefine batch` runs it: its outputs checked and its output folder made before the
refiner loads, then its pairs refined on the chosen engine (this process, or Ray workers), each
report passed on as it comes, the report file written however the run ends, and the counts."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from spnrefine.batch import run_batch, write_report
from spnrefine.io import check_output
from spnrefine.io.outputs import make_output_folder
from spnrefine.pair import Pair, PairOptions, PairReport
from spnrefine.ray_engine import RayOptions, run_batch_ray

if TYPE_CHECKING:
    from spnrefine.api import Refiner


@dataclass
class Counts:
    """How a batch ended: pairs refined, skipped as already done, and failed."""

    ok: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0


def prepare_outputs(pairs: list[Pair], out_dir: Path, report: str | Path | None) -> None:
    """Before the refiner loads: the report can be written (never over an input), and the
    output folder exists where pairs are named into it."""
    inputs = [p for pair in pairs if not pair.problem for p in (pair.image, pair.coarse) if p]
    if report is not None:
        check_output(report, inputs, overwrite=True)
    if any(pair.name_out for pair in pairs):
        make_output_folder(out_dir)


def run_pairs(
    refiner: Refiner,
    pairs: list[Pair],
    options: PairOptions,
    *,
    ray_options: RayOptions | None = None,
    report: str | Path | None = None,
    console: Console | None = None,
    on_report: Callable[[PairReport], None] = lambda report: None,
) -> Counts:
    """Refine `pairs` here (`ray_options` None) or on Ray, calling `on_report` with each report
    as it comes. The report file, when asked for, is written also when the run is interrupted:
    it then lists the pairs that were done."""
    started = time.perf_counter()
    if ray_options is None:
        results = run_batch(refiner, pairs, options, console=console)
    else:
        results = run_batch_ray(refiner, pairs, options, ray_options, console=console)
    reports: list[PairReport] = []
    try:
        for result in results:
            reports.append(result)
            on_report(result)
    finally:
        if report is not None:
            info = refiner.info.to_dict() if refiner.info else None
            write_report(report, reports, weights=info, seconds=time.perf_counter() - started)
    counts = Counts(seconds=time.perf_counter() - started)
    for result in reports:
        setattr(counts, result.status, getattr(counts, result.status) + 1)
    return counts
