"""The forward propagation in plain numpy, for short CPU jobs that should not wait for numba.

Same layout and result as ``cpu.forward`` (see ``reference``): x B×C×H×W, gates B×G×D×3×H×W,
output B×D×C×H×W. A scan step is a few whole-array numpy operations over every line of every
channel at once, so it runs without compiling anything. It is 2–4× slower than the numba
kernel per pixel; `spnrefine.model.lean` uses it until a process has refined enough for the
numba kernels to repay the second or so they take to load.
"""

from __future__ import annotations

import numpy as np

# direction → (the lines are columns, the scan starts at the last line), as in cpu.SCAN
SCAN = {"lr": (True, False), "rl": (True, True), "tb": (False, False), "bt": (False, True)}


def _scan(xs: np.ndarray, gs: np.ndarray, three_way: bool) -> np.ndarray:
    """Scan along axis 0. xs: T×B×R×G×K (line t of every channel); gs: T×3×B×G×K (the
    caller's own copy: its border gates are zeroed in place) → T×B×R×G×K."""
    g0, g1, g2 = (gs[:, j, :, None] for j in range(3))  # T×B×1×G×K, broadcast over R
    if three_way:
        # A gate that points outside the line is ignored, in Σp too.
        g0[..., 0] = 0
        g2[..., -1] = 0
        keep = 1 - (g0 + g1 + g2)
    else:
        keep = 1 - g1
    hs = keep * xs
    hs[0] = xs[0]  # the first line is x itself
    tmp = np.empty_like(xs[0])
    for t in range(1, len(xs)):
        prev, cur = hs[t - 1], hs[t]
        np.multiply(g1[t], prev, out=tmp)
        cur += tmp
        if three_way:
            np.multiply(g0[t, ..., 1:], prev[..., :-1], out=tmp[..., 1:])
            cur[..., 1:] += tmp[..., 1:]
            np.multiply(g2[t, ..., :-1], prev[..., 1:], out=tmp[..., :-1])
            cur[..., :-1] += tmp[..., :-1]
    return hs


def forward(x: np.ndarray, gates: np.ndarray, directions: tuple[str, ...], three_way: bool):
    """Per-direction propagation of x (B×C×H×W) with gates (B×G×D×3×H×W): B×D×C×H×W float32."""
    b, c, h, w = x.shape
    groups = gates.shape[1]
    # channel c uses gate group c % G: c = g + G·r
    xv = x.reshape(b, c // groups, groups, h, w)
    out = np.empty((b, len(directions), c, h, w), x.dtype)
    lines_first = {}  # x with its lines first (T×B×R×G×K), one copy per axis, shared by both senses
    for d, direction in enumerate(directions):
        columns, reverse = SCAN[direction]
        if columns not in lines_first:
            order = (4, 0, 1, 2, 3) if columns else (3, 0, 1, 2, 4)
            lines_first[columns] = np.ascontiguousarray(xv.transpose(order))
        xs = lines_first[columns]
        g = gates[:, :, d]  # B×G×3×H×W → T×3×B×G×K
        # always a copy (C order), as _scan zeroes its border gates
        gs = g.transpose((4, 2, 0, 1, 3) if columns else (3, 2, 0, 1, 4)).copy()
        if reverse:  # a reversed view: each line stays contiguous
            xs, gs = xs[::-1], gs[::-1]
        hs = _scan(xs, gs, three_way)
        if reverse:
            hs = hs[::-1]
        # straight into the output (one copy): B×R×G×H×W
        target = out[:, d].reshape(b, c // groups, groups, h, w)
        target[...] = hs.transpose(1, 2, 3, 4, 0) if columns else hs.transpose(1, 2, 3, 0, 4)
    return out
