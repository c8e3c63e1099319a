"""The Python API, `Refiner.load(weights).refine(image, coarse)`: the thin predictor
(spnrefine.predictor) with a file layer that reads images and coarse maps from paths, bytes,
stdin or arrays, and writes outputs named and checked by spnrefine.io.outputs. The same path
runs the baselines (`method="bilinear"`, `"guided"`, `"crf"`) in place of the model."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal

import numpy as np

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
    check_bits,
    check_outputs,
    encode_output,
    name_output,
    output_format,
    overlay_format,
    write_output,
)
from spnrefine.predictor import (
    METHODS,
    Device,
    Method,
    Predictor,
    RefineResult,
    check_method,
    pick_device,
)
from spnrefine.settings import check_settings
from spnrefine.upsample import check_class_pixels, check_coarse_size

if TYPE_CHECKING:
    from spnrefine.model import SPNRefiner
    from spnrefine.model.lean import LeanRefiner

__all__ = [
    "METHODS",
    "Device",
    "Method",
    "RefineResult",
    "Refiner",
    "check_method",
    "pick_device",
]

ImageInput = str | Path | bytes | np.ndarray
CoarseInput = str | Path | bytes | np.ndarray | CoarseMap
Output = str | Path | BinaryIO


class Refiner(Predictor):
    """The predictor with its file layer: refines images and coarse maps given as paths, `-`
    (stdin), file bytes or arrays, and writes the results. Settings are the predictor's
    (`method`, `device`, `tile`, `overlap`, `batch_size`, `confident`, `guard`), and
    `max_pixels`, the largest input decoded."""

    def __init__(
        self,
        model: SPNRefiner | LeanRefiner | None,
        *,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        **settings: Any,
    ):
        super().__init__(model, **settings)
        check_settings(max_pixels=max_pixels)
        self.max_pixels = max_pixels

    @classmethod
    def load(
        cls, weights: str | Path | None = None, *, method: Method = "spn", **settings: Any
    ) -> Refiner:
        """Load weights (see `spnrefine.weights.resolve_weights`; None = the default) and build
        the refiner with `settings`, the constructor's keywords. A baseline `method` needs no
        weights: none are loaded, and `weights` is not read."""
        check_settings(max_pixels=settings.get("max_pixels", DEFAULT_MAX_PIXELS))
        return super().load(weights, method=method, **settings)

    def refine(
        self,
        image: ImageInput,
        coarse: CoarseInput,
        *,
        coarse_type: CoarseType = "auto",
        logits: bool = False,
        stretch: bool = False,
        probs: bool = True,
    ) -> RefineResult:
        """Refine `coarse` against `image`. Each may be a path, `-` (stdin), file bytes or an
        array (image: H×W×3 uint8 RGB; coarse: as a .npy would hold it); coarse may also be a
        decoded `CoarseMap`. With ``probs=False`` only the labels are made (see
        `Predictor.predict`): the way to refine many classes on a large image."""
        started = time.perf_counter()
        image_rgb, coarse_map = self.read_inputs(
            image, coarse, coarse_type=coarse_type, logits=logits, stretch=stretch
        )
        return self._predict(image_rgb, coarse_map, started, probs=probs)

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
        check_bits(bits, soft)
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
        result = self._predict(image_rgb, coarse_map, started, probs=soft)

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
        check_coarse_size(coarse_map.hw, image_rgb.shape[:2], coarse_map.source, stretch=stretch)
        return image_rgb, coarse_map

    def _predict(
        self, image_rgb: np.ndarray, coarse: CoarseMap, started: float, *, probs: bool
    ) -> RefineResult:
        if probs or self.method != "spn":  # every class held at the image's size
            check_class_pixels(coarse.channels, image_rgb.shape[:2], coarse.source, self.max_pixels)
        result = self.predict(image_rgb, coarse, probs=probs)
        result.seconds = time.perf_counter() - started  # decoding included
        return result

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
