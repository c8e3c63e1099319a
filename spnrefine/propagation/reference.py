"""The specification of linear spatial propagation (SPN paper Eq. 1, 9, 10), in plain torch.

Slow but readable and differentiable by autograd; the numba kernels are tested against it.

Layout conventions shared by every backend:

- ``x``: B×C×H×W map to propagate.
- ``gates``: B×G×D×3×H×W, with ``C % G == 0``; channel ``c`` uses gate group ``c % G``
  (``G == 1``: one set shared by all channels; ``G == C``: per-channel gates).
- ``D`` indexes the directions in the order given by ``directions``; the 3 indexes the
  neighbour offset ``j ∈ {-1, 0, +1}`` along the axis perpendicular to the scan, in the
  previous scan line. The gate of a connection is stored at the downstream pixel.
- Directions: ``"lr"`` scans columns left→right (pixel (h, w) reads h[h+j, w-1]);
  ``"rl"`` right→left (reads h[h+j, w+1]); ``"tb"`` rows top→bottom (reads h[h-1, w+j]);
  ``"bt"`` bottom→top (reads h[h+1, w+j]).
- Recurrence: ``h = (1 - Σ_j p_j) * x + Σ_j p_j * h_prev[k + j]``; the first scan line is
  ``h = x``. A gate that points outside the map is ignored, in the neighbour term and in
  ``Σ p`` alike (its gradient is zero), so every row of the affinity sums to one and a
  constant map stays constant up to the borders (paper Theorem 1).
- One-way mode uses only the middle gate (j = 0).
"""

from __future__ import annotations

import torch

from spnrefine.propagation.layout import DIRECTIONS, MODES


def _to_lr(t: torch.Tensor, direction: str) -> torch.Tensor:
    """View a ...×H×W tensor so that ``direction`` becomes a left→right scan over the last axis."""
    if direction == "lr":
        return t
    if direction == "rl":
        return t.flip(-1)
    if direction == "tb":
        return t.transpose(-1, -2)
    if direction == "bt":
        return t.flip(-2).transpose(-1, -2)
    raise ValueError(f"unknown direction {direction!r}; expected one of {DIRECTIONS}")


def _from_lr(t: torch.Tensor, direction: str) -> torch.Tensor:
    if direction in ("lr", "rl"):
        return _to_lr(t, direction)
    if direction == "tb":
        return t.transpose(-1, -2)
    return t.transpose(-1, -2).flip(-2)


def _scan_lr(x: torch.Tensor, g: torch.Tensor, mode: str) -> torch.Tensor:
    """Left→right scan of x (B×C×K×T) with gates g (B×C×3×K×T); K is the parallel axis."""
    keep = torch.ones(3, x.shape[-2], 1, dtype=g.dtype, device=g.device)
    keep[0, 0] = 0  # j = -1 from the first row points outside
    keep[2, -1] = 0  # j = +1 from the last row points outside
    if mode == "one_way":
        keep[0] = 0
        keep[2] = 0
    g = g * keep
    columns = [x[..., 0]]
    for t in range(1, x.shape[-1]):
        prev = columns[-1]
        # prev shifted so that index k holds prev[k + j]; zero beyond the border.
        up = torch.nn.functional.pad(prev[..., :-1], (1, 0))  # j = -1: prev[k-1]
        down = torch.nn.functional.pad(prev[..., 1:], (0, 1))  # j = +1: prev[k+1]
        gt = g[..., t]
        columns.append(
            (1 - gt.sum(2)) * x[..., t] + gt[:, :, 0] * up + gt[:, :, 1] * prev + gt[:, :, 2] * down
        )
    return torch.stack(columns, -1)


def propagate_directions_ref(
    x: torch.Tensor,
    gates: torch.Tensor,
    mode: str = "three_way",
    directions: tuple[str, ...] = DIRECTIONS,
) -> torch.Tensor:
    """Propagate ``x`` along each direction independently; returns B×D×C×H×W."""
    check_shapes(x, gates, mode, directions)
    groups = gates.shape[1]
    repeat = x.shape[1] // groups
    outputs = []
    for d, direction in enumerate(directions):
        g = gates[:, :, d].repeat(1, repeat, 1, 1, 1)  # channel c -> group c % G
        xl = _to_lr(x, direction)
        gl = _to_lr(g, direction)
        outputs.append(_from_lr(_scan_lr(xl, gl, mode), direction))
    return torch.stack(outputs, 1)


def propagate_ref(
    x: torch.Tensor,
    gates: torch.Tensor,
    mode: str = "three_way",
    directions: tuple[str, ...] = DIRECTIONS,
    merge: str | None = "max",
) -> torch.Tensor:
    """Reference propagation; ``merge="max"`` gives B×C×H×W, ``merge=None`` gives B×D×C×H×W."""
    per_direction = propagate_directions_ref(x, gates, mode, directions)
    return merge_directions(per_direction, merge)


def merge_directions(per_direction: torch.Tensor, merge: str | None) -> torch.Tensor:
    """Merge B×D×C×H×W per-direction outputs: node-wise max (the paper) or none."""
    if merge is None:
        return per_direction
    if merge == "max":
        return per_direction.amax(1)
    raise ValueError(f"unknown merge {merge!r}; expected 'max' or None")


def check_shapes(x: torch.Tensor, gates: torch.Tensor, mode: str, directions: tuple[str, ...]):
    """Raise ValueError unless x, gates, mode and directions fit together."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    for direction in directions:
        if direction not in DIRECTIONS:
            raise ValueError(f"unknown direction {direction!r}; expected one of {DIRECTIONS}")
    if x.dim() != 4:
        raise ValueError(f"x must be B×C×H×W, got shape {tuple(x.shape)}")
    b, c, h, w = x.shape
    if gates.dim() != 6 or gates.shape[0] != b or gates.shape[2:] != (len(directions), 3, h, w):
        raise ValueError(
            f"gates must be B×G×{len(directions)}×3×H×W matching x {tuple(x.shape)}, "
            f"got {tuple(gates.shape)}"
        )
    if c % gates.shape[1] != 0:
        raise ValueError(f"gate groups {gates.shape[1]} must divide channels {c}")
