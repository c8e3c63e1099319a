"""Memory and time of whole `spnrefine refine` processes on label maps of many classes.

    python benchmarks/many_classes.py [--davis DIR] [--rows 1920x1080:2,1920x1080:60,...]
                                      [--spnrefine CMD]

Each row refines one real DAVIS frame (upscaled bicubically to the size) against a label map
at 1/8 of it with the given number of classes (2: the frame's own ground-truth mask, area-
shrunk; more: the regions nearest that many random points, a map where every class meets
others along long boundaries), and prints the wall time and the peak resident memory of the
process, and the classes a band of 128 rows meets at most and those the tiles over a cell
meet (240×240 pixels: a cell is a tile column's stride wide, between two columns of tiles
that reach past it). `--spnrefine` runs another install or checkout (e.g. `"python -c 'from
spnrefine.cli import app; app()'"` with PYTHONPATH set, run from outside the checkout under
test: `python -c` puts the working folder first on the path) for a before/after comparison in
the same run.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from whole_process import DEFAULT_DAVIS, pick_frames, spnrefine_command  # noqa: E402

ROWS = "1920x1080:2,1920x1080:12,1920x1080:60,4096x3072:2,4096x3072:150,4096x3072:255"
FACTOR = 8


def regions(h: int, w: int, classes: int, seed: int = 0) -> np.ndarray:
    """h×w ids: each pixel the nearest of `classes` random points."""
    points = np.random.default_rng(seed).uniform(0, 1, (classes, 2)) * [h, w]
    yy, xx = np.mgrid[:h, :w]
    best = np.full((h, w), np.inf)
    ids = np.zeros((h, w), np.uint8)
    for i, (py, px) in enumerate(points):
        d = (yy - py) ** 2 + (xx - px) ** 2
        ids[d < best] = i
        np.minimum(best, d, out=best)
    return ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--davis", type=Path, default=DEFAULT_DAVIS, help="DAVIS images/ + masks/")
    parser.add_argument("--rows", default=ROWS, help="WxH:CLASSES, comma-separated")
    parser.add_argument("--spnrefine", help="the command to run (default: this install's)")
    args = parser.parse_args()
    spn = shlex.split(args.spnrefine) if args.spnrefine else spnrefine_command()
    frame = pick_frames(args.davis)[0]
    print(f"frame {frame}; coarse label maps at 1/{FACTOR}; command: {' '.join(spn)}")
    print(
        f"{'size':>10} {'classes':>7} {'per band':>8} {'per cell':>8} {'seconds':>8} "
        f"{'peak RSS':>9}  result"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for item in args.rows.split(","):
            size, classes = item.split(":")
            w, h = (int(v) for v in size.split("x"))
            classes = int(classes)
            image = cv2.resize(cv2.imread(str(args.davis / "images" / f"{frame}.jpg")), (w, h))
            image_path = Path(tmp) / f"{w}.jpg"
            cv2.imwrite(str(image_path), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
            small = (round(h / FACTOR), round(w / FACTOR))
            if classes == 2:
                mask = cv2.imread(str(args.davis / "masks" / f"{frame}.png"), cv2.IMREAD_GRAYSCALE)
                fg = cv2.resize((mask > 127).astype(np.float32), small[::-1], cv2.INTER_AREA)
                ids = (fg >= 0.5).astype(np.uint8)
            else:
                ids = regions(*small, classes)
            coarse = Path(tmp) / f"{w}-{classes}.png"
            cv2.imwrite(str(coarse), ids)
            # Coarse rows (columns) of a row of tiles and of the tiles over a cell, with the
            # bilinear taps.
            reach, around = 128 // FACTOR + 2, 240 // FACTOR + 2
            band = max(len(np.unique(ids[y : y + reach])) for y in range(0, small[0], 14))
            cell = max(
                len(np.unique(ids[y : y + around, x : x + around]))
                for y in range(0, small[0], 14)
                for x in range(0, small[1], 14)
            )
            out = Path(tmp) / "out.png"
            cmd = [*spn, "refine", str(image_path), str(coarse), "-o", str(out), "--overwrite"]
            if classes > 2:
                cmd += ["--coarse-type", "labels"]
            start = time.perf_counter()
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            _, status, usage = os.wait4(proc.pid, 0)
            seconds = time.perf_counter() - start
            err = proc.stderr.read().decode(errors="replace").strip().splitlines()
            code = os.waitstatus_to_exitcode(status)
            result = "ok" if code == 0 else f"exit {code}: {err[-1] if err else ''}"
            print(
                f"{size:>10} {classes:>7} {band:>8} {cell:>8} {seconds:8.2f} "
                f"{usage.ru_maxrss / 1024:7.0f} MB  {result[:110]}"
            )


if __name__ == "__main__":
    main()
