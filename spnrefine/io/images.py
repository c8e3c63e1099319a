"""Reading input files: bytes from a path or stdin, safe PIL decoding, and images as RGB uint8."""

from __future__ import annotations

import io
import threading
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from spnrefine.errors import SpnrefineError
from spnrefine.io.sources import Source, read_source
from spnrefine.settings import DEFAULT_MAX_PIXELS

_NOT_AN_IMAGE = "not an image, or an image format that is not supported"

# PIL's own bomb guard is a process-wide setting; ours replaces it while a file is opened,
# so the lock keeps two of our threads from restoring each other's value.
_PIL_LIMIT_LOCK = threading.Lock()


def decode_pil(
    data: bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS, what: str = "image"
) -> Image.Image:
    """Decode `data` fully with PIL after checking its header size against `max_pixels`.

    The whole image is decoded here so that a truncated or corrupt file fails now, with the
    file's name, rather than later inside some array operation.
    """
    problem = None
    with _PIL_LIMIT_LOCK, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        saved_limit = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            im = Image.open(io.BytesIO(data))
            check_pixel_count(im.width, im.height, name, max_pixels, what)
            im.load()
        except UnidentifiedImageError:
            problem = _NOT_AN_IMAGE
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            problem = f"corrupt or truncated image ({e})"
        finally:
            Image.MAX_IMAGE_PIXELS = saved_limit
    # PIL reports some damage only as warnings: a short TIFF strip is padded with zeros, and a
    # TIFF cut before its tags warns and then counts as unidentified.
    truncation = [w for w in caught if "truncat" in str(w.message).lower()]
    if problem == _NOT_AN_IMAGE and caught:
        problem = f"corrupt or truncated image ({caught[0].message})"
    elif problem is None and truncation:
        problem = f"corrupt or truncated image ({truncation[0].message})"
    if problem is not None:
        raise SpnrefineError(problem, name)
    for w in caught:
        warnings.warn(w.message, stacklevel=2)
    return im


def check_pixel_count(
    width: int, height: int, name: str, max_pixels: int, what: str = "image"
) -> None:
    """Refuse an image (or a coarse map: `what`) larger than `max_pixels`, the guard against
    decompression bombs."""
    if width * height > max_pixels:
        raise SpnrefineError(
            f"{what} is {width}x{height} = {width * height:,} pixels, more than the limit of "
            f"{max_pixels:,}; --max-pixels raises the limit",
            name,
        )


def header_size(path: str) -> tuple[int, int] | None:
    """(height, width) of an image file as its header gives it (no pixels decoded), or None
    where that cannot be told: not a local file, or not one PIL opens."""
    if path == "-" or "://" in path:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a large image's bomb warning: refused later
            with Image.open(path) as im:
                return im.height, im.width
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None


def load_image(
    source: Source, *, name: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Load an image as an H×W×3 uint8 RGB array, upright according to its EXIF orientation.

    `source` is a path or the raw bytes of a file (then errors name it `name` or "<stdin>").
    Alpha is dropped, not composited: the segmenter that made the coarse map saw the colours
    under transparent pixels too. Grayscale and palette images become RGB; 16-bit and float
    images are scaled to 8 bits (see `_to_8bit`).
    """
    data, shown = read_source(source, name)
    im = decode_pil(data, shown, max_pixels)
    try:
        im = ImageOps.exif_transpose(im)
    except (OSError, SyntaxError, ValueError, KeyError, TypeError):
        # A damaged EXIF block should not cost the user an image whose pixels decode fine.
        pass
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        gray = _to_8bit(np.asarray(im))
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    if im.mode == "P" and "transparency" in im.info:
        # Converting straight to RGB makes PIL warn about the transparency it is dropping.
        im = im.convert("RGBA")
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.ascontiguousarray(np.asarray(im, dtype=np.uint8))


def load_label_ids(
    source: Source, *, name: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Load a label image (ground truth: class ids, or a 0/255 or 0/1 mask) as its H×W uint8
    values, uninterpreted: no EXIF turn, no colour conversion, no guess of what the values
    mean. A multi-channel image, or values beyond 255, are refused."""
    data, shown = read_source(source, name)
    im = decode_pil(data, shown, max_pixels)
    if im.mode == "1":
        im = im.convert("L")
    if im.mode not in ("L", "P") and not im.mode.startswith("I"):
        raise SpnrefineError(
            f"a label image must be single-channel (class ids or a 0/255 mask), not {im.mode}",
            shown,
        )
    values = np.asarray(im)
    if values.dtype != np.uint8:
        lo, hi = int(values.min(initial=0)), int(values.max(initial=0))
        if lo < 0 or hi > 255:
            bad = lo if lo < 0 else hi
            raise SpnrefineError(f"label value {bad}: class ids must be within 0..255", shown)
        values = values.astype(np.uint8)
    return values


def _to_8bit(values: np.ndarray) -> np.ndarray:
    """Scale a single-channel 16-bit, 32-bit or float image to uint8.

    Integers within 0..65535 are 16-bit data (v / 257); floats within 0..1 are v × 255; any
    other range is stretched from its minimum to its maximum.
    """
    v = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(v.min()), float(v.max())
    if np.issubdtype(values.dtype, np.integer) and lo >= 0 and hi <= 65535:
        scaled = v / 257.0
    elif np.issubdtype(values.dtype, np.floating) and lo >= 0 and hi <= 1:
        scaled = v * 255.0
    else:
        scaled = (v - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(v)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
