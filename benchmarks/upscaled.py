"""Accuracy on high-resolution input: held-out DAVIS frames upscaled to 1920×1080.

    python benchmarks/upscaled.py [--weights W ...] [--every N] [--sequence S ...]

`bench_refine.py` times three frames at 1920×1080; this scores more of them, all from the
sequences held out of training. Each frame is upscaled with bicubic interpolation (so its
edges are softer than a camera's at that size), its ground truth with nearest neighbour; the
coarse mask is that ground truth area-shrunk ×8 (240×135) and thresholded, the input of
`bench_refine.py`. Every weights spec given is scored beside bilinear upsampling of the same
mask: dataset IoU (ΣI/ΣU over the frames) and mean boundary F at 2 px.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from spnrefine.api import Refiner
from spnrefine.errors import SpnrefineError
from spnrefine.metrics import boundary_f
from spnrefine.upsample import upsample_probs

DAVIS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "davis"
HELD_OUT = ["blackswan", "car-roundabout", "cows"]  # `spnrefine train --split-seed 0`
SIZE = (1920, 1080)  # width, height
FACTOR = 8


def build_case(stem: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The upscaled RGB image, its 0/255 coarse mask at 1/8 and the full-size boolean truth."""
    image = cv2.imread(str(DAVIS / "images" / f"{stem}.jpg"), cv2.IMREAD_COLOR)
    mask = cv2.imread(str(DAVIS / "masks" / f"{stem}.png"), cv2.IMREAD_GRAYSCALE)
    if image is None or mask is None:
        raise SystemExit(f"{DAVIS}: no image or mask for frame {stem}")
    image = cv2.cvtColor(cv2.resize(image, SIZE, interpolation=cv2.INTER_CUBIC), cv2.COLOR_BGR2RGB)
    truth = cv2.resize((mask > 127).astype(np.uint8), SIZE, interpolation=cv2.INTER_NEAREST)
    small = (SIZE[0] // FACTOR, SIZE[1] // FACTOR)
    coarse = cv2.resize(truth.astype(np.float32), small, interpolation=cv2.INTER_AREA) >= 0.5
    return image, coarse.astype(np.uint8) * 255, truth > 0


class Score:
    def __init__(self) -> None:
        self.intersection = self.union = 0
        self.boundary: list[float] = []

    def add(self, pred: np.ndarray, truth: np.ndarray) -> None:
        self.intersection += np.count_nonzero(pred & truth)
        self.union += np.count_nonzero(pred | truth)
        self.boundary.append(boundary_f(pred, truth))

    def row(self, name: str) -> str:
        return f"{name:28s} {self.intersection / self.union:.4f} {np.mean(self.boundary):9.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", action="append", help="weights spec (default: bundled)")
    parser.add_argument("--sequence", action="append", help=f"default: {', '.join(HELD_OUT)}")
    parser.add_argument("--every", type=int, default=8, help="take every Nth frame")
    args = parser.parse_args()
    specs = args.weights or [None]
    sequences = set(args.sequence or HELD_OUT)
    stems = sorted(p.stem for p in (DAVIS / "images").glob("*.jpg"))
    stems = [s for s in stems if s.rsplit("_", 1)[0] in sequences][:: args.every]
    if not stems:
        raise SystemExit(f"{DAVIS}: no frames of {', '.join(sorted(sequences))}")

    try:
        refiners = {spec or "bundled": Refiner.load(spec, device="cpu") for spec in specs}
    except SpnrefineError as err:
        raise SystemExit(f"error: {err}") from None
    scores = {name: Score() for name in ["bilinear", *refiners]}
    for stem in stems:
        image, coarse, truth = build_case(stem)
        two_class = np.stack([255 - coarse, coarse]).astype(np.float32) / 255
        probs = upsample_probs(two_class, truth.shape)
        scores["bilinear"].add(probs.argmax(0) == 1, truth)
        for name, refiner in refiners.items():
            scores[name].add(refiner.refine(image, coarse).probs.argmax(0) == 1, truth)

    print(
        f"{len(stems)} frames of {', '.join(sorted(sequences))} at {SIZE[0]}x{SIZE[1]}, "
        f"coarse {SIZE[0] // FACTOR}x{SIZE[1] // FACTOR}"
    )
    print(f"{'method':28s} {'IoU':6s} {'F@2px':>9s}")
    for name, score in scores.items():
        print(score.row(name))


if __name__ == "__main__":
    main()
