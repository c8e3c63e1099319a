"""The output rules, on plain paths: which format an output takes (from its name and the coarse
map), how an output without a given name is named, the checks made before any work, and the
bytes and the write of the result and its overlay."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np

from spnrefine.errors import SpnrefineError
from spnrefine.io.coarse import VOID, CoarseMap
from spnrefine.io.write import (
    check_output,
    encode_label_png,
    encode_mask_png,
    encode_npy,
    encode_overlay,
    encode_prob_png,
    write_atomic,
)

STDIO = "-"
OutputFormat = Literal["png", "npy"]
OverlayFormat = Literal["png", "jpeg"]
OUTPUT_SUFFIXES = (".png", ".npy")
OVERLAY_FORMATS: dict[str, OverlayFormat] = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg"}
# `refine` names its default output IMAGE_refined.png; `eval` pairs such a prediction with IMAGE.
REFINED_SUFFIX = "_refined"


def is_foreground_map(coarse: CoarseMap) -> bool:
    """True for one class against background (a binary or soft mask, or ids {0, k}): its soft
    output is the foreground probability alone."""
    return len(coarse.labels) == 2 and coarse.labels[0] == 0


def natural_format(coarse: CoarseMap, *, soft: bool = False) -> OutputFormat:
    """The format of an output whose name does not choose one (stdout, or a name still without
    its extension): a C×H×W .npy for several soft classes, else a PNG."""
    return "npy" if soft and not is_foreground_map(coarse) else "png"


def output_format(out: str | Path, coarse: CoarseMap, *, soft: bool = False) -> OutputFormat:
    """The format `out` will be written in, or an error saying why it cannot hold the result.

    Labels and masks are PNGs. `soft` writes a foreground probability PNG for one class, and a
    C×H×W .npy for several; a name ending in .npy asks for the array in either case. `-`
    (stdout), and a name without an extension, take whichever fits.
    """
    suffix = "" if str(out) == STDIO else Path(out).suffix.lower()
    several = natural_format(coarse, soft=soft) == "npy"
    if suffix == ".npy" and not soft:
        raise SpnrefineError(".npy outputs hold --soft probabilities; name labels .png", out)
    if suffix not in ("", *OUTPUT_SUFFIXES):
        raise SpnrefineError(
            f"cannot write {suffix}: labels and masks are "
            "written as .png, --soft probabilities as .png (one class) or .npy",
            out,
        )
    if suffix == ".png" and several:
        raise SpnrefineError(
            f"--soft output of {len(coarse.labels)} classes is a C×H×W array; name it .npy", out
        )
    if not soft and max(coarse.labels) > 255:
        raise SpnrefineError(
            f"class id {max(coarse.labels)} does not fit an 8-bit label PNG; use --soft", out
        )
    return "npy" if suffix == ".npy" else natural_format(coarse, soft=soft)


def overlay_format(path: str | Path, coarse: CoarseMap) -> OverlayFormat:
    """The picture format for `--overlay`, by the file's extension."""
    fmt = OVERLAY_FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise SpnrefineError("an overlay is written as .png or .jpg", path)
    if max(coarse.labels) > 255:
        raise SpnrefineError(f"class id {max(coarse.labels)} has no overlay colour", path)
    return fmt


def default_output(image: str | Path) -> str:
    """`refine`'s output when none is named: IMAGE_refined beside the image, its extension
    still to come (see `name_output`)."""
    image = Path(image)
    return str(image.parent / f"{image.stem}{REFINED_SUFFIX}")


def name_output(base: str, coarse: CoarseMap, *, soft: bool = False) -> str:
    """The full name of an output given without its extension, once the coarse map is known."""
    return base + "." + natural_format(coarse, soft=soft)


def output_candidates(base: str, *, soft: bool = False) -> list[Path]:
    """The paths an output given without its extension may end up at, before the coarse map is
    known: .png, and also .npy with `soft`."""
    suffixes = OUTPUT_SUFFIXES if soft else OUTPUT_SUFFIXES[:1]
    return [Path(base + suffix) for suffix in suffixes]


def make_output_folder(folder: str | Path) -> None:
    """Create the output folder (and its parents) unless it exists."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SpnrefineError(
            f"cannot create the output folder: {err.strerror or err}", folder
        ) from None


def check_outputs(
    out: str | Path | BinaryIO,
    overlay: str | Path | None,
    inputs: Iterable[str | Path | None],
    *,
    overwrite: bool = False,
    auto_suffix: bool = False,
    soft: bool = False,
) -> None:
    """Check before any work that the output and the overlay can be written: neither is an
    input, nor the other, nor (unless `overwrite`) an existing file, and their folders exist
    and are writable. `out` may be a stream or `-`; with `auto_suffix` it is a name still
    without its extension, of which the .png is checked (and, with `soft`, only the folder: the
    extension is known once the coarse map is read, and the name is checked again then)."""
    inputs = list(inputs)
    out_name = out if isinstance(out, str | Path) else STDIO
    overwrite_out = overwrite
    if auto_suffix and str(out_name) != STDIO:
        out_name = output_candidates(str(out_name), soft=soft)[0]
        overwrite_out = overwrite or soft
    if overlay is not None and str(out_name) != STDIO:
        if Path(overlay).resolve() == Path(out_name).resolve():
            raise SpnrefineError("the overlay and the output are the same file", overlay)
    targets = [(out_name, overwrite_out)] + ([] if overlay is None else [(overlay, overwrite)])
    for target, replace in targets:
        check_output(target, inputs, overwrite=replace)
        folder = Path(target).parent
        # check_output finds the folder; a read-only one would otherwise fail only at the end.
        if str(target) != STDIO and not os.access(folder, os.W_OK | os.X_OK):
            raise SpnrefineError("cannot write to the output folder: permission denied", folder)


def check_bits(bits: int, soft: bool) -> None:
    """Refuse a bit depth the output will not have: 16 bits are for --soft probability PNGs,
    labels and masks are 8-bit."""
    if bits not in (8, 16):
        raise SpnrefineError(f"--bits {bits}: expected 8 or 16")
    if bits == 16 and not soft:
        raise SpnrefineError(
            "--bits 16 is the depth of a --soft probability PNG; labels and masks are 8-bit "
            "PNGs: add --soft, or leave --bits out"
        )


def encode_output(
    probs: np.ndarray,
    labels: np.ndarray,
    coarse: CoarseMap,
    fmt: OutputFormat,
    *,
    soft: bool = False,
    bits: Literal[8, 16] = 8,
) -> bytes:
    """The bytes of the output file: the same kind as the coarse input unless `soft`."""
    check_bits(bits, soft)
    if soft:
        fg_only = is_foreground_map(coarse)
        if fmt == "npy":
            return encode_npy(probs[1] if fg_only else probs)
        return encode_prob_png(probs[1], bits)
    if coarse.kind == "labels":
        return encode_label_png(labels, coarse.palette)
    return encode_mask_png(labels)


def encode_result_overlay(
    image: np.ndarray, labels: np.ndarray, coarse: CoarseMap, fmt: OverlayFormat
) -> bytes:
    """The refined labels drawn over the image; void is left clear, masks get one vivid colour."""
    if coarse.kind == "labels":
        ids = np.where(labels == VOID, 0, labels).astype(np.uint8)
        return encode_overlay(image, ids, coarse.palette, fmt=fmt)
    return encode_overlay(image, labels != 0, fmt=fmt)


def write_output(out: str | Path | BinaryIO, data: bytes, *, overwrite: bool = False) -> str | None:
    """Write `data` atomically to the path `out` and return it; `-` (stdout) or a binary stream
    gets the bytes as they are, and None is returned."""
    if isinstance(out, str | Path) and str(out) != STDIO:
        write_atomic(out, data, overwrite=overwrite)
        return str(out)
    stream = out if not isinstance(out, str | Path) else sys.stdout.buffer
    stream.write(data)
    stream.flush()
    return None
