"""Reading images and coarse maps into arrays, and writing results back to files.

The names below are imported on first use, so that a light module here (`sources`) loads
without numpy, PIL or OpenCV.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from spnrefine.lazy import lazy_attributes

if TYPE_CHECKING:
    from spnrefine.io.coarse import CoarseMap, CoarseType, load_coarse
    from spnrefine.io.images import DEFAULT_MAX_PIXELS, load_image, load_label_ids
    from spnrefine.io.write import (
        check_output,
        default_palette,
        encode_label_png,
        encode_mask_png,
        encode_npy,
        encode_overlay,
        encode_prob_png,
        refuse_overwrite_input,
        write_atomic,
    )

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "CoarseMap",
    "CoarseType",
    "check_output",
    "default_palette",
    "encode_label_png",
    "encode_mask_png",
    "encode_npy",
    "encode_overlay",
    "encode_prob_png",
    "load_coarse",
    "load_image",
    "load_label_ids",
    "refuse_overwrite_input",
    "write_atomic",
]
_HOMES = {
    "DEFAULT_MAX_PIXELS": "spnrefine.settings",
    "CoarseMap": "spnrefine.io.coarse",
    "CoarseType": "spnrefine.io.coarse",
    "check_output": "spnrefine.io.write",
    "default_palette": "spnrefine.io.write",
    "encode_label_png": "spnrefine.io.write",
    "encode_mask_png": "spnrefine.io.write",
    "encode_npy": "spnrefine.io.write",
    "encode_overlay": "spnrefine.io.write",
    "encode_prob_png": "spnrefine.io.write",
    "load_coarse": "spnrefine.io.coarse",
    "load_image": "spnrefine.io.images",
    "load_label_ids": "spnrefine.io.images",
    "refuse_overwrite_input": "spnrefine.io.write",
    "write_atomic": "spnrefine.io.write",
}


__getattr__ = lazy_attributes(__name__, _HOMES)
