"""Reading images and coarse maps into arrays, and writing results back to files."""

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
