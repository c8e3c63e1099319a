"""What every command shares: the Typer app, stderr logging, one-line errors, options."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console
from rich.markup import escape

from spnrefine.errors import SpnrefineError

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


def stdout_console() -> Console:
    """Results that are tables go to stdout, with the same NO_COLOR rule as the logs."""
    plain = "NO_COLOR" in os.environ
    return Console(no_color=plain, color_system=None if plain else "auto")


def fail(err: Exception | str, console: Console | None = None) -> typer.Exit:
    """Print ``err`` as one line on stderr and return the exit to raise."""
    # Escaped: paths and messages may hold [brackets] that rich would read as markup.
    line = f"[bold red]error:[/] {escape(str(err))}"
    (console or stderr_console()).print(line, highlight=False, soft_wrap=True)
    return typer.Exit(code=2)


def make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SpnrefineError(
            f"cannot create the output folder: {err.strerror or err}", folder
        ) from None


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
MethodOption = Annotated[
    Literal["spn", "bilinear", "guided", "crf"],
    typer.Option(
        help="spn: the model. Baselines, for comparison (no weights loaded): bilinear "
        "(the upsampled coarse map), guided (guided filter, the image as guide), crf (dense "
        "CRF; needs pip install 'spnrefine\\[crf]')."
    ),
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
