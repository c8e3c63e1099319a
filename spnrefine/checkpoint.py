"""A model on disk: ``model.safetensors`` + ``config.json`` side by side, checksummed.

Reading gives numpy arrays (no torch needed to refine on a CPU); torch is imported by the
functions that build or save the torch model.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from safetensors import SafetensorError

from spnrefine.errors import SpnrefineError, need_torch
from spnrefine.io.write import write_atomic
from spnrefine.model.architectures import build_lean, check_architecture
from spnrefine.model.config import ModelConfig

if TYPE_CHECKING:
    from spnrefine.model import SPNRefiner

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
# Stored in config.json beside the hyper-parameters; checked on every load.
CHECKSUM_KEY = "weights_sha256"


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_model(model: SPNRefiner, folder: str | Path) -> Path:
    """Write the model's weights and config into ``folder`` (created if needed)."""
    from safetensors.torch import save

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    weights = folder / WEIGHTS_FILE
    write_atomic(weights, save(state, metadata={"format": "pt"}), overwrite=True)
    config = json.loads(model.config.to_json())
    config[CHECKSUM_KEY] = sha256_file(weights)
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    write_atomic(folder / CONFIG_FILE, text.encode(), overwrite=True)
    return folder


def read_checkpoint(path: str | Path) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    """The config and the tensors (numpy) of a folder holding both files, or of a
    ``.safetensors`` file with its ``config.json`` beside it; the checksum in the config is
    verified."""
    path = Path(path)
    weights = path / WEIGHTS_FILE if path.is_dir() else path
    config_path = weights.parent / CONFIG_FILE
    if not weights.is_file():
        raise SpnrefineError("no model.safetensors found", weights)
    if weights.suffix != ".safetensors":
        raise SpnrefineError("weights must be a .safetensors file (pickles are not loaded)", path)
    if not config_path.is_file():
        raise SpnrefineError("config.json is missing beside the weights", config_path)
    try:
        data = json.loads(config_path.read_text())
        expected = data.pop(CHECKSUM_KEY, None)
        config = ModelConfig.from_dict(data)
        check_architecture(config)
    except (ValueError, TypeError) as err:
        raise SpnrefineError(f"invalid model config: {err}", config_path) from None
    if expected is not None and sha256_file(weights) != expected:
        raise SpnrefineError("weights fail their checksum (file corrupt or replaced)", weights)
    from safetensors.numpy import load_file

    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as err:
        raise SpnrefineError(f"unreadable safetensors file: {err}", weights) from None
    return config, state


def load_model(path: str | Path) -> SPNRefiner:
    """Load the torch model (of the architecture config.json names) from a folder holding both
    files, or from a ``.safetensors`` file.

    A lone ``.safetensors`` file must have its ``config.json`` beside it. The checksum in the
    config is verified, and every tensor must match the architecture the config describes.
    """
    need_torch("loading the torch model")
    import torch

    from spnrefine.model.architectures import build_model

    config, state = read_checkpoint(path)
    weights = Path(path) / WEIGHTS_FILE if Path(path).is_dir() else Path(path)
    model = build_model(config)
    problem = _mismatch(model, state)
    if problem:
        raise SpnrefineError(f"weights do not match config.json: {problem}", weights)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    return model.eval()


def load_lean_model(path: str | Path):
    """The torch-free inference model (`spnrefine.model.architectures.build_lean`, e.g.
    `spnrefine.model.lean.LeanRefiner`) of the same files, with the same checks; the torch
    model where the architecture has no torch-free twin."""
    from spnrefine.model.lean import WeightsMismatch

    config, state = read_checkpoint(path)
    weights = Path(path) / WEIGHTS_FILE if Path(path).is_dir() else Path(path)
    try:
        lean = build_lean(config, state)
    except WeightsMismatch as err:
        raise SpnrefineError(f"weights do not match config.json: {err}", weights) from None
    return lean if lean is not None else load_model(path)


def _mismatch(model: SPNRefiner, state: dict) -> str | None:
    """One short line on how ``state`` differs from ``model``'s tensors, or None."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} is {tuple(state[k].shape)}, not {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    parts = []
    for what, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            more = f" and {len(keys) - 1} more" if len(keys) > 1 else ""
            parts.append(
                f"{len(keys)} {what} tensor{'s' if len(keys) > 1 else ''} ({keys[0]}{more})"
            )
    if shapes:
        more = f" and {len(shapes) - 1} more" if len(shapes) > 1 else ""
        parts.append(f"{shapes[0]}{more}")
    return "; ".join(parts) or None
