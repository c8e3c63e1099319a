"""Do no harm: keep the refined map to what the coarse map leaves open. Where the coarse map is
sure, or (in an already sharp map) unsure only along a band too narrow to hold a boundary
worth moving, its probabilities stay; islands and holes that the refined mask cuts where the
coarse map has no trace of them (or only a faint one, where the model is unsure too) go back
to the coarse map, and specks far smaller than a coarse pixel go too; small fragments cut off
the coarse map's parts where the model is unsure go to the class around them."""

from __future__ import annotations

import math

import cv2
import numpy as np

from spnrefine.io.coarse import ids_in
from spnrefine.labels import argmax_classes

DEFAULT_SURE = 0.02
"""Coarse uncertainty (1 − top probability) at and below which the coarse map is kept; the
refined map takes over linearly up to twice this."""
DEFAULT_NARROW = 4
"""px: the refined map counts only where the coarse map is unsure within this distance all
round, so a band of uncertainty narrower than about twice this (an already sharp map, such
as a ×2 one) is kept as it is, and the rims of a wider band too. In a map upsampled by at
most `SHARP_FACTOR` the band's width is also read from its slope: within this distance of a
step between neighbours steeper than a ramp twice this wide (1/(2·narrow) per px) nothing
counts, so that many narrow bands side by side (the strokes of a page's text, a fence) are
not taken for one wide one. (On 20 pages of the documents set as ×2 maps, the one check that
failed before this rule: IoU 0.9487 in, 0.9466 out without it, 0.9487 with it; the model
thickened strokes there.)"""
SHARP_FACTOR = 2.5
"""A coarse map upsampled by at most this factor (one at the image's resolution, or at half of
it) is already sharp, and `narrow` keeps its band of doubt. In a coarser one a pixel covers
`factor` image pixels, so the true edge may lie anywhere within factor/2 px of the map's own
edge: there the refiner stays free (a hard mask at 1/8 leaves just that 8 px ramp of doubt
once upsampled), and `narrow` keeps only the rims of a wider band."""
DEFAULT_TRACE = 0.3
"""Binary maps: a refined foreground island or background hole survives only where the coarse
map gives its class at least this probability somewhere inside it."""
PART_SURE = 0.65
"""Binary maps: an island or hole in which the coarse arg-max never takes its class survives
only where the refined map gives its class at least this much on average: where the coarse
map and the model are both unsure, the coarse map's answer stands. On MediaPipe's maps of
people such parts had a mean of 0.51-0.69 and were nearly all wrong; on ×8 maps of DAVIS
truth 0.68-0.88, mostly right (20 images each; 0.6, 0.65, 0.7, 0.75 tried: from 0.7 on DAVIS
×8 boundary F falls)."""
FRAGMENT_SURE = 0.6
"""Binary maps upsampled by more than `SHARP_FACTOR`: a fragment (a part the coarse arg-max
does take for its class, smaller than `FRAGMENT_AREA` coarse pixels and not its class's
largest) in which the refined map gives its class less than this on average goes to the
class around it, as a crumb does: where both maps are unsure, an edge of texture cut it off
a part of the coarse map. (In a sharper map small parts are detail: letters at ×2.) On the
maps of our own weak segmenter (k-fold nets, `scripts/make_coarse.py`) of 20 DAVIS
validation frames, the islands and holes the refiner added were mostly such fragments (the
coarse arg-max took their class over a median 0.70 and 0.77 of their pixels), two in three
wrong, and the model gave them 0.55 on average, right and wrong alike."""
FRAGMENT_AREA = 16
"""Coarse pixels (factor² image pixels each): the fragments `FRAGMENT_SURE` judges are
smaller than this."""


def judges_fragments(factor: float) -> bool:
    """Whether the fragment rule (`FRAGMENT_SURE`) acts on a map upsampled by `factor`: not
    in an already sharp one, where small parts are detail (a page's letters at ×2)."""
    return factor > SHARP_FACTOR


SPECK = 0.25
"""Binary maps: an island or hole smaller than this share of a coarse pixel (factor² image
pixels) survives nowhere: where the coarse map's arg-max never takes its class it goes back
to the coarse map, and where it does (a crumb the refined map broke off a part) it goes to
the class around it. A segmenter's soft map leaves many faint traces that specks of texture
match; at ×8 the specks the refiner made on MediaPipe's maps of people were 2-11 px (median)
and nearly all wrong, and the crumbs 1-3 px, while on ×8 maps of DAVIS truth the parts without
the coarse arg-max were 40-50 px and mostly right."""


def trust(
    coarse: np.ndarray,
    sure: float = DEFAULT_SURE,
    narrow: int = DEFAULT_NARROW,
    factor: float = 1.0,
    top: np.ndarray | None = None,
) -> np.ndarray:
    """H×W weight of the refined map against the C×H×W coarse one: 0 where the coarse map is
    sure (uncertainty ≤ `sure`), 1 from twice that, linear between; then the least weight
    within `narrow` px (a morphological erosion), except, for a map upsampled by more than
    `SHARP_FACTOR` (`factor`: the image's size over the coarse map's own), within factor/2 px
    of the edges of its arg-max (`top`, when the caller has it); in a sharper map, 0 within
    `narrow` px of a step steeper than 1/(2·narrow) (`DEFAULT_NARROW`)."""
    if top is None and (factor > SHARP_FACTOR or narrow > 0):
        top = argmax_classes(coarse)
    return trust_from(coarse.max(axis=0), top, sure, narrow, factor)


def trust_from(
    peak: np.ndarray,
    top: np.ndarray | None,
    sure: float = DEFAULT_SURE,
    narrow: int = DEFAULT_NARROW,
    factor: float = 1.0,
) -> np.ndarray:
    """`trust` from the coarse map's largest probability at each pixel (`peak`, H×W) and its
    arg-max (`top`, needed unless `narrow` is 0)."""
    # In place where it can be: at 4096×3072 each H×W float32 map is 48 MiB.
    weight = np.subtract(1.0, peak, dtype=np.float32)  # the uncertainty
    if sure > 0:
        weight /= sure
        weight -= 1.0
        np.clip(weight, 0.0, 1.0, out=weight)
    else:
        weight = (weight > 0).astype(np.float32)
    if narrow <= 0:
        return weight
    kept = cv2.erode(weight, _disk(narrow), borderType=cv2.BORDER_REPLICATE)
    if factor <= SHARP_FACTOR:
        kept[_steep_near(peak, top, narrow) > 0] = 0.0
        return kept
    weight *= _near_edges(top, factor / 2)
    return np.maximum(kept, weight, out=kept)


def keep_coarse(coarse: np.ndarray, refined: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """`refined` (C×H×W, in place) blended into `coarse` by the H×W `trust` weight."""
    refined -= coarse
    refined *= weight
    refined += coarse
    return refined


def trust_reach(factor: float = 1.0, narrow: int = DEFAULT_NARROW) -> int:
    """Rows (and columns) around a pixel that its `trust` weight depends on."""
    if factor <= SHARP_FACTOR:
        return narrow + 1 if narrow > 0 else 0  # a step's far side
    return max(narrow, math.ceil(factor / 2) + 1)


def _steep_near(peak: np.ndarray, top: np.ndarray, narrow: int) -> np.ndarray:
    """H×W uint8: 1 within `narrow` px of two neighbours (side by side or one above the other)
    whose probabilities of the first one's class differ by more than 1/(2·narrow), a ramp
    narrower than 2·narrow px; else 0. From each pixel's largest probability (`peak`) and its
    class (`top`): where the two classes differ, the second pixel gives the first's class at
    most 1 − its own peak, so the step is at least the sum of the peaks less 1."""
    limit = 1.0 / (2 * narrow)
    steep = np.zeros(peak.shape, np.uint8)
    for first, second in (
        ((slice(None), slice(None, -1)), (slice(None), slice(1, None))),
        ((slice(None, -1), slice(None)), (slice(1, None), slice(None))),
    ):
        a, b = peak[first], peak[second]
        step = np.where(top[first] == top[second], np.abs(b - a), a + b - 1.0)
        found = step > limit
        steep[first] |= found
        steep[second] |= found
    return cv2.dilate(steep, _disk(narrow))


def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def _near_edges(labels: np.ndarray, reach: float) -> np.ndarray:
    """H×W uint8: 1 within `reach` px of a pixel whose right or lower neighbour has another
    label, else 0."""
    edges = np.zeros(labels.shape, np.uint8)
    edges[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edges[:-1, :] |= labels[:-1, :] != labels[1:, :]
    return cv2.dilate(edges, _disk(max(1, math.ceil(reach))))


def _traced(parts: np.ndarray, count: int, coarse: np.ndarray, trace: float) -> np.ndarray:
    """Per part: whether the H×W `coarse` probability of its class reaches `trace` in it."""
    traced = np.zeros(count, bool)
    traced[parts[coarse >= trace]] = True
    return traced


class AtOdd:
    """A probability plane of a binary map known only where its labels and the coarse arg-max
    differ (`index`: those pixels' sorted flat indices; `values`: the plane there). Those are
    the only pixels the part rules read (`untraced_parts` with the coarse arg-max, at a trace
    of at most 1/2), so labels alone need not hold whole planes: memory grows with the pixels
    the refiner moved, along the boundaries, not with the image."""

    def __init__(self, index: np.ndarray, values: np.ndarray):
        self.index, self.values = index, values

    def at(self, index: np.ndarray) -> np.ndarray:
        return self.values[np.searchsorted(self.index, index)]


def _plane(planes, c: int, index: np.ndarray | None = None) -> np.ndarray:
    """Class `c`'s plane of C×H×W `planes`, or its values at the flat `index`. A binary map
    may be given as (None, foreground): the background, 1 − foreground, is made only where
    it is read; a plane may be known only at some pixels (`AtOdd`)."""
    plane = planes[c]
    if plane is None:
        return 1.0 - _plane(planes, 1 - c, index)
    if isinstance(plane, AtOdd):
        if index is None:
            raise ValueError("a plane known at some pixels is read only there")
        return plane.at(index)
    return plane if index is None else plane.reshape(-1)[index]


def _components(mask: np.ndarray, connectivity: int):
    """cv2.connectedComponentsWithStats of a bool mask: (count, part numbers, stats), the
    same to the number. Where the mask's True pixels, or its False ones, lie within a box
    well inside the image (an object's, or its holes'), only that box (and a pixel around
    it) is labelled, and the rest filled in: at 4096×3072 a whole image takes 40-140 ms.
    The part numbers are 16-bit where they fit (half the memory: 24 MiB at 4096×3072);
    OpenCV refuses to count past 65535 in 16 bits, and then they are counted again in 32."""
    h, w = mask.shape
    for value in (True, False):  # the box of the True pixels, else of the False ones
        rows = np.flatnonzero(mask.any(1) if value else ~mask.all(1))
        if not len(rows):
            continue
        cols = np.flatnonzero(mask.any(0) if value else ~mask.all(0))
        grow = 0 if value else 1  # around the False ones, a ring of True joins the outside
        # At even rows and columns: OpenCV numbers parts by the 2×2 blocks they start in.
        y0, y1 = max(rows[0] - grow, 0) // 2 * 2, min(rows[-1] + 1 + grow, h)
        x0, x1 = max(cols[0] - grow, 0) // 2 * 2, min(cols[-1] + 1 + grow, w)
        if (y1 - y0) * (x1 - x0) <= BOX_SHARE * h * w:
            return _components_in(mask, connectivity, (y0, y1, x0, x1), outside=not value)
    return _label(mask, connectivity)


BOX_SHARE = 0.6
"""`_components` labels a box alone where it is at most this share of the image."""


def _label(mask: np.ndarray, connectivity: int):
    try:
        count, parts, stats, _ = cv2.connectedComponentsWithStats(
            mask.view(np.uint8), connectivity=connectivity, ltype=cv2.CV_16U
        )
    except cv2.error:
        count, parts, stats, _ = cv2.connectedComponentsWithStats(
            mask.view(np.uint8), connectivity=connectivity, ltype=cv2.CV_32S
        )
    return count, parts, stats


def _components_in(mask: np.ndarray, connectivity: int, box: tuple, outside: bool):
    """`_components` of a mask that is `outside` everywhere but in the box (y0, y1, x0, x1).
    Outside False: the parts all lie in the box. Outside True: the box has a ring of True
    pixels where it does not meet the image's edge, so each of the four pieces around it
    (above and below, whole rows; left and right) joins the part of the ring beside it.
    Parts are numbered in the order of their first pixel, row by row, and that order is
    the same in the box as in the image (a piece around comes first in both, or after the
    ring's pixel that leads its part)."""
    h, w = mask.shape
    y0, y1, x0, x1 = box
    count, inner, stats = _label(np.ascontiguousarray(mask[y0:y1, x0:x1]), connectivity)
    stats = stats.copy()
    stats[1:, cv2.CC_STAT_LEFT] += x0
    stats[1:, cv2.CC_STAT_TOP] += y0
    parts = np.zeros((h, w), inner.dtype)
    parts[y0:y1, x0:x1] = inner
    if stats[0, cv2.CC_STAT_AREA]:  # part 0, the other pixels: those in the box,
        stats[0, cv2.CC_STAT_LEFT] += x0
        stats[0, cv2.CC_STAT_TOP] += y0
    for (a, b), (c, d), at in _around(box, h, w):  # and, outside False, those around it
        part = inner[at] if outside else 0
        if outside:
            parts[a:b, c:d] = part
        row = stats[part]
        if row[cv2.CC_STAT_AREA] == 0:
            row[:] = (c, a, d - c, b - a, 0)
        right = max(row[cv2.CC_STAT_LEFT] + row[cv2.CC_STAT_WIDTH], d)
        bottom = max(row[cv2.CC_STAT_TOP] + row[cv2.CC_STAT_HEIGHT], b)
        row[cv2.CC_STAT_LEFT] = min(row[cv2.CC_STAT_LEFT], c)
        row[cv2.CC_STAT_TOP] = min(row[cv2.CC_STAT_TOP], a)
        row[cv2.CC_STAT_WIDTH] = right - row[cv2.CC_STAT_LEFT]
        row[cv2.CC_STAT_HEIGHT] = bottom - row[cv2.CC_STAT_TOP]
        row[cv2.CC_STAT_AREA] += (b - a) * (d - c)
    return count, parts, stats


def _around(box: tuple, h: int, w: int) -> list:
    """The pieces of an h×w image around the box (y0, y1, x0, x1), each as its rows, its
    columns, and the box's pixel beside it: above and below (whole rows), left and right."""
    y0, y1, x0, x1 = box
    pieces = (
        ((0, y0), (0, w), (0, 0)),
        ((y1, h), (0, w), (-1, 0)),
        ((y0, y1), (0, x0), (0, 0)),
        ((y0, y1), (x1, w), (0, -1)),
    )
    return [(r, c, at) for r, c, at in pieces if r[0] < r[1] and c[0] < c[1]]


def untraced_parts(
    labels: np.ndarray,
    coarse: np.ndarray,
    trace: float = DEFAULT_TRACE,
    speck: float = 0.0,
    background: int | None = None,
    crumbs: np.ndarray | None = None,
    probs: np.ndarray | None = None,
    sure: float = 0.0,
    top: np.ndarray | None = None,
    foreground: np.ndarray | None = None,
    fragment_sure: float = 0.0,
    fragment_area: float = 0.0,
    moved: np.ndarray | None = None,
) -> np.ndarray:
    """H×W bool: the connected parts of each class of `labels` in which the C×H×W `coarse`
    never gives that class `trace` or more, and those smaller than `speck` pixels in which it
    is never the coarse arg-max (over half the probability, or the largest of several).
    Parts are 8-connected, except those of the `background` class: 4-connected, the dual of
    8-connected foreground, so that a pocket of background cut off from the rest but for a
    diagonal step counts as the hole it is. ``crumbs``, an H×W bool array when given, is set
    where the parts smaller than `speck` are that the coarse map does take for their class
    (fragments the refined map broke off). With ``probs`` (the C×H×W map `labels` is the
    arg-max of), a part in which the coarse arg-max never takes its class is also untraced
    unless its mean probability there is at least `sure`. ``top``: the coarse arg-max, when
    the caller has it. With ``foreground`` (a binary map's H×W foreground plane of the map
    `labels` is the arg-max of, read in float16) and ``crumbs``, the parts under
    `fragment_area` pixels that the coarse arg-max takes somewhere, but for each class's
    largest, are crumbs too where their mean probability is under `fragment_sure`.
    ``moved``: where `labels` and `top` differ (sorted flat indices), when the caller has it."""
    out = np.zeros(labels.shape, bool)
    flat_out = out.reshape(-1)
    judged = probs is not None and sure > 0
    if speck > 0 or judged:
        top = (argmax_classes(coarse) if top is None else top).reshape(-1)
    else:
        top = None
    # The coarse arg-max of a class is at least 1/C of the probability: where that reaches
    # `trace`, a part it takes somewhere is traced, and only the other parts need their pixels
    # looked at, all of them pixels where the coarse arg-max is another class (few: bands
    # along the boundaries).
    argmax_traces = top is not None and trace <= 1.0 / len(coarse)
    for c in ids_in(labels):
        mine = labels == c
        connectivity = 4 if c == background else 8
        count, parts, stats = _components(mine, connectivity)
        flat_parts = parts.reshape(-1)
        area = stats[:, cv2.CC_STAT_AREA]
        if top is None:
            traced = _traced(parts, count, _plane(coarse, c), trace)
            traced[0] = True  # the pixels of the other classes
            out |= ~traced[parts]
            continue
        if moved is not None:  # where the coarse map chose another
            odd = moved[labels.reshape(-1)[moved] == c]
        else:
            odd = np.flatnonzero(mine.reshape(-1) & (top != c))
        ids = flat_parts[odd]
        held = np.bincount(ids, minlength=count) < area  # the coarse arg-max takes it somewhere
        if argmax_traces:
            odd_traced = _plane(coarse, c, odd) >= trace
            traced = held | (np.bincount(ids, odd_traced, minlength=count) > 0)
        else:
            traced = _traced(parts, count, _plane(coarse, c), trace)
        small = area < speck
        keep = traced & (~small | held)
        if judged:  # a part not held has all its pixels among the odd ones
            sums = np.bincount(ids, _plane(probs, c, odd), minlength=count)
            keep &= held | (sums >= sure * area)
        keep[0] = True  # the pixels of the other classes
        if argmax_traces:
            flat_out[odd[~keep[ids]]] = True  # the parts dropped are not held: all odd
        else:
            out |= ~keep[parts]
        if crumbs is not None:
            broken = held & small
            if foreground is not None and fragment_sure > 0:
                broken |= _fragments(
                    c, parts, stats, held, foreground, fragment_sure, fragment_area
                )
            broken[0] = False  # the pixels of the other classes
            crumbs.flat[_pixels_of(parts, stats, broken)] = True  # (crumbs may be a view)
        del parts, flat_parts  # before the next class's: at 4096×3072 each is 24-48 MiB
    return out


def _fragments(
    c: int,
    parts: np.ndarray,
    stats: np.ndarray,
    held: np.ndarray,
    foreground: np.ndarray,
    sure: float,
    limit: float,
) -> np.ndarray:
    """Per part of class `c` (0: background, 1: foreground; `parts` its part numbers, 0 the
    other class; `stats` OpenCV's statistics of them): the parts under `limit` pixels that
    are `held`, but for the largest, whose mean probability of `c` (from `foreground`, read
    in float16) is under `sure`."""
    area = stats[:, cv2.CC_STAT_AREA]
    candidates = held & (area < limit)
    candidates[0] = False
    if len(area) > 1:
        candidates[1 + np.argmax(area[1:])] = False
    if not candidates.any():
        return candidates
    at = _pixels_of(parts, stats, candidates)
    ids = parts.reshape(-1)[at]
    values = foreground.reshape(-1)[at].astype(np.float16).astype(np.float32)
    means = np.bincount(ids, values, minlength=len(area)) / np.maximum(area, 1)
    if c == 0:
        means = 1.0 - means
    return candidates & (means < sure)


def _pixels_of(parts: np.ndarray, stats: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """Sorted flat indices of the pixels of the parts `chosen` (a bool per part number): a
    few parts, each looked for within its bounding box; many, in one pass over the image."""
    which = np.flatnonzero(chosen)
    if len(which) > 64:
        return np.flatnonzero(chosen[parts])
    width = parts.shape[1]
    found = []
    for i in which:
        x, y, w, h = stats[i, :4]
        rows, cols = np.nonzero(parts[y : y + h, x : x + w] == i)
        found.append((rows + y) * width + (cols + x))
    return np.sort(np.concatenate(found)) if found else np.zeros(0, np.intp)


def _still_surrounded(
    crumbs: np.ndarray, labels: np.ndarray, back: np.ndarray | None = None
) -> np.ndarray:
    """H×W bool: the pixels to flip to the other class of `labels` (binary): the crumbs whose
    flip merges them into the class around them, judged on the pixels around each 8-connected
    part of a class's crumbs, and the pixels set back to the coarse map (`back`, H×W bool;
    `labels` has them set back) left apart by those flips. Parts set back to the coarse map
    may have taken a crumb's surroundings: flipped then, a speck of background inside a
    dropped island, turned foreground, would be an island of its own. So may another crumb: a
    speck of background inside a fragment of foreground that flips too stays background. And
    a speck set back inside such a fragment goes with it. Judged again with the flips made,
    until no flip leaves a part apart."""
    rows, cols = np.flatnonzero(crumbs.any(1)), np.flatnonzero(crumbs.any(0))
    out = np.zeros(crumbs.shape, bool)
    if not len(rows):
        return out
    # Within the crumbs' bounding box and a pixel around it: the rings lie there, and the
    # parts set back that crumbs may enclose.
    box = (
        slice(max(rows[0] - 1, 0), rows[-1] + 2),
        slice(max(cols[0] - 1, 0), cols[-1] + 2),
    )
    crumbs, labels = crumbs[box], labels[box].astype(bool)
    flat = labels.reshape(-1)
    rings = [_Ring(crumbs & (labels == c), c) for c in (False, True)]
    flips = [ring.surrounded(flat) for ring in rings]  # per class: its crumbs' pixels flipped
    backs = []  # the parts set back, each class's: judged once crumbs have flipped
    if back is not None:
        back = back[box] & ~crumbs
        backs = [_Ring(back & (labels == c), c, inner=True) for c in (False, True)]
    moved = [np.zeros(len(ring.pixels), bool) for ring in backs]
    for _ in range(4):  # a part inside a crumb's ring: rarely deeper than that
        after = flat.copy()
        for ring, flip in zip(rings + backs, flips + moved, strict=True):
            after[ring.pixels[flip]] = not ring.c
        kept = [flip & ring.surrounded(after) for ring, flip in zip(rings, flips, strict=True)]
        apart = [ring.surrounded(after) for ring in backs]
        if all(np.array_equal(a, b) for a, b in zip(kept + apart, flips + moved, strict=True)):
            break
        flips, moved = kept, apart
    inside = np.zeros(crumbs.size, bool)
    for ring, flip in zip(rings + backs, flips + moved, strict=True):
        inside[ring.pixels[flip]] = True
    out[box] = inside.reshape(crumbs.shape)
    return out


class _Ring:
    """The 8-connected parts of one class's pixels (bool `mask`, class `c`) and the pixels
    around them, as flat indices: the parts' pixels and their part numbers, the ring's pixels
    and the part each borders (one of them, where several meet). With `inner`, parts that
    touch the mask's edge are left out (their rings go beyond it)."""

    def __init__(self, mask: np.ndarray, c: bool, inner: bool = False):
        self.c = c
        self.count, parts, stats = _components(mask, 8)
        if inner and self.count > 1:
            x, y = stats[:, cv2.CC_STAT_LEFT], stats[:, cv2.CC_STAT_TOP]
            right = x + stats[:, cv2.CC_STAT_WIDTH]
            bottom = y + stats[:, cv2.CC_STAT_HEIGHT]
            cut = (x == 0) | (y == 0) | (right == mask.shape[1]) | (bottom == mask.shape[0])
            cut[0] = False
            if cut.any():
                mask = mask & ~cut[parts]
                parts = np.where(mask, parts, 0).astype(parts.dtype)
        if parts.dtype == np.uint16:  # OpenCV dilates 16-bit part numbers, not 32-bit ones
            grown = cv2.dilate(parts, np.ones((3, 3), np.uint8))
        else:
            grown = cv2.dilate(parts.astype(np.float32), np.ones((3, 3), np.uint8))
            grown = grown.astype(np.int32)
        self.pixels = np.flatnonzero(mask)
        self.parts = parts.reshape(-1)[self.pixels]
        self.ring = np.flatnonzero((grown > 0) & ~mask)
        self.owner = grown.reshape(-1)[self.ring]

    def surrounded(self, flat_labels: np.ndarray) -> np.ndarray:
        """Per pixel of the parts: whether its part's ring is mostly of the other class in the
        flat labels."""
        other = flat_labels[self.ring] != self.c
        votes = np.bincount(self.owner, other, self.count)
        surrounded = votes > np.bincount(self.owner, minlength=self.count) - votes
        surrounded[0] = False
        return surrounded[self.parts]


def binary_parts(
    labels: np.ndarray,
    coarse: np.ndarray | tuple[np.ndarray | None, np.ndarray],
    probs: np.ndarray | tuple[np.ndarray | None, np.ndarray],
    top: np.ndarray,
    factor: float = 1.0,
    trace: float = DEFAULT_TRACE,
    speck: float = SPECK,
    part_sure: float = PART_SURE,
    foreground: np.ndarray | None = None,
    fragment_sure: float = FRAGMENT_SURE,
    moved: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The part rules of `guard` on a binary map, as flat pixel indices: those set back to
    the coarse map, and the crumbs that go to the other class. `labels`: the blended map's
    arg-max; `coarse`, `probs`: the two planes (background, foreground) of the coarse and the
    blended maps; `top`: the coarse arg-max; `foreground`: the blended map's foreground at
    every pixel (H×W, float16 will do), for the fragment rule (`FRAGMENT_SURE`; without it,
    or where `judges_fragments` says no, none); `moved`: where `labels` and `top` differ
    (sorted flat indices), when the caller has it."""
    crumbs = np.zeros(labels.shape, bool)
    untraced = untraced_parts(
        labels,
        coarse,
        trace,
        speck * factor * factor,
        background=0,
        crumbs=crumbs,
        probs=probs,
        sure=part_sure,
        top=top,
        foreground=foreground if judges_fragments(factor) else None,
        fragment_sure=fragment_sure,
        fragment_area=FRAGMENT_AREA * factor * factor,
        moved=moved,
    )
    back = np.flatnonzero(untraced)
    if not crumbs.any():
        return back, np.flatnonzero(crumbs)
    after, was_back = labels, None
    if len(back):
        after = labels.copy()
        after.reshape(-1)[back] = top.reshape(-1)[back]  # set back: the coarse arg-max
        was_back = np.zeros(labels.shape, bool)
        was_back.reshape(-1)[back] = True
    # Flipped: the crumbs still surrounded, and any pixels set back that they leave apart
    # (those are in both lists: set back, then flipped).
    return back, np.flatnonzero(_still_surrounded(crumbs, after, was_back))


def guard(
    coarse: np.ndarray,
    refined: np.ndarray,
    *,
    factor: float = 1.0,
    sure: float = DEFAULT_SURE,
    narrow: int = DEFAULT_NARROW,
    trace: float = DEFAULT_TRACE,
    speck: float = SPECK,
    part_sure: float = PART_SURE,
) -> np.ndarray:
    """C×H×W refined probabilities kept to what the C×H×W coarse ones leave open: blended
    into the coarse map by `trust` (`factor`: how much the coarse map was upsampled); then, on
    binary maps, the islands and holes of the result with no trace in the coarse map (and the
    specks under `speck` × factor² px, and the parts the model gives less than `part_sure`,
    where the coarse map never chose their class) are set back to it, and the other specks
    (crumbs), and the small fragments the model is unsure of (`FRAGMENT_SURE`), go to the
    class around them. (On label maps a thin class that the coarse map's
    resolution lost is often right where the refiner brings it back, so no part is dropped
    there.)"""
    binary = coarse.shape[0] == 2 and trace > 0
    top = argmax_classes(coarse) if binary or factor > SHARP_FACTOR or narrow > 0 else None
    weight = trust(coarse, sure, narrow, factor, top=top)  # before the copy: it peaks
    out = keep_coarse(coarse, refined.copy(), weight)
    if binary:
        back, swap = binary_parts(
            argmax_classes(out), coarse, out, top, factor, trace, speck, part_sure, out[1]
        )
        flat = out.reshape(2, -1)
        flat[:, back] = coarse.reshape(2, -1)[:, back]
        flat[:, swap] = flat[::-1, swap]  # two classes: the other one wins by as much
    return out.astype(np.float32, copy=False)
