"""`spnrefine train`: train or fine-tune a refiner on your own data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from spnrefine.cli.common import QuietOption, app, examples, fail, stderr_console
from spnrefine.errors import SpnrefineError, need_torch


def parse_widths(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise typer.BadParameter(f"{text!r}: expected comma-separated integers") from None
    if len(widths) < 2 or min(widths) < 1:
        raise typer.BadParameter(f"{text!r}: expected at least two positive widths")
    return widths


def parse_shares(text: str) -> list[float]:
    """--data-weights as numbers (the training checks them, as it does a resumed run's)."""
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise typer.BadParameter(f"{text!r}: expected comma-separated numbers") from None


def parse_factors(text: str) -> tuple[float, float]:
    """--factors as two numbers (the training checks their range: `Recipe.check`)."""
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        raise typer.BadParameter(f"{text!r}: expected MIN,MAX (e.g. 2,16)") from None
    return low, high


def _given(ctx: typer.Context, name: str) -> bool:
    source = ctx.get_parameter_source(name)
    return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT", "PROMPT")


@app.command(
    short_help="Train a refiner on your own data, or fine-tune one.",
    epilog=examples(
        "spnrefine train data/cracks -o runs/cracks --init default --steps 2000",
        "spnrefine train data/a data/b -o runs/ab --until 1000",
        "spnrefine train data/a data/b -o runs/ab --resume",
    ),
)
def train(
    ctx: typer.Context,
    data: Annotated[
        list[Path],
        typer.Argument(
            metavar="DATA...", help="Data folders, each with images/ and masks/ (+ coarse/)."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for checkpoints.")] = Path(
        "runs/spnrefine"
    ),
    steps: Annotated[int, typer.Option(help="Optimisation steps in all.")] = 3000,
    val_every: Annotated[int, typer.Option(help="Validate and checkpoint every N steps.")] = 250,
    batch_size: Annotated[int, typer.Option(help="128×128 patches per step.")] = 8,
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW, cosine decay).")] = 2e-3,
    warmup: Annotated[
        int, typer.Option(min=0, help="Steps of linear learning-rate warm-up before the decay.")
    ] = 100,
    seed: Annotated[int, typer.Option(help="Seed for the split, the patches and the init.")] = 0,
    split_seed: Annotated[
        int | None,
        typer.Option(
            help="Seed for the validation split and patches alone (default: --seed); keep a "
            "fine-tune's held-out data that of the run it starts from."
        ),
    ] = None,
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
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue the run in --out with its own settings (options left out are the "
            "run's).",
            show_default=False,
        ),
    ] = False,
    override: Annotated[
        bool,
        typer.Option(
            "--override",
            help="With --resume: change the run's settings to the options given (recorded in "
            "the run); without it, a resume refuses them.",
            show_default=False,
        ),
    ] = False,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Replace a training run already in --out (best/ included).",
            show_default=False,
        ),
    ] = False,
    until: Annotated[
        int | None, typer.Option(help="Stop after this step; --resume goes on later.")
    ] = None,
    hidden: Annotated[
        int | None, typer.Option(help="Propagated channels per class. [default: 8]")
    ] = None,
    gate_groups: Annotated[
        int | None,
        typer.Option(help="Gate sets predicted per pixel (must divide --hidden). [default: 4]"),
    ] = None,
    guidance: Annotated[
        str | None, typer.Option(help="Guidance net shape: light or unet. [default: light]")
    ] = None,
    widths: Annotated[
        str | None,
        typer.Option(
            help="Guidance widths per scale, full resolution first. With --init: widen the "
            "light guidance net of those weights to these widths. [default: 12,24,32,48]"
        ),
    ] = None,
    mode: Annotated[
        str | None, typer.Option(help="three_way or one_way. [default: three_way]")
    ] = None,
    merge: Annotated[str | None, typer.Option(help="learned or max. [default: learned]")] = None,
    ema: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=0.9999,
            help="Validate and save an exponential moving average of the weights with this "
            "decay (e.g. 0.999; 0: off).",
        ),
    ] = 0.0,
    thin_weight: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="Extra loss weight on parts under 9 px wide, foreground or gaps (0: off).",
        ),
    ] = 0.0,
    coarse_source: Annotated[
        list[str] | None,
        typer.Option(
            help="Train also on the real coarse maps in each folder's coarse-<NAME>/ (shell "
            "patterns; repeat for several): a patch takes one of its image's sources or the "
            "synthetic recipe, alike.",
        ),
    ] = None,
    data_weights: Annotated[
        str | None,
        typer.Option(
            help="Share of steps per data folder, comma-separated in the folders' order "
            "(e.g. 2,2,1: the first two twice as often). [default: alike]"
        ),
    ] = None,
    real_share: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=1.0,
            help="With --coarse-source: the share of patches that take one of their image's "
            "real maps (the rest: the synthetic recipe). [default: each source and the "
            "recipe alike]",
        ),
    ] = None,
    factors: Annotated[
        str,
        typer.Option(
            metavar="<min,max>",
            help="The synthetic coarse maps are MIN to MAX times smaller than the image "
            "(log-uniform); take in the scale your segmenter's maps come at (e.g. 2,16).",
        ),
    ] = "4,16",
    clean_share: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Share of the synthetic coarse maps whose shapes are left unperturbed "
            "(only downsampled), as a sharp map is.",
        ),
    ] = 0.2,
    hard_share: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Share of the synthetic coarse maps made hard: each small pixel its "
            "majority class, as a segmenter's label PNG or 0/255 mask is.",
        ),
    ] = 0.0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    workers: Annotated[
        int,
        typer.Option(
            min=0, help="Processes that cut patches ahead of the model (0: in the training loop)."
        ),
    ] = 0,
    quiet: QuietOption = False,
) -> None:
    """Train a refiner on your own data (or fine-tune one with --init)."""
    try:
        need_torch("spnrefine train")
    except SpnrefineError as err:
        raise fail(err, stderr_console(quiet)) from None
    from spnrefine.model import ModelConfig
    from spnrefine.predictor import pick_device
    from spnrefine.train.config import TrainConfig
    from spnrefine.train.state import saved_config

    console = stderr_console(quiet)
    try:
        device = str(pick_device(device))
    except SpnrefineError as err:
        raise fail(err, console) from None
    if resume:
        shape = {"hidden": hidden, "gate_groups": gate_groups, "guidance": guidance}
        shape.update(mode=mode, merge=merge)
        options = {
            "data": [str(d) for d in data],
            "steps": steps,
            "val_every": val_every,
            "batch_size": batch_size,
            "lr": lr,
            "warmup": warmup,
            "seed": seed,
            "split_seed": split_seed,
            "val_fraction": val_fraction,
            "val_patches": val_patches,
            "init": init,
            "ema": ema,
            "thin_weight": thin_weight,
            "coarse_sources": list(coarse_source or []),
            "data_weights": parse_shares(data_weights) if data_weights else None,
            "real_share": real_share,
            "factors": parse_factors(factors),
            "clean_share": clean_share,
            "hard_share": hard_share,
        }
        try:
            config = saved_config(out)
        except SpnrefineError as err:
            raise fail(err, console) from None
        if widths:
            shape["widths"] = parse_widths(widths)
        for name, value in shape.items():
            was = getattr(config.model, name)
            if value is not None and value != was:
                shown = ",".join(map(str, was)) if name == "widths" else was
                flag = "--" + name.replace("_", "-")
                raise typer.BadParameter(f"{flag}: fixed by the run's checkpoint ({shown})")
        for name, value in options.items():  # the run's settings, unless given
            if _given(ctx, "coarse_source" if name == "coarse_sources" else name):
                setattr(config, name, value)
        config.out, config.until, config.device, config.workers = str(out), until, device, workers
        _run(config, console, resume=True, override=override)
        return
    architecture = {
        "hidden": hidden,
        "gate_groups": gate_groups,
        "guidance": guidance,
        "mode": mode,
        "merge": merge,
    }
    given = {name: value for name, value in architecture.items() if value is not None}
    if init and given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise typer.BadParameter(f"{flags}: fixed by the --init weights (only --widths can grow)")
    parsed_widths = parse_widths(widths) if widths else None
    if parsed_widths and not init:
        given["widths"] = parsed_widths
    model_config = ModelConfig(**given)
    config = TrainConfig(
        data=[str(d) for d in data],
        out=str(out),
        steps=steps,
        val_every=val_every,
        batch_size=batch_size,
        lr=lr,
        warmup=warmup,
        seed=seed,
        split_seed=split_seed,
        val_fraction=val_fraction,
        val_patches=val_patches,
        init=init,
        until=until,
        device=device,
        workers=workers,
        ema=ema,
        thin_weight=thin_weight,
        coarse_sources=list(coarse_source or []),
        data_weights=parse_shares(data_weights) if data_weights else None,
        real_share=real_share,
        factors=parse_factors(factors),
        clean_share=clean_share,
        hard_share=hard_share,
        model=model_config,
        widen_to=parsed_widths if init else None,
    )
    try:
        config.model.check()
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
    _run(config, console, overwrite=overwrite)


def _run(config, console, **how) -> None:
    from spnrefine.train.loop import train as run_training

    try:
        folder = run_training(config, console=console, **how)
    except SpnrefineError as err:
        raise fail(err, console) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    console.print(f"model written to {folder} (best on validation: {folder / 'best'})")
