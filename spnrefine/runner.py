"""A batch as `spnrefine batch` runs it: its outputs checked and its output folder made before the
refiner loads, then its pairs refined on the chosen engine (this process, or Ray workers), each
report passed on as it comes, the report file written however the run ends, and the counts."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from spnrefine.batch import run_batch, write_report
from spnrefine.io import check_output
from spnrefine.io.outputs import make_output_folder
from spnrefine.io.write import remove_stale_temporaries
from spnrefine.pair import Pair, PairOptions, PairReport
from spnrefine.ray_engine import RayOptions, run_batch_ray
from spnrefine.remote import is_uri

if TYPE_CHECKING:
    from spnrefine.api import Refiner


@dataclass
class Counts:
    """How a batch ended: pairs refined, skipped as already done, and failed."""

    ok: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0


def prepare_outputs(pairs: list[Pair], out_dir: Path, report: str | Path | None) -> int:
    """Before the refiner loads: the report can be written (never over an input), the output
    folder exists where pairs are named into it, and the temporary files an earlier run left
    when it was killed mid-write are removed. Returns how many of those there were."""
    inputs = [p for pair in pairs if not pair.problem for p in (pair.image, pair.coarse) if p]
    if report is not None:
        check_output(report, inputs, overwrite=True)
    if any(pair.name_out for pair in pairs):
        make_output_folder(out_dir)
    targets = [str(report)] if report is not None else []
    for pair in pairs:
        if not pair.problem and not is_uri(pair.out):
            targets += pair.candidates(soft=True)
    return remove_stale_temporaries(targets)


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
    as it comes. The report file, when asked for, is written also when the run is interrupted
    (Ctrl-C, or SIGTERM, which interrupts it the same way): it then lists the pairs that were
    done."""
    started = time.perf_counter()
    if ray_options is None:
        results = run_batch(refiner, pairs, options, console=console)
    else:
        results = run_batch_ray(refiner, pairs, options, ray_options, console=console)
    reports: list[PairReport] = []
    try:
        with _terminate_as_interrupt():
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


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (what `kill`, timeouts and schedulers send) ends the run as Ctrl-C does: a
    KeyboardInterrupt, so the report is written and a Ray started for the run is stopped."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
