"""Which backend runs a propagation: the registry of backends by name, the choice (the caller's,
else $SPNREFINE_BACKEND, else the tensors' device), and the one entry every caller goes through.

Adding a backend is a module with a ``propagate_directions``-like function and one line in
`BACKENDS`; `spnrefine bench` times every backend listed here that can run.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from spnrefine.errors import SpnrefineError
from spnrefine.propagation.reference import DIRECTIONS, check_shapes

BACKEND_ENV = "SPNREFINE_BACKEND"


@dataclass(frozen=True)
class Backend:
    """One backend: where its function lives and which device its tensors live on."""

    # "module:name" of f(x, gates, mode, directions) → B×D×C×H×W, differentiable, refusing
    # tensors it cannot take; imported on first use (the CUDA module is slow to import).
    function: str
    device: str  # the device type of its tensors ("cpu", "cuda"); bench times it there
    auto: bool = False  # whether "auto" picks it for tensors on `device`

    def load(self) -> Callable[..., torch.Tensor]:
        module, name = self.function.split(":")
        return getattr(importlib.import_module(module), name)


BACKENDS: dict[str, Backend] = {
    "cpu": Backend("spnrefine.propagation.kernels:propagate_directions_cpu", "cpu", auto=True),
    "reference": Backend("spnrefine.propagation.reference:propagate_directions_ref", "cpu"),
    "cuda": Backend("spnrefine.propagation.kernels:propagate_directions_cuda", "cuda", auto=True),
}
_FALLBACK = "cpu"  # what "auto" picks for a device no backend claims (it then refuses it)


def resolve_backend(backend: str | None, device: torch.device) -> str:
    """The backend to run on ``device``: the argument, else $SPNREFINE_BACKEND, else by device.

    ``None`` and ``"auto"`` defer to the next source; by device means the ``auto`` backend of
    the tensors' device type ("cuda" for CUDA tensors, "cpu" otherwise).
    """
    names = tuple(BACKENDS)
    if backend not in (None, "auto") and backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {names} or 'auto'")
    if backend in (None, "auto"):
        backend = os.environ.get(BACKEND_ENV, "").strip().lower() or "auto"
        if backend != "auto" and backend not in BACKENDS:
            raise SpnrefineError(
                f"{BACKEND_ENV}={backend!r} is not a backend; expected one of {names} or 'auto'"
            )
    if backend == "auto":
        claimed = (n for n, b in BACKENDS.items() if b.auto and b.device == device.type)
        return next(claimed, _FALLBACK)
    return backend


def propagate_directions(
    x: torch.Tensor,
    gates: torch.Tensor,
    mode: str = "three_way",
    directions: tuple[str, ...] = DIRECTIONS,
    backend: str | None = None,
) -> torch.Tensor:
    """Propagate x along each direction on the chosen backend; returns B×D×C×H×W."""
    directions = tuple(directions)
    check_shapes(x, gates, mode, directions)
    if x.device != gates.device:
        raise ValueError(f"x is on {x.device} but gates are on {gates.device}")
    if not (x.is_floating_point() and gates.is_floating_point()):
        raise ValueError(f"x and gates must be floating point, got {x.dtype} and {gates.dtype}")
    name = resolve_backend(backend, x.device)
    return BACKENDS[name].load()(x, gates, mode, directions)
