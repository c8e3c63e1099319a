"""The training loop: seeded patch batches, AdamW, validation, checkpoints, resume.

Each step's batch depends only on (seed, step), so a resumed run sees exactly the batches the
uninterrupted run would have seen, and the optimizer state is restored from safetensors.
With ``ema`` > 0 the checkpoints hold an exponential moving average of the weights (the
trained weights themselves travel in the resume state), which smooths out the step-to-step
noise of small-batch training.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from spnrefine.checkpoint import CONFIG_FILE, load_model, save_model
from spnrefine.errors import SpnrefineError
from spnrefine.model import build_model
from spnrefine.model.grow import widen_guidance
from spnrefine.train import sources
from spnrefine.train.average import WeightAverage
from spnrefine.train.config import TrainConfig
from spnrefine.train.data import load_dataset
from spnrefine.train.loss import refinement_loss
from spnrefine.train.prefetch import batches
from spnrefine.train.schedule import learning_rate
from spnrefine.train.state import check_resume, load_state, save_state
from spnrefine.train.validate import mean_score, to_torch, validate, validation_sets
from spnrefine.weights import load_weights


def train(config: TrainConfig, resume: bool = False, console: Console | None = None) -> Path:
    """Train (or fine-tune, or resume) a refiner; returns the output folder."""
    console = console or Console(stderr=True)
    out = Path(config.out)
    device = torch.device(config.device)
    if resume:
        check_resume(out, config)
    torch.manual_seed(config.seed)
    datasets = [
        load_dataset(d, config.val_fraction, config.held_out_seed, tuple(config.coarse_sources))
        for d in config.data
    ]
    sources.check_patterns(config.coarse_sources, {d.root: d.sources for d in datasets})
    for d in datasets:
        if not d.val:
            raise SpnrefineError(
                "validation split is empty; add data or raise --val-fraction", d.root
            )
        console.log(
            f"{d.root}: {len(d.train)} train / {len(d.val)} val images, {d.num_classes} classes"
        )
    val_sets = validation_sets(datasets, config)

    step, history = 0, []
    if resume:
        model = load_model(out).train()  # with --ema: the average; the trained weights follow
        config.model = model.config
    elif config.init:
        model = load_weights(config.init)[0].train()
        if config.widen_to is not None and tuple(config.widen_to) != model.config.widths:
            try:
                model = widen_guidance(model, config.widen_to)
            except ValueError as err:
                raise SpnrefineError(str(err), config.init) from None
        config.model = model.config
    else:
        model = build_model(config.model)
    model.to(device)
    model.config.extra = {"data": [str(d.root) for d in datasets]}
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    average = WeightAverage(model, config.ema) if config.ema else None
    live = model if average else None  # the trained weights travel in the state under an average
    if resume:
        step, history = load_state(out, optimizer, live)
        if average:
            average.updates = step
        console.log(f"resuming at step {step} of {config.steps}")
    saved = average.model if average else model
    out.mkdir(parents=True, exist_ok=True)
    best = max((mean_score(h["val"]) for h in history), default=-math.inf)

    columns = [
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
    ]
    running = None
    started = time.time()
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("training", total=config.steps, completed=step, loss=0.0)
        last = config.steps if config.until is None else min(config.until, config.steps)
        source = (
            config.data,
            config.val_fraction,
            config.held_out_seed,
            tuple(config.coarse_sources),
        )
        stream = batches(
            datasets,
            source,
            config.seed,
            config.batch_size,
            config.model.tile,
            step,
            last,
            config.workers,
        )
        for prepared in stream:
            batch = to_torch(prepared, device)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(config, step)
            logits = model(batch["image"], batch["coarse"])
            loss = refinement_loss(logits, batch["labels"], batch["coarse"], config.thin_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if average:
                average.update(model)
            step += 1
            value = loss.item()
            running = value if running is None else 0.98 * running + 0.02 * value
            progress.update(task, advance=1, loss=running)
            if step % config.val_every == 0 or step == last:
                results = validate(saved, datasets, val_sets, device)
                elapsed = time.time() - started
                entry = {"step": step, "loss": running, "time": elapsed, "val": results}
                if average:  # how the trained weights themselves score, for comparison
                    entry["val_live"] = validate(model, datasets, val_sets, device)
                history.append(entry)
                save_model(saved, out)
                save_state(out, optimizer, step, history, config, live)
                if mean_score(results) > best:
                    best = mean_score(results)
                    save_model(saved, out / "best")
                for r in results:
                    console.log(f"step {step} {Path(r['data']).name}: {_describe(r)}")
                if average:
                    live_score = mean_score(entry["val_live"])
                    console.log(
                        f"step {step} score {mean_score(results):.4f} ({live_score:.4f} live)"
                    )
    if not (out / "best" / CONFIG_FILE).exists():  # a resumed run that validated nothing new
        save_model(saved, out / "best")
    return out


def _describe(result: dict) -> str:
    parts = []
    for key in ("iou", "miou", "boundary_f"):
        if key in result["refined"]:
            parts.append(f"{key} {result['coarse'][key]:.4f}→{result['refined'][key]:.4f}")
    return ", ".join(parts)
