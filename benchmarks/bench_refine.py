"""Speed and accuracy bar of `spnrefine refine` against dense CRF on a 1920×1080 image with a
binary coarse mask at 1/8 resolution, end to end (decode to written file), in one run.

The input is built from a real DAVIS frame and its ground truth, upscaled to 1920×1080; the
coarse mask is the ground truth shrunk ×8 and thresholded. Both refiners and plain bilinear
upsampling are scored (IoU, boundary F) against the full-resolution ground truth.

Run from the repository root: python benchmarks/bench_refine.py [--weights W] [--repeats N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from spnrefine.api import Refiner
from spnrefine.errors import SpnrefineError
from spnrefine.io import encode_mask_png, load_coarse, load_image, write_atomic
from spnrefine.metrics import boundary_f, iou
from spnrefine.model import SPNRefiner
from spnrefine.upsample import upsample_probs

DAVIS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "davis"
SIZE = (1920, 1080)  # width, height
FACTOR = 8
SPEED_BAR = 5.0


def upscaled_case(frame: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A DAVIS frame upscaled to SIZE (bicubic; BGR), its ground truth shrunk ×FACTOR by area
    and thresholded (the coarse mask, 0/255) and the full-size 0/1 ground truth (nearest)."""
    image = cv2.imread(str(DAVIS / "images" / f"{frame}.jpg"), cv2.IMREAD_COLOR)
    mask = cv2.imread(str(DAVIS / "masks" / f"{frame}.png"), cv2.IMREAD_GRAYSCALE)
    if image is None or mask is None:
        sys.exit(f"{DAVIS}: no image or mask for frame {frame}")
    image = cv2.resize(image, SIZE, interpolation=cv2.INTER_CUBIC)
    gt = cv2.resize((mask > 127).astype(np.uint8), SIZE, interpolation=cv2.INTER_NEAREST)
    small = (SIZE[0] // FACTOR, SIZE[1] // FACTOR)
    coarse = cv2.resize(gt.astype(np.float32), small, interpolation=cv2.INTER_AREA) >= 0.5
    return image, coarse.astype(np.uint8) * 255, gt


def build_case(frame: str, folder: Path) -> tuple[Path, Path, np.ndarray]:
    """Write the 1920×1080 JPEG and its 1/8 binary coarse PNG; return them and the 0/1 GT."""
    image, coarse, gt = upscaled_case(frame)
    image_path, coarse_path = folder / f"{frame}.jpg", folder / f"{frame}_coarse.png"
    cv2.imwrite(str(image_path), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    cv2.imwrite(str(coarse_path), coarse)
    return image_path, coarse_path, gt


def load_refiner(weights: str | None) -> Refiner:
    try:
        return Refiner.load(weights, device="cpu")
    except SpnrefineError as err:
        print(f"WARNING: {err}")
        print("WARNING: using a randomly initialised model: the accuracy numbers are meaningless")
        return Refiner(SPNRefiner(), device="cpu")


def crf_refiner() -> Callable | None:
    try:
        from spnrefine.baselines.crf import refine_crf
    except ImportError:
        print("dense CRF skipped: spnrefine.baselines.crf is not there")
        return None
    try:
        refine_crf(np.zeros((8, 8, 3), np.uint8), np.full((2, 8, 8), 0.5, np.float32))
    except SpnrefineError as err:
        print(f"dense CRF skipped: {err}")
        return None
    return refine_crf


def run_crf(refine_crf: Callable, image_path: Path, coarse_path: Path, out: Path) -> None:
    """The CRF through the same decode, upsample and atomic write as `spnrefine refine`."""
    image = load_image(image_path)
    coarse = load_coarse(coarse_path)
    probs = upsample_probs(coarse.probs, image.shape[:2])
    # pydensecrf needs a writable buffer, and decoded images are read-only views of PIL's.
    marginals = refine_crf(np.array(image), probs, iterations=5)
    write_atomic(out, encode_mask_png(marginals.argmax(0)), overwrite=True)


def timed(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def read_mask(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path)) > 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", help="weights spec (default: the bundled weights)")
    parser.add_argument("--frame", action="append", help="DAVIS frame, e.g. blackswan_00000")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the median counts")
    args = parser.parse_args()
    frames = args.frame or ["blackswan_00000", "dog_00030", "parkour_00050"]

    refiner = load_refiner(args.weights)
    refine_crf = crf_refiner()
    scores: dict[str, list[tuple[float, float]]] = {"bilinear": [], "spnrefine": [], "crf": []}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for n, frame in enumerate(frames):
            image_path, coarse_path, gt = build_case(frame, folder)
            spn_out, crf_out = folder / f"{frame}_spn.png", folder / f"{frame}_crf.png"

            def spn() -> None:
                refiner.refine_file(image_path, coarse_path, spn_out, overwrite=True)  # noqa: B023

            # The first call pays for one-off costs (kernel compilation, allocator warm-up).
            spn()
            spn_s = timed(spn, args.repeats) if n == 0 else None
            coarse = load_coarse(coarse_path)
            bilinear = upsample_probs(coarse.probs, gt.shape).argmax(0) == 1
            results = {"bilinear": bilinear, "spnrefine": read_mask(spn_out)}
            crf_s = None
            if refine_crf is not None:
                crf_s = timed(
                    lambda: run_crf(refine_crf, image_path, coarse_path, crf_out),  # noqa: B023
                    args.repeats if n == 0 else 1,
                )
                results["crf"] = read_mask(crf_out)

            print(
                f"\n{frame} at {SIZE[0]}x{SIZE[1]}, coarse {SIZE[0] // FACTOR}x{SIZE[1] // FACTOR}"
            )
            for name, pred in results.items():
                score = (iou(pred, gt), boundary_f(pred, gt))
                scores[name].append(score)
                print(f"  {name:10} IoU {score[0]:.4f}  boundary F {score[1]:.4f}")
            if spn_s is not None:
                print(f"  time, decode to written file (median of {args.repeats}):")
                print(f"    spnrefine {spn_s:7.2f} s")
                if crf_s is not None:
                    ratio = crf_s / spn_s
                    verdict = "meets" if ratio >= SPEED_BAR else "misses"
                    print(f"    dense CRF {crf_s:7.2f} s   (5 iterations, DeepLab parameters)")
                    print(f"    CRF / spnrefine = {ratio:.2f}x ({verdict} the {SPEED_BAR:g}x bar)")

    print(f"\nmean over {len(frames)} frames")
    base_iou, base_bf = np.mean(scores["bilinear"], axis=0)
    for name, values in scores.items():
        if not values:
            continue
        m_iou, m_bf = np.mean(values, axis=0)
        better = (
            ""
            if name == "bilinear"
            else (
                "  beats bilinear on both"
                if m_iou > base_iou and m_bf > base_bf
                else "  does NOT beat bilinear on both"
            )
        )
        print(f"  {name:10} IoU {m_iou:.4f}  boundary F {m_bf:.4f}{better}")


if __name__ == "__main__":
    main()
