"""Times the propagation backends against each other and against a memory floor.

    python benchmarks/bench_propagation.py [--gates channel|shared] [--repeat 3]

For each size (float32, all four directions, three-way) it prints the forward and backward
time of the torch reference, the numba CPU kernel and, where a GPU exists, the numba CUDA
kernel, all on the per-direction output (``merge=None``: the max merge is a torch op on top).
The floor is the time numpy takes to move the bytes of one forward pass: per direction, read
x and that direction's gates and write its output, done as a copy of that many bytes. The
reference is timed once: its forward at full size, its backward (minutes at full size: autograd
of its per-step indexing materialises full-size tensors) on two slices of the batch ×
channels and extrapolated. Times are the best of ``--repeat`` runs; on a shared machine
they are noisy, so the load average is printed too. Compile time is measured in fresh
processes with an empty numba cache, then again with that cache filled.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numba
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from spnrefine.propagation import propagate  # noqa: E402

SIZES = [(1, 32, 512, 512), (64, 16, 128, 128)]
DIRECTIONS = 4

FIRST_CALL = """
import time, torch
t = time.perf_counter()
from spnrefine.propagation import propagate
x = torch.randn(1, 2, 8, 8, requires_grad=True)
g = torch.rand(1, 2, 4, 3, 8, 8) / 3
propagate(x, g, merge=None, backend="cpu").sum().backward()
print(time.perf_counter() - t)
"""


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fwd_bwd(x, gates, backend: str, repeat: int) -> tuple[float, float]:
    """(forward, backward) seconds of the per-direction propagation on ``backend``."""
    x = x.detach().requires_grad_()
    gates = gates.detach().requires_grad_()
    grad = torch.randn((x.shape[0], DIRECTIONS) + x.shape[1:], device=x.device)
    fwd, bwd = [], []
    for _ in range(repeat):
        sync(x.device)
        start = time.perf_counter()
        out = propagate(x, gates, merge=None, backend=backend)
        sync(x.device)
        middle = time.perf_counter()
        out.backward(grad)
        sync(x.device)
        fwd.append(middle - start)
        bwd.append(time.perf_counter() - middle)
        x.grad = gates.grad = None
    return min(fwd), min(bwd)


def floor(x: np.ndarray, gates_bytes: int, repeat: int) -> float:
    """Seconds numpy takes to copy the bytes of one forward pass (all directions)."""
    per_direction = (2 * x.nbytes + gates_bytes // DIRECTIONS) // 2  # read+write = 2× a copy
    src = np.random.default_rng(0).random(per_direction // 4, dtype=np.float32)
    dst = np.empty_like(src)

    def one_pass():
        for _ in range(DIRECTIONS):
            np.copyto(dst, src)

    one_pass()
    return best(one_pass, repeat)


def reference_times(x, gates) -> tuple[float, float, str]:
    """Reference forward at full size; backward extrapolated from two slices of B·C.

    The slices hold n and 2n of the B·C maps; the backward time is fitted as fixed + n × per
    map (its per-step costs do not all grow with B·C) and evaluated at the full B·C.
    """
    fwd = best(lambda: propagate(x, gates, merge=None, backend="reference"), 1)
    batch, channels = x.shape[:2]
    total = batch * channels
    per_channel_gates = gates.shape[1] == channels
    # Slice the batch when there is one, else the channels.
    small = max(1, total // 32)
    times = []
    for n in (small, 2 * small):
        if batch > 1:
            xs, gs = x[: n // channels or 1], gates[: n // channels or 1]
        else:
            xs = x[:, :n]
            gs = gates[:, :n] if per_channel_gates else gates
        times.append((xs.shape[0] * xs.shape[1], fwd_bwd(xs, gs, "reference", 1)[1]))
    (n1, t1), (n2, t2) = times
    per_map = max(t2 - t1, 0.0) / (n2 - n1)
    estimate = max(t2, t1 + per_map * (total - n1))
    return fwd, estimate, f"bwd extrapolated from {n1} and {n2} maps ({t1:.1f} s, {t2:.1f} s)"


def compile_times() -> tuple[float, float]:
    """First-call seconds in a fresh process: with an empty numba cache, then with it filled."""
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache, PYTHONPATH=str(ROOT))
        runs = []
        for _ in range(2):
            result = subprocess.run(
                [sys.executable, "-c", FIRST_CALL], env=env, capture_output=True, text=True
            )
            result.check_returncode()
            runs.append(float(result.stdout.split()[-1]))
    return runs[0], runs[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gates", choices=["channel", "shared"], default="channel")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--skip-compile", action="store_true")
    args = parser.parse_args()

    gpu = torch.cuda.is_available()
    print(
        f"torch {torch.__version__}, numba {numba.__version__}, {numba.get_num_threads()} threads"
    )
    print(f"gates: {'per-channel (G=C)' if args.gates == 'channel' else 'shared (G=1)'}")
    print(f"load average at start: {os.getloadavg()}")
    if not args.skip_compile:
        cold, warm = compile_times()
        print(
            f"first call (fwd+bwd, float32) in a fresh process: empty cache {cold:.1f} s, "
            f"cache filled {warm:.1f} s (the numba cache is reused across processes)"
        )
    # Compile (or load) the kernels here before timing.
    tiny = torch.randn(1, 2, 8, 8), torch.rand(1, 2, 4, 3, 8, 8) / 3
    fwd_bwd(*tiny, "cpu", 1)
    if gpu:
        fwd_bwd(tiny[0].cuda(), tiny[1].cuda(), "cuda", 1)

    header = (
        f"{'size':>16} {'ref fwd':>8} {'ref bwd':>8} {'cpu fwd':>8} {'cpu bwd':>8} "
        f"{'floor':>7} {'fwd/floor':>9} {'ref/cpu':>8} {'bwd/fwd':>8}"
        + (f" {'cuda fwd':>9} {'cuda bwd':>9}" if gpu else "")
    )
    print(header)
    notes = []
    for b, c, h, w in SIZES:
        g = c if args.gates == "channel" else 1
        x = torch.randn(b, c, h, w)
        gates = torch.rand(b, g, DIRECTIONS, 3, h, w) * 2 - 1
        gates = gates / gates.abs().sum(3, keepdim=True).clamp(min=1)
        cpu_f, cpu_b = fwd_bwd(x, gates, "cpu", args.repeat)
        fl = floor(x.numpy(), gates.numpy().nbytes, args.repeat)
        if args.skip_reference:
            ref_f = ref_b = float("nan")
        else:
            ref_f, ref_b, note = reference_times(x, gates)
            notes.append(f"{b}x{c}x{h}x{w}: reference {note}")
        row = (
            f"{f'{b}x{c}x{h}x{w}':>16} {ref_f:8.3f} {ref_b:8.2f} {cpu_f:8.4f} {cpu_b:8.4f} "
            f"{fl:7.4f} {cpu_f / fl:9.2f} {ref_f / cpu_f:8.1f} {cpu_b / cpu_f:8.2f}"
        )
        if gpu:
            cuda_f, cuda_b = fwd_bwd(x.cuda(), gates.cuda(), "cuda", args.repeat)
            row += f" {cuda_f:9.5f} {cuda_b:9.5f}"
        print(row, flush=True)
    print("times in seconds; " + "; ".join(notes))
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
