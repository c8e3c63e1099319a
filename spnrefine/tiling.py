"""Tiled refinement of a full-resolution probability map: overlapping tiles, skips, blending.

Tiles the coarse map is already sure about (one class at or above ``confident`` everywhere in
the tile) are not sent through the model; their coarse probabilities are blended in as they
are. In the other tiles only the classes that reach ``1 - confident`` somewhere are refined,
so a tile of a 150-class map costs what its few present classes cost.
Tiles go through the model in batches and are accumulated straight into the output, so memory
holds the output, the input and one batch of gates, whatever the image size.

The model is any function from a batch of tiles (N×3×t×t uint8 RGB, N×k×t×t probabilities) to
logits N×k×t×t: the torch-free `LeanRefiner` on a CPU, the torch model on a GPU.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from spnrefine.settings import DEFAULT_OVERLAP, DEFAULT_TILE

TileLogits = Callable[[np.ndarray, np.ndarray], np.ndarray]
# Class maps (tiles × classes) per model call, summed over the batch's tiles (16 tiles × 4
# classes): a batch of binary tiles is not cut, while a tile of many classes goes alone, and the
# model propagates its classes a few at a time (SPNRefiner.tile_logits: gates once, then at most
# this many class maps per propagation; LeanRefiner in passes of its own).
CLASS_TILES_PER_CALL = 64


@dataclass
class TileStats:
    """Tiles of one image: all of them, and those sent through the model (the rest were sure)."""

    total: int = 0
    refined: int = 0


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets covering ``length`` with ``tile``-long windows overlapping by ``overlap``."""
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


def fit_tile(tile: int, h: int, w: int, multiple: int = 8) -> int:
    """``tile``, or, when it is larger than the image, the smallest multiple of ``multiple``
    (at least 16) that covers the image's longer side: a larger tile would refine padding,
    at a cost that grows with the tile's area (--tile 4096 on 512×512 took 9.9 GB)."""
    cover = max(16, -(-max(h, w) // multiple) * multiple)
    return min(tile, cover)


def blend_window(tile: int, overlap: int) -> np.ndarray:
    """tile×tile weights ramping up over ``overlap`` pixels from each edge, so seams fade."""
    d = np.minimum(np.arange(tile), np.arange(tile)[::-1]).astype(np.float32)
    ramp = np.clip((d + 1) / (overlap + 1), 1.0 / (overlap + 1), 1.0) if overlap else np.ones(tile)
    return np.outer(ramp, ramp).astype(np.float32)


def _pad_to(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """Reflect-pad the last two axes up to at least height×width."""
    ph, pw = max(0, height - array.shape[-2]), max(0, width - array.shape[-1])
    if not (ph or pw):
        return array
    pad = [(0, 0)] * (array.ndim - 2) + [(0, ph), (0, pw)]
    mode = "reflect" if min(array.shape[-2:]) > 1 else "edge"
    if ph >= array.shape[-2] or pw >= array.shape[-1]:
        mode = "edge"
    return np.pad(array, pad, mode=mode)


def _tiles(h: int, w: int, tile: int, overlap: int) -> Iterator[tuple[int, int]]:
    for y in tile_starts(h, tile, overlap):
        for x in tile_starts(w, tile, overlap):
            yield y, x


def softmax_masked(logits: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Softmax over axis 1 of N×k×t×t logits, the classes where ``valid`` (N×k) is False left
    out (probability 0); in place."""
    logits[~valid] = -1e4
    logits -= logits.max(axis=1, keepdims=True)
    np.exp(logits, out=logits)
    logits /= logits.sum(axis=1, keepdims=True)
    return logits


def refine_tiled(
    model: TileLogits,
    image: np.ndarray,
    probs: np.ndarray,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    batch_size: int = 16,
    confident: float = 0.98,
    stats: TileStats | None = None,
    multiple: int = 8,
    expect: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Refine C×H×W probabilities against an H×W×3 uint8 RGB image; returns C×H×W float32.

    ``model(tiles, probs)`` gives the logits of a batch of tiles (see the module docstring);
    ``multiple`` is what tile sides must divide by for it (the model's ``tile_multiple``), which
    a tile shrunk to a small image keeps. ``expect``, when given, is told the image's tile ×
    class maps before the first model call (a model may pick its kernels by the work ahead).
    """
    if tile % 8 or tile < 16:
        raise ValueError(f"tile size must be a multiple of 8 and at least 16, got {tile}")
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile), got {overlap}")
    c, h, w = probs.shape
    tile = fit_tile(tile, h, w, max(8, multiple))
    stats = stats if stats is not None else TileStats()
    # Images smaller than a tile are padded up to one (and cropped back at the end).
    ph, pw = max(h, tile), max(w, tile)
    image_chw = _pad_to(np.ascontiguousarray(image.transpose(2, 0, 1)), ph, pw)
    probs = _pad_to(probs.astype(np.float32, copy=False), ph, pw)
    window = blend_window(tile, overlap)
    out = np.zeros((c, ph, pw), np.float32)
    weight = np.zeros((ph, pw), np.float32)

    pending: list[tuple[int, int, np.ndarray]] = []

    def flush() -> None:
        if not pending:
            return
        k = max(len(classes) for _, _, classes in pending)
        img = np.stack([image_chw[:, y : y + tile, x : x + tile] for y, x, _ in pending])
        sub = np.zeros((len(pending), k, tile, tile), np.float32)
        mask = np.zeros((len(pending), k), bool)
        for i, (y, x, classes) in enumerate(pending):
            sub[i, : len(classes)] = probs[classes, y : y + tile, x : x + tile]
            mask[i, : len(classes)] = True
        refined = softmax_masked(model(img, sub), mask)
        for i, (y, x, classes) in enumerate(pending):
            out[classes, y : y + tile, x : x + tile] += refined[i, : len(classes)] * window
            weight[y : y + tile, x : x + tile] += window
        stats.refined += len(pending)
        pending.clear()

    planned: list[tuple[int, int, np.ndarray]] = []
    for y, x in _tiles(ph, pw, tile, overlap):
        stats.total += 1
        part = probs[:, y : y + tile, x : x + tile]
        present = np.flatnonzero(part.max(axis=(1, 2)) > 1 - confident)
        if len(present) < 2 or part.min(axis=(1, 2)).max() >= confident:
            out[:, y : y + tile, x : x + tile] += part * window
            weight[y : y + tile, x : x + tile] += window
        else:
            planned.append((y, x, present))
    if expect is not None and planned:
        expect(sum(len(classes) for _, _, classes in planned))
    for y, x, present in planned:
        # A batch holds every tile's maps at its widest tile's class count: bound the class
        # maps it holds, so that memory stays bounded whatever the class count.
        widest = max([len(present), *(len(classes) for _, _, classes in pending)])
        if pending and (len(pending) + 1) * widest > CLASS_TILES_PER_CALL:
            flush()
        pending.append((y, x, present))
        if len(pending) == batch_size:
            flush()
    flush()
    out /= np.maximum(weight, 1e-8)
    return out[:, :h, :w]
