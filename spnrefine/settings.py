"""Default tiling settings, shared by the API, the CLI and the tiler (no heavy imports here)."""

DEFAULT_TILE = 128  # tile side in pixels: the model sees one tile at a time
DEFAULT_OVERLAP = 16  # pixels shared by neighbouring tiles, blended
