"""The registry of refiners we compare against, by the name `--method` gives them.

A baseline is (RGB image H×W×3 uint8, C×H×W probabilities) → refined C×H×W probabilities,
with its default settings. Adding one is a module here and one line in `BASELINES`; the
CLI's `--method` choices, the API's check, `spnrefine bench` and its table all read the
names from there. The functions are imported on first use, so listing the names is cheap.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from spnrefine.baselines.crf import MISSING as CRF_MISSING
from spnrefine.baselines.crf import crf_available
from spnrefine.errors import SpnrefineError

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class Baseline:
    """One baseline: where its function lives, what it is, and what it needs installed."""

    function: str  # "module:name" of the refine function, imported on first use
    summary: str  # what it is, for --help
    check: Callable[[], bool] | None = None  # whether what it needs is installed
    missing: str = ""  # what to say when it is not

    def available(self) -> bool:
        return self.check is None or self.check()

    def load(self) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
        module, name = self.function.split(":")
        return getattr(importlib.import_module(module), name)

    def __call__(self, image: np.ndarray, probs: np.ndarray) -> np.ndarray:
        return self.load()(image, probs)


BASELINES: dict[str, Baseline] = {
    "bilinear": Baseline(
        "spnrefine.baselines.bilinear:refine_bilinear", "the upsampled coarse map"
    ),
    "guided": Baseline(
        "spnrefine.baselines.guided:refine_guided", "guided filter, the image as guide"
    ),
    "crf": Baseline(
        "spnrefine.baselines.crf:refine_crf",
        "dense CRF",
        check=crf_available,
        missing=CRF_MISSING,
    ),
}


def check_baseline(name: str) -> Baseline:
    """The baseline called ``name``, refused with a one-line error where it cannot run here."""
    baseline = BASELINES[name]
    if not baseline.available():
        raise SpnrefineError(f"--method {name} {baseline.missing}")
    return baseline


def available_baselines() -> list[str]:
    """The names of the baselines that can run on this machine."""
    return [name for name, baseline in BASELINES.items() if baseline.available()]


def describe_baselines() -> str:
    """One phrase per baseline, for --help: ``name (summary; missing)``."""
    return ", ".join(
        f"{name} ({b.summary}{'; ' + b.missing if b.missing else ''})"
        for name, b in BASELINES.items()
    )


__all__ = ["BASELINES", "Baseline", "available_baselines", "check_baseline", "describe_baselines"]
