"""Widen a trained refiner's guidance net without changing what it computes.

``widen_guidance`` builds the same refiner with wider guidance layers, copies every trained
weight into its place, and zeroes the weights that read the new channels. The wider model
starts out computing exactly what the narrow one did (new channels are computed but read with
weight zero), and training moves those zero weights, since their gradients are not zero. So a
fine-tune can add capacity to trained weights instead of starting a wider model from scratch.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from spnrefine.model.architectures import build_model
from spnrefine.model.refiner import SPNRefiner


def _convs(model: SPNRefiner) -> dict[str, nn.Conv2d]:
    """The guidance net's convolutions by state-dict name, each knowing its input segments
    (the widths it reads, concatenated; set where GuidanceNet builds them)."""
    return {
        f"guidance.{name}": module
        for name, module in model.guidance.named_modules()
        if isinstance(module, nn.Conv2d)
    }


def _batchnorm_of(conv_name: str) -> str | None:
    """Where a batch norm after a convolution sits: the next module of its Sequential."""
    head, last = conv_name.rsplit(".", 1)
    return f"{head}.{int(last) + 1}" if last.isdigit() else None


def _input_index(old: tuple[int, ...], new: tuple[int, ...]) -> torch.Tensor:
    """Where each old input channel sits among the new ones (segments keep their order)."""
    index, offset = [], 0
    for old_len, new_len in zip(old, new, strict=True):
        index.extend(range(offset, offset + old_len))
        offset += new_len
    return torch.tensor(index, dtype=torch.long)


def widen_guidance(model: SPNRefiner, widths: tuple[int, ...]) -> SPNRefiner:
    """A copy of ``model`` whose light guidance net has ``widths``, each at least the old one.

    The copy gives the same output as ``model`` in eval mode (up to float rounding). New
    channels get the default initialisation (seed torch beforehand for a repeatable result).
    """
    old_config = model.config
    widths = tuple(int(w) for w in widths)
    if old_config.guidance != "light":
        raise ValueError(f"only the light guidance net can be widened, not {old_config.guidance!r}")
    if len(widths) != len(old_config.widths) or any(
        new < old for new, old in zip(widths, old_config.widths, strict=True)
    ):
        raise ValueError(
            f"widths {','.join(map(str, widths))} must have {len(old_config.widths)} entries, "
            f"each at least the trained {','.join(map(str, old_config.widths))}"
        )
    grown = build_model(
        dataclasses.replace(old_config, widths=widths, extra=dict(old_config.extra))
    )
    old_state, new_state = model.state_dict(), grown.state_dict()
    old_convs, new_convs = _convs(model), _convs(grown)
    done = set()
    with torch.no_grad():
        for name, conv in new_convs.items():
            old_inputs = old_convs[name].input_segments
            weight = new_state[f"{name}.weight"]
            index = _input_index(old_inputs, conv.input_segments)
            fresh = torch.ones(weight.shape[1], dtype=torch.bool)
            fresh[index] = False
            weight[:, fresh] = 0  # nothing reads the new channels yet
            old_out = old_convs[name].out_channels
            weight[:old_out, index] = old_state[f"{name}.weight"]
            done.add(f"{name}.weight")
            norm = _batchnorm_of(name)
            if norm is None or f"{norm}.running_mean" not in new_state:
                continue
            for part in ("weight", "bias", "running_mean", "running_var"):
                new_state[f"{norm}.{part}"][:old_out] = old_state[f"{norm}.{part}"]
                done.add(f"{norm}.{part}")
        for key, value in new_state.items():
            if key in done:
                continue
            if value.shape != old_state[key].shape:  # a layer this function does not know
                raise ValueError(f"cannot widen {key}: {tuple(old_state[key].shape)}")
            value.copy_(old_state[key])
    grown.load_state_dict(new_state)
    return grown.train(model.training)
