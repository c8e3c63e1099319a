"""Coarse maps: every accepted format decoded and checked, then turned into float32
probabilities C×h×w that sum to 1 over C.

Formats (the full rules, with the reasons, are in docs/coarse-formats.md):

- palette PNG (mode P): class ids; the palette is kept for the output.
- 8-bit single-channel image: `coarse_type="auto"` decides, in this order:
  1. only values {0, 255} or only {0, 1}: a binary mask ("binary");
  2. class ids, 255 = void ("labels"), when its edges are steps: fewer than 20% of the pixels
     on an edge sit strictly between their two opposite neighbours (no ramps); beyond 64
     values, most values must also fill some pixel's whole neighbourhood (ids fill regions;
     a soft map's middle values only line its edges);
  3. a soft foreground probability value / 255 ("prob") when its edges are ramps (and, beyond
     64 values, its middle values only line edges);
  4. anything else, and a map with no edge to judge (one value, or smaller than 3 pixels on
     both sides), is refused: `coarse_type` must say.
  `coarse_type="labels"` or `"prob"` skips the guess.
- RGBA or gray + alpha image (a background remover's cutout): the alpha channel is the soft
  foreground, alpha / 255.
- 16-bit single-channel image: foreground probability value / 65535 (class ids with
  `coarse_type="labels"`); 32-bit float image: foreground probability as is.
- `.npy` / `.npz` float arrays: H×W foreground probability, or C×H×W / H×W×C class
  probabilities (logits with `logits=True`; softmax over C, sigmoid for H×W). The channel axis
  is the first or the last one, never the middle one: the one whose removal leaves the image's
  aspect ratio when that picks exactly one, else the smaller one (the first one on a tie).
  Integer arrays are class ids, bool arrays binary masks.

Label 255 is void: it gets no channel, its pixels get uniform probabilities and are
recorded in `ignore`. Single-class maps get two channels, [background, foreground].
A mask or a probability of one foreground (kinds "binary" and "prob" with two channels) has
the labels [0, 255], whatever its file held: its refined labels are 0/255, as the written
mask. Class ids keep their own values.
"""

from __future__ import annotations

import io
import math
import zipfile
from typing import BinaryIO, Literal

import numpy as np
from numpy.lib import format as npy_format
from PIL import Image

from spnrefine.errors import SpnrefineError
from spnrefine.io.images import (
    DEFAULT_MAX_PIXELS,
    Source,
    check_pixel_count,
    decode_pil,
    read_source,
)
from spnrefine.upsample import same_aspect

CoarseType = Literal["auto", "labels", "prob"]

VOID = 255
MAX_CHANNELS = 1024
# The auto rule for 8-bit maps. Measured on the development data: CamVid label maps have
# 4-12 values, a ramp fraction of 0-0.02 (0.15 after a nearest-neighbour shrink by 16) and a
# filled share of 0.86-1; the ISNet and MediaPipe soft maps have 55-256 values, a ramp
# fraction of 0.28-0.72 and a filled share of 0-0.05.
AUTO_FEW_VALUES = 64
AUTO_MAX_RAMP_FRACTION = 0.2
AUTO_MIN_FILLED_SHARE = 0.5
FOREGROUND_LABELS = [0, 255]
# Float error in a segmenter's softmax or a round trip through float16 stays well inside this.
PROB_TOLERANCE = 1e-3

_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
_NPZ_KEYS = ("probs", "logits", "arr_0")


class CoarseMap:
    """A decoded coarse map.

    probs: float32 C×h×w, C ≥ 2, each pixel summing to 1 over C. A map of class ids holds
        them as `index` and makes `probs` (one-hot) only when asked: a map of many classes at
        the image's size would take C times its pixels in float32.
    labels: the label id each channel stands for (what an argmax writes out).
    kind: "labels" (class ids), "binary" (0/255 or 0/1 mask) or "prob" (soft probabilities).
    palette: the PNG palette (PIL's flat list), kept for writing the output; else None.
    ignore: bool h×w, True where the map holds void (255); None when there is none.
    source: the name the map was loaded from, for messages.
    index: h×w channel of each pixel (uint8, or uint16 beyond 255 channels), the number of
        channels where void (its probabilities are uniform); None for soft maps.
    """

    def __init__(
        self,
        probs: np.ndarray | None,
        labels: list[int],
        kind: Literal["labels", "binary", "prob"],
        palette: list[int] | None,
        ignore: np.ndarray | None,
        source: str,
        *,
        index: np.ndarray | None = None,
    ):
        if probs is None and index is None:
            raise ValueError("a coarse map needs probs or an index")
        self._probs = probs
        self.labels, self.kind, self.palette = labels, kind, palette
        self.ignore, self.source, self.index = ignore, source, index

    @property
    def probs(self) -> np.ndarray:
        if self._probs is None:
            self._probs = self.channel_rows(np.arange(self.channels), 0, self.hw[0])
        return self._probs

    @probs.setter
    def probs(self, probs: np.ndarray) -> None:
        self._probs, self.index = probs, None

    @property
    def channels(self) -> int:
        return len(self.labels)

    @property
    def hw(self) -> tuple[int, int]:
        shape = self._probs.shape[1:] if self.index is None else self.index.shape
        return int(shape[0]), int(shape[1])

    def channel_rows(
        self, channels: np.ndarray, start: int, stop: int, left: int = 0, right: int | None = None
    ) -> np.ndarray:
        """float32 k×(stop−start)×(right−left): the probabilities of `channels` in rows
        start:stop (and columns left:right; by default all)."""
        columns = slice(left, right)
        if self.index is None:
            return self._probs[channels, start:stop, columns]
        rows = self.index[start:stop, columns]
        out = np.empty((len(channels), *rows.shape), np.float32)
        for i, channel in enumerate(channels):
            np.equal(rows, channel, out=out[i], casting="unsafe")
        if self.ignore is not None:
            out[:, self.ignore[start:stop, columns]] = 1.0 / self.channels
        return out

    def channels_in_rows(self, start: int, stop: int) -> np.ndarray:
        """The channels that are not zero everywhere in rows start:stop (all of a soft map's,
        and all where a row holds void)."""
        if self.index is None:
            return np.arange(self.channels)
        held = np.bincount(self.index[start:stop].ravel(), minlength=self.channels + 1)
        if held[self.channels]:  # void: uniform over every channel
            return np.arange(self.channels)
        return np.flatnonzero(held)


def load_coarse(
    source: Source,
    *,
    coarse_type: CoarseType = "auto",
    logits: bool = False,
    name: str | None = None,
    image_hw: tuple[int, int] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> CoarseMap:
    """Load a coarse map from a path or raw bytes (then errors name it `name` or "<stdin>").

    `image_hw` only helps pick the channel axis of a 3-D array; sizes are checked later by
    `spnrefine.upsample.check_coarse_size`.
    """
    if coarse_type not in ("auto", "labels", "prob"):
        raise ValueError(f"coarse_type must be 'auto', 'labels' or 'prob', not {coarse_type!r}")
    data, shown = read_source(source, name)
    if data.startswith(_NPY_MAGIC) or data.startswith(_ZIP_MAGICS):
        array, named_logits = _load_array(data, shown, image_hw, max_pixels)
        return _from_array(array, shown, coarse_type, logits or named_logits, image_hw, max_pixels)
    if logits:
        raise SpnrefineError("--logits applies to .npy/.npz arrays, not to images", shown)
    return _from_image(decode_pil(data, shown, max_pixels, "coarse map"), shown, coarse_type)


def _load_array(
    data: bytes, name: str, image_hw: tuple[int, int] | None, max_pixels: int
) -> tuple[np.ndarray, bool]:
    """Read a .npy, or the chosen array of a .npz; the flag is True for an array named
    "logits". The declared shape is checked before any data is read or decompressed."""
    try:
        if data.startswith(_NPY_MAGIC):
            return _read_npy(io.BytesIO(data), len(data), name, image_hw, max_pixels), False
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            keys = [n.removesuffix(".npy") for n in archive.namelist() if n.endswith(".npy")]
            if not keys:
                raise SpnrefineError(".npz file holds no arrays", name)
            key = next((k for k in _NPZ_KEYS if k in keys), keys[0])
            member = archive.getinfo(f"{key}.npy")
            with archive.open(member) as stream:
                array = _read_npy(stream, member.file_size, name, image_hw, max_pixels)
            return array, key == "logits"
    except SpnrefineError:
        raise
    except ValueError as e:
        raise SpnrefineError(f"cannot read the array: {e}", name) from None
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise SpnrefineError(f"corrupt or truncated array file ({e})", name) from None


def _read_npy(
    stream: BinaryIO,
    size: int,
    name: str,
    image_hw: tuple[int, int] | None,
    max_pixels: int,
) -> np.ndarray:
    """One .npy of `size` bytes: its header, the declared shape against the pixel limit and
    the bytes present, then the data."""
    version = npy_format.read_magic(stream)
    if version == (1, 0):
        shape, fortran_order, dtype = npy_format.read_array_header_1_0(stream)
    elif version in ((2, 0), (3, 0)):
        shape, fortran_order, dtype = npy_format.read_array_header_2_0(stream)
    else:
        raise SpnrefineError(
            f".npy format version {version[0]}.{version[1]} is not supported", name
        )
    if dtype.hasobject:
        raise SpnrefineError("cannot read the array: it holds Python objects, not numbers", name)
    _check_rank(shape, name)
    if 0 not in shape:
        h, w = _spatial(shape, _channel_axis(shape, name, image_hw)) if len(shape) == 3 else shape
        check_pixel_count(w, h, name, max_pixels, "coarse map")
    count = math.prod(shape)
    needed, present = count * dtype.itemsize, size - stream.tell()
    if present < needed:
        raise SpnrefineError(
            f"corrupt or truncated array file: shape {tuple(shape)} of {dtype} needs "
            f"{needed:,} bytes, the file holds {max(present, 0):,}",
            name,
        )
    array = np.frombuffer(stream.read(needed), dtype=dtype, count=count)
    return array.reshape(shape, order="F" if fortran_order else "C")


def _from_image(im: Image.Image, name: str, coarse_type: CoarseType) -> CoarseMap:
    if im.mode == "P":
        if coarse_type == "prob":
            raise SpnrefineError("a palette PNG holds class ids, not probabilities", name)
        return _label_map(np.asarray(im), name, "labels", im.getpalette())
    if im.mode in ("1", "L"):
        return _from_integers(np.asarray(im.convert("L")), name, coarse_type)
    if im.mode.startswith("I;16") or (im.mode == "I" and im.format == "PNG"):
        # PNG has no 32-bit grayscale: an "I" PNG is 16-bit data in a wider container.
        return _from_integers(np.asarray(im).astype(np.uint16), name, coarse_type)
    if im.mode == "I":
        return _from_integers(np.asarray(im), name, coarse_type)
    if im.mode == "F":
        # decode_pil has checked the pixel count already.
        return _from_array(np.asarray(im), name, coarse_type, False, None, im.width * im.height)
    if im.mode in ("RGB", "RGBA", "LA"):
        gray = _gray_saved_as_colour(im)
        if gray is not None:
            return _from_integers(gray, name, coarse_type)
    if im.mode in ("RGBA", "LA"):
        return _from_alpha(np.asarray(im.getchannel("A")), name, im.mode, coarse_type)
    raise SpnrefineError(
        f"unsupported image mode {im.mode}: a coarse map must be single-channel (class ids or "
        "probabilities) or a palette PNG; convert colour-coded RGB masks to one of those",
        name,
    )


def _gray_saved_as_colour(im: Image.Image) -> np.ndarray | None:
    """The single-channel map in an RGB image whose channels are equal everywhere (a mask or
    probability map that a tool saved in colour), or in an opaque RGBA or gray + alpha one;
    None for anything else (colour-coded classes, a cutout)."""
    if im.mode in ("RGBA", "LA") and np.asarray(im.getchannel("A")).min() < 255:
        return None  # a cutout: its alpha channel is the map
    gray = np.asarray(im.getchannel(0))
    colours = im.getbands()[1:3] if im.mode != "LA" else ()  # LA: one channel besides alpha
    same = all(np.array_equal(np.asarray(im.getchannel(band)), gray) for band in colours)
    return gray if same else None


def _from_alpha(alpha: np.ndarray, name: str, mode: str, coarse_type: CoarseType) -> CoarseMap:
    """A cutout: the alpha channel is the foreground, alpha / 255."""
    if coarse_type == "labels":
        raise SpnrefineError(
            f"an {mode} image is read as a cutout (alpha = foreground), not as class ids", name
        )
    if alpha.min() == 255:
        raise SpnrefineError(
            f"{mode} image without transparency: a cutout's alpha channel is its foreground; "
            "a coarse map must otherwise be single-channel (class ids or probabilities) or a "
            "palette PNG",
            name,
        )
    binary = set(ids_in(alpha).tolist()) <= {0, 255}
    return _foreground(alpha.astype(np.float32) / 255.0, name, "binary" if binary else "prob")


def ids_in(values: np.ndarray) -> np.ndarray:
    """The sorted values an integer map holds. For 8- and 16-bit maps OpenCV's histogram,
    not np.unique, which sorts (seconds for 48 million pixels) and whose first call alone
    takes 20 ms (it loads numpy.ma); np.bincount would first copy the map to 8-byte
    integers (100 MB at 4096×3072)."""
    if values.ndim == 2 and values.dtype in (np.uint8, np.uint16) and values.size:
        import cv2

        bins = 256 if values.dtype == np.uint8 else 65536
        hist = cv2.calcHist([values], [0], None, [bins], [0, bins]).ravel()
        return np.flatnonzero(hist).astype(values.dtype)
    return np.unique(values)


def _from_integers(values: np.ndarray, name: str, coarse_type: CoarseType) -> CoarseMap:
    """An H×W integer map: 8-bit by the auto rule, 16-bit as probability, wider as class ids."""
    if values.dtype == np.uint8:
        kind = _guess_kind(values, name) if coarse_type == "auto" else coarse_type
        if kind == "prob":
            return _foreground(values.astype(np.float32) / 255.0, name)
        return _label_map(values, name, kind, None)
    if values.dtype == np.uint16 and coarse_type != "labels":
        return _foreground(values.astype(np.float32) / 65535.0, name)
    if coarse_type == "prob":
        raise SpnrefineError(
            f"{values.dtype} values are class ids; probabilities must be 8-bit, 16-bit or float",
            name,
        )
    return _label_map(values, name, "labels", None)


def _guess_kind(values: np.ndarray, name: str) -> Literal["labels", "binary", "prob"]:
    present = ids_in(values)
    if set(present.tolist()) <= {0, VOID} or set(present.tolist()) <= {0, 1}:
        return "binary"
    evidence = _edge_evidence(values, present)
    if evidence is None:
        h, w = values.shape
        raise SpnrefineError(
            f"cannot tell class ids from probabilities in a {w}x{h} map "
            f"{'of one value' if len(present) == 1 else 'this small'}: no edges to judge by; "
            "say which with --coarse-type labels or --coarse-type prob",
            name,
        )
    ramps, filled = evidence
    steps = ramps < AUTO_MAX_RAMP_FRACTION
    if int(np.count_nonzero(present != VOID)) <= AUTO_FEW_VALUES:
        return "labels" if steps else "prob"
    if steps == (filled >= AUTO_MIN_FILLED_SHARE):
        return "labels" if steps else "prob"
    raise SpnrefineError(
        f"cannot tell class ids from probabilities: {len(present)} values, "
        f"{'step' if steps else 'ramp'} edges ({ramps:.0%} ramps), but "
        f"{filled:.0%} of the values between 0 and 255 fill regions; "
        "say which with --coarse-type labels or --coarse-type prob",
        name,
    )


def _edge_evidence(values: np.ndarray, present: np.ndarray) -> tuple[float, float] | None:
    """What the edges of an 8-bit map say, along each axis of at least 3 pixels; None when
    there is no edge to judge by.

    ramps: among pixels that differ from a neighbour, the share lying strictly between their
    two opposite neighbours: high for soft maps (edges are ramps), near 0 for class ids (edges
    are steps). filled: the share of values other than 0 and 255 that some pixel holds along
    with all its neighbours: class ids fill regions, a soft map's middle values line edges.
    """
    v = values.astype(np.int16)
    axes = [axis for axis in (0, 1) if v.shape[axis] >= 3]
    if not axes:
        return None
    core = tuple(slice(1, -1) if axis in axes else slice(None) for axis in (0, 1))
    c = v[core]
    ramp, edge, flat = np.zeros(c.shape, bool), np.zeros(c.shape, bool), np.ones(c.shape, bool)
    for axis in axes:
        a = v[tuple(slice(None, -2) if i == axis else core[i] for i in (0, 1))]
        b = v[tuple(slice(2, None) if i == axis else core[i] for i in (0, 1))]
        ramp |= ((a < c) & (c < b)) | ((a > c) & (c > b))
        edge |= (c != a) | (c != b)
        flat &= (c == a) & (c == b)
    n_edge = int(np.count_nonzero(edge))
    if not n_edge:
        return None
    middle = present[(present != 0) & (present != VOID)]
    holds_flat = np.bincount(c[flat].ravel(), minlength=VOID + 1) > 0
    filled = float(holds_flat[middle].mean()) if middle.size else 1.0
    return int(np.count_nonzero(ramp)) / n_edge, filled


def _label_map(ids: np.ndarray, name: str, kind: str, palette: list[int] | None) -> CoarseMap:
    """One-hot probabilities for class ids (kind "labels", 255 = void) or a binary mask."""
    present = ids_in(ids)
    if kind == "binary":
        fg = 1 if set(present.tolist()) <= {0, 1} and 1 in present else VOID
        return _foreground((ids == fg).astype(np.float32), name, "binary")
    if present[0] < 0:
        raise SpnrefineError(f"negative class id {int(present[0])}", name)
    ignore = ids == VOID
    classes = [int(k) for k in present if k != VOID]
    if not classes:
        raise SpnrefineError("every pixel is 255 (void): nothing to refine", name)
    if len(classes) > MAX_CHANNELS:
        raise SpnrefineError(
            f"{len(classes)} different class ids; at most {MAX_CHANNELS} are supported", name
        )
    if len(classes) == 1:
        # Downstream always gets a choice of at least two channels; the extra one is empty.
        classes = sorted({classes[0], 1 if classes[0] == 0 else 0})
    # Each pixel's channel, void (255, in no channel) the number of channels.
    dtype = np.uint8 if len(classes) < 255 else np.uint16
    if int(present[-1]) < 2**16:
        lookup = np.full(max(int(present[-1]), classes[-1]) + 1, len(classes), dtype)
        lookup[classes] = np.arange(len(classes))
        index = lookup[ids]
    else:
        index = np.searchsorted(np.asarray(classes), ids).astype(dtype)
        index[ignore] = len(classes)
    has_void = bool(ignore.any())
    return CoarseMap(
        None, classes, "labels", palette, ignore if has_void else None, name, index=index
    )


def _foreground(fg: np.ndarray, name: str, kind: str = "prob") -> CoarseMap:
    probs = np.stack([1.0 - fg, fg]).astype(np.float32)
    return CoarseMap(probs, list(FOREGROUND_LABELS), kind, None, None, name)


def _from_array(
    array: np.ndarray,
    name: str,
    coarse_type: CoarseType,
    logits: bool,
    image_hw: tuple[int, int] | None,
    max_pixels: int,
) -> CoarseMap:
    _check_rank(array.shape, name)
    if array.size == 0:
        raise SpnrefineError(f"empty array (shape {array.shape})", name)
    if array.dtype == np.bool_ or np.issubdtype(array.dtype, np.integer):
        if array.ndim != 2 or logits:
            raise SpnrefineError(
                f"integer array of shape {array.shape}: integers are read as an H×W map of "
                "class ids or 8/16-bit probabilities; logits and C×H×W arrays must be floats",
                name,
            )
        check_pixel_count(array.shape[1], array.shape[0], name, max_pixels, "coarse map")
        # A big-endian uint16 from another machine must still count as 16-bit.
        array = array.astype(array.dtype.newbyteorder("="), copy=False)
        if array.dtype == np.bool_:
            return _label_map(array, name, "binary", None)
        return _from_integers(array, name, coarse_type)
    if not np.issubdtype(array.dtype, np.floating):
        raise SpnrefineError(f"array of {array.dtype} values; expected floats", name)
    if coarse_type == "labels":
        raise SpnrefineError("float array: class ids must be an integer array", name)

    values = array.astype(np.float32)
    if array.ndim == 3:
        values = np.moveaxis(values, _channel_axis(values.shape, name, image_hw), 0)
        if values.shape[0] == 1:
            values = values[0]
    check_pixel_count(values.shape[-1], values.shape[-2], name, max_pixels, "coarse map")
    finite = np.isfinite(values)
    if not finite.all():
        bad = np.argwhere(~finite)[0]
        raise SpnrefineError(
            f"{int(np.count_nonzero(~finite))} NaN or infinite values (the first at index "
            f"{tuple(int(i) for i in bad)})",
            name,
        )
    if values.ndim == 2:
        fg = _sigmoid(values) if logits else _check_probs(values, name)
        return _foreground(fg, name)
    probs = _softmax(values) if logits else _normalise(_check_probs(values, name))
    return CoarseMap(probs, list(range(probs.shape[0])), "prob", None, None, name)


def _check_rank(shape: tuple[int, ...], name: str) -> None:
    if len(shape) not in (2, 3):
        raise SpnrefineError(
            f"array has {len(shape)} dimension{'s' if len(shape) != 1 else ''} "
            f"(shape {tuple(shape)}); expected H×W, C×H×W or H×W×C",
            name,
        )


def _channel_axis(shape: tuple[int, ...], name: str, image_hw: tuple[int, int] | None) -> int:
    candidates = [axis for axis in (0, 2) if shape[axis] <= MAX_CHANNELS]
    if not candidates:
        raise SpnrefineError(
            f"array of shape {shape}: neither the first nor the last axis is a channel axis "
            f"(at most {MAX_CHANNELS} channels)",
            name,
        )
    if image_hw is not None and len(candidates) == 2:
        fitting = [a for a in candidates if same_aspect(_spatial(shape, a), image_hw)]
        if len(fitting) == 1:
            return fitting[0]
    return min(candidates, key=lambda a: (shape[a], a))


def _spatial(shape: tuple[int, ...], channel_axis: int) -> tuple[int, int]:
    h, w = (s for i, s in enumerate(shape) if i != channel_axis)
    return h, w


def _check_probs(values: np.ndarray, name: str) -> np.ndarray:
    lo, hi = float(values.min()), float(values.max())
    if lo < -PROB_TOLERANCE:
        raise SpnrefineError(
            f"negative probabilities (minimum {lo:g}); pass --logits if these are logits", name
        )
    if hi > 1 + PROB_TOLERANCE:
        raise SpnrefineError(
            f"probabilities above 1 (maximum {hi:g}); pass --logits if these are logits", name
        )
    return np.clip(values, 0.0, 1.0)


def _normalise(probs: np.ndarray) -> np.ndarray:
    """Scale each pixel's probabilities to sum to 1; an all-zero pixel becomes uniform."""
    total = probs.sum(axis=0, keepdims=True)
    out = np.divide(probs, total, out=np.empty_like(probs), where=total > 0)
    out[:, total[0] == 0] = 1.0 / probs.shape[0]
    return out


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=0, keepdims=True))
    return (e / e.sum(axis=0, keepdims=True)).astype(np.float32)


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    # The tanh form does not overflow for large negative logits, unlike 1 / (1 + exp(-x)).
    return (0.5 * (1.0 + np.tanh(0.5 * logits))).astype(np.float32)
