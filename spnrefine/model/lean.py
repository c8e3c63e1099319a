"""The refiner for inference without torch: the guidance net through OpenCV's DNN module (an
ONNX graph built straight from the weights), the gate normalisation, per-class embedding,
propagation and tail through numba kernels (`kernels`) or their numpy twins (`kernels_numpy`).

Loading numba and its cached kernels takes about half a second; the numpy twins need nothing
loaded but are slower per pixel. A refiner runs the numpy set while the class maps it has
refined, and those it was told to expect (`expect`: the tiler announces an image's maps before
it starts; `expect_many`: a batch of several images announces more than the numpy set pays for,
unless their sizes say they are a few small ones), stay within
``NUMPY_MAPS`` (a one-shot refine of a photo-sized image), and numba beyond, unless told which.

It computes what ``SPNRefiner`` computes in eval mode (the torch model stays the one definition,
used for training and on a GPU; the tests hold the two against each other), and loads from the
same ``model.safetensors`` + ``config.json``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

import numpy as np

from spnrefine.model import kernels_numpy, onnx
from spnrefine.model.config import (
    FUSION_EXTRA,
    GATES_PER_GROUP,
    IMAGE_MEAN,
    IMAGE_STD,
    NUM_CUES,
    ModelConfig,
)
from spnrefine.propagation.layout import DIRECTIONS

MEAN = np.array(IMAGE_MEAN, np.float32)[:, None, None]
STD = np.array(IMAGE_STD, np.float32)[:, None, None]
BN_EPS = 1e-5  # torch.nn.BatchNorm2d's default
# Class maps (tiles × classes) propagated in one pass: about 2.7 MB each for 128×128 tiles.
CLASS_MAPS_PER_PASS = 16
# Tiles through the model in one pass: OpenCV holds every layer's output of a call (about
# 20 MB per 128×128 tile), and the gates take 3 MB per tile.
TILES_PER_PASS = 4
# Tile × class maps (128×128) a refiner does with the numpy kernels before numba pays for its
# loading, in time and in memory (numba adds about 90 MB resident). One-shot `refine` of DAVIS
# frames, whole processes, numpy against numba on the 2 cores: 14 maps 1.07-1.13 s against
# 1.27-1.65 s, 22 maps 1.01-1.04 s against 1.44-1.50 s, 32 maps 1.15-1.39 s against
# 1.34-1.60 s, 54 maps 2.26-2.59 s against 2.02-2.23 s, 78 maps (1920×1080) 3.33-3.36 s and
# 263 MB against 3.23-3.28 s and 352 MB.
NUMPY_MAPS = 96
KERNEL_SETS = ("auto", "numba", "numpy")


class WeightsMismatch(ValueError):
    """The weights do not hold the tensors the config describes."""


class _State:
    """The weights by name; each taken once, so that leftovers can be refused at the end."""

    def __init__(self, state: dict[str, np.ndarray]):
        self.state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
        self.taken: set[str] = set()

    def take(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name not in self.state:
            raise WeightsMismatch(f"missing {name}")
        value = np.asarray(self.state[name], dtype=np.float32)
        if value.shape != shape:
            raise WeightsMismatch(f"{name} is {value.shape}, expected {shape}")
        self.taken.add(name)
        return value

    def conv_bn(self, conv: str, norm: str, cin: int, cout: int, size: int = 3):
        """A bias-free convolution followed by an eval-mode batch norm, folded into one."""
        weight = self.take(f"{conv}.weight", (cout, cin, size, size))
        gamma = self.take(f"{norm}.weight", (cout,))
        beta = self.take(f"{norm}.bias", (cout,))
        mean = self.take(f"{norm}.running_mean", (cout,))
        var = self.take(f"{norm}.running_var", (cout,))
        scale = gamma / np.sqrt(var + np.float32(BN_EPS))
        return (weight * scale[:, None, None, None]).astype(np.float32), beta - mean * scale

    def conv(self, name: str, cin: int, cout: int, size: int):
        weight = self.take(f"{name}.weight", (cout, cin, size, size))
        return weight, self.take(f"{name}.bias", (cout,))

    def check_all_taken(self) -> None:
        left = sorted(set(self.state) - self.taken)
        if left:
            raise WeightsMismatch(f"unexpected {', '.join(left[:3])}")


# OpenCV's DNN (5.x) runs convolutions on channels in blocks of 8: a concatenation whose parts
# are not whole blocks (the guidance net's full-resolution skip, 12 channels) takes as long as
# a convolution. Every hidden layer is widened to whole blocks with zero channels (zero weights
# and bias in, zero weights out), which gives the same numbers.
CHANNEL_BLOCK = 8


class _Tensor:
    """A tensor of the graph: its name, its width with the padding, and where its real
    channels lie within it."""

    def __init__(self, name: str, width: int, channels: np.ndarray):
        self.name, self.width, self.channels = name, width, channels


class _Graph:
    """Builds the guidance net's ONNX graph node by node, hidden layers widened to whole
    channel blocks."""

    def __init__(self, act: str):
        self.act, self.nodes, self.inits, self.count = act, [], [], 0
        self.tensors: list[_Tensor] = []  # every node's output, in order

    def _name(self, kind: str) -> str:
        self.count += 1
        return f"{kind}{self.count}"

    def _made(self, tensor: _Tensor) -> _Tensor:
        self.tensors.append(tensor)
        return tensor

    def conv(
        self,
        x: _Tensor,
        weight: np.ndarray,
        bias: np.ndarray,
        stride: int = 1,
        act: bool = True,
        out: str | None = None,
    ) -> _Tensor:
        """Conv (+ activation) of ``x``; ``out`` names a graph output: no activation, and its
        own width."""
        if out and act:
            raise ValueError("a graph output has no activation")
        cout = weight.shape[0]
        width = cout if out else -(-cout // CHANNEL_BLOCK) * CHANNEL_BLOCK
        padded = np.zeros((width, x.width, *weight.shape[2:]), np.float32)
        padded[:cout, x.channels] = weight
        padded_bias = np.zeros(width, np.float32)
        padded_bias[:cout] = bias
        name = out or self._name("conv")
        self.inits += [onnx.tensor(f"{name}.w", padded), onnx.tensor(f"{name}.b", padded_bias)]
        pad = weight.shape[-1] // 2
        self.nodes.append(
            onnx.node(
                "Conv",
                [x.name, f"{name}.w", f"{name}.b"],
                [name],
                name,
                kernel_shape=list(weight.shape[-2:]),
                pads=[pad] * 4,
                strides=[stride, stride],
            )
        )
        result = self._made(_Tensor(name, width, np.arange(cout)))
        if not act:
            return result
        # ReLU and ELU keep zero channels zero.
        act_name = self._name("act")
        if self.act == "elu":
            self.nodes.append(onnx.node("Elu", [name], [act_name], act_name, alpha=1.0))
        else:
            self.nodes.append(onnx.node("Relu", [name], [act_name], act_name))
        return self._made(_Tensor(act_name, width, result.channels))

    def up2(self, x: _Tensor) -> _Tensor:
        """×2 bilinear with half-pixel centres (torch's interpolate, align_corners=False)."""
        name = self._name("up")
        scales = f"{name}.scales"
        self.inits.append(onnx.tensor(scales, np.array([1, 1, 2, 2], np.float32)))
        self.nodes.append(
            onnx.node(
                "Resize",
                [x.name, "", scales],
                [name],
                name,
                mode="linear",
                coordinate_transformation_mode="half_pixel",
            )
        )
        return self._made(_Tensor(name, x.width, x.channels))

    def concat(self, parts: list[_Tensor]) -> _Tensor:
        name = self._name("cat")
        self.nodes.append(onnx.node("Concat", [p.name for p in parts], [name], name, axis=1))
        offsets = np.cumsum([0] + [p.width for p in parts])
        channels = np.concatenate([p.channels + o for p, o in zip(parts, offsets, strict=False)])
        return self._made(_Tensor(name, int(offsets[-1]), channels))

    def max_pool(self, x: _Tensor) -> _Tensor:
        name = self._name("pool")
        self.nodes.append(
            onnx.node("MaxPool", [x.name], [name], name, kernel_shape=[2, 2], strides=[2, 2])
        )
        return self._made(_Tensor(name, x.width, x.channels))


def guidance_onnx(config: ModelConfig, weights: _State) -> bytes:
    """The guidance net of ``config`` (batch norms folded) as an ONNX model: input ``x``
    (N×5×H×W: normalised RGB and the two cues), output ``raw`` (N×G·12×H×W, before the gate
    normalisation)."""
    graph = guidance_graph(config, weights)
    groups = config.gate_groups * GATES_PER_GROUP
    return onnx.model(
        graph.nodes,
        graph.inits,
        [onnx.value_info("x", ["N", 3 + NUM_CUES, "H", "W"])],
        [onnx.value_info("raw", ["N", groups, "H", "W"])],
    )


def guidance_graph(config: ModelConfig, weights: _State) -> _Graph:
    """The nodes and weights of `guidance_onnx`'s graph."""
    graph, widths = _Graph(config.activation), config.widths
    prefix, cin, skips = "guidance", 3 + NUM_CUES, []
    x = _Tensor("x", cin, np.arange(cin))

    def block(x: _Tensor, name: str, cin: int, cout: int, stride: int = 1) -> _Tensor:
        w, b = weights.conv_bn(f"{name}.0", f"{name}.1", cin, cout)
        return graph.conv(x, w, b, stride)

    if config.guidance == "unet":
        for i, width in enumerate(widths):
            if i:
                x = graph.max_pool(x)
            x = block(x, f"{prefix}.down.{i}", cin, width)
            w, b = weights.conv_bn(f"{prefix}.down.{i}.3", f"{prefix}.down.{i}.4", width, width)
            x = graph.conv(x, w, b)
            skips.append(x)
            cin = width
        pairs = zip(reversed(widths[:-1]), reversed(widths[1:]), strict=True)
        for j, (skip_width, width) in enumerate(pairs):
            x = graph.concat([graph.up2(x), skips[-2 - j]])
            x = block(x, f"{prefix}.up.{j}", width + skip_width, skip_width)
            w, b = weights.conv_bn(
                f"{prefix}.up.{j}.3", f"{prefix}.up.{j}.4", skip_width, skip_width
            )
            x = graph.conv(x, w, b)
        head_in = widths[0]
    else:
        x = block(x, f"{prefix}.down.0", cin, widths[0])
        skips.append(x)
        for i, (prev, width) in enumerate(zip(widths[:-1], widths[1:], strict=True), 1):
            x = block(x, f"{prefix}.down.{i}.0", prev, width, stride=2)
            x = block(x, f"{prefix}.down.{i}.1", width, width)
            skips.append(x)
        pairs = list(zip(reversed(widths[1:-1]), reversed(widths[2:]), strict=True))
        for j, (skip_width, width) in enumerate(pairs):
            x = graph.concat([graph.up2(x), skips[-2 - j]])
            x = block(x, f"{prefix}.up.{j}", width + skip_width, skip_width)
        head_in = widths[0] + FUSION_EXTRA
        x = graph.concat([graph.up2(x), skips[0]])
        x = block(x, f"{prefix}.up.{len(pairs)}", widths[1] + widths[0], head_in)
    groups = config.gate_groups * GATES_PER_GROUP
    w, b = weights.conv(f"{prefix}.head", head_in, groups, 1)
    graph.conv(x, w, b, act=False, out="raw")
    return graph


def coarse_cues(probs: np.ndarray) -> np.ndarray:
    """N×C×H×W class probabilities → N×2×H×W: top-1 probability and top-1 minus top-2."""
    if probs.shape[1] == 1:
        top1 = np.maximum(probs[:, 0], 1 - probs[:, 0])
        top2 = np.minimum(probs[:, 0], 1 - probs[:, 0])
    elif probs.shape[1] == 2:
        top1, top2 = probs.max(axis=1), probs.min(axis=1)
    else:
        top = np.partition(probs, -2, axis=1)
        top1, top2 = top[:, -1], top[:, -2]
    return np.stack([top1, top1 - top2], 1)


def _at_most(counts: Iterable[int | None], limit: int) -> bool:
    """Whether the known `counts` sum to at most `limit`, read only until the answer is
    clear (an unknown count, None, is more)."""
    total = 0
    for count in counts:
        if count is None or (total := total + count) > limit:
            return False
    return True


class LeanRefiner:
    """``SPNRefiner`` for CPU inference without torch: ``logits(image, probs)`` on numpy arrays."""

    def __init__(self, config: ModelConfig, state: dict[str, np.ndarray], kernels: str = "auto"):
        import cv2

        config.check()
        if kernels not in KERNEL_SETS:
            raise ValueError(f"kernels must be one of {KERNEL_SETS}, got {kernels!r}")
        self.config, self.state, self.kernels = config, state, kernels
        self.maps_done = 0  # class maps refined so far (for kernels="auto")
        self.maps_expected = 0  # class maps announced ahead (`expect`)
        weights = _State(state)
        k = config.hidden
        self.net = cv2.dnn.readNetFromONNX(np.frombuffer(guidance_onnx(config, weights), np.uint8))
        self.embed_w, self.embed_b = weights.conv("embed", 2, k, 3)
        d = len(DIRECTIONS)
        if config.merge == "learned":
            merge_w, self.merge_b = weights.conv("merge", d * k, k, 1)
            self.merge_w = np.ascontiguousarray(merge_w.reshape(k, d * k))
        first_w, self.read_b1 = weights.conv("readout.0", k + 2, config.readout, 1)
        self.read_w1 = np.ascontiguousarray(first_w.reshape(config.readout, k + 2))
        last_w, last_b = weights.conv("readout.2", config.readout, 1, 1)
        self.read_w2 = np.ascontiguousarray(last_w.reshape(-1))
        self.read_b2 = np.float32(last_b[0])
        weights.check_all_taken()

    @property
    def tile_multiple(self) -> int:
        """Tile sides must divide by this: the guidance net halves the tile once per scale."""
        return 2 ** (len(self.config.widths) - 1)

    def __getstate__(self) -> dict:
        # OpenCV's network does not pickle (Ray sends refiners to workers): rebuild it.
        return {"config": self.config, "state": self.state, "kernels": self.kernels}

    def __setstate__(self, data: dict) -> None:
        self.__init__(data["config"], data["state"], data.get("kernels", "auto"))

    def expect(self, maps: int) -> None:
        """Announce ``maps`` tile × class maps to come (on top of those refined so far): with
        the kernels on auto, work the numpy set would not pay for goes to numba from the start."""
        self.maps_expected = max(self.maps_expected, self.maps_done) + maps

    def expect_many(self, tiles: Iterable[int | None] | None = None) -> None:
        """Announce a batch of several images: more work than the numpy set pays for, unless
        ``tiles``, each image's tile count (None where unknown; read only as far as needed),
        sum to no more than it pays for (a few small images: the tiler then announces each as
        it comes)."""
        if tiles is None or not _at_most(tiles, NUMPY_MAPS):
            self.expect(NUMPY_MAPS + 1)

    def kernel_set(self, maps: int):
        """The kernel module for a call that refines ``maps`` tile × class maps."""
        self.maps_done += maps
        use_numpy = self.kernels == "numpy" or (
            self.kernels == "auto"
            and max(self.maps_done, self.maps_expected) <= NUMPY_MAPS
            and "spnrefine.model.kernels" not in sys.modules  # numba already paid for
        )
        if use_numpy:
            return kernels_numpy
        from spnrefine.model import kernels

        return kernels

    def num_parameters(self) -> int:
        """Learned values, as ``SPNRefiner.num_parameters`` counts them (no batch-norm stats)."""
        buffers = ("running_mean", "running_var", "num_batches_tracked")
        return sum(v.size for k, v in self.state.items() if not k.endswith(buffers))

    def to_torch(self):
        """The torch model with these weights (for a GPU, or for training)."""
        import torch

        from spnrefine.model import SPNRefiner

        model = SPNRefiner(self.config)
        model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in self.state.items()})
        return model.eval()

    def tile_logits(self, tiles: np.ndarray, probs: np.ndarray) -> np.ndarray:
        """A batch of tiles N×3×t×t uint8 RGB and their probabilities → logits (the tiler's
        model call), a few tiles at a time."""
        image = tiles.astype(np.float32) / np.float32(255)
        if len(tiles) <= TILES_PER_PASS:
            return self.logits(image, probs)
        logits = np.empty(probs.shape, np.float32)
        for first in range(0, len(tiles), TILES_PER_PASS):
            part = slice(first, first + TILES_PER_PASS)
            logits[part] = self.logits(image[part], probs[part])
        return logits

    def gates(self, image: np.ndarray, probs: np.ndarray, kernels=None) -> np.ndarray:
        """image N×3×H×W in [0, 1], probs N×C×H×W → normalised gates N×G×4×3×H×W."""
        kernels = kernels or self.kernel_set(0)
        n, _, h, w = image.shape
        x = np.empty((n, 3 + NUM_CUES, h, w), np.float32)
        x[:, :3] = (image - MEAN) / STD
        x[:, 3:] = coarse_cues(probs)
        self.net.setInput(x)
        raw = np.ascontiguousarray(self.net.forward(), dtype=np.float32)
        gates = raw.reshape(n, self.config.gate_groups, len(DIRECTIONS), 3, h, w)
        if self.config.mode == "three_way":
            kernels.normalize_three_way(gates.reshape(-1, 3, h * w))
            return gates
        middle = gates[:, :, :, 1:2]
        one_way = np.zeros_like(gates)
        one_way[:, :, :, 1:2] = middle / np.maximum(np.abs(middle), 1.0)
        return one_way

    def logits(self, image: np.ndarray, probs: np.ndarray) -> np.ndarray:
        """image N×3×H×W float32 in [0, 1], probs N×C×H×W float32 → logits N×C×H×W.

        Classes are propagated a few at a time (they are independent given the gates), so the
        memory a call needs does not grow with the class count.
        """
        probs = np.ascontiguousarray(probs, dtype=np.float32)
        n, c = probs.shape[:2]
        kernels = self.kernel_set(n * c)
        gates = self.gates(np.asarray(image, np.float32), probs, kernels)
        step = max(1, CLASS_MAPS_PER_PASS // n)
        if step >= c:
            return self._class_logits(probs, gates, kernels)
        logits = np.empty(probs.shape, np.float32)
        for first in range(0, c, step):
            part = np.ascontiguousarray(probs[:, first : first + step])
            logits[:, first : first + step] = self._class_logits(part, gates, kernels)
        return logits

    def _class_logits(self, probs: np.ndarray, gates: np.ndarray, kernels) -> np.ndarray:
        n, c, h, w = probs.shape
        k = self.config.hidden
        cue = np.empty((n * c, 2, h, w), np.float32)
        hidden = np.empty((n * c, k, h, w), np.float32)
        kernels.embed(probs.reshape(n * c, h, w), self.embed_w, self.embed_b, cue, hidden)
        out = kernels.propagate(
            hidden.reshape(n, c * k, h, w), gates, DIRECTIONS, self.config.mode == "three_way"
        )
        del hidden
        elu = self.config.activation == "elu"
        if self.config.merge == "learned":
            logits = np.empty((n, c, h, w), np.float32)
            kernels.tail(
                out,
                cue,
                self.merge_w,
                self.merge_b,
                self.read_w1,
                self.read_b1,
                self.read_w2,
                self.read_b2,
                elu,
                logits,
            )
            return logits
        merged = out.max(axis=1).reshape(n * c, k, h, w)
        features = np.concatenate([merged, cue], 1)
        hid = np.einsum("rf,mfhw->mrhw", self.read_w1, features) + self.read_b1[:, None, None]
        hid = np.where(hid > 0, hid, np.expm1(np.minimum(hid, 0)) if elu else 0)
        logits = np.einsum("r,mrhw->mhw", self.read_w2, hid) + self.read_b2
        return logits.reshape(n, c, h, w).astype(np.float32)
