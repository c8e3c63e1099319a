"""`spnrefine weights`: which weights load, and from where."""

from __future__ import annotations

import json

import typer

from spnrefine.cli.common import JsonOption, WeightsOption, app, examples, fail
from spnrefine.errors import SpnrefineError


@app.command(
    short_help="Show which weights load.",
    epilog=examples(
        "spnrefine weights",
        "spnrefine weights -w hf-hub:owner/name@v1 --json",
        "SPNREFINE_WEIGHTS=runs/mine/best spnrefine weights",
    ),
)
def weights(
    weights: WeightsOption = None,
    json_out: JsonOption = False,
) -> None:
    """Show which weights load: name, source, revision, checksum and config."""
    from spnrefine.weights import load_weights

    try:
        _, info = load_weights(weights, lean=True)
    except SpnrefineError as err:
        raise fail(err) from None
    data = info.to_dict()
    if json_out:
        typer.echo(json.dumps(data))
        return
    for key in ("name", "source", "spec", "path", "revision", "sha256", "parameters"):
        typer.echo(f"{key + ':':12}{data[key] if data[key] is not None else '-'}")
    typer.echo(f"{'config:':12}{json.dumps(data['config'], sort_keys=True)}")
