"""`spnrefine refine`: one image and its coarse map to one output file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

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
    tell,
)
from spnrefine.errors import SpnrefineError


@app.command(
    short_help="Refine one coarse map against its image.",
    epilog=examples(
        "spnrefine refine photo.jpg coarse.png -o mask.png --overlay look.jpg",
        "spnrefine refine photo.jpg probs.npy --soft -o probs.npy",
        "segment photo.jpg | spnrefine refine photo.jpg - -o - > mask.png",
    ),
)
@refine_settings
def refine(
    image: Annotated[
        str, typer.Argument(metavar="IMAGE", help="The image: JPEG, PNG, WebP or TIFF.")
    ],
    coarse: Annotated[
        str,
        typer.Argument(
            metavar="COARSE", help="The coarse map: PNG, TIFF, .npy or .npz; - reads stdin."
        ),
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
    settings: RefineSettings = DEFAULT_SETTINGS,
    quiet: QuietOption = False,
    json_out: JsonOption = False,
) -> None:
    """Refine one coarse map against its image and write the result."""
    from spnrefine.io.sources import check_readable

    try:
        if json_out and out == "-":
            raise SpnrefineError("--json and -o - both write to stdout; use one of them")
        if out is None and image == "-":
            raise SpnrefineError("with the image on stdin, name the output with -o")
        # Options, inputs and outputs are checked before anything heavy loads (numpy, the
        # weights), so a mistyped name or option fails at once.
        settings.check()
        for source in (image, coarse):
            if source != "-" and "://" not in source:
                check_readable(source)
        from spnrefine.io.outputs import check_bits, check_outputs, default_output
        from spnrefine.pair import Pair, refine_pair

        check_bits(settings.bits, settings.soft)

        if out is not None:
            pair = Pair(image, coarse, out)
        else:
            pair = Pair(image, coarse, default_output(image), name_out=True)
        check_outputs(
            pair.out,
            overlay,
            [image, coarse],
            overwrite=settings.overwrite,
            auto_suffix=pair.name_out,
            soft=settings.soft,
        )
        refiner = settings.load_refiner()
    except SpnrefineError as err:
        raise fail(err) from None
    report = refine_pair(refiner, pair, settings.pair_options(), overlay=overlay)
    tell(report, None, json_out, quiet=quiet)
    if report.status == "failed":
        raise typer.Exit(code=2)
