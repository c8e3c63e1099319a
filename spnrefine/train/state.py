"""A run's saved state beside its checkpoints: optimizer, step, history and settings (and,
under a weight average, the trained weights), and the checks a resume makes against it."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from spnrefine.errors import SpnrefineError
from spnrefine.model import SPNRefiner
from spnrefine.train.config import TrainConfig, held_out_seed

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


def check_resume(out: Path, config: TrainConfig) -> None:
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
