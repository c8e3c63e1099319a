"""One pair: an image and its coarse map refined into an output file and reported as one line,
never raised; `refine` runs one, `batch` runs one per pair (spnrefine.batch adds the resume
rule)."""

from __future__ import annotations

import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from spnrefine.errors import SpnrefineError
from spnrefine.io import CoarseType
from spnrefine.io.outputs import output_candidates

if TYPE_CHECKING:
    from spnrefine.api import Refiner

Status = Literal["ok", "skipped", "failed"]


def is_uri(path: str | None) -> bool:
    """A path that names a file through a filesystem URI (s3://, gs://, file://, ...)."""
    return path is not None and "://" in path


@dataclass(frozen=True)
class Pair:
    """One job. `out` is a full path, or (with `name_out`) a path to which the format's
    extension is appended once the coarse map is decoded. `problem` marks a pair that could not
    be formed (no coarse map, a clash); it is reported as failed without being run. `redo`
    lets it replace its output, which the resume rule found to be an outdated one of ours."""

    image: str
    coarse: str | None
    out: str
    name_out: bool = False
    problem: str | None = None
    redo: bool = False  # its output exists from an earlier run, of other inputs or settings

    def candidates(self, soft: bool) -> list[Path]:
        """The paths the pair's output may be written to."""
        if not self.name_out:
            return [Path(self.out)]
        return output_candidates(self.out, soft=soft)


@dataclass(frozen=True)
class PairOptions:
    """How every pair is refined and written: the `refine_file` options a batch shares."""

    coarse_type: CoarseType = "auto"
    logits: bool = False
    stretch: bool = False
    soft: bool = False
    bits: Literal[8, 16] = 8
    overwrite: bool = False


@dataclass
class PairReport:
    """One line of the report (and of `--json`): what happened to a pair."""

    image: str
    coarse: str | None
    out: str | None
    status: Status
    seconds: float
    error: str | None = None
    overlay: str | None = None
    details: dict = field(default_factory=dict)  # RefineResult.summary() for refined pairs

    def to_dict(self) -> dict:
        data = asdict(self)
        data.update(data.pop("details"))
        return data


def refine_pair(
    refiner: Refiner, pair: Pair, options: PairOptions, *, overlay: str | Path | None = None
) -> PairReport:
    """Refine one pair and write its output; never raises for a bad pair, reports it instead."""
    started = time.perf_counter()

    def report(status: Status, out: str | None, error: str | None = None, **extra) -> PairReport:
        seconds = round(time.perf_counter() - started, 4)
        return PairReport(pair.image, pair.coarse, out, status, seconds, error, **extra)

    if pair.problem:
        return report("failed", None, f"{pair.image}: {pair.problem}")
    try:
        result = refiner.refine_file(
            pair.image,
            pair.coarse,
            pair.out,
            auto_suffix=pair.name_out,
            overlay=overlay,
            **{**asdict(options), "overwrite": options.overwrite or pair.redo},
        )
    except SpnrefineError as err:
        return report("failed", None, str(err))
    except Exception as err:  # noqa: BLE001 - one broken pair must not stop a batch
        where = traceback.extract_tb(err.__traceback__)[-1]
        problem = f"{type(err).__name__}: {err} ({Path(where.filename).name}:{where.lineno})"
        return report("failed", None, f"{pair.image}: internal error: {problem}")
    return report("ok", result.out, overlay=result.overlay_path, details=result.summary())
