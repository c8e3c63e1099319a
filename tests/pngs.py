"""Test helper: encode arrays as PNG bytes in memory."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def png_bytes(array: np.ndarray, palette: list[int] | None = None) -> bytes:
    im = Image.fromarray(array)
    if palette is not None:
        im.putpalette(palette)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()
