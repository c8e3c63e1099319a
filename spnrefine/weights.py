"""Which weights to load: a spec (the bundled default, a local folder or file, or
``hf-hub:owner/name[@revision]``) resolved in one place, and what was loaded, for display."""

from __future__ import annotations

import json
import os
import sys
import sysconfig
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from spnrefine.checkpoint import (
    CHECKSUM_KEY,
    CONFIG_FILE,
    WEIGHTS_FILE,
    load_lean_model,
    load_model,
    sha256_file,
)
from spnrefine.errors import SpnrefineError

if TYPE_CHECKING:
    from spnrefine.model import SPNRefiner
    from spnrefine.model.lean import LeanRefiner

ENV_VAR = "SPNREFINE_WEIGHTS"
HUB_PREFIX = "hf-hub:"
DEFAULT_SPEC = "default"
# Where `[tool.setuptools.data-files]` in pyproject.toml puts the weights, below a data root.
_INSTALLED = Path("share", "spnrefine", "weights")


@dataclass(frozen=True)
class WeightsSource:
    """Where a spec points: the folder or file to load and how it was found."""

    spec: str  # what was asked for, for messages
    path: Path  # a folder holding both files, or a .safetensors file with config.json beside it
    source: str  # "bundled", "local" or "hf-hub"
    revision: str | None = None  # the commit of a Hub snapshot


@dataclass(frozen=True)
class WeightsInfo:
    """What `spnrefine weights` shows about a loaded model."""

    name: str
    spec: str
    source: str
    path: str
    revision: str | None
    sha256: str
    parameters: int
    config: dict

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def resolve_weights(spec: str | Path | None = None) -> WeightsSource:
    """Find the weights a spec names; `None` means $SPNREFINE_WEIGHTS, else the bundled default.

    Nothing is loaded here, but a Hub spec is downloaded into the Hugging Face cache (or found
    there when offline).
    """
    if spec is None and os.environ.get(ENV_VAR):
        where = resolve_weights(os.environ[ENV_VAR])
        return replace(where, source=f"{where.source} (from ${ENV_VAR})")
    text = DEFAULT_SPEC if spec is None else str(spec)
    if text == DEFAULT_SPEC:
        return WeightsSource(text, bundled_weights_folder(), "bundled")
    if text.startswith(HUB_PREFIX):
        return _from_hub(text)
    path = Path(text).expanduser()
    if not path.exists():
        raise SpnrefineError(
            "weights not found: expected a folder with model.safetensors and config.json, a "
            ".safetensors file, 'default', or hf-hub:owner/name[@revision]",
            text,
        )
    return WeightsSource(text, path, "local")


def bundled_weights_folder() -> Path:
    """The default weights: `weights/` beside the package in a source checkout or editable
    install, else where a wheel install put its data files."""
    candidates = [Path(__file__).resolve().parents[1] / "weights"]
    data_roots = [sysconfig.get_path("data"), sys.prefix]
    user_scheme = f"{os.name}_user"
    if user_scheme in sysconfig.get_scheme_names():
        data_roots.append(sysconfig.get_path("data", user_scheme))
    candidates += [Path(root) / _INSTALLED for root in data_roots]
    for folder in candidates:
        if (folder / WEIGHTS_FILE).is_file():
            return folder
    raise SpnrefineError(
        "the bundled default weights are not installed (looked in "
        f"{', '.join(str(c) for c in dict.fromkeys(candidates))}); pass --weights",
        DEFAULT_SPEC,
    )


def _from_hub(spec: str) -> WeightsSource:
    repo_id, _, revision = spec.removeprefix(HUB_PREFIX).partition("@")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise SpnrefineError("expected hf-hub:owner/name[@revision]", spec)
    # Imported here: loading local weights should not pay for huggingface_hub's import.
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        folder = snapshot_download(
            repo_id, revision=revision or None, allow_patterns=[CONFIG_FILE, WEIGHTS_FILE]
        )
    except LocalEntryNotFoundError:
        raise SpnrefineError(
            "not in the Hugging Face cache, and the Hub cannot be reached (offline or "
            "HF_HUB_OFFLINE=1); fetch it once while online",
            spec,
        ) from None
    except RevisionNotFoundError:
        raise SpnrefineError(f"the Hub has no revision {revision!r} of {repo_id}", spec) from None
    except RepositoryNotFoundError:
        raise SpnrefineError("no such model on the Hub (or it is private)", spec) from None
    except (HFValidationError, OSError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SpnrefineError(f"cannot fetch the weights: {first_line}", spec) from None
    path = Path(folder)
    # A cache snapshot folder is named after its commit.
    return WeightsSource(spec, path, "hf-hub", revision=path.name)


def load_weights(
    spec: str | Path | None = None, *, lean: bool = False
) -> tuple[SPNRefiner | LeanRefiner, WeightsInfo]:
    """Resolve `spec`, load the model (checksum and architecture checked) and describe it.

    `lean`: the torch-free inference model (`spnrefine.model.lean`) instead of the torch one.
    """
    where = resolve_weights(spec)
    model = load_lean_model(where.path) if lean else load_model(where.path)
    weights = where.path / WEIGHTS_FILE if where.path.is_dir() else where.path
    config = json.loads((weights.parent / CONFIG_FILE).read_text())
    config.pop(CHECKSUM_KEY, None)
    info = WeightsInfo(
        name=model.config.name,
        spec=where.spec,
        source=where.source,
        path=str(weights.parent.resolve()),
        revision=where.revision,
        sha256=sha256_file(weights),
        parameters=model.num_parameters(),
        config=config,
    )
    return model, info
