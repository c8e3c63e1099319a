"""The training loop: seeded patch batches, AdamW, validation, checkpoints, resume.

Each step's batch depends only on (seed, step), so a resumed run sees exactly the batches the
uninterrupted run would have seen, and the optimizer state is restored from safetensors.
With ``ema`` > 0 the checkpoints hold an exponential moving average of the weights (the
trained weights themselves travel in the resume state), which smooths out the step-to-step
noise of small-batch training.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from safetensors.torch import load_file, save_file
from torch.nn import functional as F

from spnrefine.checkpoint import CONFIG_FILE, load_model, save_model
from spnrefine.errors import SpnrefineError
from spnrefine.model import ModelConfig, SPNRefiner, build_model
from spnrefine.model.grow import widen_guidance
from spnrefine.train import sources
from spnrefine.train.data import IGNORE, VAL_FRACTION, Dataset, load_dataset, sample_batch
from spnrefine.train.prefetch import batches
from spnrefine.train.validate import PatchScores
from spnrefine.weights import load_weights

STATE_TENSORS = "train_state.safetensors"
STATE_JSON = "train_state.json"


@dataclass
class TrainConfig:
    data: list[str]
    out: str
    steps: int = 3000
    val_every: int = 250
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup: int = 100
    seed: int = 0
    split_seed: int | None = None  # the validation split and patches (None: seed)
    val_fraction: float = VAL_FRACTION
    val_patches: int = 64
    val_factor: float = 8.0
    init: str | None = None  # fine-tune: start from these weights
    widen_to: tuple[int, ...] | None = None  # fine-tune: widen the init's guidance net first
    until: int | None = None  # stop after this step (a later --resume goes on)
    device: str = "cpu"
    workers: int = 0  # processes that prepare batches ahead of the model (0: in the loop)
    ema: float = 0.0  # decay of the weight average that is validated and saved (0: off)
    thin_weight: float = 0.0  # extra loss weight on parts thinner than THIN_WIDTH (0: off)
    coarse_sources: list[str] = field(default_factory=list)  # coarse-<pattern>/ folders to mix in
    model: ModelConfig = field(default_factory=ModelConfig)

    @property
    def held_out_seed(self) -> int:
        return held_out_seed(self.seed, self.split_seed)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def held_out_seed(seed: int, split_seed: int | None) -> int:
    """The seed of the validation split and patches: --split-seed, or else --seed."""
    return seed if split_seed is None else split_seed


def learning_rate(config: TrainConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to zero at ``config.steps``."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


THIN_WIDTH = 9  # px: the width below which a part counts as thin (as quality.py reports)


def thin_parts(labels: torch.Tensor, num_classes: int, width: int = THIN_WIDTH) -> torch.Tensor:
    """Pixels of parts thinner than ``width``: what an opening with a width² square removes.

    Each class is opened on its own, so thin foreground and narrow background gaps both
    count. Ignored pixels may belong to any class (they erode nothing), and the square may
    hang half its width over the patch edge (a part cut by the edge is not thin for that).
    """
    ignore = labels == IGNORE
    pad = width // 2
    masks = [((labels == c) | ignore).float() for c in range(num_classes)]
    stack = torch.stack(masks, dim=1)
    eroded = -F.max_pool2d(-stack, width, stride=1, padding=pad)
    opened = F.max_pool2d(eroded, width, stride=1, padding=pad)
    own = F.one_hot(labels.clamp_max(num_classes - 1), num_classes).permute(0, 3, 1, 2).bool()
    return ((opened < 0.5) & own).any(dim=1) & ~ignore


def refinement_loss(
    logits: torch.Tensor, labels: torch.Tensor, coarse: torch.Tensor, thin_weight: float = 0.0
):
    """Cross-entropy, weighted up where the coarse map is unsure (that is where the work is).

    With ``thin_weight``, pixels of thin parts weigh that much more: a coarse map blurs them
    to a pixel or less, and they are a few per cent of a patch's pixels but hold most of the
    boundary a refiner still misses.
    """
    top = coarse.topk(2, dim=1).values
    weight = 1 + 3 * (1 - (top[:, 0] - top[:, 1]))
    if thin_weight:
        weight = weight + thin_weight * thin_parts(labels, logits.shape[1]).float()
    per_pixel = F.cross_entropy(logits, labels, ignore_index=IGNORE, reduction="none")
    valid = (labels != IGNORE).float()
    return (per_pixel * weight * valid).sum() / (weight * valid).sum().clamp_min(1)


def _to_torch(batch: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v).to(device) for k, v in batch.items()}


class WeightAverage:
    """An exponential moving average of a model's weights and BatchNorm statistics.

    The decay ramps up as (1 + n) / (10 + n) over the first updates, so the average is not
    dominated by where it started.
    """

    def __init__(self, model: SPNRefiner, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"--ema {decay}: must be between 0 and 1")
        self.decay = decay
        self.updates = 0
        self.model = copy.deepcopy(model)

    @torch.no_grad()
    def update(self, model: SPNRefiner) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        live = model.state_dict()
        for name, value in self.model.state_dict().items():
            if value.is_floating_point():
                value.lerp_(live[name], 1 - decay)
            else:
                value.copy_(live[name])


_LIVE = "live."  # resume-state prefix of the trained weights when checkpoints hold an average


def _save_state(
    out: Path,
    optimizer: torch.optim.Optimizer,
    step: int,
    history: list,
    cfg,
    live: SPNRefiner | None = None,
):
    state = optimizer.state_dict()
    tensors = {}
    for index, slots in state["state"].items():
        for name, value in slots.items():
            tensors[f"{index}.{name}"] = value.detach().cpu().contiguous()
    if live is not None:
        for name, value in live.state_dict().items():
            tensors[_LIVE + name] = value.detach().cpu().contiguous()
    save_file(tensors, str(out / STATE_TENSORS))
    meta = {
        "step": step,
        "param_groups": state["param_groups"],
        "history": history,
        "config": cfg.to_dict(),
    }
    (out / STATE_JSON).write_text(json.dumps(meta, indent=2) + "\n")


def _load_state(
    out: Path, optimizer: torch.optim.Optimizer, live: SPNRefiner | None = None
) -> tuple[int, list]:
    """Restore the optimizer (and with ``live``, the trained weights under an average)."""
    meta = json.loads((out / STATE_JSON).read_text())
    tensors = load_file(str(out / STATE_TENSORS))
    slots: dict[int, dict] = {}
    weights = {}
    for key, value in tensors.items():
        if key.startswith(_LIVE):
            weights[key[len(_LIVE) :]] = value
            continue
        index, name = key.split(".", 1)
        slots.setdefault(int(index), {})[name] = value
    if live is not None:
        live.load_state_dict(weights, strict=True)
    optimizer.load_state_dict({"state": slots, "param_groups": meta["param_groups"]})
    return meta["step"], meta["history"]


def validation_sets(datasets: list[Dataset], config: TrainConfig) -> list[dict[str, np.ndarray]]:
    """Fixed validation patches per dataset: ×``val_factor`` coarse maps, no augmentation."""
    sets = []
    for i, dataset in enumerate(datasets):
        rng = np.random.default_rng([config.held_out_seed, 7919, i])
        sets.append(
            sample_batch(
                dataset, rng, config.val_patches, config.model.tile, "val", False, config.val_factor
            )
        )
    return sets


@torch.no_grad()
def evaluate(model: SPNRefiner, datasets, val_sets, device, batch_size: int = 16) -> list[dict]:
    model.eval()
    results = []
    for dataset, batch in zip(datasets, val_sets, strict=True):
        refined, coarse = PatchScores(dataset.num_classes), PatchScores(dataset.num_classes)
        for start in range(0, len(batch["image"]), batch_size):
            part = {k: v[start : start + batch_size] for k, v in batch.items()}
            t = _to_torch(part, device)
            logits = model(t["image"], t["coarse"])
            refined.update(logits.argmax(1).cpu().numpy(), part["labels"])
            coarse.update(part["coarse"].argmax(1), part["labels"])
        results.append(
            {"data": str(dataset.root), "refined": refined.summary(), "coarse": coarse.summary()}
        )
    model.train()
    return results


def _check_resume(out: Path, config: TrainConfig) -> None:
    """A resumed run must draw the batches and hold out the data the run began with."""
    if not (out / STATE_JSON).is_file():
        raise SpnrefineError("nothing to resume (no train_state.json)", out)
    saved = json.loads((out / STATE_JSON).read_text()).get("config", {})
    was_seed = saved.get("seed", config.seed)
    was_held_out = held_out_seed(was_seed, saved.get("split_seed"))
    if (was_seed, was_held_out) != (config.seed, config.held_out_seed):
        raise SpnrefineError(
            f"the run was started with --seed {was_seed} --split-seed {was_held_out}; "
            "resume it with the same",
            out,
        )
    for flag, name, default in (
        ("--ema", "ema", 0.0),
        ("--thin-weight", "thin_weight", 0.0),
        ("--coarse-source", "coarse_sources", []),
    ):
        was = saved.get(name, default)
        if was != getattr(config, name):
            raise SpnrefineError(
                f"the run was started with {flag} {was}; resume it with the same", out
            )


def _score(results: list[dict]) -> float:
    return float(np.mean([r["refined"]["score"] for r in results]))


def train(config: TrainConfig, resume: bool = False, console: Console | None = None) -> Path:
    """Train (or fine-tune, or resume) a refiner; returns the output folder."""
    console = console or Console(stderr=True)
    out = Path(config.out)
    device = torch.device(config.device)
    if resume:
        _check_resume(out, config)
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
        step, history = _load_state(out, optimizer, live)
        if average:
            average.updates = step
        console.log(f"resuming at step {step} of {config.steps}")
    saved = average.model if average else model
    out.mkdir(parents=True, exist_ok=True)
    best = max((_score(h["val"]) for h in history), default=-math.inf)

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
            config.data, config.val_fraction, config.held_out_seed, tuple(config.coarse_sources)
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
            batch = _to_torch(prepared, device)
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
                results = evaluate(saved, datasets, val_sets, device)
                elapsed = time.time() - started
                entry = {"step": step, "loss": running, "time": elapsed, "val": results}
                if average:  # how the trained weights themselves score, for comparison
                    entry["val_live"] = evaluate(model, datasets, val_sets, device)
                history.append(entry)
                save_model(saved, out)
                _save_state(out, optimizer, step, history, config, live)
                if _score(results) > best:
                    best = _score(results)
                    save_model(saved, out / "best")
                for r in results:
                    console.log(f"step {step} {Path(r['data']).name}: {_describe(r)}")
                if average:
                    live_score = _score(entry["val_live"])
                    console.log(f"step {step} score {_score(results):.4f} ({live_score:.4f} live)")
    if not (out / "best" / CONFIG_FILE).exists():  # a resumed run that validated nothing new
        save_model(saved, out / "best")
    return out


def _describe(result: dict) -> str:
    parts = []
    for key in ("iou", "miou", "boundary_f"):
        if key in result["refined"]:
            parts.append(f"{key} {result['coarse'][key]:.4f}→{result['refined'][key]:.4f}")
    return ", ".join(parts)
