"""Outputs: encoders that return file bytes (so the CLI can also send them to stdout) and
atomic writes that never clobber an input or, unasked, an existing file."""

from __future__ import annotations

import io
import os
import re
import secrets
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from PIL import Image

from spnrefine.errors import SpnrefineError

OVERLAY_ALPHA = 0.45
_TMP_SUFFIX = ".tmp"
_TMP_NAME = re.compile(r"\.(.+)\.[0-9a-f]{8}" + re.escape(_TMP_SUFFIX))
# Foreground of a 0/255 mask: the common binary case gets a colour that stands out on photos.
_MASK_COLOUR = (255, 40, 160)


def refuse_overwrite_input(out: str | Path, inputs: Iterable[str | Path | None]) -> None:
    """Refuse an output path that names one of the input files (also through links)."""
    if str(out) == "-":
        return
    out_path = Path(out)
    for source in inputs:
        if source is None or str(source) == "-":
            continue
        src = Path(source)
        same = out_path.resolve() == src.resolve()
        if not same and out_path.exists() and src.exists():
            same = os.path.samefile(out_path, src)
        if same:
            raise SpnrefineError(f"the output would overwrite the input {src}", out)


def check_output(
    out: str | Path, inputs: Iterable[str | Path | None] = (), *, overwrite: bool = False
) -> None:
    """Check before any work is done that `out` can be written: not an input, not an existing
    file unless `overwrite`, in a folder that exists."""
    if str(out) == "-":
        return
    refuse_overwrite_input(out, inputs)
    _check_target(Path(out), overwrite)


def write_atomic(path: str | Path, data: bytes, *, overwrite: bool = False) -> None:
    """Write `data` to `path` so that readers see the old file or the whole new one, never a
    part: a temporary file in the same folder, fsync, then a rename over the target."""
    target = Path(path)
    _check_target(target, overwrite)
    folder = target.parent
    tmp = folder / f".{target.name}.{secrets.token_hex(4)}{_TMP_SUFFIX}"
    try:
        # os.open with 0o666 lets the umask set the permissions, as for any new file.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as e:
        raise SpnrefineError(f"cannot write to the output folder: {e.strerror}", folder) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException as e:
        # Also on Ctrl-C: a half-written temporary file must not be left beside the outputs.
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise SpnrefineError(f"cannot write the file: {e.strerror or e}", target) from None
        raise
    _fsync_folder(folder)


def remove_stale_temporaries(targets: Iterable[str | Path], min_age: float = 60.0) -> int:
    """Remove the temporary files that `write_atomic` left beside `targets` when it was killed
    mid-write (SIGKILL, power loss): `.NAME.<8 hex>.tmp`, untouched for `min_age` seconds so that
    a write in progress elsewhere is left alone. Returns how many were removed."""
    by_folder: dict[Path, set[str]] = {}
    for target in targets:
        target = Path(target)
        by_folder.setdefault(target.parent, set()).add(target.name)
    removed, now = 0, time.time()
    for folder, names in by_folder.items():
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            match = _TMP_NAME.fullmatch(entry.name)
            if match is None or match.group(1) not in names:
                continue
            try:
                if entry.is_file() and now - entry.stat().st_mtime >= min_age:
                    os.unlink(entry.path)
                    removed += 1
            except OSError:
                continue  # gone already, or not ours to remove
    return removed


def _check_target(target: Path, overwrite: bool) -> None:
    folder = target.parent
    if not folder.is_dir():
        problem = "is not a folder" if folder.exists() else "does not exist"
        raise SpnrefineError(f"output folder {problem}", folder)
    if target.is_dir():
        raise SpnrefineError("is a folder; give a file name for the output", target)
    if target.exists() and not overwrite:
        raise SpnrefineError("already exists; --overwrite replaces it", target)


def _fsync_folder(folder: Path) -> None:
    # The rename itself is only durable once the folder's entry is on disk; Windows cannot
    # open folders, and there the rename is the best available.
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def encode_label_png(labels: np.ndarray, palette: list[int] | None = None) -> bytes:
    """Class ids (H×W, 0..255) as a PNG: mode P with `palette` when given, else mode L."""
    im = Image.fromarray(_as_uint8_ids(labels))
    if palette is not None:
        # putpalette turns an L image into P with the pixel values kept as indices.
        im.putpalette(palette)
    return _png(im)


def encode_mask_png(mask: np.ndarray) -> bytes:
    """A binary mask (bool, or any integers where nonzero = foreground) as a 0/255 L PNG.

    Through OpenCV with zlib's run-length strategy: a mask is long runs of 0 and 255, which
    it packs 3-4× faster than PIL's default deflate (4096×3072: 45 against 148 ms; files
    about 1.2× larger, 30 against 25 KB)."""
    fg = mask if mask.dtype == np.bool_ else np.not_equal(mask, 0)
    values = np.multiply(np.ascontiguousarray(fg).view(np.uint8), np.uint8(255))
    ok, data = cv2.imencode(
        ".png", values, [cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]
    )
    if not ok:
        raise ValueError(f"cannot encode a {values.shape} mask as PNG")
    return data.tobytes()


def encode_prob_png(prob: np.ndarray, bits: Literal[8, 16] = 8) -> bytes:
    """A foreground probability H×W in 0..1 as an 8-bit (p × 255) or 16-bit (p × 65535) PNG."""
    if bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16, not {bits}")
    top = 255 if bits == 8 else 65535
    scaled = np.rint(np.clip(prob, 0.0, 1.0) * top)
    im = Image.fromarray(scaled.astype(np.uint8 if bits == 8 else np.uint16))
    return _png(im)


def encode_npy(array: np.ndarray) -> bytes:
    """An array as .npy bytes (no pickles)."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    return buf.getvalue()


def default_palette() -> list[int]:
    """The PASCAL VOC colours for ids 0..254, with 255 (a binary mask's foreground) vivid."""
    colours = []
    for k in range(256):
        r = g = b = 0
        c = k
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        colours.extend((r, g, b))
    colours[3 * 255 : 3 * 256] = _MASK_COLOUR
    return colours


def encode_overlay(
    image: np.ndarray,
    labels: np.ndarray,
    palette: list[int] | None = None,
    *,
    fmt: Literal["png", "jpeg"] = "png",
) -> bytes:
    """A picture of `labels` over the RGB `image`: each non-zero id as a translucent fill in its
    palette colour, with its boundary drawn opaque. Label 0 is background and stays clear."""
    ids = _as_uint8_ids(labels.astype(np.uint8) * 255 if labels.dtype == np.bool_ else labels)
    if ids.shape != image.shape[:2]:
        raise ValueError(f"labels {ids.shape} and image {image.shape[:2]} differ in size")
    table = np.zeros((256, 3), dtype=np.uint8)
    colours = np.asarray(palette if palette is not None else default_palette(), dtype=np.uint8)
    table[: len(colours) // 3] = colours[: len(colours) // 3 * 3].reshape(-1, 3)

    out = image.astype(np.float32)
    fill = ids != 0
    out[fill] = (1 - OVERLAY_ALPHA) * out[fill] + OVERLAY_ALPHA * table[ids[fill]]
    # Lines about 1/400 of the short side wide, so they stay visible on large images.
    width = max(1, round(min(ids.shape) / 400))
    kernel = np.ones((2 * width + 1, 2 * width + 1), np.uint8)
    grown, shrunk = cv2.dilate(ids, kernel), cv2.erode(ids, kernel)
    edge = (grown != shrunk) & ((ids != 0) | (grown != 0))
    # On the background side of an edge the pixel takes the neighbouring object's colour.
    out[edge] = table[np.where(ids[edge] != 0, ids[edge], grown[edge])]

    im = Image.fromarray(np.rint(out).astype(np.uint8))
    if fmt == "jpeg":
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=90)
        return buf.getvalue()
    return _png(im)


def _as_uint8_ids(labels: np.ndarray) -> np.ndarray:
    if labels.ndim != 2:
        raise ValueError(f"labels must be H×W, got shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ValueError("label ids must be within 0..255 to fit an 8-bit PNG")
    return labels.astype(np.uint8)


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()
