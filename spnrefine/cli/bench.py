"""`spnrefine bench`: kernel and end-to-end timings on generated inputs, against the baselines."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Annotated

import typer

from spnrefine.baselines import BASELINES
from spnrefine.cli.common import (
    QuietOption,
    WeightsOption,
    app,
    examples,
    fail,
    stderr_console,
    stdout_console,
)
from spnrefine.errors import SpnrefineError, need_torch

if TYPE_CHECKING:
    from rich.table import Table


@app.command(
    short_help="Time the kernels and whole refinement against the baselines.",
    epilog=examples("spnrefine bench --quick", "spnrefine bench --sizes 1920x1080 --json"),
)
def bench(
    sizes: Annotated[
        str | None,
        typer.Option(
            help="Image sizes, WxH[,WxH...]. Default: 512x512,1920x1080,4096x3072.",
            show_default=False,
        ),
    ] = None,
    repeats: Annotated[int, typer.Option(help="Timed runs per case; the median counts.")] = 3,
    quick: Annotated[
        bool,
        typer.Option(
            "--quick",
            help="Two small sizes and one run each: a check that all runs.",
            show_default=False,
        ),
    ] = False,
    weights: WeightsOption = None,
    json_out: Annotated[
        bool,
        typer.Option(
            "--json", help="Print the results as one JSON object on stdout.", show_default=False
        ),
    ] = False,
    quiet: QuietOption = False,
) -> None:
    """Time the propagation kernels (every backend here: numba CPU, torch reference on sizes up
    to 512x512, numba CUDA with a GPU) and end-to-end refinement (decode, refine, encode) by the
    model and by the baselines (bilinear, guided, crf when pydensecrf is installed), on
    generated images with a coarse mask at 1/8. No data sets or network needed."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = stderr_console(quiet)
    try:
        need_torch("spnrefine bench")
    except SpnrefineError as err:
        raise fail(err, console) from None
    from spnrefine.bench import DEFAULT_SIZES, QUICK_SIZES, parse_sizes, run_bench

    try:
        chosen = parse_sizes(sizes) if sizes else list(QUICK_SIZES if quick else DEFAULT_SIZES)
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=console, disable=quiet, transient=True) as bar:
            task = bar.add_task("warming up", total=None)

            def progress(i: int, total: int, case) -> None:
                w, h = case.size
                bar.update(
                    task, completed=i, total=total, description=f"{case.kind} {case.name} {w}x{h}"
                )

            report = run_bench(chosen, 1 if quick else repeats, weights, progress)
    except SpnrefineError as err:
        raise fail(err) from None
    data = report.to_dict()
    if json_out:
        sys.stdout.write(json.dumps(data) + "\n")
    out = console if json_out else stdout_console()
    out.print(_table(data))


def _table(data: dict) -> Table:
    from rich import box
    from rich.table import Table

    """One row per case: time (median), peak memory, and end-to-end time over each baseline's."""
    machine = data["machine"]
    results = data["results"]
    baselines = [b for b in BASELINES if any(r["name"] == b for r in results)]
    gpu = any(r["gpu_peak_mb"] is not None for r in results)
    runs = f"{data['repeats']} run{'s' if data['repeats'] > 1 else ''}"
    title = (
        f"median of {runs}; {machine['cpus']} CPUs, GPU: {machine['gpu'] or 'none'}\n"
        f"kernel: {data['kernel_input']}; methods: decode, refine, encode"
    )
    caption = f"peak MB: {data['memory']}" + ("; GPU MB: torch's allocator peak" if gpu else "")
    table = Table(title=title, title_justify="left", caption=caption, box=box.SIMPLE_HEAD)
    table.add_column("size")
    table.add_column("case")
    for name in ("ms", "peak MB", *(["GPU MB"] if gpu else []), *(f"/{b}" for b in baselines)):
        table.add_column(name, justify="right")
    for r in results:
        w, h = r["size"]
        if r["kind"] == "kernel":
            case = f"kernel {r['name']}"
        else:
            case = r["name"] + (" cuda" if r["device"] == "cuda" else "")
        cells = [f"{w}x{h}", case, f"{r['seconds'] * 1000:,.1f}", f"{r['peak_mb']:,.0f}"]
        if gpu:
            cells.append(f"{r['gpu_peak_mb']:,.0f}" if r["gpu_peak_mb"] is not None else "")
        cells += [f"{r['ratios'][b]:.2f}" if b in r["ratios"] else "" for b in baselines]
        table.add_row(*cells)
    return table
