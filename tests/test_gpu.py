"""On a CUDA GPU: the kernels at working sizes and the whole refiner agree with the CPU.

Skipped without a GPU (the CUDA kernels' logic is tested in numba's simulator by
``test_propagation_cuda.py``, which runs everywhere, but only on tiny maps).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from spnrefine.propagation import cuda as cuda_backend
from spnrefine.propagation import normalize_gates, propagate

ON_GPU = torch.cuda.is_available() and not cuda_backend.simulated() and cuda_backend.available()
pytestmark = pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize("mode", ["three_way", "one_way"])
@pytest.mark.parametrize(
    "shape", [(2, 16, 4, 128, 128), (1, 3, 1, 67, 201), (3, 8, 8, 130, 64)], ids=str
)
def test_cuda_kernel_matches_the_cpu_kernel_at_working_sizes(shape, mode):
    b, c, g, h, w = shape
    gen = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(b, c, h, w, generator=gen)
    gates = normalize_gates(2 * torch.randn(b, g, 4, 3, h, w, generator=gen), mode)
    weight = torch.randn(b, 4, c, h, w, generator=gen)
    results = []
    for device in ("cpu", "cuda"):
        xr = x.detach().clone().to(device).requires_grad_()
        gr = gates.detach().clone().to(device).requires_grad_()
        out = propagate(xr, gr, mode, merge=None, backend=device)
        (out * weight.to(device)).sum().backward()
        results.append([t.detach().cpu() for t in (out, xr.grad, gr.grad)])
    for name, want, got in zip(("out", "dx", "dgates"), *results, strict=True):
        scale = want.abs().max().item()
        assert (got - want).abs().max().item() <= 1e-5 * max(1.0, scale), name


def test_bundled_refiner_on_the_gpu_gives_the_cpu_result():
    from spnrefine import Refiner

    cpu = Refiner.load(device="cpu")
    gpu = cpu.to("cuda")
    assert gpu.device.startswith("cuda") and next(gpu.model.parameters()).is_cuda
    image, coarse = EXAMPLES / "astronaut.jpg", EXAMPLES / "astronaut_coarse.png"
    want, got = cpu.refine(image, coarse), gpu.refine(image, coarse)
    assert got.probs.shape == want.probs.shape
    assert np.abs(got.probs - want.probs).max() <= 1e-3
    assert (got.labels != want.labels).mean() <= 1e-4
    assert got.tiles.refined == want.tiles.refined > 0


def test_training_steps_on_the_gpu_lower_the_loss():
    from spnrefine.model import ModelConfig, SPNRefiner
    from spnrefine.train.loss import refinement_loss

    torch.manual_seed(0)
    model = SPNRefiner(ModelConfig(widths=(8, 16), readout=8, tile=32)).cuda().train()
    yy, xx = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    labels = ((yy - 16) ** 2 + (xx - 14) ** 2 < 100).long().expand(4, 32, 32).cuda()
    image = labels[:, None].float().expand(4, 3, 32, 32) + 0.1 * torch.randn(4, 3, 32, 32).cuda()
    blurred = torch.nn.functional.avg_pool2d(labels[:, None].float(), 9, 1, 4)
    coarse = torch.cat([1 - blurred, blurred], 1)
    optimizer = torch.optim.Adam(model.parameters(), 1e-2)
    losses = []
    for _ in range(30):
        loss = refinement_loss(model(image, coarse), labels, coarse)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
