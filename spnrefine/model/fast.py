"""Inference fast paths on the CPU: the same arithmetic as the torch modules, fewer passes.

On a CPU the refiner's time outside the convolutions goes to memory traffic: the per-class
tail (merge of the four directions, readout MLP) runs a handful of tiny 1×1 convolutions that
each stream the whole hidden tensor. The kernel (model/kernels.py, shared with the torch-free
`LeanRefiner`) does it in one pass per pixel (the gate normalisation's one-pass kernel is
wrapped beside its torch twin in propagation/normalize.py). The
fast paths run only when no gradient is needed (training keeps the torch modules, which
autograd understands), and the tests check them against the torch path.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from spnrefine.model.kernels import tail


def cpu_inference(t: torch.Tensor) -> bool:
    """Whether the fast paths apply: no autograd, a float32 tensor on the CPU."""
    return not torch.is_grad_enabled() and t.device.type == "cpu" and t.dtype == torch.float32


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
    tail(
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
