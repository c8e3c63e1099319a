"""The one error type users see: a file and what is wrong with it, printed on one line."""

from __future__ import annotations

from pathlib import Path


class SpnrefineError(Exception):
    """A problem with user input or the environment, reported as one line without a traceback."""

    def __init__(self, problem: str, path: str | Path | None = None):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


TORCH_EXTRA = "pip install 'spnrefine[torch]'"


def need_torch(feature: str) -> None:
    """Raise a one-line SpnrefineError unless torch imports: ``feature`` names what needs it.

    Refining on a CPU needs no torch; training, CUDA and the kernel benchmark do (the
    ``torch`` extra)."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        raise SpnrefineError(f"{feature} needs torch, which is not installed: {TORCH_EXTRA}")
