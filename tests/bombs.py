"""Test helper: array files whose headers declare far more data than they hold."""

from __future__ import annotations

import io
import zipfile

import numpy as np


def npy_header_only(shape: tuple[int, ...], dtype: str = "<f4") -> bytes:
    """A .npy that declares `shape` but holds 16 bytes of data."""
    buf = io.BytesIO()
    header = {"descr": dtype, "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue() + bytes(16)


def npz_header_only(shape: tuple[int, ...], key: str = "probs") -> bytes:
    """A .npz whose one array, named `key`, is `npy_header_only(shape)`."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(f"{key}.npy", npy_header_only(shape))
    return buf.getvalue()
