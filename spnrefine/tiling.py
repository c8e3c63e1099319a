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


def tile_grid(
    h: int, w: int, tile: int, overlap: int, multiple: int = 8
) -> tuple[int, list[int], list[int]]:
    """How an h×w image is cut: the tile side (`fit_tile`), and the tiles' row and column
    starts (an image smaller than a tile is padded up to one)."""
    tile = fit_tile(tile, h, w, max(8, multiple))
    return tile, tile_starts(max(h, tile), tile, overlap), tile_starts(max(w, tile), tile, overlap)


def blend_window(tile: int, overlap: int) -> np.ndarray:
    """tile×tile weights ramping up over ``overlap`` pixels from each edge, so seams fade."""
    d = np.minimum(np.arange(tile), np.arange(tile)[::-1]).astype(np.float32)
    ramp = np.clip((d + 1) / (overlap + 1), 1.0 / (overlap + 1), 1.0) if overlap else np.ones(tile)
    return np.outer(ramp, ramp).astype(np.float32)


def _pad_mode(h: int, w: int, ph: int, pw: int) -> str:
    """How a map of h×w is padded up to ph×pw: reflected where it is long enough, else its
    edge repeated."""
    if min(h, w) <= 1 or ph - h >= h or pw - w >= w:
        return "edge"
    return "reflect"


def _pad_to(array: np.ndarray, height: int, width: int, mode: str | None = None) -> np.ndarray:
    """Pad the last two axes up to at least height×width (`mode`: np.pad's; by default
    `_pad_mode` of the array's own size)."""
    ph, pw = max(0, height - array.shape[-2]), max(0, width - array.shape[-1])
    if not (ph or pw):
        return array
    pad = [(0, 0)] * (array.ndim - 2) + [(0, ph), (0, pw)]
    mode = mode or _pad_mode(*array.shape[-2:], height, width)
    return np.pad(array, pad, mode=mode)


def softmax_masked(logits: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Softmax over axis 1 of N×k×t×t logits, the classes where ``valid`` (N×k) is False left
    out (probability 0); in place."""
    logits[~valid] = -1e4
    logits -= logits.max(axis=1, keepdims=True)
    np.exp(logits, out=logits)
    logits /= logits.sum(axis=1, keepdims=True)
    return logits


Rows = Callable[[np.ndarray, int, int], np.ndarray]
"""(channels, start, stop) → k×(stop−start)×W: rows of a C×H×W probability map at the image's
size, for some of its channels (an array sliced, or a coarse map upsampled a band at a time)."""
Candidates = Callable[[int, int], np.ndarray]
"""(start, stop) → the channels that may be above zero somewhere in those rows."""
CHANNELS_PER_SCAN = 16  # channels brought to the image's size at a time to find the tiles' classes
PLAN_ROWS_BYTES = 64 * 2**20  # coarse rows kept from planning to refining, at most


@dataclass
class Band:
    """Rows start:stop of the refined map, for the channels `classes`: `refined`, and the
    coarse map's own probabilities of those channels, `coarse`, both k×(stop−start)×W. Rows
    and columns may run past the image (a small image is padded up to one tile)."""

    start: int
    stop: int
    classes: np.ndarray
    coarse: np.ndarray
    refined: np.ndarray


@dataclass
class _TileRow:
    """A row of tiles in flight: its channels, their coarse rows (until its band is out), the
    blended sum of what its tiles gave in its rows from `held` on, and how many of its tiles
    wait in a batch."""

    start: int
    classes: np.ndarray
    coarse: np.ndarray | None
    total: np.ndarray
    weight: np.ndarray
    held: int
    waiting: int = 0


def _add_channels(into: np.ndarray, channels: np.ndarray, values: np.ndarray) -> None:
    """``into[channels] += values``, a channel at a time (no copy of the whole)."""
    if len(channels) == len(into):  # sorted and unique: all of them, in order
        into += values
        return
    for source, channel in enumerate(channels):
        into[channel] += values[source]


def _sorted_set(channels: np.ndarray) -> np.ndarray:
    """np.unique of a few channel numbers (a count, not a sort: np.unique's first call loads
    numpy.ma, 20 ms of a one-shot refine)."""
    return np.flatnonzero(np.bincount(channels)) if len(channels) else channels


def refine_bands(
    model: TileLogits,
    image: np.ndarray,
    rows: Rows,
    channels: int,
    *,
    candidates: Candidates | None = None,
    sparse: bool = False,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    batch_size: int = 16,
    confident: float = 0.98,
    stats: TileStats | None = None,
    multiple: int = 8,
    expect: Callable[[int], None] | None = None,
) -> Iterator[Band]:
    """Refine a C×H×W probability map, given by `rows`, against an H×W×3 uint8 RGB image, a
    band of rows at a time, top to bottom; the bands cover the image once.

    Memory holds a few rows of tiles, not the map: with `sparse`, a band keeps only the
    channels its tiles need (those above ``1 - confident`` somewhere in a tile, or, in a tile
    of many unsure classes, above 1/their number, which holds each pixel's arg-max); the
    others are below that everywhere in the band and are left out (zero). Without, every band
    has all C channels. ``candidates`` narrows the channels looked at in some rows (a label
    map's rows hold few classes).

    ``model(tiles, probs)`` gives the logits of a batch of tiles (see the module docstring);
    ``multiple`` is what tile sides must divide by for it (the model's ``tile_multiple``), which
    a tile shrunk to a small image keeps. ``expect``, when given, is told the image's tile ×
    class maps before the first model call (a model may pick its kernels by the work ahead).
    """
    if tile % 8 or tile < 16:
        raise ValueError(f"tile size must be a multiple of 8 and at least 16, got {tile}")
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile), got {overlap}")
    h, w = image.shape[:2]
    tile, starts_y, starts_x = tile_grid(h, w, tile, overlap, multiple)
    stats = stats if stats is not None else TileStats()
    # Images smaller than a tile are padded up to one (and cropped back by the caller).
    ph, pw = max(h, tile), max(w, tile)
    mode = _pad_mode(h, w, ph, pw)
    image_chw = _pad_to(image.transpose(2, 0, 1), ph, pw, mode)  # a view unless padded
    window = blend_window(tile, overlap)
    every = np.arange(channels)

    def fetch(classes: np.ndarray, start: int, stop: int) -> np.ndarray:
        if ph > h:  # one row of tiles, the whole image
            return _pad_to(rows(classes, 0, h), ph, pw, mode)[:, start:stop]
        return _pad_to(rows(classes, start, stop), stop - start, pw, mode)

    # Plan: each tile's classes, and whether the coarse map is sure of it all.
    plans: list[list[np.ndarray | None]] = []  # per tile: the classes to refine, or None
    keeps: list[np.ndarray] = []  # per row of tiles: the channels its band keeps
    kept_rows: dict[int, np.ndarray] = {}
    kept_bytes = 0
    for y in starts_y:
        found = candidates(y, min(y + tile, h)) if candidates is not None else every
        peak = np.zeros((len(starts_x), len(found)), np.float32)
        floor = np.zeros((len(starts_x), len(found)), np.float32)
        for first in range(0, len(found), CHANNELS_PER_SCAN):
            part = fetch(found[first : first + CHANNELS_PER_SCAN], y, y + tile)
            for i, x in enumerate(starts_x):
                window_part = part[:, :, x : x + tile]
                peak[i, first : first + len(part)] = window_part.max(axis=(1, 2))
                floor[i, first : first + len(part)] = window_part.min(axis=(1, 2))
        plan, keep = [], [] if sparse else [every]
        for i in range(len(starts_x)):
            stats.total += 1
            present = found[peak[i] > 1 - confident]
            sure = len(present) < 2 or floor[i].max() >= confident
            plan.append(None if sure else present)
            if sparse:
                keep.append(found[peak[i] >= min(1 - confident, 1 / len(found))])
        plans.append(plan)
        keeps.append(_sorted_set(np.concatenate(keep)))
        # Without sparse (a binary map, or every class asked for), the plan's rows are the
        # row's coarse rows when they hold its channels: kept while they fit, they need not
        # be made again (a binary map: all its rows, at 1920×1080).
        if not sparse and len(found) <= CHANNELS_PER_SCAN and np.array_equal(found, keeps[-1]):
            if kept_bytes + part.nbytes <= PLAN_ROWS_BYTES:
                kept_rows[len(plans) - 1] = part
                kept_bytes += part.nbytes
    if expect is not None:
        maps = sum(len(p) for plan in plans for p in plan if p is not None)
        if maps:
            expect(maps)

    open_rows: dict[int, _TileRow] = {}
    pending: list[tuple[_TileRow, int, np.ndarray]] = []
    done = 0  # bands yielded

    def flush() -> None:
        if not pending:
            return
        k = max(len(classes) for _, _, classes in pending)
        img = np.stack(
            [image_chw[:, r.start : r.start + tile, x : x + tile] for r, x, _ in pending]
        )
        sub = np.zeros((len(pending), k, tile, tile), np.float32)
        mask = np.zeros((len(pending), k), bool)
        for i, (r, x, classes) in enumerate(pending):
            sub[i, : len(classes)] = r.coarse[np.searchsorted(r.classes, classes), :, x : x + tile]
            mask[i, : len(classes)] = True
        refined = softmax_masked(model(img, sub), mask)
        for i, (r, x, classes) in enumerate(pending):
            r.total[np.searchsorted(r.classes, classes), :, x : x + tile] += (
                refined[i, : len(classes)] * window
            )
            r.weight[:, x : x + tile] += window
            r.waiting -= 1
        stats.refined += len(pending)
        pending.clear()

    def finished() -> Iterator[Band]:
        """The bands whose rows of tiles have all been refined, in order."""
        nonlocal done
        while done in open_rows:
            start = starts_y[done]
            stop = starts_y[done + 1] if done + 1 < len(starts_y) else ph
            # Rows of tiles further down start below these rows.
            covering = [r for r in open_rows.values() if r.start < stop and r.start + tile > start]
            if any(r.waiting for r in covering):
                return
            classes = _sorted_set(np.concatenate([r.classes for r in covering]))
            own = open_rows[done]
            if len(classes) == len(own.classes):
                coarse = own.coarse[:, : stop - start]
            else:
                coarse = fetch(classes, start, stop)
            total = np.zeros((len(classes), stop - start, pw), np.float32)
            weight = np.zeros((stop - start, pw), np.float32)
            for r in covering:
                lo, hi = start - r.held if r.held < start else 0, min(stop, r.start + tile) - r.held
                at = slice(r.held + lo - start, r.held + hi - start)
                _add_channels(total[:, at], np.searchsorted(classes, r.classes), r.total[:, lo:hi])
                weight[at] += r.weight[lo:hi]
            total /= np.maximum(weight, 1e-8)
            done += 1
            yield Band(start, stop, classes, coarse, total)
            for index, r in list(open_rows.items()):
                if r.start + tile <= stop:
                    del open_rows[index]
                elif index < done:  # its tiles are all in: keep only the rows still open
                    r.coarse = None
                    r.total = r.total[:, stop - r.held :].copy()
                    r.weight = r.weight[stop - r.held :].copy()
                    r.held = stop

    for row_index, y in enumerate(starts_y):
        classes = keeps[row_index]
        coarse = kept_rows.pop(row_index, None)
        if coarse is None:
            coarse = fetch(classes, y, y + tile)
        row = _TileRow(
            y, classes, coarse, np.zeros_like(coarse), np.zeros((tile, pw), np.float32), held=y
        )
        open_rows[row_index] = row
        for x, present in zip(starts_x, plans[row_index], strict=True):
            if present is None:
                row.total[:, :, x : x + tile] += coarse[:, :, x : x + tile] * window
                row.weight[:, x : x + tile] += window
                continue
            # A batch holds every tile's maps at its widest tile's class count: bound the
            # class maps it holds, so that memory stays bounded whatever the class count.
            widest = max([len(present), *(len(c) for _, _, c in pending)])
            if pending and (len(pending) + 1) * widest > CLASS_TILES_PER_CALL:
                flush()
            pending.append((row, x, present))
            row.waiting += 1
            if len(pending) == batch_size:
                flush()
        yield from finished()
    flush()
    yield from finished()


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
    """Refine C×H×W probabilities against an H×W×3 uint8 RGB image; returns C×H×W float32
    (`refine_bands` over the whole map, every channel kept)."""
    c, h, w = probs.shape
    probs = probs.astype(np.float32, copy=False)
    out = np.empty((c, h, w), np.float32)
    bands = refine_bands(
        model,
        image,
        lambda classes, start, stop: probs[classes, start:stop],
        c,
        tile=tile,
        overlap=overlap,
        batch_size=batch_size,
        confident=confident,
        stats=stats,
        multiple=multiple,
        expect=expect,
    )
    for band in bands:
        stop = min(band.stop, h)
        out[:, band.start : stop] = band.refined[:, : stop - band.start, :w]
    return out
