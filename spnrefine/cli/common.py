"""What every command shares: the Typer app, stderr logging, one-line errors, options."""

from __future__ import annotations

import functools
import inspect
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_type_hints

import typer

from spnrefine.baselines import BASELINES, describe_baselines
from spnrefine.settings import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_OVERLAP,
    DEFAULT_TILE,
    check_settings,
)

if TYPE_CHECKING:
    from rich.console import Console

    from spnrefine.api import Refiner
    from spnrefine.pair import PairOptions, PairReport

# Plain Click help, as Unix tools print it: paragraphs wrapped to the terminal (up to 100
# columns), flags without a type, examples kept line by line (the \b paragraphs).
app = typer.Typer(
    name="spnrefine",
    help="Refine coarse segmentation masks with Spatial Propagation Networks.",
    epilog=(
        "Examples:\n\n\b\n"
        "  spnrefine refine photo.jpg coarse.png -o mask.png\n"
        "  spnrefine batch photos/ -o refined/\n"
        "  spnrefine COMMAND --help"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)


def examples(*lines: str) -> str:
    """A command's --help epilog: its example command lines, kept as they are."""
    return "Examples:\n\n\b\n" + "\n".join(f"  {line}" for line in lines)


def _print_version(value: bool) -> None:
    if value:
        from spnrefine import __version__

        typer.echo(f"spnrefine {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            help="Print the version and exit.",
            callback=_print_version,
            is_eager=True,
            show_default=False,
        ),
    ] = False,
) -> None:
    """Refine coarse segmentation masks with Spatial Propagation Networks."""


# rich is imported where a command prints, not with the CLI: --help, --version and the
# errors click reports itself answer without it (40-80 ms).


def stderr_console(quiet: bool = False) -> Console:
    """Logs go to stderr; NO_COLOR turns colour, and every other escape code, off."""
    from rich.console import Console

    plain = "NO_COLOR" in os.environ
    return Console(stderr=True, quiet=quiet, no_color=plain, color_system=None if plain else "auto")


def stdout_console() -> Console:
    """Results that are tables go to stdout, with the same NO_COLOR rule as the logs."""
    from rich.console import Console

    plain = "NO_COLOR" in os.environ
    return Console(no_color=plain, color_system=None if plain else "auto")


def _coloured(stream) -> bool:
    """Colour as rich decides it: NO_COLOR turns it off, FORCE_COLOR on, else a terminal."""
    if "NO_COLOR" in os.environ or os.environ.get("TERM") in ("dumb", "unknown"):
        return False
    return bool(os.environ.get("FORCE_COLOR")) or stream.isatty()


def _plain(line: str, error: bool = False) -> None:
    """One line on stderr without rich (a one-shot command need not import it)."""
    if error:
        red = _coloured(sys.stderr)
        line = ("\x1b[1;31merror:\x1b[0m " if red else "error: ") + line
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def fail(err: Exception | str, console: Console | None = None) -> typer.Exit:
    """Print ``err`` as one line on stderr, --quiet or not, and return the exit to raise.
    Through ``console`` when there is one that prints (it may hold a progress bar), else
    plainly."""
    if console is None or console.quiet:
        _plain(str(err), error=True)
        return typer.Exit(code=2)
    from rich.markup import escape

    # Escaped: paths and messages may hold [brackets] that rich would read as markup.
    console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
    return typer.Exit(code=2)


def tell(
    report: PairReport,
    console: Console | None,
    json_out: bool,
    progress_only: bool = False,
    quiet: bool = False,
) -> None:
    """Report one pair: JSON on stdout when asked; errors always, successes unless quiet (or
    `progress_only`: a batch's bar shows them), on stderr, through ``console`` or, without
    one, plainly."""
    if json_out:
        sys.stdout.write(json.dumps(report.to_dict()) + "\n")
        sys.stdout.flush()
    if report.status == "failed":
        fail(report.error, console)
    elif report.status == "ok" and not progress_only and report.out is not None:
        w, h = report.details["size"]
        how = (
            f"{report.details['tiles_refined']}/{report.details['tiles']} tiles refined"
            if report.details["method"] == "spn"
            else f"method {report.details['method']}"
        )
        line = (
            f"wrote {report.out} ({w}x{h} {report.details['kind']}, {how}, {report.seconds:.1f} s)"
        )
        if console is None:
            if not quiet:
                _plain(line)
            return
        from rich.markup import escape

        console.print(escape(line), highlight=False, soft_wrap=True)


# Options of `refine` and `batch`; each is a keyword of the Python API of the same name.
WeightsOption = Annotated[
    str | None,
    typer.Option(
        "--weights",
        "-w",
        help="A folder or .safetensors file, hf-hub:owner/name[@revision], or 'default' "
        "(the bundled weights). Default: $SPNREFINE_WEIGHTS, else the bundled weights.",
        show_default=False,
    ),
]
DeviceOption = Annotated[
    Literal["auto", "cpu", "cuda"],
    typer.Option(help="auto: the GPU (Numba CUDA kernel) when there is one, else the CPU."),
]
MethodOption = Annotated[
    Literal[("spn", *BASELINES)],  # the names are the registry's
    typer.Option(
        help="spn: the model. Baselines, for comparison (no weights loaded): "
        + describe_baselines()
        + ".",
    ),
]
TileOption = Annotated[
    int,
    typer.Option(
        help="Tile size in pixels (a multiple of 8); larger than the image, it shrinks to cover "
        "the image."
    ),
]
OverlapOption = Annotated[int, typer.Option(help="Overlap of neighbouring tiles, blended.")]
BatchSizeOption = Annotated[int, typer.Option(help="Tiles per model call.")]
GuardOption = Annotated[
    bool,
    typer.Option(
        help="Keep the model to what the coarse map leaves open: where the map is sure (or, "
        "in a map at most 2.5× smaller than the image, unsure only in a band a few pixels "
        "wide) it stays, and islands and holes it has no trace of, specks far smaller "
        "than one of its pixels, and small fragments the model is unsure of, are dropped. "
        "--no-guard gives the model's map as it is."
    ),
]
CoarseTypeOption = Annotated[
    Literal["auto", "labels", "prob"],
    typer.Option(
        help="How to read an 8-bit single-channel PNG: class ids, a probability, or auto "
        "(0/255 or 0/1 is a mask; step edges are ids, ramps a probability; a map it cannot "
        "judge is refused; see docs/coarse-formats.md)."
    ),
]
LogitsOption = Annotated[
    bool,
    typer.Option(
        "--logits",
        help="A .npy/.npz coarse map holds logits (sigmoid / softmax applied).",
        show_default=False,
    ),
]
StretchOption = Annotated[
    bool,
    typer.Option(
        "--stretch",
        help="The coarse map covers the image at another aspect ratio: stretch it.",
        show_default=False,
    ),
]
SoftOption = Annotated[
    bool,
    typer.Option(
        "--soft",
        show_default=False,
        help="Write probabilities: a PNG of the foreground for one class, a C×H×W .npy for "
        "several.",
    ),
]
BitsOption = Annotated[Literal[8, 16], typer.Option(help="Bit depth of a --soft PNG.")]
OverwriteOption = Annotated[
    bool, typer.Option("--overwrite", help="Replace existing outputs.", show_default=False)
]
MaxPixelsOption = Annotated[
    int, typer.Option(help="Refuse larger inputs (decompression-bomb guard).")
]
QuietOption = Annotated[
    bool, typer.Option("--quiet", "-q", help="No progress or log lines.", show_default=False)
]
JsonOption = Annotated[
    bool,
    typer.Option("--json", help="Print one JSON object per result on stdout.", show_default=False),
]


@dataclass(frozen=True)
class RefineSettings:
    """What `refine` and `batch` share, declared once: how the refiner is loaded (the keywords
    of `Refiner.load`) and how each pair is read and written (`PairOptions`). The decorator
    `refine_settings` turns the fields into the command's options."""

    weights: WeightsOption = None
    method: MethodOption = "spn"
    device: DeviceOption = "auto"
    tile: TileOption = DEFAULT_TILE
    overlap: OverlapOption = DEFAULT_OVERLAP
    batch_size: BatchSizeOption = 16
    guard: GuardOption = True
    coarse_type: CoarseTypeOption = "auto"
    logits: LogitsOption = False
    stretch: StretchOption = False
    soft: SoftOption = False
    bits: BitsOption = 8
    overwrite: OverwriteOption = False
    max_pixels: MaxPixelsOption = DEFAULT_MAX_PIXELS

    def check(self) -> None:
        """Refuse impossible tiling settings without importing the API (it is slow to import)."""
        check_settings(
            tile=self.tile,
            overlap=self.overlap,
            batch_size=self.batch_size,
            max_pixels=self.max_pixels,
        )

    def load_refiner(self) -> Refiner:
        self.check()
        hold_freed_memory()
        from spnrefine.api import Refiner

        return Refiner.load(
            self.weights,
            method=self.method,
            device=self.device,
            tile=self.tile,
            overlap=self.overlap,
            batch_size=self.batch_size,
            guard=self.guard,
            max_pixels=self.max_pixels,
        )

    def pair_options(self) -> PairOptions:
        from spnrefine.pair import PairOptions

        return PairOptions(
            self.coarse_type, self.logits, self.stretch, self.soft, self.bits, self.overwrite
        )


DEFAULT_SETTINGS = RefineSettings()

# glibc's malloc (mallopt's parameter numbers): maps blocks above M_MMAP_THRESHOLD afresh and
# gives the heap's free top back beyond M_TRIM_THRESHOLD, so the 2-13 MB arrays of each model
# call were page-faulted in again and again (130,000 minor faults in a batch of 8 854×480
# frames, 40,000 with these). They hold up to a few hundred MB for reuse instead: in a process
# that refines, the peak is the same (+6 MB) and the batch 5 % faster.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
HELD_BYTES = 256 * 2**20


def hold_freed_memory() -> None:
    """Have glibc's malloc keep freed memory for reuse (this process refines from now on);
    nothing where the C library is not glibc."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):  # not glibc (macOS, Windows)
        return
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt(M_MMAP_THRESHOLD, HELD_BYTES)
    mallopt(M_TRIM_THRESHOLD, 2 * HELD_BYTES)


def refine_settings(command: Callable[..., None]) -> Callable[..., None]:
    """Replace the command's `settings: RefineSettings = DEFAULT_SETTINGS` parameter by one
    option per field (in the field order, at that place in --help), and call the command with
    them gathered."""
    signature = inspect.signature(command, eval_str=True)
    hints = get_type_hints(RefineSettings, include_extras=True)
    names = [f.name for f in fields(RefineSettings)]
    options = [
        inspect.Parameter(
            name,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            default=f.default,
            annotation=hints[name],
        )
        for name, f in zip(names, fields(RefineSettings), strict=True)
    ]
    params = []
    for param in signature.parameters.values():
        params.extend(options if param.name == "settings" else [param])

    @functools.wraps(command)
    def with_settings(**kwargs: Any) -> None:
        settings = RefineSettings(**{name: kwargs.pop(name) for name in names})
        return command(settings=settings, **kwargs)

    with_settings.__signature__ = signature.replace(parameters=params)
    with_settings.__annotations__ = {p.name: p.annotation for p in params}
    return with_settings
