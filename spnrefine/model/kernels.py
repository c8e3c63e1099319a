"""Numba kernels of the refiner's inference that need no torch: gate normalisation, the
per-class embedding, the propagation (`spnrefine.propagation.cpu`) and the per-class tail
(learned merge of the four directions and readout MLP), each one pass per pixel.

Both the torch path (`spnrefine.model.fast`) and the torch-free path (`spnrefine.model.lean`)
run them, so the two compute the same thing in the same order. `kernels_numpy` holds the same
functions in plain numpy (no compiling, slower per pixel), for short jobs.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from spnrefine.model.config import LOG_EPS
from spnrefine.propagation.cpu import forward as propagate  # noqa: F401 (the kernel set's)


@njit(parallel=True, cache=True)
def normalize_three_way(raw):
    """In place: raw (N×3×P) scaled so that Σ|p| ≤ 1 at every pixel (divide by max(Σ|p|, 1))."""
    n, _, pixels = raw.shape
    for i in prange(n):
        a, b, c = raw[i, 0], raw[i, 1], raw[i, 2]
        for k in range(pixels):
            # No branch, so the loop vectorises (1.5× faster); a scale of exactly 1 leaves a
            # value as it is, so the result is the same to the bit.
            scale = 1.0 / max(abs(a[k]) + abs(b[k]) + abs(c[k]), 1.0)
            a[k] *= scale
            b[k] *= scale
            c[k] *= scale


@njit(parallel=True, cache=True)
def tail(out, cue, merge_w, merge_b, w1, b1, w2, b2, elu, logits):
    """Per class and pixel: act(merge of the four directions) → readout MLP → one logit.

    out: B×D×(C·k)×H×W propagated channels; cue: (B·C)×2×H×W; merge_w: k×(D·k) with input
    index d·k + j; w1: R×(k+2); w2: R; logits: B×C×H×W. One work item is one row of one class;
    the pixels of the row are the inner loop. The readout's sum is taken in float64 and
    rounded once per term (as numba's type unification first made it); every loop is a plain
    loop over the row with no call in it, so that it vectorises (1.8× faster than with an
    inlined activation and slice fills, to the same bits).
    """
    b_n, d_n, ck, h, w = out.shape
    k = merge_w.shape[0]
    c_n = ck // k
    r_n = w1.shape[0]
    for item in prange(b_n * c_n * h):
        b = item // (c_n * h)
        c = (item // h) % c_n
        y = item % h
        merged = np.empty((k + 2, w), np.float32)
        hidden = np.empty(w, np.float32)
        row = logits[b, c, y]
        for o in range(k):
            acc = merged[o]
            bias = merge_b[o]
            for x in range(w):
                acc[x] = bias
            for d in range(d_n):
                for j in range(k):
                    weight = merge_w[o, d * k + j]
                    src = out[b, d, c * k + j, y]
                    for x in range(w):
                        acc[x] += weight * src[x]
            if elu:
                for x in range(w):
                    v = acc[x]
                    if v <= 0.0:
                        acc[x] = math.expm1(v)
            else:
                for x in range(w):
                    v = acc[x]
                    acc[x] = v if v > 0.0 else np.float32(0.0)
        merged[k] = cue[b * c_n + c, 0, y]
        merged[k + 1] = cue[b * c_n + c, 1, y]
        start = np.float64(b2)
        for x in range(w):
            row[x] = start
        for r in range(r_n):
            bias = b1[r]
            for x in range(w):
                hidden[x] = bias
            for i in range(k + 2):
                weight = w1[r, i]
                src = merged[i]
                for x in range(w):
                    hidden[x] += weight * src[x]
            scale = np.float64(w2[r])
            if elu:
                for x in range(w):
                    v = hidden[x]
                    a = np.float64(v) if v > 0.0 else math.expm1(v)
                    row[x] = np.float64(row[x]) + scale * a
            else:
                for x in range(w):
                    v = hidden[x]
                    a = np.float64(v) if v > 0.0 else 0.0
                    row[x] = np.float64(row[x]) + scale * a


@njit(parallel=True, cache=True)
def embed(probs, weight, bias, cue, hidden):
    """Per class map: cue = (p, log max(p, eps)); hidden = 3×3 conv of the cue (zero padding).

    probs: M×H×W (M = tiles × classes); weight: K×2×3×3; cue: M×2×H×W; hidden: M×K×H×W.
    """
    m_n, h, w = probs.shape
    k_n = weight.shape[0]
    eps = np.float32(LOG_EPS)
    for m in prange(m_n):
        for y in range(h):
            for x in range(w):
                p = probs[m, y, x]
                cue[m, 0, y, x] = p
                cue[m, 1, y, x] = np.log(max(p, eps))
        for k in range(k_n):
            out = hidden[m, k]
            out[:, :] = bias[k]
            for c in range(2):
                src = cue[m, c]
                for dy in range(3):
                    for dx in range(3):
                        wt = weight[k, c, dy, dx]
                        y0, y1 = max(0, 1 - dy), min(h, h + 1 - dy)
                        x0, x1 = max(0, 1 - dx), min(w, w + 1 - dx)
                        for y in range(y0, y1):
                            row, srow = out[y], src[y + dy - 1]
                            for x in range(x0, x1):
                                row[x] += wt * srow[x + dx - 1]
