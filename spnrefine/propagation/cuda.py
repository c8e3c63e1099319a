"""Numba CUDA kernels for the propagation, forward and backward, driven from torch tensors.

One launch per direction. A block owns one (batch, channel) slice; its threads cover the
pixels of a scan line (looping when the line is longer than the block) and the block walks
the lines inside the kernel with a barrier between steps, so a direction costs one launch,
not one per line. The kernels scan rows (tb/bt), where threads read consecutive addresses;
for lr/rl the caller hands them transposed copies made by torch (GSPN's trick), so every
direction reads coalesced memory.

Importing this module compiles nothing (kernels compile on first launch), so it imports on
machines without a GPU. With ``NUMBA_ENABLE_CUDASIM=1`` the kernels run in numba's
simulator and CPU tensors are copied to and from simulated device arrays; tests use this.
"""

from __future__ import annotations

import contextlib

import numba
import torch
from numba import cuda

from spnrefine.propagation.cpu import SCAN

# Threads per block; a longer line is covered by looping.
MAX_THREADS = 256


@cuda.jit
def _forward_kernel(x, gates, reverse, three_way, one, out):
    """out[b, c] = scan of x[b, c] (T×K, lines are rows) with gates[b, c % G] (3×T×K).

    ``one`` is 1 in the array's dtype (a literal 1 would promote float32 maths to float64).
    """
    channels = x.shape[1]
    groups = gates.shape[1]
    n_lines = x.shape[2]
    n_pixels = x.shape[3]
    b = cuda.blockIdx.x // channels
    c = cuda.blockIdx.x % channels
    g = c % groups
    zero = one - one
    for u in range(n_lines):
        t = n_lines - 1 - u if reverse else u
        tp = t + 1 if reverse else t - 1
        for k in range(cuda.threadIdx.x, n_pixels, cuda.blockDim.x):
            if u == 0:
                out[b, c, t, k] = x[b, c, t, k]
                continue
            # A gate pointing outside the line counts as zero, in Σg and in the sum alike.
            g0 = zero
            g2 = zero
            up = zero
            down = zero
            if three_way and k > 0:
                g0 = gates[b, g, 0, t, k]
                up = out[b, c, tp, k - 1]
            if three_way and k < n_pixels - 1:
                g2 = gates[b, g, 2, t, k]
                down = out[b, c, tp, k + 1]
            g1 = gates[b, g, 1, t, k]
            out[b, c, t, k] = (
                (one - (g0 + g1 + g2)) * x[b, c, t, k] + g0 * up + g1 * out[b, c, tp, k] + g2 * down
            )
        cuda.syncthreads()


@cuda.jit
def _backward_kernel(x, gates, out, dout, reverse, three_way, one, dx, dgates, dh):
    """dx[b, c] += dL/dx of this direction; dgates[b, c] = dL/dgates for channel c alone.

    dh is B·C×2×K scratch: the line gradient of the current and the previous step, which
    neighbouring threads read after the barrier.
    """
    channels = x.shape[1]
    groups = gates.shape[1]
    n_lines = x.shape[2]
    n_pixels = x.shape[3]
    slot = cuda.blockIdx.x
    b = slot // channels
    c = slot % channels
    g = c % groups
    zero = one - one
    for u in range(n_lines):
        # Backwards through the scan: t is the line, tn the line after it in scan order.
        t = u if reverse else n_lines - 1 - u
        tn = t - 1 if reverse else t + 1
        tp = t + 1 if reverse else t - 1
        cur = u % 2
        for k in range(cuda.threadIdx.x, n_pixels, cuda.blockDim.x):
            d = dout[b, c, t, k]
            if u > 0:
                # Gate j of pixel k' reads prev[k' + j]: pixel k hears from k - j.
                d += gates[b, g, 1, tn, k] * dh[slot, 1 - cur, k]
                if three_way and k + 1 < n_pixels:
                    d += gates[b, g, 0, tn, k + 1] * dh[slot, 1 - cur, k + 1]
                if three_way and k > 0:
                    d += gates[b, g, 2, tn, k - 1] * dh[slot, 1 - cur, k - 1]
            dh[slot, cur, k] = d
            if u == n_lines - 1:
                dx[b, c, t, k] += d
                dgates[b, c, 0, t, k] = zero
                dgates[b, c, 1, t, k] = zero
                dgates[b, c, 2, t, k] = zero
                continue
            xv = x[b, c, t, k]
            g1 = gates[b, g, 1, t, k]
            dgates[b, c, 1, t, k] = d * (out[b, c, tp, k] - xv)
            g0 = zero
            g2 = zero
            dgates[b, c, 0, t, k] = zero
            dgates[b, c, 2, t, k] = zero
            if three_way and k > 0:
                g0 = gates[b, g, 0, t, k]
                dgates[b, c, 0, t, k] = d * (out[b, c, tp, k - 1] - xv)
            if three_way and k < n_pixels - 1:
                g2 = gates[b, g, 2, t, k]
                dgates[b, c, 2, t, k] = d * (out[b, c, tp, k + 1] - xv)
            dx[b, c, t, k] += (one - (g0 + g1 + g2)) * d
        cuda.syncthreads()


def simulated() -> bool:
    """True when numba runs CUDA kernels in its CPU simulator."""
    return bool(numba.config.ENABLE_CUDASIM)


def available() -> bool:
    """True when the kernels can run: a GPU numba can use, or the simulator."""
    return simulated() or cuda.is_available()


class _Launcher:
    """Hands torch tensors to kernels: shared memory on a GPU, copies in the simulator."""

    def __init__(self, device: torch.device):
        self.on_gpu = device.type == "cuda"
        self._write_back: list[tuple[object, torch.Tensor]] = []
        self.stream = 0
        if self.on_gpu:
            self.stream = cuda.external_stream(torch.cuda.current_stream(device).cuda_stream)

    def array(self, tensor: torch.Tensor, written: bool = False):
        """A device array over ``tensor``; ``written``: copy it back after the launch."""
        if self.on_gpu:
            # No sync: the kernels run on torch's current stream, which orders them already.
            return cuda.as_cuda_array(tensor.detach(), sync=False)
        device_array = cuda.to_device(tensor.detach().numpy())
        if written:
            self._write_back.append((device_array, tensor))
        return device_array

    def launch(self, kernel, n_slices: int, n_pixels: int, *args):
        """One block per (batch, channel) slice, threads over the pixels of a line."""
        kernel[n_slices, min(MAX_THREADS, n_pixels), self.stream](*args)
        for device_array, tensor in self._write_back:
            device_array.copy_to_host(tensor.numpy())
        self._write_back.clear()


def _on(device: torch.device):
    """Make numba use the tensors' GPU (a no-op in the simulator)."""
    return cuda.gpus[device.index or 0] if device.type == "cuda" else contextlib.nullcontext()


def _one(t: torch.Tensor):
    """1 as a numpy scalar of t's dtype, so the kernel keeps float32 maths in float32."""
    return torch.ones((), dtype=t.dtype).numpy()[()]


def _lines(t: torch.Tensor, columns: bool) -> torch.Tensor:
    """A contiguous …×T×K tensor whose rows are the scan lines (columns transposed)."""
    return (t.transpose(-1, -2) if columns else t).contiguous()


def forward(x: torch.Tensor, gates: torch.Tensor, directions: tuple[str, ...], three_way: bool):
    """Per-direction propagation (B×D×C×H×W) of x (B×C×H×W) with gates (B×G×D×3×H×W)."""
    batch, channels, height, width = x.shape
    out = x.new_empty((batch, len(directions), channels, height, width))
    with _on(x.device):
        launcher = _Launcher(x.device)
        x_lines = {}
        for d, direction in enumerate(directions):
            columns, reverse = SCAN[direction]
            if columns not in x_lines:
                x_lines[columns] = _lines(x, columns)
            xl = x_lines[columns]
            result = torch.empty_like(xl)
            launcher.launch(
                _forward_kernel,
                batch * channels,
                xl.shape[-1],
                launcher.array(xl),
                launcher.array(_lines(gates[:, :, d], columns)),
                reverse,
                three_way,
                _one(x),
                launcher.array(result, written=True),
            )
            out[:, d] = result.transpose(-1, -2) if columns else result
    return out


def backward(
    x: torch.Tensor,
    gates: torch.Tensor,
    out: torch.Tensor,
    dout: torch.Tensor,
    directions: tuple[str, ...],
    three_way: bool,
):
    """Gradients (dx, dgates) of the per-direction output ``out`` given its gradient ``dout``."""
    batch, channels = x.shape[:2]
    groups = gates.shape[1]
    dgates = torch.empty_like(gates)
    x_lines = {}
    dx_lines = {}
    with _on(x.device):
        launcher = _Launcher(x.device)
        for d, direction in enumerate(directions):
            columns, reverse = SCAN[direction]
            if columns not in x_lines:
                x_lines[columns] = _lines(x, columns)
                dx_lines[columns] = torch.zeros_like(x_lines[columns])
            xl = x_lines[columns]
            n_pixels = xl.shape[-1]
            per_channel = xl.new_empty((batch, channels, 3) + xl.shape[-2:])
            launcher.launch(
                _backward_kernel,
                batch * channels,
                n_pixels,
                launcher.array(xl),
                launcher.array(_lines(gates[:, :, d], columns)),
                launcher.array(_lines(out[:, d], columns)),
                launcher.array(_lines(dout[:, d], columns)),
                reverse,
                three_way,
                _one(x),
                launcher.array(dx_lines[columns], written=True),
                launcher.array(per_channel, written=True),
                launcher.array(xl.new_empty((batch * channels, 2, n_pixels))),
            )
            # Channel c uses group c % G: sum the channels of each group (no atomics).
            shape = (batch, channels // groups, groups, 3) + xl.shape[-2:]
            grouped = per_channel.view(shape).sum(1)
            dgates[:, :, d] = grouped.transpose(-1, -2) if columns else grouped
    dx = dx_lines.get(False)
    if True in dx_lines:
        from_columns = dx_lines[True].transpose(-1, -2)
        dx = from_columns if dx is None else dx + from_columns
    return dx.contiguous(), dgates
