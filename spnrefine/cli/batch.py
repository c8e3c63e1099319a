"""`spnrefine batch`: every image of a folder, or every pair of a list, on this machine or Ray
workers; the work itself is spnrefine.runner's."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from spnrefine.cli.common import (
    DEFAULT_SETTINGS,
    JsonOption,
    QuietOption,
    RefineSettings,
    app,
    examples,
    fail,
    refine_settings,
    stderr_console,
    tell,
)
from spnrefine.errors import SpnrefineError


@app.command(
    short_help="Refine a folder of images, or a list of pairs; resumes.",
    epilog=examples(
        "spnrefine batch photos/ -o refined/ --report run.json",
        "spnrefine batch photos/ --coarse-dir masks/ --soft",
        "printf 'a.jpg\\ta.png\\n' | spnrefine batch --from - -o out/ --json",
        "spnrefine batch photos/ --engine ray --num-workers 8",
    ),
)
@refine_settings
def batch(
    folder: Annotated[
        Path | None,
        typer.Argument(
            metavar="FOLDER",
            help="Folder with images/ and coarse/, or with NAME.jpg and NAME_coarse.png "
            "(or _seg, _mask) side by side.",
            show_default=False,
        ),
    ] = None,
    coarse_dir: Annotated[
        Path | None, typer.Option(help="Take the coarse maps from this folder.")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Output folder. Default: FOLDER/refined.", show_default=False
        ),
    ] = None,
    from_: Annotated[
        str | None,
        typer.Option(
            "--from",
            help="Read image<TAB>coarse[<TAB>out] lines from this file; - reads stdin.",
            show_default=False,
        ),
    ] = None,
    report: Annotated[
        Path | None,
        typer.Option(help="Write a JSON report: every pair with status, time and error."),
    ] = None,
    settings: RefineSettings = DEFAULT_SETTINGS,
    quiet: QuietOption = False,
    json_out: JsonOption = False,
    engine: Annotated[
        Literal["local", "ray"],
        typer.Option(
            help="local: this process. ray: Ray Data workers, on this machine or a cluster "
            "(pip install 'spnrefine[ray]'; docs/ray.md)."
        ),
    ] = "local",
    address: Annotated[
        str | None,
        typer.Option(
            help="--engine ray: the cluster to join. Default: $RAY_ADDRESS, else a local Ray "
            "started for this run.",
            show_default=False,
        ),
    ] = None,
    num_workers: Annotated[
        int | None,
        typer.Option(
            help="--engine ray: workers, each with the model loaded once. Default: one per CPU "
            "(per --gpus-per-worker GPUs with GPUs).",
            show_default=False,
        ),
    ] = None,
    gpus_per_worker: Annotated[
        float | None,
        typer.Option(help="--engine ray: GPUs per worker; the workers then refine on CUDA."),
    ] = None,
) -> None:
    """Refine every image in a folder (or every pair listed with --from), resuming where a
    previous run stopped. Exits 1 when any pair failed.

    A pair is skipped when its output exists and was made from the same inputs (size and
    time) and settings, as the output folder's .spnrefine-manifest.jsonl records; other
    outputs of ours are redone, and a file the batch did not write is never replaced without
    --overwrite. No two pairs may share an output, and no output may be an input."""
    console = stderr_console(quiet)
    try:
        settings.check()  # before anything heavy is imported
        from spnrefine.api import check_method
        from spnrefine.batch import collect_pairs
        from spnrefine.io.outputs import check_bits
        from spnrefine.ray_engine import engine_options
        from spnrefine.runner import prepare_outputs, run_pairs

        check_method(settings.method)  # before the output folder is made
        check_bits(settings.bits, settings.soft)
        ray_options = engine_options(
            engine,
            device=settings.device,
            address=address,
            num_workers=num_workers,
            gpus_per_worker=gpus_per_worker,
        )
        pairs, out_dir = collect_pairs(folder, from_=from_, coarse_dir=coarse_dir, out=out)
        stale = prepare_outputs(pairs, out_dir, report)
        if stale:
            console.print(f"removed {stale} temporary file(s) left by an interrupted run")
        refiner = settings.load_refiner()
        counts = run_pairs(
            refiner,
            pairs,
            settings.pair_options(),
            ray_options=ray_options,
            report=report,
            console=console,
            on_report=lambda result: tell(result, console, json_out, progress_only=True),
        )
    except SpnrefineError as err:
        raise fail(err) from None
    console.print(
        f"{counts.ok} refined, {counts.skipped} already done, {counts.failed} failed "
        f"in {counts.seconds:.1f} s",
        highlight=False,
    )
    if counts.failed:
        raise typer.Exit(code=1)
