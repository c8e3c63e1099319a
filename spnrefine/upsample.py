"""Bringing a coarse map to the image's resolution: the size check, bilinear probabilities,
nearest-neighbour void mask."""

from __future__ import annotations

import cv2
import numpy as np

from spnrefine.errors import SpnrefineError

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
    out = np.empty((c, out_h, out_w), dtype=np.float32)
    for start in range(0, c, _CV_MAX_CHANNELS):
        chunk = np.ascontiguousarray(np.moveaxis(probs[start : start + _CV_MAX_CHANNELS], 0, -1))
        resized = cv2.resize(chunk, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
        # cv2 drops the channel axis of a one-channel result.
        out[start : start + chunk.shape[-1]] = np.moveaxis(
            resized.reshape(out_h, out_w, chunk.shape[-1]), -1, 0
        )
    return out


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
