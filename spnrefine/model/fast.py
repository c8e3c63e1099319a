"""Inference fast paths on the CPU: the same arithmetic as the torch modules, fewer passes.

On a CPU the refiner's time outside the convolutions goes to memory traffic: the per-class
tail (merge of the four directions, readout MLP) runs a handful of tiny 1×1 convolutions that
each stream the whole hidden tensor. The kernel here does it in one pass per pixel (the gate
normalisation's one-pass kernel sits beside its torch twin in propagation/normalize.py). The
fast paths run only when no gradient is needed (training keeps the torch modules, which
autograd understands), and the tests check them against the torch path.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from numba import njit, prange
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def cpu_inference(t: torch.Tensor) -> bool:
    """Whether the fast paths apply: no autograd, a float32 tensor on the CPU."""
    return not torch.is_grad_enabled() and t.device.type == "cpu" and t.dtype == torch.float32


@njit(inline="always")
def _act(v, elu):
    if v > 0.0:
        return v
    return math.expm1(v) if elu else 0.0


@njit(parallel=True, cache=True)
def _tail(out, cue, merge_w, merge_b, w1, b1, w2, b2, elu, logits):
    """Per class and pixel: act(merge of the four directions) → readout MLP → one logit.

    out: B×D×(C·k)×H×W propagated channels; cue: (B·C)×2×H×W; merge_w: k×(D·k) with input
    index d·k + j; w1: R×(k+2); w2: R; logits: B×C×H×W. One work item is one row of one class;
    the pixels of the row are the (vectorised) inner loop.
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
            acc[:] = merge_b[o]
            for d in range(d_n):
                for j in range(k):
                    weight = merge_w[o, d * k + j]
                    src = out[b, d, c * k + j, y]
                    for x in range(w):
                        acc[x] += weight * src[x]
            for x in range(w):
                acc[x] = _act(acc[x], elu)
        merged[k] = cue[b * c_n + c, 0, y]
        merged[k + 1] = cue[b * c_n + c, 1, y]
        row[:] = b2
        for r in range(r_n):
            hidden[:] = b1[r]
            for i in range(k + 2):
                weight = w1[r, i]
                src = merged[i]
                for x in range(w):
                    hidden[x] += weight * src[x]
            for x in range(w):
                row[x] += w2[r] * _act(hidden[x], elu)


def fused_tail(
    out: torch.Tensor,
    cue: torch.Tensor,
    merge: nn.Conv2d,
    readout: nn.Sequential,
    activation: str = "relu",
) -> torch.Tensor:
    """The learned merge and the readout of ``SPNRefiner`` in one pass → logits B×C×H×W."""
    b, d, ck, h, w = out.shape
    k = merge.out_channels
    first, last = readout[0], readout[2]

    def arr(t: torch.Tensor) -> np.ndarray:
        return np.ascontiguousarray(t.detach().float().numpy())

    logits = np.empty((b, ck // k, h, w), np.float32)
    _tail(
        arr(out),
        arr(cue),
        arr(merge.weight.view(k, d * k)),
        arr(merge.bias),
        arr(first.weight.view(first.out_channels, -1)),
        arr(first.bias),
        arr(last.weight.view(-1)),
        np.float32(last.bias.item()),
        activation == "elu",
        logits,
    )
    return torch.from_numpy(logits)


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """A copy of ``module`` for inference with every Conv2d → BatchNorm2d pair folded into one
    convolution (the same function in eval mode, one pass over memory fewer per layer)."""
    module = copy.deepcopy(module).eval()
    for parent in module.modules():
        if not isinstance(parent, nn.Sequential):
            continue
        names = list(parent._modules)
        for first, second in zip(names, names[1:], strict=False):
            conv, bn = parent._modules[first], parent._modules[second]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                parent._modules[first] = fuse_conv_bn_eval(conv, bn)
                parent._modules[second] = nn.Identity()
    return module
