"""`spnrefine eval`: score predictions against ground truth, and against the coarse input."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from spnrefine.cli.common import (
    QuietOption,
    StretchOption,
    app,
    examples,
    fail,
    stderr_console,
    stdout_console,
)
from spnrefine.errors import SpnrefineError
from spnrefine.settings import DEFAULT_TOLERANCE_PX

if TYPE_CHECKING:
    from rich.table import Table


@app.command(
    "eval",
    short_help="Score refined masks against ground truth.",
    epilog=examples(
        "spnrefine eval refined/ gt/",
        "spnrefine eval refined/ gt/ --coarse coarse/ --csv scores.csv",
        "spnrefine eval mask.png gt.png --json",
    ),
)
def eval_(
    pred: Annotated[
        Path,
        typer.Argument(
            metavar="PRED", help="Predictions: a folder of masks or label maps, or one file."
        ),
    ],
    gt: Annotated[
        Path,
        typer.Argument(metavar="GT", help="Ground truth: a folder (paired by name) or a file."),
    ],
    coarse: Annotated[
        Path | None,
        typer.Option(
            help="The coarse maps the predictions were refined from (folder or file): scored "
            "too, upsampled as --method bilinear does, with the gain.",
            show_default=False,
        ),
    ] = None,
    image: Annotated[
        Path | None,
        typer.Option(
            help="The images (folder or file): each must be there, at the ground truth's size.",
            show_default=False,
        ),
    ] = None,
    binary: Annotated[
        bool,
        typer.Option(
            "--binary", help="Score foreground (nonzero) against background.", show_default=False
        ),
    ] = False,
    classes: Annotated[
        int | None,
        typer.Option(
            help="Score class ids 0..N-1 (255 = void, ignored); absent classes are listed too. "
            "Default: binary for masks, multi-class for label maps, by the first ground truth.",
            show_default=False,
        ),
    ] = None,
    tolerance: Annotated[
        float, typer.Option(help="Boundary F tolerance in pixels.")
    ] = DEFAULT_TOLERANCE_PX,
    stretch: StretchOption = False,
    csv_out: Annotated[
        str | None,
        typer.Option(
            "--csv",
            help="Write one row per image to this file; - writes to stdout.",
            show_default=False,
        ),
    ] = None,
    json_out: Annotated[
        bool,
        typer.Option(
            "--json", help="Print the summary as one JSON object on stdout.", show_default=False
        ),
    ] = False,
    quiet: QuietOption = False,
) -> None:
    """Score refined masks against ground truth: IoU, boundary F and mBA for masks; mIoU,
    per-class IoU and mean boundary F for label maps. Files pair by name (NAME.png, or
    NAME_refined.png as refine names it); a prediction without ground truth, or ground truth
    without a prediction, is left out and listed."""
    from spnrefine.evaluate import Evaluation, find_eval_pairs
    from spnrefine.io import check_output, write_atomic

    console = stderr_console(quiet)
    try:
        if json_out and csv_out == "-":
            raise SpnrefineError("--json and --csv - both write to stdout; use one of them")
        evaluation = Evaluation(
            binary=binary, classes=classes, tolerance_px=tolerance, stretch=stretch
        )
        pairing = find_eval_pairs(pred, gt, coarse=coarse, image=image)
        if csv_out not in (None, "-"):
            inputs = [p for pair in pairing.pairs for p in (pair.pred, pair.gt, pair.coarse)]
            check_output(csv_out, inputs, overwrite=True)
        from rich.progress import track

        pairs = track(
            pairing.pairs, description="scoring", console=console, disable=quiet, transient=True
        )
        for pair in pairs:
            evaluation.add(pair)
        if csv_out not in (None, "-"):
            write_atomic(csv_out, evaluation.to_csv().encode(), overwrite=True)
    except SpnrefineError as err:
        raise fail(err) from None

    if pairing.unmatched_gt:
        n = len(pairing.unmatched_gt)
        console.print(
            f"{n} ground-truth file{'s' if n > 1 else ''} without a prediction left out",
            highlight=False,
        )
    if pairing.unmatched_pred:
        n = len(pairing.unmatched_pred)
        names = ", ".join(p.name for p in pairing.unmatched_pred[:5])
        more = f" and {n - 5} more" if n > 5 else ""
        console.print(
            f"{n} prediction{'s' if n > 1 else ''} without ground truth left out: {names}{more}",
            highlight=False,
            markup=False,
        )
    summary = evaluation.summary()
    summary["left_out"] = {
        "predictions_without_ground_truth": [str(p) for p in pairing.unmatched_pred],
        "ground_truth_without_prediction": len(pairing.unmatched_gt),
    }
    if csv_out == "-":
        sys.stdout.write(evaluation.to_csv())
    if json_out:
        sys.stdout.write(json.dumps(summary) + "\n")
    stdout_busy = json_out or csv_out == "-"
    out = console if stdout_busy else stdout_console()
    out.print(_table(summary))


def _table(summary: dict) -> Table:
    """Metrics as rows; the predictions' scores, and with coarse maps theirs and the gain."""
    from rich.markup import escape
    from rich.table import Table

    with_coarse = "coarse" in summary
    mode = summary["mode"]
    title = f"{summary['images']} image{'s' if summary['images'] != 1 else ''}, {mode}"
    table = Table(title=escape(title), title_justify="left")
    table.add_column("metric")
    table.add_column("refined", justify="right")
    if with_coarse:
        table.add_column("coarse", justify="right")
        table.add_column("gain", justify="right")
    tolerance = f"{summary['tolerance_px']:g} px"
    if mode == "binary":
        rows = [
            ("IoU (ΣI/ΣU)", "iou", None),
            ("IoU (mean per image)", "mean_iou", None),
            (f"boundary F ({tolerance})", "boundary_f", None),
            ("mBA", "mba", None),
        ]
    else:
        rows = [("mIoU", "miou", None), (f"mean boundary F ({tolerance})", "boundary_f", None)]
        rows += [
            (f"IoU class {c}", "per_class_iou", c) for c in summary["refined"]["per_class_iou"]
        ]
    for label, key, sub in rows:
        cells = [_pick(summary["refined"], key, sub)]
        if with_coarse:
            cells += [_pick(summary["coarse"], key, sub), _pick(summary["gain"], key, sub)]
        signs = ["", "", "+"]
        table.add_row(label, *(_cell(v, sign) for v, sign in zip(cells, signs, strict=False)))
    return table


def _pick(scores: dict, key: str, sub: str | None) -> float | None:
    value = scores[key]
    return value.get(sub) if sub is not None else value


def _cell(value: float | None, sign: str) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:{sign}.4f}"
