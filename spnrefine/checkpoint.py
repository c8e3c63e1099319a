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

from spnrefine.errors import SpnrefineError
from spnrefine.io.write import write_atomic
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
    """Load the torch model from a folder holding both files, or from a ``.safetensors`` file.

    A lone ``.safetensors`` file must have its ``config.json`` beside it. The checksum in the
    config is verified, and every tensor must match the architecture the config describes.
    """
    import torch

    from spnrefine.model import SPNRefiner

    config, state = read_checkpoint(path)
    weights = Path(path) / WEIGHTS_FILE if Path(path).is_dir() else Path(path)
    model = SPNRefiner(config)
    try:
        model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        detail = first[1].strip() if len(first) > 1 else first[0]
        raise SpnrefineError(f"weights do not match config.json: {detail}", weights) from None
    return model.eval()


def load_lean_model(path: str | Path):
    """The torch-free inference model (`spnrefine.model.lean.LeanRefiner`) of the same files,
    with the same checks."""
    from spnrefine.model.lean import LeanRefiner, WeightsMismatch

    config, state = read_checkpoint(path)
    try:
        return LeanRefiner(config, state)
    except WeightsMismatch as err:
        weights = Path(path) / WEIGHTS_FILE if Path(path).is_dir() else Path(path)
        raise SpnrefineError(f"weights do not match config.json: {err}", weights) from None
