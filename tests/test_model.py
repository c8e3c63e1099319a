"""The refiner model: configurations, and the CPU inference fast paths against the torch path."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from spnrefine.model import ModelConfig, SPNRefiner
from spnrefine.model.fast import fold_batchnorm, normalize_gates_inplace
from spnrefine.propagation import normalize_gates


def _nontrivial(config: ModelConfig, seed: int = 0) -> SPNRefiner:
    """A model whose batch norms and gate head are far from their initial values."""
    torch.manual_seed(seed)
    model = SPNRefiner(config)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    nn.init.normal_(model.guidance.head.weight, std=0.3)
    return model.eval()


def _inputs(batch: int, classes: int, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    image = torch.rand(batch, 3, size, size, generator=generator)
    probs = torch.rand(batch, classes, size, size, generator=generator)
    return image, probs / probs.sum(1, keepdim=True)


@pytest.mark.parametrize(
    "config",
    [
        ModelConfig(),
        ModelConfig(guidance="unet", gate_groups=8, widths=(8, 16, 24), activation="elu"),
        ModelConfig(hidden=4, gate_groups=1, widths=(8, 16), readout=6),
    ],
    ids=["light", "unet", "small"],
)
@pytest.mark.parametrize("classes", [1, 2, 5])
def test_inference_fast_path_matches_the_torch_path(config: ModelConfig, classes: int):
    model = _nontrivial(config)
    image, probs = _inputs(2, classes)
    with torch.enable_grad():  # autograd on: the plain torch modules run
        expected = model(image, probs).detach()
    with torch.no_grad():  # fused kernels and folded batch norms
        fast = fold_batchnorm(model)(image, probs)
    assert fast.shape == (2, classes, 32, 32)
    assert torch.allclose(fast, expected, atol=2e-5, rtol=1e-4)
    # A large gate head makes the normalisation do real work.
    assert (model.gates(image, probs).abs().sum(3) > 0.99).any()


def test_fold_batchnorm_leaves_the_original_model_alone():
    model = _nontrivial(ModelConfig())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])


def test_inplace_normalisation_matches_the_reference():
    raw = torch.randn(2, 3, 4, 3, 9, 7) * 2
    expected = normalize_gates(raw.clone())
    out = normalize_gates_inplace(raw)
    assert out.data_ptr() == raw.data_ptr()
    assert torch.allclose(out, expected, atol=1e-6)
    assert (out.abs().sum(3) <= 1 + 1e-6).all()


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"hidden": 6, "gate_groups": 4}, "divide hidden"),
        ({"guidance": "vgg"}, "unknown guidance"),
        ({"merge": "mean"}, "unknown merge"),
        ({"widths": (8,)}, "two positive widths"),
    ],
)
def test_bad_configs_are_refused(changes: dict, message: str):
    with pytest.raises(ValueError, match=message):
        SPNRefiner(ModelConfig(**changes))


def test_light_guidance_costs_less_than_the_unet():
    def macs(model: SPNRefiner) -> int:
        total = 0

        def hook(module, _, output):
            nonlocal total
            k = module.kernel_size[0] * module.kernel_size[1]
            total += output[0].numel() * module.in_channels // module.groups * k

        handles = [
            m.register_forward_hook(hook)
            for m in model.guidance.modules()
            if isinstance(m, nn.Conv2d)
        ]
        with torch.no_grad():
            model.gates(*_inputs(1, 2, 128))
        for handle in handles:
            handle.remove()
        return total

    light = macs(SPNRefiner(ModelConfig()))
    unet = macs(SPNRefiner(ModelConfig(guidance="unet", gate_groups=8, widths=(16, 32, 48, 64))))
    assert light < 0.5 * unet
