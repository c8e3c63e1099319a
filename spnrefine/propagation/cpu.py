"""Numba CPU kernels for one propagation direction, forward and backward.

Layout (see ``reference``): x is B×C×H×W, gates B×G×D×3×H×W, the per-direction output
B×D×C×H×W; every array is C-contiguous. A direction scans *lines* (rows for tb/bt, columns
for lr/rl) one after the other; the pixels of a line are the inner loop. For tb/bt a line is
a contiguous row and is read in place. For lr/rl a line is a strided column, so the kernel
works on tiles of ``TILE`` columns: it copies a tile into a line-major buffer (each row of
the tile is a short contiguous read), scans it, and copies the result back. Each value is
read and written once from memory either way; the transpose happens in cache.

Parallelism: one ``prange`` item per (batch, gate group, chunk of the group's channels).
The channels of a chunk share their gates, so an item walks the tiles in scan order and runs
all of its channels through a tile while the tile's gates are in cache. A line cannot be
split across threads (each step needs its neighbours' previous values), so the pixels of a
line are the vectorised inner loop rather than the parallel axis. In the backward pass the
item accumulates the gate gradient of its channels in its own slice of ``dgates``; the
caller sums the chunks, so no atomics are needed.
"""

from __future__ import annotations

import contextlib

import numba
import numpy as np
from numba import njit, prange

# Lines per tile. For lr/rl each row of the map is read in runs of TILE values; shorter runs
# (32) measured 1.5x slower on the whole kernel, as the prefetcher has less to follow.
TILE = 128
# Rows moved together when a tile is transposed: a fixed count the compiler unrolls.
BLOCK = 8


@njit(cache=True)
def _chunk(item, groups, n_split, reps):
    """(b, g, s, first, stop) of work item s of group g: channels g + G*r, first <= r < stop."""
    b = item // (groups * n_split)
    rest = item % (groups * n_split)
    g = rest // n_split
    s = rest % n_split
    return b, g, s, s * reps // n_split, (s + 1) * reps // n_split


@njit(cache=True)
def _tile(block, n_lines, reverse):
    """First line and length of the ``block``-th tile in scan order."""
    if reverse:
        stop = n_lines - block * TILE
        start = max(0, stop - TILE)
    else:
        start = block * TILE
        stop = min(n_lines, start + TILE)
    return start, stop - start


@njit(cache=True)
def _load_columns(src, start, n, buf):
    """buf[i, k] = src[k, start + i] for i < n: a strided tile into line-major order."""
    size = src.shape[0]
    whole = size - size % BLOCK
    # BLOCK rows at a time: each row's read is contiguous and each write a short run.
    for k0 in range(0, whole, BLOCK):
        rows = src[k0 : k0 + BLOCK, start : start + n]
        for i in range(n):
            line = buf[i, k0 : k0 + BLOCK]
            for r in range(BLOCK):
                line[r] = rows[r, i]
    for k in range(whole, size):
        for i in range(n):
            buf[i, k] = src[k, start + i]


@njit(cache=True)
def _store_columns(buf, start, n, dst, accumulate):
    """dst[k, start + i] (+)= buf[i, k] for i < n."""
    size = dst.shape[0]
    whole = size - size % BLOCK
    for k0 in range(0, whole, BLOCK):
        rows = dst[k0 : k0 + BLOCK, start : start + n]
        for i in range(n):
            line = buf[i, k0 : k0 + BLOCK]
            if accumulate:
                for r in range(BLOCK):
                    rows[r, i] += line[r]
            else:
                for r in range(BLOCK):
                    rows[r, i] = line[r]
    for k in range(whole, size):
        for i in range(n):
            if accumulate:
                dst[k, start + i] += buf[i, k]
            else:
                dst[k, start + i] = buf[i, k]


@njit(cache=True)
def _forward_line(x, g0, g1, g2, prev, h, three_way):
    """One scan step: h = (1 - Σg) x + Σ_j g_j prev[k + j], gates outside the line ignored."""
    n = x.shape[0]
    one = x.dtype.type(1)  # a bare 1 is int64 and would promote float32 maths to float64
    if not three_way or n == 1:
        for k in range(n):
            h[k] = (one - g1[k]) * x[k] + g1[k] * prev[k]
        return
    h[0] = (one - (g1[0] + g2[0])) * x[0] + g1[0] * prev[0] + g2[0] * prev[1]
    for k in range(1, n - 1):
        h[k] = (
            (one - (g0[k] + g1[k] + g2[k])) * x[k]
            + g0[k] * prev[k - 1]
            + g1[k] * prev[k]
            + g2[k] * prev[k + 1]
        )
    e = n - 1
    h[e] = (one - (g0[e] + g1[e])) * x[e] + g0[e] * prev[e - 1] + g1[e] * prev[e]


@njit(cache=True)
def _backward_line(x, g0, g1, g2, prev, dh, dx, dg0, dg1, dg2, carry, three_way, accumulate):
    """Reverse of one scan step, given dh = dL/dh of this line (incl. what later lines sent).

    dx (+)= (1 - Σg) dh; dg_j += dh (prev[k + j] - x); carry[k] = dL/dprev[k] =
    Σ_j g_j[k - j] dh[k - j], i.e. what this line sends to the line before it.
    """
    n = x.shape[0]
    one = x.dtype.type(1)
    if not three_way or n == 1:
        for k in range(n):
            d = dh[k]
            if accumulate:
                dx[k] += (one - g1[k]) * d
            else:
                dx[k] = (one - g1[k]) * d
            dg1[k] += d * (prev[k] - x[k])
            carry[k] = g1[k] * d
        return
    e = n - 1
    d = dh[0]
    s = g1[0] + g2[0]
    if accumulate:
        dx[0] += (one - s) * d
    else:
        dx[0] = (one - s) * d
    dg1[0] += d * (prev[0] - x[0])
    dg2[0] += d * (prev[1] - x[0])
    for k in range(1, e):
        d = dh[k]
        s = g0[k] + g1[k] + g2[k]
        if accumulate:
            dx[k] += (one - s) * d
        else:
            dx[k] = (one - s) * d
        xk = x[k]
        dg0[k] += d * (prev[k - 1] - xk)
        dg1[k] += d * (prev[k] - xk)
        dg2[k] += d * (prev[k + 1] - xk)
    d = dh[e]
    s = g0[e] + g1[e]
    if accumulate:
        dx[e] += (one - s) * d
    else:
        dx[e] = (one - s) * d
    dg0[e] += d * (prev[e - 1] - x[e])
    dg1[e] += d * (prev[e] - x[e])
    # Gate j of pixel k reads prev[k + j], so prev[k] hears from g0[k+1], g1[k], g2[k-1].
    carry[0] = g1[0] * dh[0] + g0[1] * dh[1]
    for k in range(1, e):
        carry[k] = g2[k - 1] * dh[k - 1] + g1[k] * dh[k] + g0[k + 1] * dh[k + 1]
    carry[e] = g2[e - 1] * dh[e - 1] + g1[e] * dh[e]


@njit(parallel=True, cache=True)
def forward_direction(x, gates, d, columns, reverse, three_way, n_split, out):
    """Fill out[:, d] with the scan of x along direction d of gates.

    columns: the lines are columns (lr/rl), else rows (tb/bt); reverse: the scan starts at
    the last line (rl/bt); n_split: chunks per gate group (see the module docstring).
    """
    batch, channels, height, width = x.shape
    groups = gates.shape[1]
    reps = channels // groups
    n_lines, n_pixels = (width, height) if columns else (height, width)
    n_blocks = (n_lines + TILE - 1) // TILE
    first_line = n_lines - 1 if reverse else 0
    cols = TILE if columns else 0
    for item in prange(batch * groups * n_split):
        b, g, _, r0, r1 = _chunk(item, groups, n_split, reps)
        # The previous line of each channel lives in its own buffer: were it a line of the
        # array being written, LLVM could not prove the two apart and would not vectorise.
        prev = np.empty((r1 - r0, n_pixels), x.dtype)
        tile_x = np.empty((cols, n_pixels), x.dtype)
        tile_h = np.empty((cols, n_pixels), x.dtype)
        tile_g = np.empty((3, cols, n_pixels), x.dtype)
        for block in range(n_blocks):
            start, n = _tile(block, n_lines, reverse)
            if columns:
                for j in range(3):
                    _load_columns(gates[b, g, d, j], start, n, tile_g[j])
            for r in range(r0, r1):
                c = g + groups * r
                p = prev[r - r0]
                if columns:
                    _load_columns(x[b, c], start, n, tile_x)
                for i in range(n):
                    t = start + n - 1 - i if reverse else start + i
                    if columns:
                        lx, lh = tile_x[t - start], tile_h[t - start]
                        l0, l1, l2 = (
                            tile_g[0, t - start],
                            tile_g[1, t - start],
                            tile_g[2, t - start],
                        )
                    else:
                        lx, lh = x[b, c, t], out[b, d, c, t]
                        l0, l1, l2 = (
                            gates[b, g, d, 0, t],
                            gates[b, g, d, 1, t],
                            gates[b, g, d, 2, t],
                        )
                    if t == first_line:
                        lh[:] = lx
                    else:
                        _forward_line(lx, l0, l1, l2, p, lh, three_way)
                    p[:] = lh
                if columns:
                    _store_columns(tile_h, start, n, out[b, d, c], False)


@njit(parallel=True, cache=True)
def backward_direction(
    x, gates, out, dout, d, columns, reverse, three_way, n_split, accumulate, dx, dgates
):
    """Gradients of direction d: dx (+)= its share, dgates[:, :, s, d] = gate grads of chunk s.

    out and dout are the forward output and its gradient (B×D×C×H×W); dgates is
    B×G×n_split×D×3×H×W, summed over the chunk axis by the caller.
    """
    batch, channels, height, width = x.shape
    groups = gates.shape[1]
    reps = channels // groups
    n_lines, n_pixels = (width, height) if columns else (height, width)
    n_blocks = (n_lines + TILE - 1) // TILE
    first_line = n_lines - 1 if reverse else 0
    last_line = 0 if reverse else n_lines - 1
    prev_step = 1 if reverse else -1
    cols = TILE if columns else 0
    line_acc = accumulate and not columns
    for item in prange(batch * groups * n_split):
        b, g, s, r0, r1 = _chunk(item, groups, n_split, reps)
        # What each channel's next line (in scan order) sends back to the current one.
        carry = np.zeros((r1 - r0, n_pixels), x.dtype)
        dh = np.empty(n_pixels, x.dtype)
        # Three separate gate-gradient tiles, for the same reason as ``prev`` in the forward.
        dg0 = np.empty((TILE, n_pixels), x.dtype)
        dg1 = np.empty((TILE, n_pixels), x.dtype)
        dg2 = np.empty((TILE, n_pixels), x.dtype)
        tile_x = np.empty((cols, n_pixels), x.dtype)
        tile_h = np.empty((cols + 2 if columns else 0, n_pixels), x.dtype)
        tile_dout = np.empty((cols, n_pixels), x.dtype)
        tile_dx = np.empty((cols, n_pixels), x.dtype)
        tile_g = np.empty((3, cols, n_pixels), x.dtype)
        # The backward pass runs the scan backwards, so its tiles come in the other order.
        for block in range(n_blocks):
            start, n = _tile(block, n_lines, not reverse)
            dg0[:] = 0
            dg1[:] = 0
            dg2[:] = 0
            # Columns: the tile's h plus one line either side (the line before its edge).
            h_lo = max(start - 1, 0)
            h_n = min(start + n + 1, n_lines) - h_lo
            if columns:
                for j in range(3):
                    _load_columns(gates[b, g, d, j], start, n, tile_g[j])
            for r in range(r0, r1):
                c = g + groups * r
                cr = carry[r - r0]
                if columns:
                    _load_columns(x[b, c], start, n, tile_x)
                    _load_columns(out[b, d, c], h_lo, h_n, tile_h)
                    _load_columns(dout[b, d, c], start, n, tile_dout)
                for i in range(n):
                    t = start + i if reverse else start + n - 1 - i
                    it = t - start
                    if columns:
                        lx, ldo, ldx = tile_x[it], tile_dout[it], tile_dx[it]
                        l0, l1, l2 = tile_g[0, it], tile_g[1, it], tile_g[2, it]
                        lp = tile_h[min(max(t + prev_step - h_lo, 0), h_n - 1)]
                    else:
                        lx, ldo, ldx = x[b, c, t], dout[b, d, c, t], dx[b, c, t]
                        l0, l1, l2 = (
                            gates[b, g, d, 0, t],
                            gates[b, g, d, 1, t],
                            gates[b, g, d, 2, t],
                        )
                        lp = out[b, d, c, min(max(t + prev_step, 0), n_lines - 1)]
                    if t == last_line:
                        dh[:] = ldo
                    else:
                        for k in range(n_pixels):
                            dh[k] = ldo[k] + cr[k]
                    if t != first_line:
                        _backward_line(
                            lx,
                            l0,
                            l1,
                            l2,
                            lp,
                            dh,
                            ldx,
                            dg0[it],
                            dg1[it],
                            dg2[it],
                            cr,
                            three_way,
                            line_acc,
                        )
                    elif line_acc:
                        ldx += dh
                    else:
                        ldx[:] = dh
                if columns:
                    _store_columns(tile_dx, start, n, dx[b, c], accumulate)
            for j, dgj in enumerate((dg0, dg1, dg2)):
                if columns:
                    _store_columns(dgj, start, n, dgates[b, g, s, d, j], False)
                else:
                    dgates[b, g, s, d, j, start : start + n] = dgj[:n]


# direction -> (lines are columns, scan runs from the last line)
SCAN = {"lr": (True, False), "rl": (True, True), "tb": (False, False), "bt": (False, True)}


# Values per thread below which a map is propagated on fewer threads. Entering a parallel
# region costs microseconds on idle cores but milliseconds when the cores are shared, which
# would swamp the propagation of a small map.
MIN_VALUES_PER_THREAD = 1 << 16


@contextlib.contextmanager
def _plan(x: np.ndarray, groups: int):
    """Run the block on as many threads as the map is worth; yield the chunks per gate group."""
    batch, channels = x.shape[:2]
    previous = numba.get_num_threads()
    threads = max(1, min(previous, x.size // MIN_VALUES_PER_THREAD))
    # Enough work items to balance the threads, but at most one per channel.
    n_split = max(1, min(channels // groups, -(-4 * threads // (batch * groups))))
    if threads == previous:
        yield n_split
        return
    numba.set_num_threads(threads)  # thread-local: other threads' calls are unaffected
    try:
        yield n_split
    finally:
        numba.set_num_threads(previous)


def forward(x: np.ndarray, gates: np.ndarray, directions: tuple[str, ...], three_way: bool):
    """Per-direction propagation of C-contiguous x (B×C×H×W), gates (B×G×D×3×H×W): B×D×C×H×W."""
    out = np.empty((x.shape[0], len(directions)) + x.shape[1:], x.dtype)
    with _plan(x, gates.shape[1]) as n_split:
        for d, direction in enumerate(directions):
            columns, reverse = SCAN[direction]
            forward_direction(x, gates, d, columns, reverse, three_way, n_split, out)
    return out


def backward(
    x: np.ndarray,
    gates: np.ndarray,
    out: np.ndarray,
    dout: np.ndarray,
    directions: tuple[str, ...],
    three_way: bool,
):
    """Gradients (dx, dgates) of the per-direction output; all inputs C-contiguous."""
    batch, groups = x.shape[0], gates.shape[1]
    dx = np.empty_like(x)
    with _plan(x, groups) as n_split:
        dgates = np.empty((batch, groups, n_split) + gates.shape[2:], x.dtype)
        for d, direction in enumerate(directions):
            columns, reverse = SCAN[direction]
            backward_direction(
                x, gates, out, dout, d, columns, reverse, three_way, n_split, d > 0, dx, dgates
            )
    return dx, dgates[:, :, 0] if n_split == 1 else dgates.sum(2)
