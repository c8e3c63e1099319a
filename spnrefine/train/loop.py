"""The training loop: seeded patch batches, AdamW, validation, checkpoints, resume.

Each step's batch depends only on (seed, step), so a resumed run sees exactly the batches the
uninterrupted run would have seen, and the optimizer state is restored from safetensors.
With ``ema`` > 0 the checkpoints hold an exponential moving average of the weights (the
trained weights themselves travel in the resume state), which smooths out the step-to-step
noise of small-batch training.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from rich.console import Console

from spnrefine.checkpoint import CONFIG_FILE, WEIGHTS_FILE, load_model, save_model
from spnrefine.errors import SpnrefineError
from spnrefine.model import build_model
from spnrefine.model.grow import widen_guidance
from spnrefine.train import sources
from spnrefine.train.average import WeightAverage
from spnrefine.train.config import TrainConfig
from spnrefine.train.data import load_dataset
from spnrefine.train.loss import refinement_loss
from spnrefine.train.prefetch import batches
from spnrefine.train.progress import TrainProgress
from spnrefine.train.schedule import learning_rate
from spnrefine.train.state import (
    STATE_JSON,
    STATE_TENSORS,
    check_resume,
    load_state,
    save_state,
)
from spnrefine.train.validate import mean_score, to_torch, validate, validation_sets
from spnrefine.weights import load_weights

RUN_FILES = (STATE_JSON, STATE_TENSORS, CONFIG_FILE, WEIGHTS_FILE, "best")
LOCK_FILE = ".train.lock"


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    """Hold ``out`` against a second train process for as long as the run writes to it."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / LOCK_FILE, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "?"
            raise SpnrefineError(
                f"another spnrefine train (pid {holder}) is writing to this folder", out
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)


def _clear_run(out: Path, overwrite: bool) -> None:
    """Refuse to start a new run over an earlier one, or with ``overwrite`` remove it."""
    found = [name for name in RUN_FILES if (out / name).exists()]
    if not found:
        return
    if not overwrite:
        raise SpnrefineError(
            f"already holds a training run ({', '.join(found)}); --resume continues it, "
            "--overwrite replaces it, or choose another --out",
            out,
        )
    for name in found:
        path = out / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def train(
    config: TrainConfig,
    resume: bool = False,
    console: Console | None = None,
    *,
    override: bool = False,
    overwrite: bool = False,
) -> Path:
    """Train (or fine-tune, or resume) a refiner; returns the output folder.

    A new run refuses a folder that holds one unless ``overwrite``; a resume refuses settings
    other than the run's unless ``override`` (see `state.check_resume`). The folder is locked
    against a second train process while the run writes to it.
    """
    console = console or Console(stderr=True)
    out = Path(config.out)
    if resume:
        check_resume(out, config, override)
    with _locked(out):
        if not resume:
            _clear_run(out, overwrite)
        return _run(config, resume, console, out)


def check_mix(config: TrainConfig) -> None:
    """--data-weights: one share ≥ 0 per data folder; --real-share: a share, of real maps
    that --coarse-source names; --factors, --clean-share and --hard-share: a recipe that can
    be drawn."""
    weights = config.data_weights
    if weights is not None:
        if len(weights) != len(config.data):
            raise SpnrefineError(
                f"--data-weights gives {len(weights)} share(s) for {len(config.data)} data "
                "folder(s); give one per folder, in their order",
                Path(config.data[0]),
            )
        if min(weights) < 0 or sum(weights) <= 0:
            raise SpnrefineError("--data-weights: shares must be ≥ 0, not all 0", Path(config.out))
    share = config.real_share
    if share is not None and not 0 <= share <= 1:
        raise SpnrefineError(
            f"--real-share {share}: expected a share from 0 to 1", Path(config.out)
        )
    problem = config.recipe.check()
    if problem:
        raise SpnrefineError(problem, Path(config.out))
    if share is not None and not config.coarse_sources:
        raise SpnrefineError(
            "--real-share: no real maps to share; name their folders with --coarse-source",
            Path(config.data[0]),
        )


def _run(config: TrainConfig, resume: bool, console: Console, out: Path) -> Path:
    device = torch.device(config.device)
    torch.manual_seed(config.seed)
    check_mix(config)  # before the data loads: a mistyped share fails at once
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
    if config.init:
        model.config.extra["init"] = config.init
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
    best = max((mean_score(h["val"]) for h in history), default=-math.inf)

    def checkpoint(entry: dict) -> None:
        nonlocal best
        history.append(entry)
        save_model(saved, out)
        save_state(out, optimizer, step, history, config, live)
        score = mean_score(entry["val"])
        if score > best:
            best = score
            save_model(saved, out / "best")
        for r in entry["val"]:
            console.log(f"step {step} val {Path(r['data']).name}: {_describe(r)}")
        if "val_live" in entry:
            live_score = mean_score(entry["val_live"])
            console.log(f"step {step} val score {score:.4f} ({live_score:.4f} live)")

    # Training time so far: a resumed run's history goes on from where the run stopped.
    started = time.time() - (history[-1]["time"] if history else 0.0)
    if not history:  # the starting weights, scored and kept as step 0
        start = validate(saved, datasets, val_sets, device)
        entry = {"step": 0, "loss": None, "time": 0.0, "val": start}
        if average:  # the average starts as the trained weights themselves
            entry["val_live"] = start
        checkpoint(entry)
    running = None
    last = config.steps if config.until is None else min(config.until, config.steps)
    try:
        with TrainProgress(console, config.steps, step, last) as progress:
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
                config.mix,
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
                progress.advance(running)
                if step % config.val_every == 0 or step == last:
                    results = validate(saved, datasets, val_sets, device)
                    entry = {"step": step, "loss": running, "time": time.time() - started}
                    entry["val"] = results
                    if average:  # how the trained weights themselves score, for comparison
                        entry["val_live"] = validate(model, datasets, val_sets, device)
                    checkpoint(entry)
    except KeyboardInterrupt:
        kept = history[-1]["step"]
        console.print(
            f"interrupted at step {step}: {out} holds the checkpoint of step {kept} (the best "
            f"so far in {out / 'best'}); `spnrefine train ... --out {out} --resume` goes on "
            f"from step {kept}",
            highlight=False,
            soft_wrap=True,
        )
        raise
    return out


def _describe(result: dict) -> str:
    parts = []
    for key in ("iou", "miou", "boundary_f"):
        if key in result["refined"]:
            parts.append(f"{key} {result['coarse'][key]:.4f}→{result['refined'][key]:.4f}")
    return ", ".join(parts)
