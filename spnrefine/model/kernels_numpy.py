"""The kernels of `spnrefine.model.kernels` in plain numpy: same names, arguments and results.

Nothing here compiles, so a process that refines one small image does not pay the second or
so that loading numba and its cached kernels takes; per pixel they are slower (the scan most:
`spnrefine.propagation.vectorized`). `spnrefine.model.lean` picks the set.
"""

from __future__ import annotations

import numpy as np

from spnrefine.model.config import LOG_EPS
from spnrefine.propagation.vectorized import forward as propagate  # noqa: F401 (the set's)


def normalize_three_way(raw: np.ndarray) -> None:
    """In place: raw (N×3×P) scaled so that Σ|p| ≤ 1 at every pixel (divide by max(Σ|p|, 1))."""
    total = np.abs(raw[:, 0])  # the same sum as the numba kernel's, with fewer temporaries
    total += np.abs(raw[:, 1])
    total += np.abs(raw[:, 2])
    np.maximum(total, np.float32(1.0), out=total)
    np.divide(np.float32(1.0), total, out=total)
    raw *= total[:, None]


def _act(v: np.ndarray, elu: bool) -> np.ndarray:
    if elu:
        return np.where(v > 0, v, np.expm1(np.minimum(v, 0)))
    return np.maximum(v, 0, out=v)


def embed(probs, weight, bias, cue, hidden) -> None:
    """Per class map: cue = (p, log max(p, eps)); hidden = 3×3 conv of the cue (zero padding).

    probs: M×H×W (M = tiles × classes); weight: K×2×3×3; cue: M×2×H×W; hidden: M×K×H×W.
    """
    m_n, h, w = probs.shape
    cue[:, 0] = probs
    np.log(np.maximum(probs, np.float32(LOG_EPS)), out=cue[:, 1])
    padded = np.pad(cue, ((0, 0), (0, 0), (1, 1), (1, 1)))
    # im2col in the weight's (c, dy, dx) order, then one matrix product per map
    cols = np.empty((m_n, 18, h, w), np.float32)
    for c in range(2):
        for dy in range(3):
            for dx in range(3):
                cols[:, c * 9 + dy * 3 + dx] = padded[:, c, dy : dy + h, dx : dx + w]
    out = np.matmul(weight.reshape(len(weight), 18), cols.reshape(m_n, 18, h * w))
    out += bias[:, None]
    hidden[:] = out.reshape(hidden.shape)


def tail(out, cue, merge_w, merge_b, w1, b1, w2, b2, elu, logits) -> None:
    """Per class and pixel: act(merge of the four directions) → readout MLP → one logit.

    out: B×D×(C·k)×H×W propagated channels; cue: (B·C)×2×H×W; merge_w: k×(D·k) with input
    index d·k + j; w1: R×(k+2); w2: R; logits: B×C×H×W (written).
    """
    b_n, d_n, ck, h, w = out.shape
    k = merge_w.shape[0]
    c_n = ck // k
    per_class = out.reshape(b_n, d_n, c_n, k, h * w).transpose(0, 2, 1, 3, 4)
    per_class = per_class.reshape(b_n * c_n, d_n * k, h * w)
    merged = np.matmul(merge_w, per_class)
    merged += merge_b[:, None]
    features = np.concatenate([_act(merged, elu), cue.reshape(b_n * c_n, 2, h * w)], 1)
    hid = np.matmul(w1, features)
    hid += b1[:, None]
    result = np.matmul(w2, _act(hid, elu)) + b2
    logits[:] = result.reshape(logits.shape)
