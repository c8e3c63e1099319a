"""Accuracy on high-resolution input: held-out DAVIS frames upscaled to 1920×1080.

    python benchmarks/upscaled.py [--weights W ...] [--every N]

`bench_refine.py` times three frames at 1920×1080; this scores more of them, all from the
sequences held out of training. Each frame is upscaled with bicubic interpolation (so its
edges are softer than a camera's at that size), its ground truth with nearest neighbour; the
coarse mask is that ground truth area-shrunk ×8 (240×135) and thresholded, the input of
`bench_refine.py`. Every weights spec given is scored beside bilinear upsampling of the same
mask: dataset IoU (ΣI/ΣU over the frames) and mean boundary F at 2 px.
"""

from __future__ import annotations

import argparse

import cv2
import numpy as np
from bench_refine import DAVIS, FACTOR, SIZE, upscaled_case

from spnrefine.api import Refiner
from spnrefine.errors import SpnrefineError
from spnrefine.metrics import IoUAccumulator, boundary_f
from spnrefine.train.data import VAL_FRACTION, group_of, split_stems
from spnrefine.upsample import upsample_probs


class Score:
    """Dataset IoU and the mean boundary F of one method."""

    def __init__(self) -> None:
        self.iou = IoUAccumulator()
        self.boundary: list[float] = []

    def add(self, pred: np.ndarray, gt: np.ndarray) -> None:
        self.iou.update(pred, gt)
        self.boundary.append(boundary_f(pred, gt))

    def row(self, name: str) -> str:
        return f"{name:28s} {self.iou.dataset_iou:.4f} {np.mean(self.boundary):9.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", action="append", help="weights spec (default: bundled)")
    parser.add_argument("--every", type=int, default=8, help="take every Nth frame")
    parser.add_argument("--split-seed", type=int, default=0, help="as `spnrefine train`'s")
    args = parser.parse_args()
    stems = sorted(p.stem for p in (DAVIS / "images").glob("*.jpg"))
    held_out = split_stems(DAVIS, stems, VAL_FRACTION, args.split_seed)
    stems = [s for s in stems if s in held_out][:: args.every]
    if not stems:
        raise SystemExit(f"{DAVIS}: no held-out frames")

    try:
        specs = args.weights or [None]
        refiners = {spec or "bundled": Refiner.load(spec, device="cpu") for spec in specs}
    except SpnrefineError as err:
        raise SystemExit(f"error: {err}") from None
    scores = {name: Score() for name in ["bilinear", *refiners]}
    for stem in stems:
        image, coarse, gt = upscaled_case(stem)
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        two_class = np.stack([255 - coarse, coarse]).astype(np.float32) / 255
        scores["bilinear"].add(upsample_probs(two_class, gt.shape).argmax(0) == 1, gt)
        for name, refiner in refiners.items():
            scores[name].add(refiner.refine(image, coarse).probs.argmax(0) == 1, gt)

    sequences = sorted({group_of(s) for s in stems})
    print(
        f"{len(stems)} frames of {', '.join(sequences)} at {SIZE[0]}x{SIZE[1]}, "
        f"coarse {SIZE[0] // FACTOR}x{SIZE[1] // FACTOR}"
    )
    print(f"{'method':28s} {'IoU':6s} {'F@2px':>9s}")
    for name, score in scores.items():
        print(score.row(name))


if __name__ == "__main__":
    main()
