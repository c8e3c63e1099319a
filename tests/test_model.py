"""The refiner model: configurations, and the CPU inference fast paths against the torch path."""

from __future__ import annotations

import pytest
import torch
from models import trained_looking
from torch import nn

from spnrefine.model import ModelConfig, SPNRefiner
from spnrefine.model.fast import fold_batchnorm
from spnrefine.model.grow import widen_guidance
from spnrefine.propagation import normalize_gates
from spnrefine.propagation.normalize import normalize_gates_inplace


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
    model = trained_looking(config)
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
    model = trained_looking(ModelConfig())
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


def test_normalize_gates_overwrites_only_what_it_may_and_only_without_autograd():
    raw = torch.randn(2, 3, 4, 3, 9, 7) * 2
    expected = normalize_gates(raw.clone())
    kept = raw.clone()
    assert normalize_gates(raw).data_ptr() != raw.data_ptr()  # not allowed: a new tensor
    with torch.no_grad():
        assert normalize_gates(raw).data_ptr() != raw.data_ptr()
        assert torch.equal(raw, kept)
        out = normalize_gates(raw, may_overwrite=True)
    assert out.data_ptr() == raw.data_ptr()
    assert torch.allclose(out, expected, atol=1e-6)
    grad = kept.clone().requires_grad_()
    assert normalize_gates(grad, may_overwrite=True).grad_fn is not None


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"hidden": 6, "gate_groups": 4}, "divide hidden"),
        ({"guidance": "vgg"}, "unknown guidance"),
        ({"merge": "mean"}, "unknown merge"),
        ({"widths": (8,)}, "two positive widths"),
        ({"tile": 7}, "tile 7: must be a multiple of 8"),
        ({"tile": 8}, "at least 16"),
        ({"tile": 72, "widths": (8, 8, 8, 8, 8)}, "tile 72: must be a multiple of 16"),
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


@pytest.mark.parametrize("widths", [(8, 16, 24), (12, 16, 40)])
def test_widened_guidance_computes_what_the_trained_one_did(widths):
    narrow = trained_looking(ModelConfig(hidden=4, gate_groups=2, widths=(8, 16, 24), readout=6))
    torch.manual_seed(3)
    wide = widen_guidance(narrow, widths)
    assert wide.config.widths == widths and wide.config.hidden == 4
    image, probs = _inputs(2, 3)
    with torch.no_grad():
        torch.testing.assert_close(wide(image, probs), narrow(image, probs), rtol=0, atol=1e-6)
    if widths == narrow.config.widths:
        return
    # The new channels are live: the zero weights that read them have gradients, and moving
    # one changes the output.
    wide.train()
    wide(image, probs).square().mean().backward()
    reader = wide.guidance.up[0][0].weight  # reads [upsampled ¼-res features, ½-res skip]
    fresh = reader.grad[:, 24:40]  # ¼-res channels 24..39 did not exist before
    assert torch.all(reader[:, 24:40] == 0) and fresh.abs().sum() > 0
    with torch.no_grad():
        reader[:, 24:40] = 0.1
    wide.eval()
    with torch.no_grad():
        assert (wide(image, probs) - narrow(image, probs)).abs().max() > 1e-3


def test_widening_refuses_narrower_or_other_shapes():
    light = SPNRefiner(ModelConfig(widths=(8, 16, 24)))
    for widths in [(8, 12, 24), (8, 16), (8, 16, 24, 32)]:
        with pytest.raises(ValueError, match="each at least the trained 8,16,24"):
            widen_guidance(light, widths)
    unet = SPNRefiner(ModelConfig(guidance="unet", widths=(8, 16)))
    with pytest.raises(ValueError, match="only the light guidance net"):
        widen_guidance(unet, (8, 32))
