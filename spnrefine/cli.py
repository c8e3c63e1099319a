"""The ``spnrefine`` command line: thin Typer commands over the Python API."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer
from rich.console import Console
from rich.markup import escape

from spnrefine.errors import SpnrefineError
from spnrefine.io import DEFAULT_MAX_PIXELS

if TYPE_CHECKING:
    from spnrefine.batch import PairReport

app = typer.Typer(
    name="spnrefine",
    help="Refine coarse segmentation masks with Spatial Propagation Networks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def stderr_console(quiet: bool = False) -> Console:
    """Logs go to stderr; NO_COLOR turns colour, and every other escape code, off."""
    plain = "NO_COLOR" in os.environ
    return Console(stderr=True, quiet=quiet, no_color=plain, color_system=None if plain else "auto")


def fail(err: Exception | str, console: Console | None = None) -> typer.Exit:
    """Print ``err`` as one line on stderr and return the exit to raise."""
    # Escaped: paths and messages may hold [brackets] that rich would read as markup.
    line = f"[bold red]error:[/] {escape(str(err))}"
    (console or stderr_console()).print(line, highlight=False, soft_wrap=True)
    return typer.Exit(code=2)


@app.command()
def train(
    data: Annotated[
        list[Path], typer.Argument(help="Data folders, each with images/ and masks/ (+ coarse/).")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for checkpoints.")] = Path(
        "runs/spnrefine"
    ),
    steps: Annotated[int, typer.Option(help="Optimisation steps in all.")] = 3000,
    val_every: Annotated[int, typer.Option(help="Validate and checkpoint every N steps.")] = 250,
    batch_size: Annotated[int, typer.Option(help="128×128 patches per step.")] = 8,
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW, cosine decay).")] = 2e-3,
    seed: Annotated[int, typer.Option(help="Seed for the split, the patches and the init.")] = 0,
    val_fraction: Annotated[
        float, typer.Option(help="Share of groups held out when a folder has no splits.txt.")
    ] = 0.2,
    val_patches: Annotated[int, typer.Option(help="Validation patches per data folder.")] = 64,
    init: Annotated[
        str | None,
        typer.Option(
            help="Fine-tune: start from these weights (folder, .safetensors, hf-hub:owner/name)."
        ),
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out.")] = False,
    until: Annotated[
        int | None, typer.Option(help="Stop after this step; --resume goes on later.")
    ] = None,
    hidden: Annotated[int, typer.Option(help="Propagated channels per class.")] = 8,
    mode: Annotated[str, typer.Option(help="three_way or one_way.")] = "three_way",
    merge: Annotated[str, typer.Option(help="learned or max.")] = "learned",
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
) -> None:
    """Train a refiner on your own data (or fine-tune one with --init)."""
    import torch

    from spnrefine.model import ModelConfig
    from spnrefine.train.loop import TrainConfig
    from spnrefine.train.loop import train as run_training

    console = stderr_console()
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    config = TrainConfig(
        data=[str(d) for d in data],
        out=str(out),
        steps=steps,
        val_every=val_every,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        val_fraction=val_fraction,
        val_patches=val_patches,
        init=init,
        until=until,
        device=device,
        model=ModelConfig(hidden=hidden, mode=mode, merge=merge),
    )
    try:
        folder = run_training(config, resume=resume, console=console)
    except SpnrefineError as err:
        raise fail(err, console) from None
    console.print(f"model written to {folder} (best on validation: {folder / 'best'})")


# Options shared by `refine` and `batch`; each is a keyword of the Python API of the same name.
WeightsOption = Annotated[
    str | None,
    typer.Option(
        "--weights",
        "-w",
        help="A folder or .safetensors file, hf-hub:owner/name\\[@revision], or 'default' "
        "(the bundled weights). Default: $SPNREFINE_WEIGHTS, else the bundled weights.",
        show_default=False,
    ),
]
DeviceOption = Annotated[
    Literal["auto", "cpu", "cuda"],
    typer.Option(help="auto: the GPU (Numba CUDA kernel) when there is one, else the CPU."),
]
TileOption = Annotated[int, typer.Option(help="Tile size in pixels (a multiple of 8).")]
OverlapOption = Annotated[int, typer.Option(help="Overlap of neighbouring tiles, blended.")]
BatchSizeOption = Annotated[int, typer.Option(help="Tiles per model call.")]
CoarseTypeOption = Annotated[
    Literal["auto", "labels", "prob"],
    typer.Option(
        help="How to read an 8-bit single-channel PNG: class ids, a probability, or auto "
        "(0/255 or 0/1 is a mask; few values with step edges are ids; else a probability; "
        "see docs/coarse-formats.md)."
    ),
]
LogitsOption = Annotated[
    bool, typer.Option(help="A .npy/.npz coarse map holds logits (sigmoid / softmax applied).")
]
StretchOption = Annotated[
    bool,
    typer.Option(help="The coarse map covers the image at another aspect ratio: stretch it."),
]
SoftOption = Annotated[
    bool,
    typer.Option(
        help="Write probabilities: a PNG of the foreground for one class, a C×H×W .npy for several."
    ),
]
BitsOption = Annotated[Literal[8, 16], typer.Option(help="Bit depth of a --soft PNG.")]
OverwriteOption = Annotated[bool, typer.Option(help="Replace existing outputs.")]
MaxPixelsOption = Annotated[
    int, typer.Option(help="Refuse larger inputs (decompression-bomb guard).")
]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or log lines.")]
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print one JSON object per result on stdout.")
]


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
    device: DeviceOption = "auto",
    tile: TileOption = 128,
    overlap: OverlapOption = 32,
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
    from spnrefine.batch import Pair, PairOptions, output_candidates, refine_pair
    from spnrefine.io import check_output

    console = stderr_console(quiet)
    try:
        if json_out and out == "-":
            raise SpnrefineError("--json and -o - both write to stdout; use one of them")
        if out is not None:
            pair = Pair(image, coarse, out)
        elif image == "-":
            raise SpnrefineError("with the image on stdin, name the output with -o")
        else:
            default = Path(image).parent / f"{Path(image).stem}_refined"
            pair = Pair(image, coarse, str(default), name_out=True)
        # Outputs are checked before the weights load, so a mistyped -o fails at once. A
        # default name's extension waits for the coarse map, so only its folder is checked.
        undecided = pair.name_out and soft
        first = output_candidates(pair, soft)[0]
        check_output(first, [image, coarse], overwrite=overwrite or undecided)
        if overlay is not None:
            check_output(overlay, [image, coarse], overwrite=overwrite)
        refiner = Refiner.load(
            weights,
            device=device,
            tile=tile,
            overlap=overlap,
            batch_size=batch_size,
            max_pixels=max_pixels,
        )
    except SpnrefineError as err:
        raise fail(err) from None
    options = PairOptions(coarse_type, logits, stretch, soft, bits, overwrite)
    report = refine_pair(refiner, pair, options, overlay=overlay, skip_finished=False)
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
    device: DeviceOption = "auto",
    tile: TileOption = 128,
    overlap: OverlapOption = 32,
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
    """Refine every image in a folder (or every pair listed with --from), resuming where a
    previous run stopped. Exits 1 when any pair failed."""
    from spnrefine.api import Refiner
    from spnrefine.batch import PairOptions, find_pairs, read_pair_lines, run_batch, write_report
    from spnrefine.io import check_output
    from spnrefine.io.images import read_source

    console = stderr_console(quiet)
    try:
        if (folder is None) == (from_ is None):
            raise SpnrefineError("give a folder or --from FILE, one of the two")
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
            _make_folder(out_dir)
        refiner = Refiner.load(
            weights,
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
    reports = []
    try:
        for result in run_batch(refiner, pairs, options, console=console):
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
        console.print(
            f"wrote {escape(report.out)} ({w}x{h} {report.details['kind']}, "
            f"{report.details['tiles_refined']}/{report.details['tiles']} tiles refined, "
            f"{report.seconds:.1f} s)",
            highlight=False,
            soft_wrap=True,
        )


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SpnrefineError(
            f"cannot create the output folder: {err.strerror or err}", folder
        ) from None


def main() -> None:
    app()
