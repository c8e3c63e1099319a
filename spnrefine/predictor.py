"""The thin predictor: decoded arrays in, refined arrays out. `Predictor` holds the model (or a
baseline method in its place), the device and the tiling settings, and reads no files (that is
`spnrefine.api.Refiner`, the predictor with a file layer). A result writes itself through
spnrefine.io.outputs."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from spnrefine.baselines import BASELINES, check_baseline
from spnrefine.errors import SpnrefineError
from spnrefine.guard import guard as do_no_harm
from spnrefine.io import CoarseMap, write_atomic
from spnrefine.io.outputs import (
    encode_output,
    encode_result_overlay,
    natural_format,
    output_format,
    overlay_format,
)
from spnrefine.labels import present_classes, restrict_classes, to_labels
from spnrefine.model import SPNRefiner
from spnrefine.model.fast import fold_batchnorm
from spnrefine.settings import DEFAULT_OVERLAP, DEFAULT_TILE
from spnrefine.tiling import TileStats, refine_tiled
from spnrefine.upsample import upsample_ignore, upsample_probs
from spnrefine.weights import WeightsInfo, load_weights

Device = Literal["auto", "cpu", "cuda"] | str
Method = str  # "spn" (the model) or the name of a baseline in spnrefine.baselines.BASELINES
METHODS: tuple[str, ...] = ("spn", *BASELINES)


@dataclass
class RefineResult:
    """One refined map at the image's resolution, and what it came from."""

    image: np.ndarray  # H×W×3 uint8 RGB, as decoded
    coarse: CoarseMap  # as decoded, before upsampling: kind, labels, palette
    probs: np.ndarray  # C×H×W float32 refined probabilities, channels as `coarse.labels`
    # H×W label ids: `coarse.labels` of the argmax, 255 where void; one rule for every input:
    # class ids keep their values, a mask or foreground probability gives 0 and 255.
    labels: np.ndarray
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


class Predictor:
    """A loaded model with its tiling settings, or a baseline method in the model's place;
    refines any number of decoded images."""

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
        guard: bool = True,
    ):
        check_method(method)
        if method == "spn" and model is None:
            raise ValueError("method 'spn' needs a model")
        multiple = max(8, model.tile_multiple) if model is not None else 8
        if tile < 16 or tile % multiple:
            raise SpnrefineError(f"--tile {tile}: must be a multiple of {multiple}, at least 16")
        if not 0 <= overlap < tile:
            raise SpnrefineError(f"--overlap {overlap}: must be at least 0 and below --tile")
        if batch_size < 1:
            raise SpnrefineError(f"batch size {batch_size}: must be at least 1")
        if not 0.5 < confident <= 1.0:
            raise SpnrefineError(f"confident {confident}: must be in (0.5, 1]")
        self.method = method
        self.device = pick_device(device)
        self._place(model)
        self.info = info
        self.tile, self.overlap, self.batch_size = tile, overlap, batch_size
        self.confident = confident
        self.guard = guard

    @classmethod
    def load(cls, weights: str | Path | None = None, *, method: Method = "spn", **settings):
        """Load weights (see `spnrefine.weights.resolve_weights`; None = the default) and build
        the predictor with `settings` (the keywords of the constructor). A baseline `method`
        needs no weights: none are loaded, and `weights` is not read."""
        check_method(method)
        model, info = load_weights(weights) if method == "spn" else (None, None)
        return cls(model, method=method, info=info, **settings)

    def predict(self, image_rgb: np.ndarray, coarse: CoarseMap) -> RefineResult:
        """Refine a decoded coarse map against an H×W×3 uint8 RGB image of any size the map
        upsamples to: probabilities and label ids at the image's resolution."""
        started = time.perf_counter()
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

    def refine_probs(
        self, image_rgb: np.ndarray, probs: np.ndarray, stats: TileStats | None = None
    ) -> np.ndarray:
        """The model pass alone (or the baseline's): C×H×W probabilities at the image's size →
        refined C×H×W. The model's map is kept to what the coarse map leaves open
        (`spnrefine.guard`: where the coarse map is sure it stays, islands and holes it has no
        trace of are dropped) unless the predictor was made with `guard=False`."""
        if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or image_rgb.dtype != np.uint8:
            raise ValueError(f"image must be H×W×3 uint8, got {image_rgb.shape} {image_rgb.dtype}")
        if probs.ndim != 3 or probs.shape[1:] != image_rgb.shape[:2]:
            raise ValueError(f"probs {probs.shape} must be C×H×W with H×W = {image_rgb.shape[:2]}")
        if self.method != "spn":
            return BASELINES[self.method](image_rgb, probs)
        refined = refine_tiled(
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
        return do_no_harm(probs, refined) if self.guard else refined

    def to(self, device: Device) -> Predictor:
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


def check_method(method: str) -> None:
    """Refuse an unknown method, and a baseline that cannot run here (the CRF without
    pydensecrf)."""
    if method != "spn" and method not in BASELINES:
        names = ", ".join(("spn", *BASELINES))
        raise SpnrefineError(f"--method {method}: expected one of {names}")
    if method != "spn":
        check_baseline(method)


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


def _present_ids(labels: np.ndarray) -> list[int]:
    # A histogram instead of np.unique: sorting 48 million pixels takes seconds.
    if labels.dtype == np.uint8:
        return np.flatnonzero(np.bincount(labels.ravel(), minlength=256)).tolist()
    return [int(k) for k in np.unique(labels)]
