"""Backend choice and the autograd Function that runs the numba kernels forward and backward."""

from __future__ import annotations

import contextlib
import os

import torch
from torch.autograd.function import once_differentiable

from spnrefine.errors import SpnrefineError
from spnrefine.propagation import cpu
from spnrefine.propagation.reference import DIRECTIONS, check_shapes, propagate_directions_ref

BACKENDS = ("reference", "cpu", "cuda")
BACKEND_ENV = "SPNREFINE_BACKEND"
# Dtypes the kernels compute in; others (half, bfloat16) are computed in float32.
KERNEL_DTYPES = (torch.float32, torch.float64)


def _cuda_kernels():
    """The CUDA kernel module, imported on first use (numba.cuda is slow to import)."""
    from spnrefine.propagation import cuda

    return cuda


def resolve_backend(backend: str | None, device: torch.device) -> str:
    """The backend to run on ``device``: the argument, else $SPNREFINE_BACKEND, else by device.

    ``None`` and ``"auto"`` defer to the next source; by device means ``"cuda"`` for tensors
    on a CUDA device and ``"cpu"`` otherwise.
    """
    if backend not in (None, "auto") and backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS} or 'auto'")
    if backend in (None, "auto"):
        backend = os.environ.get(BACKEND_ENV, "").strip().lower() or "auto"
        if backend != "auto" and backend not in BACKENDS:
            raise SpnrefineError(
                f"{BACKEND_ENV}={backend!r} is not a backend; expected one of {BACKENDS} or 'auto'"
            )
    if backend == "auto":
        return "cuda" if device.type == "cuda" else "cpu"
    if backend == "cpu" and device.type != "cpu":
        raise ValueError(f"backend 'cpu' needs CPU tensors, got tensors on {device}")
    if backend == "cuda":
        kernels = _cuda_kernels()
        if device.type == "cuda" and not kernels.available():
            raise SpnrefineError("backend 'cuda': numba cannot use this machine's CUDA GPU")
        if device.type != "cuda" and not kernels.simulated():
            raise SpnrefineError(
                f"backend 'cuda' needs tensors on a CUDA device, got {device}"
                + ("" if kernels.available() else " (and numba sees no CUDA GPU here)")
            )
    return backend


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


class _Propagate(torch.autograd.Function):
    """Per-direction propagation by a kernel module (``cpu`` or ``cuda``), with its backward."""

    @staticmethod
    def forward(ctx, x, gates, directions, three_way, backend):
        x = x.contiguous()
        gates = gates.contiguous()
        if backend == "cpu":
            with _keep_torch_threads():
                out = cpu.forward(x.detach().numpy(), gates.detach().numpy(), directions, three_way)
            out = torch.from_numpy(out)
        else:
            out = _cuda_kernels().forward(x.detach(), gates.detach(), directions, three_way)
        ctx.save_for_backward(x, gates, out)
        ctx.directions, ctx.three_way, ctx.backend = directions, three_way, backend
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, dout):
        x, gates, out = ctx.saved_tensors
        dout = dout.contiguous()
        if ctx.backend == "cpu":
            with _keep_torch_threads():
                dx, dgates = cpu.backward(
                    x.numpy(),
                    gates.numpy(),
                    out.numpy(),
                    dout.numpy(),
                    ctx.directions,
                    ctx.three_way,
                )
            dx, dgates = torch.from_numpy(dx), torch.from_numpy(dgates)
        else:
            dx, dgates = _cuda_kernels().backward(
                x, gates, out, dout, ctx.directions, ctx.three_way
            )
        return dx, dgates, None, None, None


def propagate_directions(
    x: torch.Tensor,
    gates: torch.Tensor,
    mode: str = "three_way",
    directions: tuple[str, ...] = DIRECTIONS,
    backend: str | None = None,
) -> torch.Tensor:
    """Propagate x along each direction on the chosen backend; returns B×D×C×H×W."""
    directions = tuple(directions)
    check_shapes(x, gates, mode, directions)
    if x.device != gates.device:
        raise ValueError(f"x is on {x.device} but gates are on {gates.device}")
    if not (x.is_floating_point() and gates.is_floating_point()):
        raise ValueError(f"x and gates must be floating point, got {x.dtype} and {gates.dtype}")
    backend = resolve_backend(backend, x.device)
    if backend == "reference":
        return propagate_directions_ref(x, gates, mode, directions)
    dtype = torch.promote_types(x.dtype, gates.dtype)
    compute = dtype if dtype in KERNEL_DTYPES else torch.float32
    if x.numel() == 0:
        b, c, h, w = x.shape
        return x.new_zeros((b, len(directions), c, h, w), dtype=dtype)
    out = _Propagate.apply(
        x.to(compute), gates.to(compute), directions, mode == "three_way", backend
    )
    return out.to(dtype)
