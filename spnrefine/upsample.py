"""Bringing a coarse map to the image's resolution: the size check, bilinear probabilities,
nearest-neighbour void mask."""

from __future__ import annotations

from typing import TYPE_CHECKING

import cv2
import numpy as np

from spnrefine.errors import SpnrefineError

if TYPE_CHECKING:
    from spnrefine.io.coarse import CoarseMap

# Channels per image that cv2.resize takes: 128 in OpenCV 5, 512 in OpenCV 4.
_CV_MAX_CHANNELS = 128


def same_aspect(small_hw: tuple[int, int], large_hw: tuple[int, int]) -> bool:
    """True when `small_hw` is `large_hw` scaled down (or not at all) by one factor, each side
    to within one pixel: some scale s has |h - s·H| ≤ 1 and |w - s·W| ≤ 1.

    Both sides are tested against one shared scale rather than each side against the other's
    rounded prediction, which for wide images is stricter than rounding each side on its own.
    """
    (h, w), (big_h, big_w) = small_hw, large_hw
    if h > big_h or w > big_w:
        return False
    # Cross-multiplied overlap of the intervals [(h-1)/H, (h+1)/H] and [(w-1)/W, (w+1)/W].
    return (h - 1) * big_w <= (w + 1) * big_h and (w - 1) * big_h <= (h + 1) * big_w


def check_coarse_size(
    coarse_hw: tuple[int, int],
    image_hw: tuple[int, int],
    source: str,
    *,
    stretch: bool = False,
) -> None:
    """Refuse a coarse map that is larger than the image or has another aspect ratio, unless
    `stretch` says the map covers the whole image and each axis is resized on its own."""
    if stretch or same_aspect(coarse_hw, image_hw):
        return
    (h, w), (big_h, big_w) = coarse_hw, image_hw
    problem = (
        "is larger than the image"
        if h > big_h or w > big_w
        else "does not have the image's aspect ratio"
    )
    raise SpnrefineError(
        f"coarse map {w}x{h} {problem} {big_w}x{big_h}; if the map covers the whole image, "
        "--stretch resizes each axis independently",
        source,
    )


# Refining holds a few C×H×W float32 maps at the image's size: the upsampled input, the
# output and the blend. Their size is capped at this many times --max-pixels class-pixels,
# what a two-class map at the largest image allowed takes.
CLASS_PIXELS_PER_PIXEL = 2


def check_class_pixels(
    channels: int, image_hw: tuple[int, int], source: str, max_pixels: int
) -> None:
    """Refuse a coarse map whose classes, brought to the image's size, would take more memory
    than a two-class map of `max_pixels` pixels."""
    h, w = image_hw
    limit = CLASS_PIXELS_PER_PIXEL * max_pixels
    if channels * h * w > limit:
        raise SpnrefineError(
            f"{channels} classes at the image's {w}x{h} are {channels * h * w:,} class-pixels "
            f"(about {channels * h * w * 4 / 2**30:.1f} GiB per copy), more than "
            f"{CLASS_PIXELS_PER_PIXEL} x --max-pixels = {limit:,}; --max-pixels raises the limit",
            source,
        )


def upsample_probs(probs: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Resize C×h×w probabilities to C×H×W, bilinear with half-pixel centres, each axis on its
    own. Each output pixel is a convex mix of input pixels, so per-pixel sums are kept."""
    c, h, w = probs.shape
    out_h, out_w = size_hw
    probs = probs.astype(np.float32, copy=False)
    if (h, w) == (out_h, out_w):
        return probs.copy()
    return _resize(probs, out_h, out_w)


def upsample_rows(
    coarse: CoarseMap,
    channels: np.ndarray,
    start: int,
    stop: int,
    size_hw: tuple[int, int],
    left: int = 0,
    right: int | None = None,
) -> np.ndarray:
    """Rows start:stop, and columns left:right (by default all), of
    `upsample_probs(coarse.probs, size_hw)` for `channels` alone, k×(stop−start)×(right−left),
    made from the few coarse rows (and columns) they need (equal to within float rounding): a
    map of many classes is brought to the image's size a band, or a tile, at a time."""
    (h, w), (out_h, out_w) = coarse.hw, size_hw
    right = out_w if right is None else right
    top, bottom, weight = _taps(h, out_h, start, stop)
    lo, hi = int(top.min()), int(bottom.max()) + 1
    if (left, right) == (0, out_w):
        small = coarse.channel_rows(channels, lo, hi)
        if w != out_w:
            small = _resize(small, hi - lo, out_w)
    elif w == out_w:
        small = coarse.channel_rows(channels, lo, hi, left, right)
    else:  # a window: its columns as a product too, from the coarse columns they need
        first, last, across = _taps(w, out_w, left, right)
        west, east = int(first.min()), int(last.max()) + 1
        small = coarse.channel_rows(channels, lo, hi, west, east)
        small = np.matmul(small, _mix(first - west, last - west, across, east - west).T)
    # The vertical pass as one product with a matrix of two weights a row (the others are
    # zeros, which change nothing): one pass over the band instead of five.
    return np.matmul(_mix(top - lo, bottom - lo, weight, hi - lo), small)


def _resize(probs: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """C×h×w → C×out_h×out_w with cv2.resize, bilinear, a chunk of channels at a time."""
    c = len(probs)
    out = np.empty((c, out_h, out_w), dtype=np.float32)
    for start in range(0, c, _CV_MAX_CHANNELS):
        chunk = np.ascontiguousarray(np.moveaxis(probs[start : start + _CV_MAX_CHANNELS], 0, -1))
        resized = cv2.resize(chunk, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
        # cv2 drops the channel axis of a one-channel result.
        out[start : start + chunk.shape[-1]] = np.moveaxis(
            resized.reshape(out_h, out_w, chunk.shape[-1]), -1, 0
        )
    return out


def _mix(near: np.ndarray, far: np.ndarray, weight: np.ndarray, size: int) -> np.ndarray:
    """The len(near)×size matrix that mixes source entries `near` and `far` by 1 − weight
    and weight (one row per output entry)."""
    mix = np.zeros((len(near), size), np.float32)
    at = np.arange(len(near))
    mix[at, near] = 1.0 - weight
    mix[at, far] += weight
    return mix


def channels_in_rows(coarse: CoarseMap, start: int, stop: int, out_h: int) -> np.ndarray:
    """The channels that may be above zero in rows start:stop of the map upsampled to
    `out_h` rows (those of the coarse rows they are made from)."""
    top, bottom, _ = _taps(coarse.hw[0], out_h, start, stop)
    return coarse.channels_in_rows(int(top.min()), int(bottom.max()) + 1)


def upsampled_peak(
    coarse: CoarseMap, size_hw: tuple[int, int], start: int, stop: int, channels: int = 4
) -> tuple[np.ndarray, np.ndarray]:
    """Rows start:stop of the upsampled map's largest probability and its channel (the first
    on ties), made `channels` channels at a time."""
    peak = np.full((stop - start, size_hw[1]), -1.0, np.float32)
    top = np.zeros(peak.shape, np.uint8 if coarse.channels <= 256 else np.uint16)
    found = channels_in_rows(coarse, start, stop, size_hw[0])
    for first in range(0, len(found), channels):
        chunk = found[first : first + channels]
        upsampled = upsample_rows(coarse, chunk, start, stop, size_hw)
        for channel, values in zip(chunk, upsampled, strict=True):
            top[values > peak] = channel
            np.maximum(peak, values, out=peak)
    return peak, top


def _taps(size: int, out_size: int, start: int, stop: int) -> tuple[np.ndarray, ...]:
    """Output rows start:stop of a bilinear resize size → out_size with half-pixel centres,
    as OpenCV computes them: the upper and lower source rows and the lower one's weight."""
    scale = size / out_size
    pos = ((np.arange(start, stop) + 0.5) * scale - 0.5).astype(np.float32)
    top = np.floor(pos)
    weight = (pos - top).astype(np.float32)
    top = top.astype(np.int64)
    edge = (top < 0) | (top >= size - 1)
    weight[edge] = 0.0
    top = np.clip(top, 0, size - 1)
    return top, np.minimum(top + 1, size - 1), weight


def upsample_ignore(mask: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Resize a bool h×w void mask to H×W by nearest neighbour with half-pixel centres, so
    void pixels stay exactly void and nothing else becomes void."""
    out_h, out_w = size_hw
    if mask.shape == (out_h, out_w):
        return mask.astype(bool, copy=True)
    resized = cv2.resize(
        mask.astype(np.uint8), (out_w, out_h), interpolation=cv2.INTER_NEAREST_EXACT
    )
    return resized.astype(bool)
