"""The ``spnrefine`` command line: thin Typer commands over the Python API."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from spnrefine.errors import SpnrefineError

app = typer.Typer(
    name="spnrefine",
    help="Refine coarse segmentation masks with Spatial Propagation Networks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def stderr_console(quiet: bool = False) -> Console:
    """Logs go to stderr; NO_COLOR turns colour off."""
    return Console(stderr=True, quiet=quiet, no_color="NO_COLOR" in os.environ)


def fail(err: Exception, console: Console | None = None) -> typer.Exit:
    """Print ``err`` as one line on stderr and return the exit to raise."""
    (console or stderr_console()).print(
        f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True
    )
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
    init: Annotated[str | None, typer.Option(help="Fine-tune: start from these weights.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out.")] = False,
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
        device=device,
        model=ModelConfig(hidden=hidden, mode=mode, merge=merge),
    )
    try:
        folder = run_training(config, resume=resume, console=console)
    except SpnrefineError as err:
        raise fail(err, console) from None
    console.print(f"model written to {folder} (best on validation: {folder / 'best'})")


def main() -> None:
    app()
