"""`spnrefine refine`, `spnrefine batch` and `spnrefine weights`."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer
from rich.console import Console
from rich.markup import escape

from spnrefine.cli.common import (
    BatchSizeOption,
    BitsOption,
    CoarseTypeOption,
    DeviceOption,
    JsonOption,
    LogitsOption,
    MaxPixelsOption,
    MethodOption,
    OverlapOption,
    OverwriteOption,
    QuietOption,
    SoftOption,
    StretchOption,
    TileOption,
    WeightsOption,
    app,
    fail,
    make_folder,
    stderr_console,
)
from spnrefine.errors import SpnrefineError
from spnrefine.io import DEFAULT_MAX_PIXELS
from spnrefine.settings import DEFAULT_OVERLAP, DEFAULT_TILE

if TYPE_CHECKING:
    from spnrefine.pair import PairReport


@app.command()
def refine(
    image: Annotated[str, typer.Argument(help="The image: JPEG, PNG, WebP or TIFF.")],
    coarse: Annotated[
        str, typer.Argument(help="The coarse map: PNG, TIFF, .npy or .npz; - reads stdin.")
    ],
    out: Annotated[
        str | None,
        typer.Option(
            "--out",
            "-o",
            help="Output file; - writes to stdout. Default: IMAGE_refined.png (or .npy) beside "
            "the image.",
            show_default=False,
        ),
    ] = None,
    overlay: Annotated[
        Path | None,
        typer.Option(help="Also write the refined mask drawn over the image (.png or .jpg)."),
    ] = None,
    weights: WeightsOption = None,
    method: MethodOption = "spn",
    device: DeviceOption = "auto",
    tile: TileOption = DEFAULT_TILE,
    overlap: OverlapOption = DEFAULT_OVERLAP,
    batch_size: BatchSizeOption = 16,
    coarse_type: CoarseTypeOption = "auto",
    logits: LogitsOption = False,
    stretch: StretchOption = False,
    soft: SoftOption = False,
    bits: BitsOption = 8,
    overwrite: OverwriteOption = False,
    max_pixels: MaxPixelsOption = DEFAULT_MAX_PIXELS,
    quiet: QuietOption = False,
    json_out: JsonOption = False,
) -> None:
    """Refine one coarse map against its image and write the result."""
    from spnrefine.api import Refiner
    from spnrefine.io.outputs import check_outputs, default_output
    from spnrefine.pair import Pair, PairOptions, refine_pair

    console = stderr_console(quiet)
    try:
        if json_out and out == "-":
            raise SpnrefineError("--json and -o - both write to stdout; use one of them")
        if out is not None:
            pair = Pair(image, coarse, out)
        elif image == "-":
            raise SpnrefineError("with the image on stdin, name the output with -o")
        else:
            pair = Pair(image, coarse, default_output(image), name_out=True)
        # Outputs are checked before the weights load, so a mistyped -o fails at once.
        check_outputs(
            pair.out,
            overlay,
            [image, coarse],
            overwrite=overwrite,
            auto_suffix=pair.name_out,
            soft=soft,
        )
        refiner = Refiner.load(
            weights,
            method=method,
            device=device,
            tile=tile,
            overlap=overlap,
            batch_size=batch_size,
            max_pixels=max_pixels,
        )
    except SpnrefineError as err:
        raise fail(err) from None
    options = PairOptions(coarse_type, logits, stretch, soft, bits, overwrite)
    report = refine_pair(refiner, pair, options, overlay=overlay)
    _tell(report, console, json_out)
    if report.status == "failed":
        raise typer.Exit(code=2)


@app.command()
def batch(
    folder: Annotated[
        Path | None,
        typer.Argument(
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
            help="Read image<TAB>coarse\\[<TAB>out] lines from this file; - reads stdin.",
            show_default=False,
        ),
    ] = None,
    report: Annotated[
        Path | None,
        typer.Option(help="Write a JSON report: every pair with status, time and error."),
    ] = None,
    weights: WeightsOption = None,
    method: MethodOption = "spn",
    device: DeviceOption = "auto",
    tile: TileOption = DEFAULT_TILE,
    overlap: OverlapOption = DEFAULT_OVERLAP,
    batch_size: BatchSizeOption = 16,
    coarse_type: CoarseTypeOption = "auto",
    logits: LogitsOption = False,
    stretch: StretchOption = False,
    soft: SoftOption = False,
    bits: BitsOption = 8,
    overwrite: OverwriteOption = False,
    max_pixels: MaxPixelsOption = DEFAULT_MAX_PIXELS,
    quiet: QuietOption = False,
    json_out: JsonOption = False,
    engine: Annotated[
        Literal["local", "ray"],
        typer.Option(
            help="local: this process. ray: Ray Data workers, on this machine or a cluster "
            "(pip install 'spnrefine\\[ray]'; docs/ray.md)."
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
    previous run stopped. Exits 1 when any pair failed."""
    from spnrefine.api import Refiner, check_method
    from spnrefine.batch import PairOptions, find_pairs, read_pair_lines, run_batch, write_report
    from spnrefine.io import check_output
    from spnrefine.io.images import read_source
    from spnrefine.ray_engine import engine_options, run_batch_ray

    console = stderr_console(quiet)
    try:
        check_method(method)  # before the output folder is made
        if (folder is None) == (from_ is None):
            raise SpnrefineError("give a folder or --from FILE, one of the two")
        ray_options = engine_options(
            engine,
            device=device,
            address=address,
            num_workers=num_workers,
            gpus_per_worker=gpus_per_worker,
        )
        if folder is not None:
            out_dir = out if out is not None else folder / "refined"
            pairs = find_pairs(folder, coarse_dir=coarse_dir, out_dir=out_dir)
            if not pairs:
                raise SpnrefineError("no images found (.jpg .png .webp .tif .bmp)", folder)
        else:
            out_dir = out if out is not None else Path("refined")
            data = sys.stdin.buffer.read() if from_ == "-" else read_source(from_)[0]
            pairs = read_pair_lines(data.decode("utf-8", "replace").splitlines(), out_dir)
        inputs = [p for pair in pairs for p in (pair.image, pair.coarse) if p]
        if report is not None:
            check_output(report, inputs, overwrite=True)
        if any(pair.name_out for pair in pairs):
            make_folder(out_dir)
        refiner = Refiner.load(
            weights,
            method=method,
            device=device,
            tile=tile,
            overlap=overlap,
            batch_size=batch_size,
            max_pixels=max_pixels,
        )
    except SpnrefineError as err:
        raise fail(err) from None

    options = PairOptions(coarse_type, logits, stretch, soft, bits, overwrite)
    started = time.perf_counter()
    if ray_options is None:
        results = run_batch(refiner, pairs, options, console=console)
    else:
        try:
            results = run_batch_ray(refiner, pairs, options, ray_options, console=console)
        except SpnrefineError as err:
            raise fail(err) from None
    reports = []
    try:
        for result in results:
            reports.append(result)
            _tell(result, console, json_out, progress_only=True)
    finally:
        # Also after Ctrl-C: the report then lists the pairs that were done.
        if report is not None:
            info = refiner.info.to_dict() if refiner.info else None
            write_report(report, reports, weights=info, seconds=time.perf_counter() - started)
    counts = {s: sum(r.status == s for r in reports) for s in ("ok", "skipped", "failed")}
    console.print(
        f"{counts['ok']} refined, {counts['skipped']} already done, {counts['failed']} failed "
        f"in {time.perf_counter() - started:.1f} s",
        highlight=False,
    )
    if counts["failed"]:
        raise typer.Exit(code=1)


@app.command()
def weights(
    weights: WeightsOption = None,
    json_out: JsonOption = False,
) -> None:
    """Show which weights load: name, source, revision, checksum and config."""
    from spnrefine.weights import load_weights

    try:
        _, info = load_weights(weights)
    except SpnrefineError as err:
        raise fail(err) from None
    data = info.to_dict()
    if json_out:
        typer.echo(json.dumps(data))
        return
    for key in ("name", "source", "spec", "path", "revision", "sha256", "parameters"):
        typer.echo(f"{key + ':':12}{data[key] if data[key] is not None else '-'}")
    typer.echo(f"{'config:':12}{json.dumps(data['config'], sort_keys=True)}")


def _tell(
    report: PairReport, console: Console, json_out: bool, progress_only: bool = False
) -> None:
    """Report one result: JSON on stdout when asked; errors always, successes unless quiet,
    on stderr."""
    if json_out:
        sys.stdout.write(json.dumps(report.to_dict()) + "\n")
        sys.stdout.flush()
    if report.status == "failed":
        fail(report.error, console if not console.quiet else None)
    elif report.status == "ok" and not progress_only and report.out is not None:
        w, h = report.details["size"]
        how = (
            f"{report.details['tiles_refined']}/{report.details['tiles']} tiles refined"
            if report.details["method"] == "spn"
            else f"method {report.details['method']}"
        )
        console.print(
            f"wrote {escape(report.out)} ({w}x{h} {report.details['kind']}, {how}, "
            f"{report.seconds:.1f} s)",
            highlight=False,
            soft_wrap=True,
        )
