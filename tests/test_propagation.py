"""The propagation engine: the numba CPU kernel against the torch reference, its gradients,
the propagation's properties, backend choice, and (in a subprocess) the CUDA kernel in
numba's simulator."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from spnrefine.errors import SpnrefineError
from spnrefine.propagation import (
    DIRECTIONS,
    normalize_gates,
    propagate,
    propagate_directions_ref,
    propagate_ref,
)
from spnrefine.propagation.dispatch import BACKEND_ENV, BACKENDS, Backend, resolve_backend

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The reference runs thousands of small ops; on shared cores threads only make them wait."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_inputs(
    b, c, g, h, w, directions=DIRECTIONS, mode="three_way", dtype=torch.float32, seed=0
):
    """Random x and normalised random gates (negative ones included) of the given sizes."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, h, w, generator=gen, dtype=torch.float64)
    raw = 2 * torch.randn(b, g, len(directions), 3, h, w, generator=gen, dtype=torch.float64)
    return x.to(dtype), normalize_gates(raw, mode).to(dtype)


# (B, C, G, H, W): shared (G=1), per-channel (G=C) and grouped gates; non-square maps; lines
# of one and two pixels; one and two lines; channels sharing gates in one work item.
SHAPES = [
    (1, 3, 1, 6, 9),
    (2, 4, 4, 7, 5),
    (2, 6, 3, 5, 8),
    (1, 2, 1, 1, 7),
    (2, 2, 2, 6, 1),
    (1, 4, 2, 2, 5),
    (1, 2, 1, 5, 2),
    (1, 2, 2, 1, 1),
    (1, 12, 1, 9, 10),  # the CPU kernel splits a group's channels into chunks of 3
    (2, 12, 2, 10, 9),  # one chunk of 6 channels per group
    (1, 2, 2, 130, 131),  # more than one tile of lines in both layouts
    (2, 8, 4, 7, 7),  # square: the numpy scan runs all four directions in one
]
DIRECTION_SETS = [("lr",), ("rl",), ("tb",), ("bt",), ("lr", "tb"), ("bt", "rl", "lr"), DIRECTIONS]


@pytest.mark.parametrize("mode", ["three_way", "one_way"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_cpu_kernel_matches_reference_on_every_direction(shape, mode):
    b, c, g, h, w = shape
    x, gates = make_inputs(b, c, g, h, w, mode=mode)
    for directions in DIRECTION_SETS:
        d = [DIRECTIONS.index(name) for name in directions]
        sub = gates[:, :, d]
        for merge in ("max", None):
            want = propagate_ref(x, sub, mode, directions, merge)
            got = propagate(x, sub, mode, directions, merge, backend="cpu")
            assert got.shape == want.shape and got.dtype == torch.float32
            assert (got - want).abs().max().item() <= 1e-5, (directions, merge)


@pytest.mark.parametrize("mode", ["three_way", "one_way"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_the_numpy_scan_matches_reference_on_every_direction(shape, mode):
    """propagation/vectorized.py, which the torch-free refiner runs for short jobs."""
    from spnrefine.propagation import vectorized

    b, c, g, h, w = shape
    x, gates = make_inputs(b, c, g, h, w, mode=mode)
    for directions in DIRECTION_SETS:
        sub = gates[:, :, [DIRECTIONS.index(name) for name in directions]]
        want = propagate_ref(x, sub, mode, directions, None)
        x_np, sub_np = x.numpy(), sub.contiguous().numpy()
        before = sub_np.copy()
        got = vectorized.forward(x_np, sub_np, directions, mode == "three_way")
        assert got.shape == tuple(want.shape) and got.dtype == x_np.dtype
        assert abs(got - want.numpy()).max() <= 1e-5, directions
        assert (sub_np == before).all()  # the caller's gates are left alone


@pytest.mark.parametrize("mode", ["three_way", "one_way"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_cpu_kernel_gradients_match_autograd_through_reference(shape, mode):
    b, c, g, h, w = shape
    for directions in (DIRECTIONS, ("rl", "tb"), ("bt",)):
        d = [DIRECTIONS.index(name) for name in directions]
        x, gates = make_inputs(b, c, g, h, w, mode=mode, dtype=torch.float64, seed=len(d))
        gates = gates[:, :, d].contiguous()
        weight = torch.randn(b, len(d), c, h, w, dtype=torch.float64)
        grads = []
        for backend in ("reference", "cpu"):
            xr, gr = x.clone().requires_grad_(), gates.clone().requires_grad_()
            out = propagate(xr, gr, mode, directions, None, backend=backend)
            (out * weight).sum().backward()
            grads.append((xr.grad, gr.grad))
        (dx_ref, dg_ref), (dx, dg) = grads
        if dg_ref is None:  # one line per scan: the reference never reads the gates
            dg_ref = torch.zeros_like(dg)
        assert torch.allclose(dx, dx_ref, rtol=1e-9, atol=1e-10), directions
        assert torch.allclose(dg, dg_ref, rtol=1e-9, atol=1e-10), directions


def test_cpu_kernel_gradients_through_max_merge_match_reference_in_float32():
    x, gates = make_inputs(2, 6, 3, 9, 11)
    grads = []
    for backend in ("reference", "cpu"):
        xr, gr = x.clone().requires_grad_(), gates.clone().requires_grad_()
        propagate(xr, gr, backend=backend).square().sum().backward()
        grads.append((xr.grad, gr.grad))
    (dx_ref, dg_ref), (dx, dg) = grads
    # Gate gradients sum over channels and pixels: compare relative to their size.
    assert (dx - dx_ref).abs().max().item() <= 1e-5 * dx_ref.abs().max().item()
    assert (dg - dg_ref).abs().max().item() <= 1e-5 * dg_ref.abs().max().item()


@pytest.mark.parametrize(
    "shape, mode, directions",
    [
        ((1, 2, 1, 3, 4), "three_way", DIRECTIONS),
        ((2, 2, 2, 4, 3), "one_way", ("rl", "bt")),
        ((1, 4, 2, 2, 3), "three_way", ("tb", "lr")),
    ],
)
def test_cpu_backend_passes_gradcheck(shape, mode, directions):
    b, c, g, h, w = shape
    x, gates = make_inputs(b, c, g, h, w, directions, mode, torch.float64)
    x.requires_grad_()
    gates.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x, gates: propagate(x, gates, mode, directions, None, backend="cpu"),
        (x, gates),
    )


def test_cpu_kernel_makes_non_contiguous_inputs_contiguous():
    x, gates = make_inputs(2, 4, 2, 6, 5)
    x_t = x.transpose(-1, -2).contiguous().transpose(-1, -2)  # same values, strided
    gates_t = torch.stack([gates, -gates], 3)[:, :, :, 0]  # same values, strided
    assert not x_t.is_contiguous() and not gates_t.is_contiguous()
    weight = torch.randn(2, 4, 4, 6, 5)
    want = propagate_ref(x, gates, merge=None)
    got = propagate(x_t.requires_grad_(), gates_t.requires_grad_(), merge=None, backend="cpu")
    assert (got - want).abs().max().item() <= 1e-5
    (got * weight).sum().backward()
    dx_ref, dg_ref = torch.autograd.grad(
        (propagate_ref(x.requires_grad_(), gates.requires_grad_(), merge=None) * weight).sum(),
        (x, gates),
    )
    assert (x_t.grad - dx_ref).abs().max().item() <= 1e-5
    assert (gates_t.grad - dg_ref).abs().max().item() <= 1e-5


def test_cpu_kernel_keeps_float64_and_computes_half_in_float32():
    x, gates = make_inputs(1, 2, 1, 4, 5, dtype=torch.float64)
    assert propagate(x, gates, backend="cpu").dtype == torch.float64
    got = propagate(x.half(), gates.half(), backend="cpu")
    want = propagate_ref(x.half().double(), gates.half().double())
    assert got.dtype == torch.float16
    assert (got.double() - want).abs().max().item() <= 1e-2


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("mode", ["three_way", "one_way"])
def test_constant_map_stays_constant(backend, mode):
    _, gates = make_inputs(2, 3, 3, 8, 6, mode=mode, seed=3)
    x = torch.full((2, 3, 8, 6), 0.37)
    out = propagate(x, gates, mode, merge=None, backend=backend)
    assert (out - 0.37).abs().max().item() <= 1e-6


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_all_zero_gates_return_the_input(backend):
    x, _ = make_inputs(2, 4, 2, 5, 7)
    out = propagate(x, torch.zeros(2, 2, 4, 3, 5, 7), merge=None, backend=backend)
    assert torch.equal(out, x.unsqueeze(1).expand_as(out))


def test_propagation_mixes_along_the_scan_only_from_upstream():
    """A unit impulse reaches only pixels downstream of it in each direction's scan order."""
    x = torch.zeros(1, 1, 5, 5)
    x[0, 0, 2, 2] = 1.0
    gates = torch.full((1, 1, 4, 3, 5, 5), 0.3)
    out = propagate(x, gates, merge=None, backend="cpu")[0, :, 0]
    lr, rl, tb, bt = out
    assert lr[:, :2].abs().max() == 0 and lr[2, 2:].min() > 0 and lr[:, 4].min() > 0
    assert rl[:, 3:].abs().max() == 0 and rl[2, :3].min() > 0 and rl[:, 0].min() > 0
    assert tb[:2].abs().max() == 0 and tb[2:, 2].min() > 0 and tb[4].min() > 0
    assert bt[3:].abs().max() == 0 and bt[:3, 2].min() > 0 and bt[0].min() > 0


@pytest.mark.parametrize("mode", ["three_way", "one_way"])
def test_normalize_gates_bounds_the_gate_sum(mode):
    raw = 5 * torch.randn(2, 3, 4, 3, 6, 7, dtype=torch.float64)
    raw[0, 0, 0, :, 0, 0] = torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64)  # in bound
    p = normalize_gates(raw, mode)
    assert p.shape == raw.shape
    assert p.abs().sum(-3).max().item() <= 1 + 1e-12
    assert p.abs().sum(-3).max().item() > 0.99  # large gates are scaled to the bound, not below
    if mode == "one_way":
        assert p[..., 0, :, :].abs().max() == 0 and p[..., 2, :, :].abs().max() == 0
        assert p[..., 1, :, :].abs().max().item() <= 1
        assert p[0, 0, 0, 1, 0, 0].item() == -0.2
    else:
        assert torch.equal(p[0, 0, 0, :, 0, 0], raw[0, 0, 0, :, 0, 0])


def test_backend_argument_picks_the_implementation():
    x, gates = make_inputs(1, 2, 1, 4, 4)
    x.requires_grad_()
    assert type(propagate(x, gates, merge=None, backend="cpu").grad_fn).__name__ == (
        "_PropagateBackward"
    )
    ref = propagate(x, gates, merge=None, backend="reference")
    assert type(ref.grad_fn).__name__ == "StackBackward0"


def test_backend_env_var_is_used_and_the_argument_wins(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    assert resolve_backend(None, cpu) == "cpu"
    assert resolve_backend("auto", cpu) == "cpu"
    monkeypatch.setenv(BACKEND_ENV, "reference")
    assert resolve_backend(None, cpu) == "reference"
    assert resolve_backend("auto", cpu) == "reference"
    assert resolve_backend("cpu", cpu) == "cpu"
    x, gates = make_inputs(1, 2, 1, 4, 4)
    out = propagate(x.requires_grad_(), gates, merge=None)
    assert type(out.grad_fn).__name__ == "StackBackward0"
    monkeypatch.setenv(BACKEND_ENV, "gpu")
    with pytest.raises(SpnrefineError, match=BACKEND_ENV):
        resolve_backend(None, cpu)
    assert resolve_backend("cpu", cpu) == "cpu"


def test_a_backend_registered_in_one_line_is_chosen_by_name_and_by_the_env_var(monkeypatch):
    calls = []

    def traced(x, gates, mode, directions):
        calls.append(mode)
        return propagate_directions_ref(x, gates, mode, directions)

    monkeypatch.setattr(sys.modules[__name__], "_traced_backend", traced, raising=False)
    monkeypatch.setitem(BACKENDS, "traced", Backend(f"{__name__}:_traced_backend", "cpu"))
    x, gates = make_inputs(1, 2, 1, 5, 4)
    expected = propagate(x, gates, merge=None, backend="reference")
    assert torch.equal(propagate(x, gates, merge=None, backend="traced"), expected)
    monkeypatch.setenv(BACKEND_ENV, "traced")
    assert torch.equal(propagate(x, gates, merge=None), expected)
    assert calls == ["three_way", "three_way"]
    monkeypatch.delenv(BACKEND_ENV)
    assert resolve_backend(None, torch.device("cpu")) == "cpu"  # not an "auto" backend


def test_bad_backend_merge_and_shapes_are_rejected():
    x, gates = make_inputs(1, 2, 1, 4, 4)
    with pytest.raises(ValueError, match="backend"):
        propagate(x, gates, backend="tpu")
    with pytest.raises(ValueError, match="merge"):
        propagate(x, gates, merge="mean", backend="cpu")
    with pytest.raises(ValueError, match="gates"):
        propagate(x, gates[:, :, :3], backend="cpu")
    with pytest.raises(ValueError, match="divide"):
        propagate(torch.zeros(1, 3, 4, 4), torch.zeros(1, 2, 4, 3, 4, 4), backend="cpu")


@pytest.mark.skipif(
    os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" or torch.cuda.is_available(),
    reason="the simulator or a GPU makes the cuda backend legal here",
)
def test_cuda_backend_without_a_gpu_is_a_clear_error():
    x, gates = make_inputs(1, 2, 1, 4, 4)
    with pytest.raises(SpnrefineError, match="cuda"):
        propagate(x, gates, backend="cuda")


@pytest.mark.skipif(
    os.environ.get("NUMBA_ENABLE_CUDASIM") == "1", reason="this run is the simulator run"
)
def test_cuda_kernels_pass_their_tests_in_the_simulator():
    """NUMBA_ENABLE_CUDASIM must be set before numba.cuda is imported: use a fresh process."""
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            str(ROOT / "tests" / "test_propagation_cuda.py"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    summary = result.stdout.strip().splitlines()[-1]
    assert re.search(r"\d+ passed", summary), summary


def test_cpu_kernel_leaves_torch_thread_count_alone():
    """numba and torch share the OpenMP runtime; a kernel call must not change torch's count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x, gates = make_inputs(1, 2, 1, 5, 5)
        propagate(x.requires_grad_(), gates, backend="cpu").sum().backward()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
