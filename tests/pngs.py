"""Test helpers: arrays as PNG bytes in memory, and small generated image/coarse pairs."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def png_bytes(array: np.ndarray, palette: list[int] | None = None) -> bytes:
    im = Image.fromarray(array)
    if palette is not None:
        im.putpalette(palette)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def small_pair(folder: Path, name: str = "img", h: int = 40, w: int = 56) -> tuple[Path, Path]:
    """A generated image (a bright square on a dark ground) and its 1/4-size 0/255 mask."""
    image = np.full((h, w, 3), 30, np.uint8)
    image[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = 220
    mask = np.zeros((h // 4, w // 4), np.uint8)
    mask[h // 16 : 3 * h // 16 + 1, w // 16 : 3 * w // 16 + 1] = 255
    image_path, coarse_path = folder / f"{name}.png", folder / f"{name}_coarse.png"
    image_path.write_bytes(png_bytes(image))
    coarse_path.write_bytes(png_bytes(mask))
    return image_path, coarse_path


def listing(folder: Path) -> list[str]:
    """The names in `folder` that `ls` shows (not the batch manifest, a dotfile)."""
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
