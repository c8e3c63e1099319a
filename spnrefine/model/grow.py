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

from spnrefine.model.guidance import FUSION_EXTRA, GATES_PER_GROUP, NUM_CUES
from spnrefine.model.refiner import SPNRefiner


@dataclasses.dataclass
class _Conv:
    """One guidance convolution: its name, input segments (concatenated), output width, and
    whether a batch norm follows it (named as the next module of its Sequential)."""

    name: str
    inputs: list[int]
    out: int
    norm: bool = True


def _light_convs(widths: tuple[int, ...], groups: int) -> list[_Conv]:
    """The convolutions of GuidanceNet(arch="light") in order, as its __init__ builds them."""
    n = len(widths)
    convs = [_Conv("guidance.down.0.0", [3 + NUM_CUES], widths[0])]
    for i in range(1, n):
        convs.append(_Conv(f"guidance.down.{i}.0.0", [widths[i - 1]], widths[i]))
        convs.append(_Conv(f"guidance.down.{i}.1.0", [widths[i]], widths[i]))
    for j in range(n - 2):  # decoder: [upsampled deeper features, skip] → skip width
        deep, skip = widths[n - 1 - j], widths[n - 2 - j]
        convs.append(_Conv(f"guidance.up.{j}.0", [deep, skip], skip))
    fusion = widths[0] + FUSION_EXTRA
    convs.append(_Conv(f"guidance.up.{n - 2}.0", [widths[1], widths[0]], fusion))
    convs.append(_Conv("guidance.head", [fusion], groups * GATES_PER_GROUP, norm=False))
    return convs


def _batchnorm_of(conv_name: str) -> str:
    head, last = conv_name.rsplit(".", 1)
    return f"{head}.{int(last) + 1}"


def _input_index(old: list[int], new: list[int]) -> torch.Tensor:
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
    grown = SPNRefiner(dataclasses.replace(old_config, widths=widths, extra=dict(old_config.extra)))
    old_state, new_state = model.state_dict(), grown.state_dict()
    done = set()
    with torch.no_grad():
        groups = old_config.gate_groups
        convs = zip(
            _light_convs(old_config.widths, groups), _light_convs(widths, groups), strict=True
        )
        for old, new in convs:
            weight = new_state[f"{new.name}.weight"]
            index = _input_index(old.inputs, new.inputs)
            fresh = torch.ones(weight.shape[1], dtype=torch.bool)
            fresh[index] = False
            weight[:, fresh] = 0  # nothing reads the new channels yet
            weight[: old.out, index] = old_state[f"{old.name}.weight"]
            done.add(f"{new.name}.weight")
            if not new.norm:
                continue
            norm = _batchnorm_of(new.name)
            for part in ("weight", "bias", "running_mean", "running_var"):
                new_state[f"{norm}.{part}"][: old.out] = old_state[f"{norm}.{part}"]
                done.add(f"{norm}.{part}")
        for key, value in new_state.items():
            if key in done:
                continue
            if value.shape != old_state[key].shape:  # a layer this function does not know
                raise ValueError(f"cannot widen {key}: {tuple(old_state[key].shape)}")
            value.copy_(old_state[key])
    grown.load_state_dict(new_state)
    return grown.train(model.training)
