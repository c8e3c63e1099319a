"""The numba CUDA kernels against the torch reference: on a GPU, or in numba's simulator.

The simulator must be switched on before numba.cuda is imported, so a plain ``pytest`` runs
this module in a subprocess with NUMBA_ENABLE_CUDASIM=1 (see ``test_propagation.py``);
collected directly without a GPU or the simulator, it is skipped. The simulator runs one
Python thread per CUDA thread, so the maps here are tiny.
"""

from __future__ import annotations

import os

import pytest
import torch

from spnrefine.propagation import DIRECTIONS, normalize_gates, propagate, propagate_ref

SIMULATED = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
ON_GPU = not SIMULATED and torch.cuda.is_available()
if not (SIMULATED or ON_GPU):
    pytest.skip("needs a CUDA GPU or NUMBA_ENABLE_CUDASIM=1", allow_module_level=True)

DEVICE = torch.device("cuda" if ON_GPU else "cpu")


def make_inputs(b, c, g, h, w, n_dirs=4, mode="three_way", dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, h, w, generator=gen, dtype=torch.float64)
    raw = 2 * torch.randn(b, g, n_dirs, 3, h, w, generator=gen, dtype=torch.float64)
    return x.to(dtype).to(DEVICE), normalize_gates(raw, mode).to(dtype).to(DEVICE)


@pytest.mark.parametrize("mode", ["three_way", "one_way"])
@pytest.mark.parametrize(
    "shape",
    [
        (1, 2, 1, 5, 7),
        (2, 2, 2, 3, 4),
        (1, 4, 2, 4, 3),
        (1, 2, 1, 1, 5),
        (2, 2, 1, 4, 1),
        (1, 2, 2, 2, 3),
    ],
    ids=lambda s: "x".join(map(str, s)),
)
def test_cuda_kernel_matches_reference_forward_and_backward(shape, mode):
    b, c, g, h, w = shape
    x, gates = make_inputs(b, c, g, h, w, mode=mode)
    weight = torch.randn(b, 4, c, h, w, device=DEVICE)
    results = []
    for backend in ("reference", "cuda"):
        xr, gr = x.clone().requires_grad_(), gates.clone().requires_grad_()
        out = propagate(xr, gr, mode, merge=None, backend=backend)
        (out * weight).sum().backward()
        results.append((out.detach(), xr.grad, gr.grad))
    for want, got in zip(*results, strict=True):
        assert got.shape == want.shape and got.dtype == want.dtype
        assert (got - want).abs().max().item() <= 1e-5


@pytest.mark.parametrize("directions", [("bt",), ("rl", "tb"), ("tb", "lr", "rl")])
def test_cuda_kernel_direction_subsets_and_max_merge(directions):
    d = [DIRECTIONS.index(name) for name in directions]
    x, gates = make_inputs(2, 3, 3, 4, 5, seed=1)
    sub = gates[:, :, d]
    want = propagate_ref(x, sub, directions=directions)
    got = propagate(x, sub, directions=directions, backend="cuda")
    assert (got - want).abs().max().item() <= 1e-5


def test_auto_backend_uses_the_cuda_kernel_for_gpu_tensors():
    if not ON_GPU:
        pytest.skip("CPU tensors go to the cpu kernel; only a GPU exercises this")
    x, gates = make_inputs(1, 2, 1, 5, 7)
    out = propagate(x.requires_grad_(), gates, merge=None)
    assert type(out.grad_fn).__name__ == "_PropagateBackward"
    assert (out - propagate_ref(x, gates, merge=None)).abs().max().item() <= 1e-5


def test_cuda_backend_passes_gradcheck():
    x, gates = make_inputs(1, 2, 1, 2, 3, n_dirs=2, dtype=torch.float64, seed=2)
    x.requires_grad_()
    gates.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x, gates: propagate(x, gates, directions=("rl", "tb"), merge=None, backend="cuda"),
        (x, gates),
    )
