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


Rows = Callable[[np.ndarray, int, int, int, int], np.ndarray]
"""(channels, start, stop, left, right) → k×(stop−start)×(right−left): rows start:stop and
columns left:right of a C×H×W probability map at the image's size, for some of its channels
(an array sliced, or a coarse map upsampled a window at a time)."""
Candidates = Callable[[int, int], np.ndarray]
"""(start, stop) → the channels that may be above zero somewhere in those rows."""
CHANNELS_PER_SCAN = 16  # channels brought to the image's size at a time to find the tiles' classes
PLAN_ROWS_BYTES = 64 * 2**20  # coarse rows kept from planning to refining, at most


@dataclass
class Band:
    """A cell of the refined map, rows start:stop and columns left:right, for the channels
    `classes`: `refined`, and the coarse map's own probabilities of those channels, `coarse`,
    both k×(stop−start)×(right−left). Rows and columns may run past the image (a small image
    is padded up to one tile). `spans`: the cell's columns (from `left`, sorted, apart) that
    tiles sent through the model cover; elsewhere every tile over the cell was one the coarse
    map is sure of, and `refined` is `coarse` exactly (a copy), so a caller need not look
    there."""

    start: int
    stop: int
    classes: np.ndarray
    coarse: np.ndarray
    refined: np.ndarray
    left: int
    right: int
    spans: tuple[tuple[int, int], ...] = ()


@dataclass
class _Refined:
    """A tile sent through the model: its column, its classes, their coarse probabilities
    (k×t×t, until the model has run), then what it gives the blend (its probabilities
    weighted by the blend window)."""

    x: int
    classes: np.ndarray
    coarse: np.ndarray | None
    total: np.ndarray | None = None


@dataclass
class _TileRow:
    """A row of tiles in flight: its coarse rows (every channel, whole rows; only without
    `sparse`, until its band is out), its tiles sent through the model, and how many of them
    wait in a batch."""

    start: int
    coarse: np.ndarray | None
    refined: dict[int, _Refined]  # by column of tiles
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


def _overlap(start: int, stop: int, at: int, tile: int) -> tuple[slice, slice] | None:
    """Where the tile at `at` meets start:stop: the span in start:stop's coordinates and in
    the tile's, or None."""
    lo, hi = max(start, at), min(stop, at + tile)
    if lo >= hi:
        return None
    return slice(lo - start, hi - start), slice(lo - at, hi - at)


def _plan_row(
    fetch: Callable[[np.ndarray, int, int], np.ndarray],
    found: np.ndarray,
    y: int,
    starts_x: list[int],
    tile: int,
    confident: float,
) -> tuple[list[np.ndarray | None], list[np.ndarray], np.ndarray]:
    """The row of tiles at `y`, from the coarse map's rows y:y+tile (`fetch`) of the channels
    `found`: per tile, the classes to refine, or None where the coarse map is sure of it all
    (fewer than two classes above 1 − confident, or one at `confident` or more everywhere);
    per tile, the channels a sparse cell keeps (those above 1 − confident somewhere, or, when
    many are unsure, above 1/their number, which holds each pixel's arg-max); and the rows
    last fetched (all of `found`'s when they are few)."""
    peak = np.zeros((len(starts_x), len(found)), np.float32)
    floor = np.zeros((len(starts_x), len(found)), np.float32)
    for first in range(0, len(found), CHANNELS_PER_SCAN):
        part = None  # the last channels' rows go before the next are made
        part = fetch(found[first : first + CHANNELS_PER_SCAN], y, y + tile)
        for i, x in enumerate(starts_x):  # (no view of `part` outlives the loop)
            peak[i, first : first + len(part)] = part[:, :, x : x + tile].max(axis=(1, 2))
            floor[i, first : first + len(part)] = part[:, :, x : x + tile].min(axis=(1, 2))
    plan, keep = [], []
    for i in range(len(starts_x)):
        present = found[peak[i] > 1 - confident]
        sure = len(present) < 2 or floor[i].max() >= confident
        plan.append(None if sure else present)
        keep.append(found[peak[i] >= min(1 - confident, 1 / len(found))])
    return plan, keep, part


def _spans(columns: list[slice]) -> tuple[tuple[int, int], ...]:
    """The column ranges the slices cover, merged where they meet or overlap, in order."""
    merged: list[list[int]] = []
    for a, b in sorted((c.start, c.stop) for c in columns):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return tuple((a, b) for a, b in merged)


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

    Memory holds a few rows of tiles, not the map. Without `sparse` a band is whole rows of
    every channel. With `sparse` a band is cut into cells, one per column of tiles, left to
    right, and a cell keeps only the channels of the tiles over it (those above
    ``1 - confident`` somewhere in a tile, or, in a tile of many unsure classes, above 1/their
    number, which holds each pixel's arg-max); the others are below that everywhere in the
    cell and are left out (zero). So memory grows with the classes a tile meets, not with
    those of a whole row. ``candidates`` narrows the channels looked at in some rows (a label
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
    # A band's cells: whole rows, or with sparse one per column of tiles; per cell, the
    # columns of tiles over it and where.
    edges = list(zip(starts_x, [*starts_x[1:], pw], strict=True)) if sparse else [(0, pw)]
    cells = [
        (
            left,
            right,
            [(j, at) for j, x in enumerate(starts_x) if (at := _overlap(left, right, x, tile))],
        )
        for left, right in edges
    ]

    def fetch(classes: np.ndarray, start: int, stop: int, left: int = 0, right: int = pw):
        if ph > h:  # one row of tiles, the whole image
            return _pad_to(rows(classes, 0, h, 0, w), ph, pw, mode)[:, start:stop, left:right]
        if pw > w:  # one column of tiles, whole rows
            return _pad_to(rows(classes, start, stop, 0, w), stop - start, pw, mode)[
                :, :, left:right
            ]
        return rows(classes, start, stop, left, right)

    # Plan: each tile's classes, and whether the coarse map is sure of it all.
    plans: list[list[np.ndarray | None]] = []  # per tile: the classes to refine, or None
    keeps: list[list[np.ndarray]] = []  # per tile: the channels its cells keep
    kept_rows: dict[int, np.ndarray] = {}
    kept_bytes = 0
    for y in starts_y:
        found = candidates(y, min(y + tile, h)) if candidates is not None else every
        plan, keep, part = _plan_row(fetch, found, y, starts_x, tile, confident)
        stats.total += len(plan)
        plans.append(plan)
        keeps.append(keep if sparse else [every] * len(plan))
        # Without sparse (a binary map, or every class asked for), the plan's rows are the
        # row's coarse rows when they hold every channel: kept while they fit, they need not
        # be made again (a binary map: all its rows, at 1920×1080).
        if not sparse and np.array_equal(found, every) and len(found) <= CHANNELS_PER_SCAN:
            if kept_bytes + part.nbytes <= PLAN_ROWS_BYTES:
                kept_rows[len(plans) - 1] = part
                kept_bytes += part.nbytes
        del part  # else not held past planning (16 channels' rows: 34 MB at 4096 wide)
    if expect is not None:
        maps = sum(len(p) for plan in plans for p in plan if p is not None)
        if maps:
            expect(maps)

    open_rows: dict[int, _TileRow] = {}
    pending: list[tuple[_TileRow, _Refined]] = []
    done = 0  # bands yielded

    def flush() -> None:
        if not pending:
            return
        k = max(len(t.classes) for _, t in pending)
        img = np.stack(
            [image_chw[:, r.start : r.start + tile, t.x : t.x + tile] for r, t in pending]
        )
        sub = np.zeros((len(pending), k, tile, tile), np.float32)
        mask = np.zeros((len(pending), k), bool)
        for i, (_, t) in enumerate(pending):
            sub[i, : len(t.classes)] = t.coarse
            mask[i, : len(t.classes)] = True
        refined = softmax_masked(model(img, sub), mask)
        for i, (r, t) in enumerate(pending):
            t.total, t.coarse = refined[i, : len(t.classes)] * window, None
            r.waiting -= 1
        stats.refined += len(pending)
        pending.clear()

    def cell(index: int, start: int, stop: int, left: int, right: int, columns: list) -> Band:
        """The blend of the tiles over rows start:stop, columns left:right (`columns`: the
        columns of tiles over them, and where): the tiles the coarse map was sure of give its
        probabilities, the others the model's."""
        over = [
            (i, j, at_y, at_x)
            for i, r in open_rows.items()
            if (at_y := _overlap(start, stop, r.start, tile))
            for j, at_x in columns
        ]
        classes = every
        if sparse:
            classes = _sorted_set(np.concatenate([keeps[i][j] for i, j, _, _ in over]))
        own = open_rows[index].coarse
        if own is not None:
            coarse = own[:, : stop - start, left:right]
        else:
            coarse = fetch(classes, start, stop, left, right)
        # Where only tiles the coarse map was sure of lie, the blend is the coarse map itself;
        # the columns of the others (`spans`) are blended: the summed windows of the sure
        # tiles and of the others there, the sure ones' share of the coarse map, and the
        # others' probabilities.
        total = coarse.copy()
        spans = _spans([cx for i, j, _, (cx, _) in over if j in open_rows[i].refined])
        if not spans:
            return Band(start, stop, classes, coarse, total, left, right)
        windows = np.zeros((2, stop - start, right - left), np.float32)
        for i, j, (cy, ty), (cx, tx) in over:
            windows[int(j in open_rows[i].refined), cy, cx] += window[ty, tx]
        for a, b in spans:
            total[:, :, a:b] *= windows[0, :, a:b]
        for i, j, (cy, ty), (cx, tx) in over:
            if (refined := open_rows[i].refined.get(j)) is not None:
                into = np.searchsorted(classes, refined.classes)
                _add_channels(total[:, cy, cx], into, refined.total[:, ty, tx])
        for a, b in spans:
            total[:, :, a:b] /= windows[0, :, a:b] + windows[1, :, a:b]
        return Band(start, stop, classes, coarse, total, left, right, spans)

    def finished() -> Iterator[Band]:
        """The bands whose rows of tiles have all been refined, in order, cell by cell."""
        nonlocal done
        while done in open_rows:
            start = starts_y[done]
            stop = starts_y[done + 1] if done + 1 < len(starts_y) else ph
            # Rows of tiles further down start below these rows.
            if any(r.waiting for r in open_rows.values() if r.start < stop):
                return
            for left, right, columns in cells:
                yield cell(done, start, stop, left, right, columns)
            done += 1
            for index, r in list(open_rows.items()):
                if r.start + tile <= stop:
                    del open_rows[index]
                elif index < done:  # its band is out
                    r.coarse = None

    for row_index, y in enumerate(starts_y):
        coarse = None
        if not sparse:
            coarse = kept_rows.pop(row_index, None)
            if coarse is None:
                coarse = fetch(every, y, y + tile)
        row = _TileRow(y, coarse, {})
        open_rows[row_index] = row
        for j, (x, present) in enumerate(zip(starts_x, plans[row_index], strict=True)):
            if present is None:
                continue
            # A batch holds every tile's maps at its widest tile's class count: bound the
            # class maps it holds, so that memory stays bounded whatever the class count.
            widest = max([len(present), *(len(t.classes) for _, t in pending)])
            if pending and (len(pending) + 1) * widest > CLASS_TILES_PER_CALL:
                flush()
            if coarse is not None:
                tile_coarse = coarse[present, :, x : x + tile]
            else:
                tile_coarse = fetch(present, y, y + tile, x, x + tile)
            refined = _Refined(x, present, tile_coarse)
            row.refined[j] = refined
            pending.append((row, refined))
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
        lambda classes, start, stop, left, right: probs[classes, start:stop, left:right],
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
        stop, right = min(band.stop, h), min(band.right, w)
        out[:, band.start : stop, band.left : right] = band.refined[
            :, : stop - band.start, : right - band.left
        ]
    return out
