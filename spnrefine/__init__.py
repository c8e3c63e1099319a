"""spnrefine: refine coarse segmentation masks with Spatial Propagation Networks."""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"
__all__ = ["RefineResult", "Refiner", "__version__"]

if TYPE_CHECKING:
    from spnrefine.api import Refiner, RefineResult


def __getattr__(name: str):
    # Lazy, so that `import spnrefine` (and the CLI's --help) does not pay for torch.
    if name in ("Refiner", "RefineResult"):
        from spnrefine import api

        return getattr(api, name)
    raise AttributeError(f"module 'spnrefine' has no attribute {name!r}")
