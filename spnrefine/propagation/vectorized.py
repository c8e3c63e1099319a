"""The forward propagation in plain numpy, for short CPU jobs that should not wait for numba.

Same layout and result as ``cpu.forward`` (see ``reference``): x B×C×H×W, gates B×G×D×3×H×W,
output B×D×C×H×W. A scan step is a few whole-array numpy operations over every line of every
channel at once, so it runs without compiling anything. It is about 5× slower than the numba
kernel on two threads (4 tiles of 128×128 with 8 channels: 7.7–8.6 ms a tile against 1.5–1.6
ms); `spnrefine.model.lean` uses it until a process has refined enough for the numba kernels
to repay the second or so they take to load.
"""

from __future__ import annotations

import numpy as np

# direction → (the lines are columns, the scan starts at the last line), as in cpu.SCAN
SCAN = {"lr": (True, False), "rl": (True, True), "tb": (False, False), "bt": (False, True)}


def _transposed_planes(a: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """a (…×H×W) with each plane transposed: …×W×H, into ``out`` (C-contiguous) when given.
    OpenCV's transpose walks a plane in blocks: twice as fast as numpy's copy of a swapped
    view, and each plane of `a` need only be contiguous itself."""
    import cv2

    if out is None:
        out = np.empty(a.shape[:-2] + (a.shape[-1], a.shape[-2]), a.dtype)
    for index in np.ndindex(a.shape[:-2]):
        cv2.transpose(a[index], out[index])
    return out


def _scan(xs: np.ndarray, gs: np.ndarray, three_way: bool) -> np.ndarray:
    """Scan along axis 0. xs: T×R×N (line t of the R channels that share their gates, the
    lines of every tile and gate group flattened into N); gs: T×3×N, the gates, those that
    point outside a line zero → T×R×N.

    A neighbour across the end of a line (the next line's first pixel, in the flat order)
    has a gate of zero, so the flat shift by one is exact; Σp leaves such gates out too."""
    g0, g1, g2 = gs[:, 0], gs[:, 1], gs[:, 2]  # T×N
    keep = 1 - (g0 + g1 + g2) if three_way else 1 - g1
    hs = keep[:, None] * xs
    hs[0] = xs[0]  # the first line is x itself
    tmp = np.empty_like(xs[0])
    for t in range(1, len(xs)):
        prev, cur = hs[t - 1], hs[t]
        np.multiply(g1[t], prev, out=tmp)
        cur += tmp
        if three_way:
            np.multiply(g0[t, 1:], prev[:, :-1], out=tmp[:, 1:])
            cur[:, 1:] += tmp[:, 1:]
            np.multiply(g2[t, :-1], prev[:, 1:], out=tmp[:, :-1])
            cur[:, :-1] += tmp[:, :-1]
    return hs


def forward(x: np.ndarray, gates: np.ndarray, directions: tuple[str, ...], three_way: bool):
    """Per-direction propagation of x (B×C×H×W) with gates (B×G×D×3×H×W): B×D×C×H×W float32.

    The directions along one axis (lr and rl, tb and bt) are scanned together, the second
    one's lines reversed and set beside the first's: half as many numpy operations, each on
    twice the data. For the column directions the planes are transposed first, so that a
    line is a row."""
    b, c, h, w = x.shape
    groups, per_group = gates.shape[1], c // gates.shape[1]
    # channel c uses gate group c % G: c = g + G·r
    xv = x.reshape(b, per_group, groups, h, w)
    out = np.empty((b, len(directions), c, h, w), x.dtype)
    for columns in (True, False):
        along = [d for d, name in enumerate(directions) if SCAN[name][0] == columns]
        if not along:
            continue
        # the lines of a reversed direction (rl, bt) are scanned from the last one
        senses = [slice(None, None, -1) if SCAN[directions[d]][1] else slice(None) for d in along]
        rows = _transposed_planes(xv) if columns else xv  # B×R×G×T×K: lines are rows
        lines, k = rows.shape[-2:]
        # Lines first, the tiles of each direction side by side: T×R×(D'·B)×G×K and, for the
        # gates, T×3×(D'·B)×G×K.
        xs = np.empty((lines, per_group, len(along) * b, groups, k), x.dtype)
        gs = np.empty((lines, 3, len(along) * b, groups, k), gates.dtype)
        for i, (d, sense) in enumerate(zip(along, senses, strict=True)):
            part = slice(i * b, (i + 1) * b)
            xs[:, :, part] = rows.transpose(3, 1, 0, 2, 4)[sense]
            plane = _transposed_planes(gates[:, :, d]) if columns else gates[:, :, d]
            gs[:, :, part] = plane.transpose(3, 2, 0, 1, 4)[sense]  # from B×G×3×T×K
        if three_way:  # the gates that point outside a line
            gs[:, 0, ..., 0] = 0
            gs[:, 2, ..., -1] = 0
        hs = _scan(xs.reshape(lines, per_group, -1), gs.reshape(lines, 3, -1), three_way)
        hs = hs.reshape(xs.shape)
        for i, (d, sense) in enumerate(zip(along, senses, strict=True)):
            part = hs[sense, :, i * b : (i + 1) * b].transpose(2, 1, 3, 0, 4)  # B×R×G×T×K
            target = out[:, d].reshape(b, per_group, groups, h, w)
            if columns:  # lines back to columns
                _transposed_planes(np.ascontiguousarray(part), target)
            else:
                target[...] = part
    return out
