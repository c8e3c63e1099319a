"""The Python API, `Refiner.load(weights).refine(image, coarse)`: the data path from decoded
inputs to refined labels, and to written files, with the names the CLI uses. The same path
runs the baselines (`method="bilinear"`, `"guided"`, `"crf"`) in place of the model."""

from __future__ import annotations

import copy
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np
import torch

from spnrefine.baselines import BASELINES, crf_available
from spnrefine.baselines.crf import MISSING as CRF_MISSING
from spnrefine.errors import SpnrefineError
from spnrefine.io import (
    DEFAULT_MAX_PIXELS,
    CoarseMap,
    CoarseType,
    encode_npy,
    load_coarse,
    load_image,
    write_atomic,
)
from spnrefine.io.outputs import (
    STDIO,
    check_outputs,
    encode_output,
    encode_result_overlay,
    name_output,
    natural_format,
    output_format,
    overlay_format,
    write_output,
)
from spnrefine.labels import present_classes, restrict_classes, to_labels
from spnrefine.model import SPNRefiner
from spnrefine.model.fast import fold_batchnorm
from spnrefine.settings import DEFAULT_OVERLAP, DEFAULT_TILE
from spnrefine.tiling import TileStats, refine_tiled
from spnrefine.upsample import check_coarse_size, upsample_ignore, upsample_probs
from spnrefine.weights import WeightsInfo, load_weights

ImageInput = str | Path | bytes | np.ndarray
CoarseInput = str | Path | bytes | np.ndarray | CoarseMap
Output = str | Path | BinaryIO
Device = Literal["auto", "cpu", "cuda"] | str
Method = Literal["spn", "bilinear", "guided", "crf"]
METHODS: tuple[str, ...] = ("spn", *BASELINES)


@dataclass
class RefineResult:
    """One refined map at the image's resolution, and what it came from."""

    image: np.ndarray  # H×W×3 uint8 RGB, as decoded
    coarse: CoarseMap  # as decoded, before upsampling: kind, labels, palette
    probs: np.ndarray  # C×H×W float32 refined probabilities, channels as `coarse.labels`
    labels: np.ndarray  # H×W label ids: `coarse.labels` of the argmax, 255 where void
    tiles: TileStats
    seconds: float  # decoding through post-processing
    out: str | None = None  # where `Refiner.refine_file` wrote it
    overlay_path: str | None = None
    method: str = "spn"

    @property
    def kind(self) -> str:
        return self.coarse.kind

    def encode(self, *, soft: bool = False, bits: Literal[8, 16] = 8) -> bytes:
        """The output file's bytes as `-o -` writes them (PNG, or .npy for several soft classes)."""
        fmt = natural_format(self.coarse, soft=soft)
        return encode_output(self.probs, self.labels, self.coarse, fmt, soft=soft, bits=bits)

    def save(
        self,
        path: str | Path,
        *,
        soft: bool = False,
        bits: Literal[8, 16] = 8,
        overwrite: bool = False,
    ) -> None:
        """Write the output atomically, in the format its extension names (.png or .npy)."""
        fmt = output_format(path, self.coarse, soft=soft)
        data = encode_output(self.probs, self.labels, self.coarse, fmt, soft=soft, bits=bits)
        write_atomic(path, data, overwrite=overwrite)

    def overlay(self, fmt: Literal["png", "jpeg"] = "png") -> bytes:
        """A picture of the refined mask over the image, for people to look at."""
        return encode_result_overlay(self.image, self.labels, self.coarse, fmt)

    def save_overlay(self, path: str | Path, *, overwrite: bool = False) -> None:
        write_atomic(path, self.overlay(overlay_format(path, self.coarse)), overwrite=overwrite)

    def summary(self) -> dict:
        """JSON-ready facts about the result (what `--json` prints besides the file names)."""
        h, w = self.labels.shape
        return {
            "kind": self.coarse.kind,
            "method": self.method,
            "classes": _present_ids(self.labels),
            "size": [w, h],
            "tiles": self.tiles.total,
            "tiles_refined": self.tiles.refined,
        }


class Refiner:
    """A loaded model with its tiling settings, or a baseline method in the model's place;
    refines any number of images."""

    def __init__(
        self,
        model: SPNRefiner | None,
        *,
        method: Method = "spn",
        info: WeightsInfo | None = None,
        device: Device = "auto",
        tile: int = DEFAULT_TILE,
        overlap: int = DEFAULT_OVERLAP,
        batch_size: int = 16,
        confident: float = 0.98,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ):
        check_method(method)
        if method == "spn" and model is None:
            raise ValueError("method 'spn' needs a model")
        depth_factor = 2 ** (len(model.config.widths) - 1) if model is not None else 1
        if tile < 16 or tile % max(8, depth_factor):
            raise SpnrefineError(
                f"--tile {tile}: must be a multiple of {max(8, depth_factor)}, at least 16"
            )
        if not 0 <= overlap < tile:
            raise SpnrefineError(f"--overlap {overlap}: must be at least 0 and below --tile")
        if batch_size < 1:
            raise SpnrefineError(f"batch size {batch_size}: must be at least 1")
        if not 0.5 < confident <= 1.0:
            raise SpnrefineError(f"confident {confident}: must be in (0.5, 1]")
        if max_pixels < 1:
            raise SpnrefineError(f"--max-pixels {max_pixels}: must be at least 1")
        self.method = method
        self.device = pick_device(device)
        self._place(model)
        self.info = info
        self.tile, self.overlap, self.batch_size = tile, overlap, batch_size
        self.confident, self.max_pixels = confident, max_pixels

    @classmethod
    def load(
        cls,
        weights: str | Path | None = None,
        *,
        method: Method = "spn",
        device: Device = "auto",
        tile: int = DEFAULT_TILE,
        overlap: int = DEFAULT_OVERLAP,
        batch_size: int = 16,
        confident: float = 0.98,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> Refiner:
        """Load weights (see `spnrefine.weights.resolve_weights`; None = the default). A
        baseline `method` needs no weights: none are loaded, and `weights` is not read."""
        check_method(method)
        model, info = load_weights(weights) if method == "spn" else (None, None)
        return cls(
            model,
            method=method,
            info=info,
            device=device,
            tile=tile,
            overlap=overlap,
            batch_size=batch_size,
            confident=confident,
            max_pixels=max_pixels,
        )

    def refine(
        self,
        image: ImageInput,
        coarse: CoarseInput,
        *,
        coarse_type: CoarseType = "auto",
        logits: bool = False,
        stretch: bool = False,
    ) -> RefineResult:
        """Refine `coarse` against `image`. Each may be a path, `-` (stdin), file bytes or an
        array (image: H×W×3 uint8 RGB; coarse: as a .npy would hold it); coarse may also be a
        decoded `CoarseMap`."""
        started = time.perf_counter()
        image_rgb, coarse_map = self.read_inputs(
            image, coarse, coarse_type=coarse_type, logits=logits, stretch=stretch
        )
        return self._refine_decoded(image_rgb, coarse_map, started)

    def refine_file(
        self,
        image: ImageInput,
        coarse: CoarseInput,
        out: Output,
        *,
        auto_suffix: bool = False,
        coarse_type: CoarseType = "auto",
        logits: bool = False,
        stretch: bool = False,
        soft: bool = False,
        bits: Literal[8, 16] = 8,
        overlay: str | Path | None = None,
        overwrite: bool = False,
    ) -> RefineResult:
        """`refine`, then write `out` (a path, `-` for stdout or a binary stream) and the optional
        `overlay` picture. With `auto_suffix`, `out` is a name without its extension: .png, or
        .npy for several soft classes, is added once the coarse map is read. Outputs are checked
        (`spnrefine.io.outputs.check_outputs`) before the model runs and written atomically; an
        output that names an input is refused."""
        inputs = _input_paths(image, coarse)
        check_outputs(out, overlay, inputs, overwrite=overwrite, auto_suffix=auto_suffix, soft=soft)
        started = time.perf_counter()
        image_rgb, coarse_map = self.read_inputs(
            image, coarse, coarse_type=coarse_type, logits=logits, stretch=stretch
        )
        if auto_suffix and isinstance(out, str | Path) and str(out) != STDIO:
            out = name_output(str(out), coarse_map, soft=soft)
            check_outputs(out, overlay, inputs, overwrite=overwrite)
        out_name = out if isinstance(out, str | Path) else STDIO
        fmt = output_format(out_name, coarse_map, soft=soft)
        overlay_fmt = overlay_format(overlay, coarse_map) if overlay is not None else None
        result = self._refine_decoded(image_rgb, coarse_map, started)

        data = encode_output(result.probs, result.labels, coarse_map, fmt, soft=soft, bits=bits)
        result.out = write_output(out, data, overwrite=overwrite)
        if overlay is not None:
            write_atomic(overlay, result.overlay(overlay_fmt), overwrite=overwrite)
            result.overlay_path = str(overlay)
        return result

    def read_inputs(
        self,
        image: ImageInput,
        coarse: CoarseInput,
        *,
        coarse_type: CoarseType = "auto",
        logits: bool = False,
        stretch: bool = False,
    ) -> tuple[np.ndarray, CoarseMap]:
        """Decode and check both inputs: RGB image, coarse map, and their sizes against each
        other (an aspect mismatch is an error unless `stretch`)."""
        if _is_stdin(image) and _is_stdin(coarse):
            raise SpnrefineError("only one of the image and the coarse map can come from stdin")
        image_rgb = self._read_image(image)
        coarse_map = self._read_coarse(coarse, coarse_type, logits, image_rgb.shape[:2])
        check_coarse_size(
            coarse_map.probs.shape[1:], image_rgb.shape[:2], coarse_map.source, stretch=stretch
        )
        return image_rgb, coarse_map

    def refine_probs(
        self, image_rgb: np.ndarray, probs: np.ndarray, stats: TileStats | None = None
    ) -> np.ndarray:
        """The model pass alone (or the baseline's): C×H×W probabilities at the image's size →
        refined C×H×W."""
        if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or image_rgb.dtype != np.uint8:
            raise ValueError(f"image must be H×W×3 uint8, got {image_rgb.shape} {image_rgb.dtype}")
        if probs.ndim != 3 or probs.shape[1:] != image_rgb.shape[:2]:
            raise ValueError(f"probs {probs.shape} must be C×H×W with H×W = {image_rgb.shape[:2]}")
        if self.method != "spn":
            return BASELINES[self.method](image_rgb, probs)
        return refine_tiled(
            self._inference_model,
            image_rgb,
            probs,
            tile=self.tile,
            overlap=self.overlap,
            batch_size=self.batch_size,
            confident=self.confident,
            device=self.device,
            stats=stats,
        )

    def _refine_decoded(
        self, image_rgb: np.ndarray, coarse: CoarseMap, started: float
    ) -> RefineResult:
        size = image_rgb.shape[:2]
        probs = upsample_probs(coarse.probs, size)
        ignore = upsample_ignore(coarse.ignore, size) if coarse.ignore is not None else None
        stats = TileStats()
        refined = restrict_classes(
            self.refine_probs(image_rgb, probs, stats), present_classes(coarse)
        )
        labels = to_labels(refined, coarse, ignore)
        return RefineResult(
            image_rgb,
            coarse,
            refined,
            labels,
            stats,
            time.perf_counter() - started,
            method=self.method,
        )

    def to(self, device: Device) -> Refiner:
        """The same refiner (weights, method, settings) on another device: a worker that was
        sent the driver's CPU refiner runs it on its own GPU."""
        moved = copy.copy(self)
        moved.device = pick_device(device)
        moved._place(copy.deepcopy(self.model))
        return moved

    def _place(self, model: SPNRefiner | None) -> None:
        """Put ``model`` on this refiner's device, with the copy that runs: the same function
        with batch norms folded into their convolutions."""
        self.model = model.to(self.device).eval() if model is not None else None
        self._inference_model = fold_batchnorm(self.model) if model is not None else None

    def _read_image(self, image: ImageInput) -> np.ndarray:
        if isinstance(image, np.ndarray):
            return _image_array(image)
        if _is_stdin(image):
            return load_image(sys.stdin.buffer.read(), name="<stdin>", max_pixels=self.max_pixels)
        name = "<bytes>" if isinstance(image, bytes) else None
        return load_image(image, name=name, max_pixels=self.max_pixels)

    def _read_coarse(
        self,
        coarse: CoarseInput,
        coarse_type: CoarseType,
        logits: bool,
        image_hw: tuple[int, int],
    ) -> CoarseMap:
        if isinstance(coarse, CoarseMap):
            return coarse
        name = None
        if isinstance(coarse, np.ndarray):
            # Through the .npy decoder, so arrays get the same checks as files (rank, NaN, ...).
            coarse, name = encode_npy(coarse), "<array>"
        elif _is_stdin(coarse):
            coarse, name = sys.stdin.buffer.read(), "<stdin>"
        elif isinstance(coarse, bytes):
            name = "<bytes>"
        return load_coarse(
            coarse,
            coarse_type=coarse_type,
            logits=logits,
            name=name,
            image_hw=image_hw,
            max_pixels=self.max_pixels,
        )


def check_method(method: str) -> None:
    """Refuse an unknown method, and the CRF where pydensecrf is not installed."""
    if method not in METHODS:
        raise SpnrefineError(f"--method {method}: expected one of {', '.join(METHODS)}")
    if method == "crf" and not crf_available():
        raise SpnrefineError(f"--method crf {CRF_MISSING}")


def pick_device(device: Device) -> torch.device:
    """`auto` is the GPU when torch sees one (the propagation engine then runs its CUDA
    kernel), else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if str(device).startswith("cuda"):
        if not torch.cuda.is_available():
            raise SpnrefineError(f"--device {device}: no CUDA GPU is available")
        return torch.device(device)
    raise SpnrefineError(f"--device {device}: expected auto, cpu or cuda")


def _is_stdin(source: object) -> bool:
    return isinstance(source, str) and source == STDIO


def _input_paths(*sources: object) -> list[str | Path]:
    """The inputs that are files, so that no output can replace one."""
    paths = []
    for source in sources:
        if isinstance(source, CoarseMap):
            source = source.source
        if isinstance(source, str | Path) and not _is_stdin(source):
            paths.append(source)
    return paths


def _present_ids(labels: np.ndarray) -> list[int]:
    # A histogram instead of np.unique: sorting 48 million pixels takes seconds.
    if labels.dtype == np.uint8:
        return np.flatnonzero(np.bincount(labels.ravel(), minlength=256)).tolist()
    return [int(k) for k in np.unique(labels)]


def _image_array(image: np.ndarray) -> np.ndarray:
    if image.dtype != np.uint8 or not (
        image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3, 4))
    ):
        raise SpnrefineError(
            f"image array must be H×W×3 uint8 RGB (or gray, or RGBA), got {image.shape} "
            f"{image.dtype}",
            "<array>",
        )
    if image.ndim == 2:
        image = image[:, :, None]
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3])
