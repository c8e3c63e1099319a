"""Gate normalisation that enforces the stability condition Σ_j |p_j| ≤ 1 (paper Theorem 3).

We divide by ``max(Σ|p|, 1)`` (the NLSPN form) rather than by ``Σ|p|`` (the authors'
release). Dividing by ``Σ|p|`` forces the sum to exactly 1, which makes the input weight
``1 - Σ p`` zero wherever the gates are positive: the coarse map would then enter only at the
first scan line and the net could not choose how much of it to keep at a pixel. The bounded
form keeps every propagation stable and leaves that choice to the guidance network.

Two implementations of the same arithmetic: torch (differentiable, three passes over the
gates) and a numba kernel (model/kernels.py, which the torch-free `LeanRefiner` runs too)
that does it in place in one pass, for CPU inference, where that
memory traffic shows. `normalize_gates` picks between them.
"""

from __future__ import annotations

import torch

from spnrefine.model.kernels import normalize_three_way


def normalize_gates(
    raw: torch.Tensor, mode: str = "three_way", *, may_overwrite: bool = False
) -> torch.Tensor:
    """Scale raw gates (…×3×H×W, neighbour axis third from last) so that Σ|p| ≤ 1 per pixel.

    In one-way mode only the middle gate is kept (the side gates are zeroed) and bounded to
    ``|p| ≤ 1``. With ``may_overwrite`` (the caller owns ``raw``), a contiguous float32 CPU
    tensor that needs no gradient is normalised in place by the one-pass kernel.
    """
    fast = not torch.is_grad_enabled() and raw.device.type == "cpu" and raw.dtype == torch.float32
    if may_overwrite and fast and mode == "three_way" and raw.is_contiguous():
        return normalize_gates_inplace(raw)
    if mode == "one_way":
        middle = raw[..., 1:2, :, :]
        middle = middle / torch.clamp(middle.abs(), min=1.0)
        zeros = torch.zeros_like(middle)
        return torch.cat([zeros, middle, zeros], dim=-3)
    if mode != "three_way":
        raise ValueError(f"unknown mode {mode!r}")
    total = raw.abs().sum(dim=-3, keepdim=True)
    return raw / torch.clamp(total, min=1.0)


def normalize_gates_inplace(raw: torch.Tensor) -> torch.Tensor:
    """Three-way normalisation of a contiguous float32 CPU tensor …×3×H×W, in place (numba)."""
    h, w = raw.shape[-2:]
    normalize_three_way(raw.numpy().reshape(-1, 3, h * w))
    return raw
