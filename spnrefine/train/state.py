"""A run's saved state beside its checkpoints: optimizer, step, history and settings (and,
under a weight average, the trained weights), and the checks a resume makes against it."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from spnrefine.errors import SpnrefineError
from spnrefine.model import SPNRefiner
from spnrefine.train.config import TrainConfig

STATE_TENSORS = "train_state.safetensors"
STATE_JSON = "train_state.json"

_LIVE = "live."  # resume-state prefix of the trained weights when checkpoints hold an average


def save_state(
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


def load_state(
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


# Settings a resume takes from the run; changing one needs override=True (--override).
RESTORED = (
    "data",
    "steps",
    "val_every",
    "batch_size",
    "lr",
    "weight_decay",
    "warmup",
    "val_fraction",
    "val_patches",
    "val_factor",
    "init",
    "widen_to",
    "data_weights",
    "real_share",
)
# Settings no resume may change: they decide the batches, the held-out data or the loss.
FIXED = (
    ("--ema", "ema"),
    ("--thin-weight", "thin_weight"),
    ("--coarse-source", "coarse_sources"),
    ("--factors", "factors"),
    ("--clean-share", "clean_share"),
    ("--hard-share", "hard_share"),
)


def saved_config(out: Path) -> TrainConfig:
    """The settings of the run in ``out`` (from its train_state.json)."""
    if not (out / STATE_JSON).is_file():
        raise SpnrefineError("nothing to resume (no train_state.json)", out)
    return TrainConfig.from_dict(json.loads((out / STATE_JSON).read_text()).get("config", {}))


def _same(name: str, was, now) -> bool:
    if name == "data":  # folders, however they were written
        return [Path(d).resolve() for d in was] == [Path(d).resolve() for d in now]
    if name == "widen_to" and was is not None and now is not None:
        return tuple(was) == tuple(now)
    return was == now


def _flag(name: str, value) -> str:
    if name == "data":
        return " ".join(str(d) for d in value)
    shown = ",".join(map(str, value)) if isinstance(value, list | tuple) else value
    return f"--{name.replace('_', '-')} {shown}"


def check_resume(out: Path, config: TrainConfig, override: bool = False) -> None:
    """A resumed run must draw the batches and hold out the data the run began with, and keep
    its other settings unless ``override`` says to change them (the change is then recorded
    in ``config.changes``)."""
    saved = saved_config(out)
    if (saved.seed, saved.held_out_seed) != (config.seed, config.held_out_seed):
        raise SpnrefineError(
            f"the run was started with --seed {saved.seed} --split-seed {saved.held_out_seed}; "
            "resume it with the same",
            out,
        )
    for flag, name in FIXED:
        was = getattr(saved, name)
        if was != getattr(config, name):
            shown = ",".join(f"{v:g}" for v in was) if name == "factors" else was
            raise SpnrefineError(
                f"the run was started with {flag} {shown}; resume it with the same", out
            )
    changed = [n for n in RESTORED if not _same(n, getattr(saved, n), getattr(config, n))]
    if changed and not override:
        was = ", ".join(_flag(n, getattr(saved, n)) for n in changed)
        now = ", ".join(_flag(n, getattr(config, n)) for n in changed)
        raise SpnrefineError(
            f"the run was started with {was}, not {now}; resume it without those options "
            "(the run's settings are restored), or add --override to change them",
            out,
        )
    config.changes = list(saved.changes)
    if changed:
        step = json.loads((out / STATE_JSON).read_text()).get("step", 0)
        change = {n: [getattr(saved, n), getattr(config, n)] for n in changed}
        config.changes.append({"step": step, **change})
