"""Defaults and checks of the settings a user gives (tiling, input limits, metrics), shared by
the API, the CLI and the tiler. No heavy imports here: the CLI checks its options with these
before it loads anything."""

from spnrefine.errors import SpnrefineError

DEFAULT_TILE = 128  # tile side in pixels: the model sees one tile at a time
DEFAULT_OVERLAP = 16  # pixels shared by neighbouring tiles, blended
DEFAULT_BATCH_SIZE = 16  # tiles per model call
DEFAULT_CONFIDENT = 0.98  # a tile whose coarse map is this sure everywhere is not refined
DEFAULT_MAX_PIXELS = 100_000_000  # the largest input decoded (decompression-bomb guard)
DEFAULT_TOLERANCE_PX = 2.0  # boundary F: how far a boundary pixel may be from the truth's


def check_settings(
    *,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    batch_size: int = DEFAULT_BATCH_SIZE,
    confident: float = DEFAULT_CONFIDENT,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    depth_factor: int = 1,
) -> None:
    """Refuse settings no refiner can run (`depth_factor`: what a model's tiles must divide
    by, 2 ** (its scales - 1))."""
    if tile < 16 or tile % max(8, depth_factor):
        raise SpnrefineError(
            f"--tile {tile}: must be a multiple of {max(8, depth_factor)}, at least 16"
        )
    if not 0 <= overlap < tile:
        raise SpnrefineError(f"--overlap {overlap}: must be at least 0 and below --tile")
    if batch_size < 1:
        raise SpnrefineError(f"batch size {batch_size}: must be at least 1")
    if not 0.5 < confident <= 1.0:
        raise SpnrefineError(f"confident {confident}: must be in (0.5, 1]")
    if max_pixels < 1:
        raise SpnrefineError(f"--max-pixels {max_pixels}: must be at least 1")
