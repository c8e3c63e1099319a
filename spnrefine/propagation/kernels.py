"""The numba kernels as torch backends: the autograd Function that runs a kernel module forward
and backward, and the CPU and CUDA entries `dispatch.BACKENDS` names."""

from __future__ import annotations

import contextlib

import torch
from torch.autograd.function import once_differentiable

from spnrefine.errors import SpnrefineError
from spnrefine.propagation import cpu

# Dtypes the kernels compute in; others (half, bfloat16) are computed in float32.
KERNEL_DTYPES = (torch.float32, torch.float64)


def _cuda_kernels():
    """The CUDA kernel module, imported on first use (numba.cuda is slow to import)."""
    from spnrefine.propagation import cuda

    return cuda


@contextlib.contextmanager
def _keep_torch_threads():
    """Restore torch's thread count after numba ran: both drive the same OpenMP runtime, and
    numba's launches on fewer threads leave that count behind for torch."""
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


class _CpuKernels:
    """The numba CPU kernels (numpy arrays in and out) behind the torch interface of `cuda`."""

    @staticmethod
    def forward(x, gates, directions, three_way):
        with _keep_torch_threads():
            out = cpu.forward(x.detach().numpy(), gates.detach().numpy(), directions, three_way)
        return torch.from_numpy(out)

    @staticmethod
    def backward(x, gates, out, dout, directions, three_way):
        with _keep_torch_threads():
            dx, dgates = cpu.backward(
                x.numpy(), gates.numpy(), out.numpy(), dout.numpy(), directions, three_way
            )
        return torch.from_numpy(dx), torch.from_numpy(dgates)


class _Propagate(torch.autograd.Function):
    """Per-direction propagation by a kernel module (forward and backward on tensors)."""

    @staticmethod
    def forward(ctx, x, gates, directions, three_way, kernels):
        x = x.contiguous()
        gates = gates.contiguous()
        out = kernels.forward(x.detach(), gates.detach(), directions, three_way)
        ctx.save_for_backward(x, gates, out)
        ctx.directions, ctx.three_way, ctx.kernels = directions, three_way, kernels
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, dout):
        x, gates, out = ctx.saved_tensors
        dx, dgates = ctx.kernels.backward(
            x, gates, out, dout.contiguous(), ctx.directions, ctx.three_way
        )
        return dx, dgates, None, None, None


def _run(kernels, x, gates, mode: str, directions: tuple[str, ...]) -> torch.Tensor:
    dtype = torch.promote_types(x.dtype, gates.dtype)
    compute = dtype if dtype in KERNEL_DTYPES else torch.float32
    if x.numel() == 0:
        b, c, h, w = x.shape
        return x.new_zeros((b, len(directions), c, h, w), dtype=dtype)
    out = _Propagate.apply(
        x.to(compute), gates.to(compute), directions, mode == "three_way", kernels
    )
    return out.to(dtype)


def propagate_directions_cpu(x, gates, mode: str, directions: tuple[str, ...]) -> torch.Tensor:
    """The numba CPU kernels; tensors must be on the CPU."""
    if x.device.type != "cpu":
        raise ValueError(f"backend 'cpu' needs CPU tensors, got tensors on {x.device}")
    return _run(_CpuKernels, x, gates, mode, directions)


def propagate_directions_cuda(x, gates, mode: str, directions: tuple[str, ...]) -> torch.Tensor:
    """The numba CUDA kernels; tensors must be on a GPU numba can use (or CPU tensors under
    numba's simulator)."""
    kernels = _cuda_kernels()
    device = x.device
    if device.type == "cuda" and not kernels.available():
        raise SpnrefineError("backend 'cuda': numba cannot use this machine's CUDA GPU")
    if device.type != "cuda" and not kernels.simulated():
        raise SpnrefineError(
            f"backend 'cuda' needs tensors on a CUDA device, got {device}"
            + ("" if kernels.available() else " (and numba sees no CUDA GPU here)")
        )
    return _run(kernels, x, gates, mode, directions)
