"""Real coarse maps for the prepared training sets: pretrained segmenters from registry packages
(ISNet from npm @imgly/background-removal-data, MediaPipe's selfie segmenter) and small CNNs
trained k-fold on each set; one function per source, and the quality of each against the masks.

    python scripts/make_coarse.py pretrained --set davis --source isnet-med1024 [--every 10]
    python scripts/make_coarse.py weak --set camvid [--folds 5]
    python scripts/make_coarse.py eval --set davis [--out COARSE-davis.md]
    python scripts/make_coarse.py list

A set is read from ``/work/data/<set>`` when that folder has ``images/``, else from
``/work/shared/data/<set>``; maps are written to ``/work/data/<set>/coarse-<source>/<stem>.png``
(never into shared/): PNG L at about 1/stride of the image's size with the image's aspect
ratio, soft foreground 0-255 on binary sets, class ids on multi-class sets. Existing maps are
kept, so every command resumes where it stopped.

What each command needs (none of it is a dependency of spnrefine):
- ``pretrained``: a separate environment with ``onnxruntime``, ``onnx`` (ISNet at sizes other
  than 1024), ``ai-edge-litert`` (MediaPipe), ``numpy``, ``pillow``, ``opencv-python-headless``, and
  the npm packages unpacked under ``--tools`` (default /work/tools/npm):
  ``npm pack @imgly/background-removal-data@1.4.5 @mediapipe/selfie_segmentation@0.1.1675465747``
  then ``tar xzf`` each into a folder named after the tarball.
- ``weak`` and ``eval``: the spnrefine environment (torch, spnrefine.metrics).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

DATA = Path("/work/data")
SHARED = Path("/work/shared/data")
TOOLS = Path("/work/tools/npm")
IMGLY_DATA = "imgly-background-removal-data-1.4.5"
MEDIAPIPE = "mediapipe-selfie_segmentation-0.1.1675465747"
STRIDES = (8, 16)
IGNORE = 255
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


# ---------------------------------------------------------------------------------------------
# Sets, sizes and writing


@dataclass(frozen=True)
class PreparedSet:
    """Where one set's images and masks are read and its coarse maps written."""

    name: str
    root: Path  # holds images/ and masks/
    out: Path  # /work/data/<set>: holds coarse-<source>/

    @cached_property
    def mask_values(self) -> frozenset[int]:
        """Every value any mask holds."""
        values: set[int] = set()
        for stem in self.stems():
            values.update(np.unique(self.mask(stem)).tolist())
        return frozenset(values)

    @property
    def foreground_255(self) -> bool:
        """Masks are 0/255 (255 = foreground); otherwise class ids with 255 = void."""
        return self.mask_values <= {0, 255}

    @property
    def num_classes(self) -> int:
        if self.foreground_255:
            return 2
        return max(self.mask_values - {IGNORE}, default=0) + 1

    @property
    def multiclass(self) -> bool:
        """More than two classes: coarse maps are class ids, not soft foreground."""
        return self.num_classes > 2

    def labels(self, stem: str) -> np.ndarray:
        """H×W uint8 class ids with 255 = void (a 0/255 mask becomes 0/1)."""
        mask = self.mask(stem)
        return (mask > 127).astype(np.uint8) if self.foreground_255 else mask

    def split(self) -> dict[str, str]:
        """splits.txt as stem → train|val; empty when the set has none."""
        path = self.root / "splits.txt"
        if not path.is_file():
            return {}
        pairs = (line.split("\t") for line in path.read_text().splitlines() if "\t" in line)
        return {stem.strip(): part.strip() for stem, part in pairs}

    def stems(self) -> list[str]:
        """Stems that have both an image and a mask, sorted."""
        masks = {p.stem for p in (self.root / "masks").glob("*.png")}
        return sorted(
            p.stem
            for p in (self.root / "images").iterdir()
            if p.suffix.lower() in IMAGE_SUFFIXES and p.stem in masks
        )

    def image_path(self, stem: str) -> Path:
        for suffix in IMAGE_SUFFIXES:
            path = self.root / "images" / f"{stem}{suffix}"
            if path.is_file():
                return path
        raise FileNotFoundError(f"{self.root / 'images'}: no image for {stem}")

    def image(self, stem: str) -> np.ndarray:
        """H×W×3 uint8 RGB."""
        with Image.open(self.image_path(stem)) as im:
            return np.asarray(im.convert("RGB"))

    def mask(self, stem: str) -> np.ndarray:
        """H×W uint8: 0/255 on binary sets, class ids with 255 = void on multi-class sets."""
        with Image.open(self.root / "masks" / f"{stem}.png") as im:
            return np.asarray(im)

    def coarse_path(self, source: str, stem: str) -> Path:
        return self.out / f"coarse-{source}" / f"{stem}.png"


def find_set(name: str, data: Path = DATA, shared: Path = SHARED) -> PreparedSet:
    """A prepared set by name: /work/data/<set> first, then shared/data/<set>."""
    for root in (data / name, shared / name):
        if (root / "images").is_dir() and (root / "masks").is_dir():
            return PreparedSet(name, root, data / name)
    raise SystemExit(f"{name}: no images/ and masks/ under {data} or {shared}")


def coarse_size(height: int, width: int, stride: int) -> tuple[int, int]:
    """(h, w) of a coarse map at 1/stride of an image, at least 1×1. Rounding each side keeps
    the aspect ratio to within a pixel, as spnrefine asks of a coarse map."""
    return max(1, round(height / stride)), max(1, round(width / stride))


def resize_probs(probs: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Resize H×W or H×W×C float probabilities, each axis on its own: area-average when
    shrinking (a segmenter's output seen at low resolution), bilinear when enlarging."""
    h, w = size_hw
    shrink = h <= probs.shape[0] and w <= probs.shape[1]
    interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    probs = np.asarray(probs, np.float32)
    if probs.ndim == 3 and probs.shape[2] > 4:  # OpenCV's area resize takes at most 4 channels
        return np.stack([resize_probs(probs[..., c], size_hw) for c in range(probs.shape[2])], -1)
    out = cv2.resize(np.ascontiguousarray(probs), (w, h), interpolation=interpolation)
    return out.reshape((h, w) + probs.shape[2:])


def soft_png(prob: np.ndarray) -> np.ndarray:
    """Foreground probability 0..1 → uint8 0..255, rounded."""
    return np.clip(np.rint(np.asarray(prob, np.float32) * 255), 0, 255).astype(np.uint8)


def write_png(path: Path, values: np.ndarray) -> None:
    """Write a uint8 H×W map as PNG L atomically (a temporary file, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        Image.fromarray(np.asarray(values, np.uint8), mode="L").save(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------------------------
# Pretrained segmenters: an image in, named full-frame foreground probabilities out


Predict = Callable[[np.ndarray], dict[str, np.ndarray]]


@dataclass(frozen=True)
class Pretrained:
    """A segmenter from a registry package. ``outputs`` names the maps one run gives (``""``:
    the main output); each output at each stride is one coarse source."""

    name: str
    build: Callable[[Path], Predict]
    outputs: tuple[str, ...]
    description: str

    def sources(self, strides: Sequence[int] = STRIDES) -> list[str]:
        return [source_name(self.name, out, s) for out in self.outputs for s in strides]


def source_name(segmenter: str, output: str, stride: int) -> str:
    return "-".join(part for part in (segmenter, output, f"s{stride}") if part)


PRETRAINED: dict[str, Pretrained] = {}


def register(name: str, outputs: tuple[str, ...], description: str):
    def wrap(build: Callable[[Path], Predict]) -> Callable[[Path], Predict]:
        PRETRAINED[name] = Pretrained(name, build, outputs, description)
        return build

    return wrap


# ISNet (DIS, general-use weights) as shipped by @imgly/background-removal-data: the ONNX file
# is split into chunks listed in dist/resources.json. "medium" is the fp16 export, "small" the
# 8-bit one. The graph is fixed at 1024×1024; every Resize takes its target size from a constant
# (32×32 ... 1024×1024), so scaling those constants runs the same weights at another size.
ISNET_OUTPUTS = {"": "output", "d6": "1894"}  # main output; the deepest side output (1/32 stage)


def assemble_isnet(package: Path, variant: str) -> bytes:
    """The ONNX bytes of /models/<variant> from an unpacked @imgly/background-removal-data."""
    dist = package / "package" / "dist"
    entry = json.loads((dist / "resources.json").read_text())[f"/models/{variant}"]
    data = b"".join((dist / chunk["hash"]).read_bytes() for chunk in entry["chunks"])
    if len(data) != entry["size"]:
        raise SystemExit(
            f"{dist}: /models/{variant} is {len(data)} bytes, expected {entry['size']}"
        )
    return data


def rescale_isnet(model_bytes: bytes, size: int) -> bytes:
    """The ISNet graph with its input, outputs and every Resize target scaled from 1024 to
    ``size`` (a multiple of 32)."""
    if size == 1024:
        return model_bytes
    if size % 32:
        raise ValueError(f"ISNet input size {size} is not a multiple of 32")
    import onnx
    from onnx import numpy_helper

    model = onnx.load_from_string(model_bytes)
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    initializers = {init.name: init for init in graph.initializer}

    # Each Resize's target tensor, once even where several Resize nodes share it.
    targets: dict[str, onnx.TensorProto] = {}
    for node in graph.node:
        if node.op_type != "Resize" or len(node.input) < 4 or not node.input[3]:
            continue
        sizes = node.input[3]
        if sizes in initializers:  # the 8-bit export folds the sizes into one N,C,H,W constant
            targets[sizes] = initializers[sizes]
        else:  # the fp16 export concatenates shape(x)[:2] with an H,W constant
            const = producer[producer[sizes].input[1]]
            if const.op_type != "Constant":
                raise ValueError(f"{node.name}: Resize sizes do not end in a constant")
            targets[const.output[0]] = const.attribute[0].t
    if not targets:
        raise ValueError("no Resize with constant sizes: not the expected ISNet graph")
    for tensor in targets.values():
        values = numpy_helper.to_array(tensor).copy()
        values[-2:] = values[-2:] * size // 1024  # a height and width at the 1024 input
        tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))
    del graph.value_info[:]  # shapes inferred at 1024; onnxruntime infers them anew
    for value in list(graph.input) + list(graph.output):
        dims = value.type.tensor_type.shape.dim
        for dim in dims[2:]:
            if dim.dim_value == 1024:
                dim.dim_value = size
    return model.SerializeToString()


def isnet_input(rgb: np.ndarray, size: int) -> np.ndarray:
    """1×3×size×size float32: RGB stretched to a square (PIL bilinear), (x - 128) / 256; the
    normalisation @imgly/background-removal uses."""
    square = Image.fromarray(rgb).resize((size, size), Image.BILINEAR)
    x = (np.asarray(square, np.float32) - 128.0) / 256.0
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def _isnet(variant: str, size: int) -> Callable[[Path], Predict]:
    def build(tools: Path) -> Predict:
        import onnxruntime as ort

        model = rescale_isnet(assemble_isnet(tools / IMGLY_DATA, variant), size)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # the machine is shared; one core per job
        session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        names = list(ISNET_OUTPUTS.values())

        def predict(rgb: np.ndarray) -> dict[str, np.ndarray]:
            maps = session.run(names, {"input": isnet_input(rgb, size)})
            return {key: m[0, 0] for key, m in zip(ISNET_OUTPUTS, maps, strict=True)}

        return predict

    return build


for _variant, _short in (("medium", "med"), ("small", "small")):
    for _size in (1024, 768, 512):
        register(
            f"isnet-{_short}{_size}",
            tuple(ISNET_OUTPUTS),
            f"ISNet {_variant} (@imgly/background-removal-data 1.4.5) at {_size}x{_size}; "
            "outputs: main and the deepest side output d6",
        )(_isnet(_variant, _size))


# MediaPipe selfie segmentation (people): two TFLite models in the npm package, a square
# 256×256 one and a landscape 144×256 one. Input RGB in [0, 1], stretched to the model's frame;
# output the person probability (a sigmoid is the graph's last layer).


def mediapipe_input(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """1×height×width×3 float32 RGB in [0, 1], stretched (OpenCV area or bilinear)."""
    x = resize_probs(rgb.astype(np.float32) / 255.0, (height, width))
    return np.ascontiguousarray(x[None])


def _mediapipe(filename: str) -> Callable[[Path], Predict]:
    def build(tools: Path) -> Predict:
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(
            model_path=str(tools / MEDIAPIPE / "package" / filename), num_threads=1
        )
        interpreter.allocate_tensors()
        (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
        _, height, width, _ = inp["shape"]

        def predict(rgb: np.ndarray) -> dict[str, np.ndarray]:
            interpreter.set_tensor(inp["index"], mediapipe_input(rgb, height, width))
            interpreter.invoke()
            return {"": interpreter.get_tensor(out["index"])[0, :, :, 0].copy()}

        return predict

    return build


register("mediapipe256", ("",), "MediaPipe selfie segmenter, general model, 256x256")(
    _mediapipe("selfie_segmentation.tflite")
)
register("mediapipe144", ("",), "MediaPipe selfie segmenter, landscape model, 144x256")(
    _mediapipe("selfie_segmentation_landscape.tflite")
)


def run_pretrained(
    prepared: PreparedSet,
    segmenter: Pretrained,
    tools: Path,
    strides: Sequence[int] = STRIDES,
    every: int = 1,
    offset: int = 0,
    log=print,
) -> int:
    """Write every output of ``segmenter`` at every stride for every ``every``-th stem (from
    ``offset``); returns how many images were run. Stems whose maps all exist are skipped."""
    if prepared.multiclass:
        raise SystemExit(f"{prepared.name}: multi-class set; the pretrained segmenters are binary")
    stems = prepared.stems()[offset::every]
    todo = [
        s
        for s in stems
        if not all(prepared.coarse_path(src, s).is_file() for src in segmenter.sources(strides))
    ]
    log(f"{prepared.name} {segmenter.name}: {len(todo)} of {len(stems)} images to run")
    if not todo:
        return 0
    predict = segmenter.build(tools)
    start = time.monotonic()
    for i, stem in enumerate(todo, 1):
        rgb = prepared.image(stem)
        maps = predict(rgb)
        for output, prob in maps.items():
            for stride in strides:
                size = coarse_size(rgb.shape[0], rgb.shape[1], stride)
                path = prepared.coarse_path(source_name(segmenter.name, output, stride), stem)
                write_png(path, soft_png(resize_probs(np.clip(prob, 0, 1), size)))
        if i % 10 == 0 or i == len(todo):
            log(f"  {i}/{len(todo)} {(time.monotonic() - start) / i:.1f} s/image")
    return len(todo)


# ---------------------------------------------------------------------------------------------
# Weak segmenters: a small CNN per fold, trained on the other folds, predicting the held-out one


@dataclass(frozen=True)
class WeakConfig:
    """The k-fold weak segmenter. The net sees each image stretched to ``input_size`` square
    and predicts at 1/4 of that, so its maps carry both recognition and boundary errors."""

    folds: int = 5
    input_size: int = 128
    steps: int = 500
    batch: int = 8
    lr: float = 3e-3
    width: int = 16
    seed: int = 0

    @property
    def name(self) -> str:
        return f"weak-k{self.folds}"


def kfold(stems: Sequence[str], folds: int) -> list[list[str]]:
    """Split stems into ``folds`` folds of whole groups (a video's frames share one, see
    spnrefine.train.data.group_of), contiguous in sorted order so that neighbouring groups
    (frames of one drive named per frame) mostly stay in one fold; folds about equal in size."""
    from spnrefine.train.data import group_of

    groups: dict[str, list[str]] = {}
    for stem in sorted(stems):
        groups.setdefault(group_of(stem), []).append(stem)
    if len(groups) < folds:
        raise ValueError(f"{len(groups)} groups cannot make {folds} folds")
    out: list[list[str]] = [[] for _ in range(folds)]
    total, seen, fold = len(stems), 0, 0
    ordered = list(groups.values())
    for index, members in enumerate(ordered):
        # The fold where this group starts in an even split, but never skipping a fold and
        # never so low that a later fold would be left without a group.
        target = min(folds - 1, seen * folds // total)
        fold = max(min(target, fold + 1) if out[fold] else fold, folds - (len(ordered) - index))
        out[fold].extend(members)
        seen += len(members)
    return out


def weak_net(num_outputs: int, width: int):
    """A small fully convolutional net, output at 1/4 of its input (32k weights at width 16)."""
    import torch.nn as nn

    def block(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> list:
        return [
            nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        ]

    w = width
    return nn.Sequential(
        *block(3, w // 2, 2),
        *block(w // 2, w, 2),
        *block(w, w),
        *block(w, 2 * w, 2),
        *block(2 * w, 2 * w, dilation=2),
        *block(2 * w, 2 * w, dilation=4),
        nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
        *block(2 * w, w),
        nn.Conv2d(w, num_outputs, 1),
    )


def train_weak(images: np.ndarray, labels: np.ndarray, num_classes: int, config: WeakConfig):
    """Train the weak net on uint8 N×3×S×S images and N×S/4×S/4 labels (255 ignored)."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    net = weak_net(num_classes, config.width)
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, config.lr, total_steps=config.steps)
    x_all = torch.from_numpy(images)
    y_all = torch.from_numpy(labels.astype(np.int64))
    net.train()
    for _ in range(config.steps):
        idx = torch.from_numpy(rng.integers(0, len(images), config.batch))
        x, y = x_all[idx].float() / 255.0, y_all[idx]
        if rng.random() < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        x = (x - 0.45) / 0.25 * torch.empty(len(x), 1, 1, 1).uniform_(0.8, 1.2)
        loss = F.cross_entropy(net(x), y, ignore_index=IGNORE)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return net.eval()


def predict_weak(net, images: np.ndarray) -> np.ndarray:
    """Softmax probabilities N×C×S/4×S/4 of uint8 images."""
    import torch

    with torch.no_grad():
        x = (torch.from_numpy(images).float() / 255.0 - 0.45) / 0.25
        return torch.softmax(net(x), 1).numpy()


def weak_maps(probs: np.ndarray, image_hw: tuple[int, int], stride: int, binary: bool):
    """One held-out image's C×s×s probabilities as a coarse map at 1/stride of the image:
    soft foreground 0-255 on a binary set, the arg-max class id otherwise."""
    size = coarse_size(*image_hw, stride)
    resized = resize_probs(np.moveaxis(probs, 0, -1), size)
    if binary:
        return soft_png(resized[..., 1])
    return resized.reshape(size + (-1,)).argmax(-1).astype(np.uint8)


def weak_plan(stems: Sequence[str], split: dict[str, str], folds: int):
    """(train, predict) stem lists, one per weak net. With a train/val split, the train stems
    are split into ``folds`` folds and one more net, trained on every train stem, predicts the
    val stems, so no weak net has seen a val mask; without one, all stems are split."""
    train = [s for s in stems if split.get(s) == "train"]
    val = [s for s in stems if split.get(s) == "val"]
    if not train or not val or len(train) + len(val) != len(stems):
        train, val = list(stems), []
    parts = kfold(train, folds)
    plan = [
        ([s for f, fold in enumerate(parts) if f != k for s in fold], part)
        for k, part in enumerate(parts)
    ]
    if val:
        plan.append((train, val))
    return plan


def run_weak(
    prepared: PreparedSet,
    config: WeakConfig = WeakConfig(),
    strides: Sequence[int] = STRIDES,
    log=print,
) -> int:
    """Train the weak nets of ``weak_plan`` and write each one's maps of the stems it did not
    see at every stride; returns how many nets were trained. A net whose maps all exist is
    skipped."""
    import torch

    torch.set_num_threads(1)
    binary = not prepared.multiclass
    stems = prepared.stems()
    sources = [f"{config.name}-s{s}" for s in strides]
    plan = weak_plan(stems, prepared.split(), config.folds)
    todo = [
        k
        for k, (_, predict) in enumerate(plan)
        if not all(prepared.coarse_path(src, s).is_file() for src in sources for s in predict)
    ]
    if not todo:
        return 0
    images, labels = load_weak_arrays(prepared, stems, config.input_size)
    index = {stem: i for i, stem in enumerate(stems)}
    for k in todo:
        train = [index[s] for s in plan[k][0]]
        predict = [index[s] for s in plan[k][1]]
        start = time.monotonic()
        net = train_weak(images[train], labels[train], prepared.num_classes, config)
        probs = predict_weak(net, images[predict])
        for i, p in zip(predict, probs, strict=True):
            hw = prepared.mask(stems[i]).shape
            for stride, source in zip(strides, sources, strict=True):
                write_png(prepared.coarse_path(source, stems[i]), weak_maps(p, hw, stride, binary))
        log(
            f"{prepared.name} {config.name} net {k + 1}/{len(plan)}: trained on {len(train)},"
            f" wrote {len(predict)} ({time.monotonic() - start:.0f} s)"
        )
    return len(todo)


def load_weak_arrays(prepared: PreparedSet, stems: Sequence[str], size: int):
    """Images stretched to size² (N×3×size×size uint8) and class ids at size/4 (255 void),
    nearest-neighbour."""
    images = np.empty((len(stems), 3, size, size), np.uint8)
    labels = np.empty((len(stems), size // 4, size // 4), np.uint8)
    for i, stem in enumerate(stems):
        rgb = prepared.image(stem)
        images[i] = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA).transpose(2, 0, 1)
        labels[i] = cv2.resize(
            prepared.labels(stem), (size // 4, size // 4), interpolation=cv2.INTER_NEAREST
        )
    return images, labels


# ---------------------------------------------------------------------------------------------
# Quality: each coarse source upsampled to the image (bilinear, as spnrefine does) vs the mask


@dataclass
class Quality:
    source: str
    images: int
    iou: float  # binary: mean per-image foreground IoU; multi-class: mIoU over the set
    boundary_f: float  # mean per image, 2 px tolerance (multi-class: mean over classes)
    worst: float = float("nan")  # binary: lowest per-image IoU
    per_image: dict[str, float] = field(default_factory=dict)  # binary: stem → IoU
    ideal: float = float("nan")  # the same score for the truth itself at the maps' sizes


def upsampled_prediction(coarse: np.ndarray, image_hw: tuple[int, int], binary: bool, classes: int):
    """A coarse PNG brought to the image: soft maps bilinear then > 0.5; class ids one-hot,
    bilinear, arg-max."""
    from spnrefine.upsample import upsample_probs

    if binary:
        return upsample_probs(coarse[None].astype(np.float32) / 255.0, image_hw)[0] > 0.5
    onehot = (np.arange(classes)[:, None, None] == coarse[None]).astype(np.float32)
    return upsample_probs(onehot, image_hw).argmax(0)


def truth_at(labels: np.ndarray, size_hw: tuple[int, int], binary: bool, classes: int):
    """The best coarse map of this size: the truth area-averaged (soft foreground 0-255, or the
    class with the largest share; void pixels count for no class)."""
    if binary:
        return soft_png(resize_probs((labels == 1).astype(np.float32), size_hw))
    onehot = (labels[..., None] == np.arange(classes)).astype(np.float32)
    return resize_probs(onehot, size_hw).argmax(-1).astype(np.uint8)


def evaluate(prepared: PreparedSet, source: str, every: int = 1) -> Quality:
    """Quality of one coarse source over the stems that have its map (every ``every``-th)."""
    from spnrefine.metrics import ConfusionMatrix, IoUAccumulator, boundary_f, mean_boundary_f

    folder = prepared.out / f"coarse-{source}"
    stems = sorted(p.stem for p in folder.glob("*.png"))[::every]
    binary = not prepared.multiclass
    classes = prepared.num_classes
    ious, confusion, bfs = IoUAccumulator(), ConfusionMatrix(classes), []
    ideal_ious, ideal_confusion = IoUAccumulator(), ConfusionMatrix(classes)
    for stem in stems:
        gt = prepared.labels(stem)
        with Image.open(folder / f"{stem}.png") as im:
            coarse = np.asarray(im)
        pred = upsampled_prediction(coarse, gt.shape, binary, classes)
        ideal = upsampled_prediction(
            truth_at(gt, coarse.shape, binary, classes), gt.shape, binary, classes
        )
        if binary:
            void = gt == IGNORE
            ious.update(pred, gt == 1, void)
            ideal_ious.update(ideal, gt == 1, void)
            bfs.append(boundary_f(pred, gt == 1, ignore=void))
        else:
            confusion.update(pred, gt)
            ideal_confusion.update(ideal, gt)
            bfs.append(mean_boundary_f(pred, gt))
    bf = float(np.nanmean(bfs)) if bfs else float("nan")
    if binary:
        worst = min(ious.per_image) if stems else float("nan")
        per_image = dict(zip(stems, ious.per_image, strict=True))
        return Quality(source, len(stems), ious.mean_iou, bf, worst, per_image, ideal_ious.mean_iou)
    return Quality(source, len(stems), confusion.miou(), bf, ideal=ideal_confusion.miou())


def sources_of(prepared: PreparedSet) -> list[str]:
    return sorted(
        p.name.removeprefix("coarse-") for p in prepared.out.glob("coarse-*") if p.is_dir()
    )


def quality_table(
    prepared: PreparedSet,
    every: int = 1,
    by_group: bool = False,
    sources: Sequence[str] | None = None,
) -> str:
    """A Markdown table of every coarse source the set has; with ``by_group`` (binary sets) a
    second one of the mean IoU per group (a video's frames) and source."""
    from spnrefine.train.data import group_of

    metric = "mIoU" if prepared.multiclass else "mean IoU"
    lines = [
        f"| {prepared.name}: source | maps | {metric} | boundary F (2 px) | worst IoU "
        f"| {metric} of the truth at the maps' size |",
        "|---|---|---|---|---|---|",
    ]
    chosen = sources_of(prepared) if not sources else sources
    scores = [evaluate(prepared, source, every) for source in chosen]
    for q in scores:
        worst = "" if np.isnan(q.worst) else f"{q.worst:.3f}"
        lines.append(
            f"| {q.source} | {q.images} | {q.iou:.3f} | {q.boundary_f:.3f} | {worst} "
            f"| {q.ideal:.3f} |"
        )
    if by_group and not prepared.multiclass:
        groups = sorted({group_of(stem) for q in scores for stem in q.per_image})
        lines += ["", "| group | " + " | ".join(q.source for q in scores) + " |"]
        lines.append("|---" * (len(scores) + 1) + "|")
        for group in groups:
            cells = []
            for q in scores:
                values = [v for stem, v in q.per_image.items() if group_of(stem) == group]
                cells.append(f"{np.mean(values):.2f} ({len(values)})" if values else "")
            lines.append(f"| {group} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Command line


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--set", required=True, dest="set_name")
    common.add_argument("--data", type=Path, default=DATA)
    common.add_argument("--shared", type=Path, default=SHARED)
    common.add_argument("--strides", type=int, nargs="+", default=list(STRIDES))
    pre = sub.add_parser("pretrained", parents=[common], help="run a pretrained segmenter")
    pre.add_argument("--source", required=True, choices=sorted(PRETRAINED))
    pre.add_argument("--tools", type=Path, default=TOOLS)
    pre.add_argument("--every", type=int, default=1, help="run every N-th image (sorted stems)")
    pre.add_argument("--offset", type=int, default=0)
    weak = sub.add_parser("weak", parents=[common], help="train k-fold weak segmenters")
    weak.add_argument("--folds", type=int, default=WeakConfig.folds)
    weak.add_argument("--steps", type=int, default=WeakConfig.steps)
    weak.add_argument("--input-size", type=int, default=WeakConfig.input_size)
    ev = sub.add_parser("eval", parents=[common], help="quality of every coarse source of a set")
    ev.add_argument("--every", type=int, default=1, help="score every N-th map")
    ev.add_argument("--by-group", action="store_true", help="also mean IoU per video/group")
    ev.add_argument("--sources", nargs="+", help="score only these sources (default: all)")
    sub.add_parser("list", help="the pretrained segmenters and their coarse sources")
    args = parser.parse_args(argv)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    if args.command == "list":
        for seg in PRETRAINED.values():
            print(f"{seg.name}: {seg.description}; sources {', '.join(seg.sources())}")
        print("weak-k<folds>: k-fold weak CNN; sources weak-k<folds>-s<stride>")
        return
    prepared = find_set(args.set_name, args.data, args.shared)
    if args.command == "pretrained":
        run_pretrained(
            prepared,
            PRETRAINED[args.source],
            args.tools,
            args.strides,
            args.every,
            args.offset,
            log,
        )
    elif args.command == "weak":
        config = WeakConfig(folds=args.folds, steps=args.steps, input_size=args.input_size)
        run_weak(prepared, config, args.strides, log)
    else:
        sys.stdout.write(quality_table(prepared, args.every, args.by_group, args.sources))


if __name__ == "__main__":
    main()
