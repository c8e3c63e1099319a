"""File naming that pairs files by stem: which extensions hold images and which hold maps,
and the suffixes that mark a coarse map lying beside its image."""

from __future__ import annotations

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp")
COARSE_EXTENSIONS = (".png", ".npy", ".npz", ".tif", ".tiff")
"""Coarse maps, and the label maps, masks and probabilities that refine writes and eval reads."""
COARSE_SUFFIXES = ("_coarse", "_seg", "_mask")
