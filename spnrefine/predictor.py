"""The thin predictor: decoded arrays in, refined arrays out. `Predictor` holds the model (or a
baseline method in its place), the device and the tiling settings, and reads no files (that is
`spnrefine.api.Refiner`, the predictor with a file layer). A result writes itself through
spnrefine.io.outputs."""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import cv2
import numpy as np

from spnrefine.baselines import BASELINES, check_baseline
from spnrefine.errors import SpnrefineError, need_torch
from spnrefine.guard import (
    AtOdd,
    binary_parts,
    judges_fragments,
    keep_coarse,
    trust_from,
    trust_reach,
)
from spnrefine.guard import guard as do_no_harm
from spnrefine.io import CoarseMap, write_atomic
from spnrefine.io.coarse import VOID, ids_in
from spnrefine.io.outputs import (
    encode_output,
    encode_result_overlay,
    natural_format,
    output_format,
    overlay_format,
)
from spnrefine.labels import (
    argmax_classes,
    label_lut,
    present_classes,
    restrict_classes,
    to_labels,
)
from spnrefine.settings import DEFAULT_OVERLAP, DEFAULT_TILE, check_settings
from spnrefine.tiling import TileStats, refine_bands, refine_tiled, tile_grid
from spnrefine.upsample import (
    channels_in_rows,
    upsample_ignore,
    upsample_probs,
    upsample_rows,
    upsampled_peak,
)
from spnrefine.weights import WeightsInfo, load_weights

if TYPE_CHECKING:
    from spnrefine.model import SPNRefiner
    from spnrefine.model.lean import LeanRefiner

Device = Literal["auto", "cpu", "cuda"] | str
Method = str  # "spn" (the model) or the name of a baseline in spnrefine.baselines.BASELINES
METHODS: tuple[str, ...] = ("spn", *BASELINES)


@dataclass
class RefineResult:
    """One refined map at the image's resolution, and what it came from."""

    image: np.ndarray  # H×W×3 uint8 RGB, as decoded
    coarse: CoarseMap  # as decoded, before upsampling: kind, labels, palette
    # C×H×W float32 refined probabilities, channels as `coarse.labels`; None when refined for
    # the labels alone (`Predictor.predict(..., probs=False)`).
    probs: np.ndarray | None
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
        self._check_soft(soft)
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
        self._check_soft(soft)
        fmt = output_format(path, self.coarse, soft=soft)
        data = encode_output(self.probs, self.labels, self.coarse, fmt, soft=soft, bits=bits)
        write_atomic(path, data, overwrite=overwrite)

    def _check_soft(self, soft: bool) -> None:
        if soft and self.probs is None:
            raise ValueError("this result was refined without probabilities (probs=False)")

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
        model: SPNRefiner | LeanRefiner | None,
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
        check_settings(
            tile=tile,
            overlap=overlap,
            batch_size=batch_size,
            confident=confident,
            depth_factor=model.tile_multiple if model is not None else 1,
        )
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
        # The settings and the device first: a mistyped option fails before the weights load.
        check_settings(**{k: v for k, v in settings.items() if k in _TILING})
        device = pick_device(settings.pop("device", "auto"))
        if method == "spn":
            model, info = load_weights(weights, lean=device == "cpu")
        else:
            model, info = None, None
        return cls(model, method=method, info=info, device=device, **settings)

    def predict(
        self, image_rgb: np.ndarray, coarse: CoarseMap, *, probs: bool = True
    ) -> RefineResult:
        """Refine a decoded coarse map against an H×W×3 uint8 RGB image of any size the map
        upsamples to: probabilities and label ids at the image's resolution. The model's map
        is made a band of rows at a time (`refine_bands`), so the map is never held whole
        at the image's size but for a binary map's foreground planes and the output. With
        ``probs=False`` only the labels are made (`RefineResult.probs` is None), and a map
        of many classes keeps in each band only the classes its tiles hold, so memory grows
        with those, not with all classes."""
        started = time.perf_counter()
        size = image_rgb.shape[:2]
        ignore = upsample_ignore(coarse.ignore, size) if coarse.ignore is not None else None
        stats = TileStats()
        factor = min(size[0] / coarse.hw[0], size[1] / coarse.hw[1])
        if self.method == "spn":
            refine = self._refine_binary if coarse.channels == 2 else self._refine_classes
            refined, labels = refine(image_rgb, coarse, ignore, stats, factor=factor, keep=probs)
        else:
            refined = restrict_classes(
                self.refine_probs(
                    image_rgb, upsample_probs(coarse.probs, size), stats, factor=factor
                ),
                present_classes(coarse),
            )
            labels = to_labels(refined, coarse, ignore)
        return RefineResult(
            image_rgb,
            coarse,
            refined if probs else None,
            labels,
            stats,
            time.perf_counter() - started,
            method=self.method,
        )

    def refine_probs(
        self,
        image_rgb: np.ndarray,
        probs: np.ndarray,
        stats: TileStats | None = None,
        *,
        factor: float = 1.0,
    ) -> np.ndarray:
        """The model pass alone (or the baseline's): C×H×W probabilities at the image's size →
        refined C×H×W. The model's map is kept to what the coarse map leaves open
        (`spnrefine.guard`: where the coarse map is sure it stays, islands and holes it has no
        trace of are dropped) unless the predictor was made with `guard=False`. ``factor``:
        how much `probs` were upsampled from the coarse map (1: not at all, or not known; a
        band of doubt in a map upsampled ×2.5 or less is then kept as it is)."""
        if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or image_rgb.dtype != np.uint8:
            raise ValueError(f"image must be H×W×3 uint8, got {image_rgb.shape} {image_rgb.dtype}")
        if probs.ndim != 3 or probs.shape[1:] != image_rgb.shape[:2]:
            raise ValueError(f"probs {probs.shape} must be C×H×W with H×W = {image_rgb.shape[:2]}")
        if self.method != "spn":
            return BASELINES[self.method](image_rgb, probs)
        refined = refine_tiled(self._tile_logits, image_rgb, probs, stats=stats, **self._tiling())
        return do_no_harm(probs, refined, factor=factor) if self.guard else refined

    def _bands(
        self,
        image_rgb: np.ndarray,
        coarse: CoarseMap,
        stats: TileStats,
        factor: float,
        sparse: bool,
    ) -> Iterator[tuple[slice, slice, np.ndarray, np.ndarray, np.ndarray, list]]:
        """The coarse map refined a band of rows at a time (`refine_bands`; with `sparse`, a
        cell of a band at a time), each kept to what the coarse map leaves open
        (`spnrefine.guard.trust`) unless `guard=False`: per cell its rows, its columns, its
        channels, their coarse and refined probabilities (k×rows×columns), and the spans of
        its columns (from its first) that the model refined: elsewhere the refined map is
        the coarse one. Without `sparse` the cells are whole rows."""
        h, w = size = image_rgb.shape[:2]
        bands = refine_bands(
            self._tile_logits,
            image_rgb,
            lambda classes, start, stop, left, right: upsample_rows(
                coarse, classes, start, stop, size, left, right
            ),
            coarse.channels,
            candidates=lambda start, stop: channels_in_rows(coarse, start, stop, h),
            sparse=sparse,
            stats=stats,
            **self._tiling(),
        )
        trust_at, weight = -1, None  # the guard's weight for a band's rows, whole rows
        for band in bands:
            stop, right = min(band.stop, h), min(band.right, w)
            base = band.coarse[:, : stop - band.start, : right - band.left]
            out = band.refined[:, : stop - band.start, : right - band.left]
            width = right - band.left
            spans = [(a, min(b, width)) for a, b in band.spans if a < width]
            if self.guard and spans:
                whole = band.left == 0 and right == w and len(band.classes) == coarse.channels
                if whole:  # the weight where it is read, from the band's own rows
                    rims = _trust_rims(coarse, size, band.start, stop, factor)
                    for a, b in spans:
                        weight = _trust_rows(
                            coarse, size, band.start, stop, factor, base, (a, b), rims
                        )
                        keep_coarse(base[:, :, a:b], out[:, :, a:b], weight)
                else:
                    if band.start != trust_at:
                        weight = _trust_rows(coarse, size, band.start, stop, factor)
                        trust_at = band.start
                    for a, b in spans:
                        cols = slice(band.left + a, band.left + b)
                        keep_coarse(base[:, :, a:b], out[:, :, a:b], weight[:, cols])
            yield slice(band.start, stop), slice(band.left, right), band.classes, base, out, spans

    def _refine_binary(
        self,
        image_rgb: np.ndarray,
        coarse: CoarseMap,
        ignore: np.ndarray | None,
        stats: TileStats,
        *,
        factor: float,
        keep: bool,
    ) -> tuple[np.ndarray | None, np.ndarray]:
        """A map of two classes, band by band: the refined probabilities (with ``keep``) and
        the labels. The guard's part rules need the whole image: held at its size are the
        labels and the coarse arg-max (a byte a pixel each), and the refined and the coarse
        foreground planes with ``keep``; for labels alone only their values where the labels
        and the coarse arg-max differ (`guard.AtOdd`), the pixels most rules read, and the
        refined foreground for the fragment rule (which reads it in float16). The same maps
        as `refine_probs` and the class restriction give (to float rounding)."""
        size = image_rgb.shape[:2]
        labels = np.empty(size, bool)  # the arg-max: foreground
        top = np.empty(size, bool) if self.guard else None  # the coarse arg-max
        # Whole foreground planes only where probabilities are asked for; for labels alone the
        # part rules read them only where the labels and the coarse arg-max differ.
        fg = np.empty(size, np.float32) if keep else None
        coarse_fg = np.empty(size, np.float32) if keep and self.guard else None
        # The fragment rule may read the foreground at any pixel (in float16, but numpy's
        # conversion to it would take 2.7 ms a band of 112×4096 pixels, a copy 0.1 ms).
        fragments = self.guard and not keep and judges_fragments(factor)
        fg_all = np.empty(size, np.float32) if fragments else None
        odd: list[tuple] = []  # per band: where the labels moved (and the two maps there)
        # Without sparse the cells are whole rows (the flat indices below count on it).
        bands = self._bands(image_rgb, coarse, stats, factor, sparse=False)
        for rows, _, _, base, out, spans in bands:
            # The arg-max: the coarse map's but where the model refined (`spans`).
            band = labels[rows]
            np.greater(base[1], base[0], out=band)
            if self.guard:
                coarse_top = top[rows]
                coarse_top[...] = band
            for a, b in spans:
                np.greater(out[1, :, a:b], out[0, :, a:b], out=band[:, a:b])
            if keep:
                fg[rows] = out[1]
            if not self.guard:
                continue
            moved = np.zeros(band.shape, bool)  # the labels not the coarse arg-max's
            for a, b in spans:
                np.not_equal(band[:, a:b], coarse_top[:, a:b], out=moved[:, a:b])
            at = np.flatnonzero(moved)  # within the band: its planes are whole rows
            flat = at + rows.start * size[1]
            if keep:
                coarse_fg[rows] = base[1]
                odd.append((flat,))
            else:
                if fg_all is not None:
                    fg_all[rows] = out[1]
                odd.append((flat, base[1].reshape(-1)[at], out[1].reshape(-1)[at]))
        if self.guard:
            index = np.concatenate([o[0] for o in odd])
            if keep:
                coarse_planes, planes = (None, coarse_fg), (None, fg)
            else:
                coarse_planes = (None, AtOdd(index, np.concatenate([o[1] for o in odd])))
                planes = (None, AtOdd(index, np.concatenate([o[2] for o in odd])))
            del odd
            back, swap = binary_parts(
                labels.view(np.uint8),
                coarse_planes,
                planes,
                top.view(np.uint8),
                factor,
                foreground=fg if keep else fg_all,
                moved=index,
            )
            flat_labels = labels.reshape(-1)
            flat_labels[back] = top.reshape(-1)[back]
            flat_labels[swap] = ~flat_labels[swap]
            if keep:
                flat_fg = fg.reshape(-1)
                flat_fg[back] = coarse_fg.reshape(-1)[back]
                flat_fg[swap] = 1.0 - flat_fg[swap]
            del coarse_fg, top, coarse_planes, planes, fg_all
        present = present_classes(coarse)
        if not present.all():  # one class only: it is everywhere
            labels[:] = present[1]
            if keep:
                fg[:] = present[1]
        lut = label_lut(coarse)
        if lut.dtype == np.uint8:  # OpenCV's table look-up: a tenth of numpy's indexing
            table = np.zeros(256, np.uint8)
            table[:2] = lut
            out = cv2.LUT(labels.view(np.uint8), table)
        else:
            out = lut[labels.view(np.uint8)]
        if ignore is not None:
            out[ignore] = VOID
        return (np.stack([1.0 - fg, fg]) if keep else None), out

    def _refine_classes(
        self,
        image_rgb: np.ndarray,
        coarse: CoarseMap,
        ignore: np.ndarray | None,
        stats: TileStats,
        *,
        factor: float,
        keep: bool,
    ) -> tuple[np.ndarray | None, np.ndarray]:
        """A map of several classes, a band of rows at a time: the refined probabilities
        (with ``keep``; else None, and each band holds only its tiles' classes) and the
        labels. The same maps as `refine_probs` and the class restriction give."""
        h, w = size = image_rgb.shape[:2]
        present = present_classes(coarse)
        probs = np.zeros((coarse.channels, h, w), np.float32) if keep else None
        labels = np.empty(size, label_lut(coarse).dtype)
        cells = self._bands(image_rgb, coarse, stats, factor, sparse=not keep)
        for rows, columns, classes, _, out, _ in cells:
            held = present[classes]
            if not held.any():  # only classes the coarse map never chose: void, or nearly
                labels[rows, columns] = coarse.labels[int(np.argmax(present))]
                continue
            restrict_classes(out, held)
            labels[rows, columns] = to_labels(out, coarse, None, classes)
            if probs is not None:
                probs[classes, rows, columns] = out
        if ignore is not None:
            labels[ignore] = VOID
        return probs, labels

    def _tiling(self) -> dict:
        """refine_bands' settings for this predictor's model."""
        return {
            "tile": self.tile,
            "overlap": self.overlap,
            "batch_size": self.batch_size,
            "confident": self.confident,
            "multiple": self.model.tile_multiple,
            "expect": getattr(self.model, "expect", None) if self.device == "cpu" else None,
        }

    def expect_many(self, sizes: Iterable[tuple[int, int] | None] | None = None) -> None:
        """Many images are coming (a batch): a model that picks its kernels by the work ahead
        takes those that pay for their loading over many images, unless ``sizes``, the
        images' (height, width) (None where unknown; read as far as the model needs), hold
        few tiles between them."""
        if self.device == "cpu" and hasattr(self.model, "expect_many"):
            if sizes is None:
                self.model.expect_many()
            else:
                self.model.expect_many(self.tile_count(size) for size in sizes)

    def tile_count(self, size: tuple[int, int] | None) -> int | None:
        """The tiles an image of ``size`` (height, width) is cut into (None: unknown)."""
        if size is None:
            return None
        _, rows, columns = tile_grid(*size, self.tile, self.overlap, self.model.tile_multiple)
        return len(rows) * len(columns)

    def to(self, device: Device) -> Predictor:
        """The same refiner (weights, method, settings) on another device: a worker that was
        sent the driver's CPU refiner runs it on its own GPU."""
        moved = copy.copy(self)
        moved.device = pick_device(device)
        moved._place(copy.deepcopy(self.model))
        return moved

    def _place(self, model: SPNRefiner | LeanRefiner | None) -> None:
        """Put ``model`` on this predictor's device, with the function that runs the tiles: the
        torch-free `LeanRefiner` on the CPU; on a GPU the torch model with batch norms folded
        into their convolutions."""
        from spnrefine.model.architectures import build_lean

        self.model, self._tile_logits = model, None
        if model is None:
            return
        torch_model = hasattr(model, "state_dict")  # else a torch-free model (build_lean)
        if self.device == "cpu":
            if torch_model:
                self.model = model.eval()
                state = {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}
                # The architecture's torch-free twin where the registry has one.
                model = build_lean(model.config, state)
                if model is None:
                    from spnrefine.model.fast import fold_batchnorm

                    model = fold_batchnorm(self.model)
            self._tile_logits = model.tile_logits
            return
        from spnrefine.model.fast import fold_batchnorm

        if not torch_model:
            model = model.to_torch()
        self.model = model.to(self.device).eval()
        self._tile_logits = fold_batchnorm(self.model).tile_logits


def _trust_rims(
    coarse: CoarseMap, size: tuple[int, int], start: int, stop: int, factor: float
) -> tuple:
    """The upsampled map's peak and arg-max in the rows around rows start:stop that their
    `trust` weight depends on, above and below (`upsampled_peak`; None where there are none)."""
    reach = trust_reach(factor)
    lo, hi = max(0, start - reach), min(size[0], stop + reach)
    return tuple(
        upsampled_peak(coarse, size, a, b) if b > a else None for a, b in ((lo, start), (stop, hi))
    )


def _trust_rows(
    coarse: CoarseMap,
    size: tuple[int, int],
    start: int,
    stop: int,
    factor: float,
    rows: np.ndarray | None = None,
    columns: tuple[int, int] | None = None,
    rims: tuple | None = None,
) -> np.ndarray:
    """Rows start:stop of the guard's `trust` weight for a map refined band by band, made
    from the upsampled map's peak in those rows and the few around them that it depends on
    (``rows``: those rows upsampled, every channel, when the caller has them; ``rims``: the
    rows around, `_trust_rims`). With ``rows`` and ``columns`` (a, b), only those columns of
    it, made from them and the few beside them it depends on: the same values."""
    reach = trust_reach(factor)
    lo = max(0, start - reach)
    if rows is None:
        peak, top = upsampled_peak(coarse, size, lo, min(size[0], stop + reach))
        return trust_from(peak, top, factor=factor)[start - lo : stop - lo]
    # Columns a:b need those within `reach` beside them (erosion and edges reach no further).
    a, b = columns if columns is not None else (0, size[1])
    west, east = max(0, a - reach), min(size[1], b + reach)
    rims = rims if rims is not None else _trust_rims(coarse, size, start, stop, factor)
    inner = rows[:, :, west:east]
    parts = [(rim[0][:, west:east], rim[1][:, west:east]) for rim in rims if rim is not None]
    parts.insert(1 if rims[0] is not None else 0, (inner.max(axis=0), argmax_classes(inner)))
    peak = np.concatenate([p for p, _ in parts])
    top = np.concatenate([t.astype(parts[0][1].dtype, copy=False) for _, t in parts])
    return trust_from(peak, top, factor=factor)[start - lo : stop - lo, a - west : b - west]


def check_method(method: str) -> None:
    """Refuse an unknown method, and a baseline that cannot run here (the CRF without
    pydensecrf)."""
    if method != "spn" and method not in BASELINES:
        names = ", ".join(("spn", *BASELINES))
        raise SpnrefineError(f"--method {method}: expected one of {names}")
    if method != "spn":
        check_baseline(method)


_TILING = ("tile", "overlap", "batch_size", "confident")


def pick_device(device: Device) -> str:
    """`cpu`, or a CUDA device name. `auto` is the GPU when torch sees one (the model and the
    propagation engine then run on it), else the CPU. Torch is imported only to look for a GPU
    where an NVIDIA driver is installed, so refining on a CPU never loads it."""
    device = str(device)
    if device == "auto":
        return "cuda" if _nvidia_driver() and _torch_cuda() else "cpu"
    if device == "cpu":
        return "cpu"
    if device.startswith("cuda"):
        need_torch(f"--device {device}")
        if not _torch_cuda():
            raise SpnrefineError(f"--device {device}: no CUDA GPU is available")
        return device
    raise SpnrefineError(f"--device {device}: expected auto, cpu or cuda")


def _nvidia_driver() -> bool:
    markers = ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/dxg")
    return any(os.path.exists(marker) for marker in markers)


def _torch_cuda() -> bool:
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()


def _present_ids(labels: np.ndarray) -> list[int]:
    return [int(k) for k in ids_in(labels)]
