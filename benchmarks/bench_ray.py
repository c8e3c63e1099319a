"""Throughput of `batch` with the local engine and with `--engine ray` on the same folder, in
one run: images/second, Ray's rate as a fraction of the local one, and the per-worker rate
that a cluster multiplies.

The folder is built from real DAVIS frames (resized) and their ground-truth masks shrunk ×8 as
coarse maps, from $SPNREFINE_DATA/davis/{images,masks}/ (the development data). Each engine
writes to its own fresh output folder; the runs alternate (local, Ray from cold, Ray on the
running cluster, local again) so that other load on the machine falls on both. "starting Ray"
counts starting Ray and its workers, as a laptop run of the command does; "Ray running" only
the job on a Ray that is already up (--address, a notebook); "workers up" is the rate of the
workers alone, from each pair's own time in its report.

Run from the repository root: SPNREFINE_DATA=DIR python benchmarks/bench_ray.py [--pairs N]
[--size WxH] [--workers N] [--weights W]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import torch

from spnrefine.api import Refiner
from spnrefine.batch import PairOptions, PairReport, find_pairs, run_batch
from spnrefine.ray_engine import RayOptions, run_batch_ray

FACTOR = 8


def davis_folder() -> Path:
    """$SPNREFINE_DATA/davis, or exit with one line saying what is missing."""
    root = os.environ.get("SPNREFINE_DATA")
    if not root:
        sys.exit("bench_ray.py: set SPNREFINE_DATA to the folder holding davis/images, davis/masks")
    return Path(root) / "davis"


def build_folder(folder: Path, count: int, size: tuple[int, int]) -> None:
    """`count` frames spread over the DAVIS sequences, as NAME.jpg + NAME_coarse.png."""
    davis = davis_folder()
    frames = sorted(p.stem for p in (davis / "images").glob("*.jpg"))
    if len(frames) < count:
        sys.exit(f"bench_ray.py: {davis / 'images'}: fewer than {count} frames (.jpg)")
    small = (size[0] // FACTOR, size[1] // FACTOR)
    for stem in frames[:: len(frames) // count][:count]:
        image = cv2.imread(str(davis / "images" / f"{stem}.jpg"), cv2.IMREAD_COLOR)
        mask = cv2.imread(str(davis / "masks" / f"{stem}.png"), cv2.IMREAD_GRAYSCALE)
        if mask is None:
            sys.exit(f"bench_ray.py: {davis / 'masks' / stem}.png is missing or unreadable")
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        coarse = cv2.resize((mask > 127).astype(np.float32), small, interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(folder / f"{stem}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
        cv2.imwrite(str(folder / f"{stem}_coarse.png"), (coarse >= 0.5).astype(np.uint8) * 255)


def timed(run: Callable[[], Iterator[PairReport]]) -> tuple[float, list[PairReport]]:
    """Seconds for the whole run (a Ray run's connection and workers included), and the
    reports, which hold each pair's own refining time."""
    started = time.perf_counter()
    reports = list(run())
    seconds = time.perf_counter() - started
    assert all(r.status == "ok" for r in reports), "some pairs failed"
    return seconds, reports


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=24)
    parser.add_argument("--size", default="256x144", help="image size WxH (a multiple of 8)")
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--weights", default=None, help="default: the bundled weights")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.lower().split("x"))
    n, workers = args.pairs, args.workers

    import ray

    refiner = Refiner.load(args.weights, device="cpu")
    options = PairOptions()
    ray_options = RayOptions(num_workers=workers)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "pairs"
        folder.mkdir()
        build_folder(folder, n, size)

        def pairs(name: str, count: int = n):
            out = Path(tmp) / name
            out.mkdir()
            return find_pairs(folder, out_dir=out)[:count]

        # One image first, so that no run pays numba's first-call costs in this process.
        list(run_batch(refiner, pairs("warm", 1), options))
        local_1, _ = timed(lambda: run_batch(refiner, pairs("local-1"), options))
        started = time.perf_counter()
        ray.init(
            num_cpus=os.cpu_count(),
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            log_to_driver=False,
            logging_level=logging.ERROR,
        )
        timed(lambda: run_batch_ray(refiner, pairs("ray-cold"), options, ray_options))
        cold = time.perf_counter() - started
        running, reports = timed(
            lambda: run_batch_ray(refiner, pairs("ray-running"), options, ray_options)
        )
        ray.shutdown()
        local_2, _ = timed(lambda: run_batch(refiner, pairs("local-2"), options))

    local = (local_1 + local_2) / 2
    # A worker's rate once it is up: its pairs' own time (decode to written file). The rest of
    # a Ray job's time is what it pays to start its workers and hand them work.
    per_worker = 1 / statistics.mean(r.seconds for r in reports)
    overhead = running - n / (per_worker * workers)
    print(
        f"{n} pairs of {size[0]}x{size[1]}, CPU only, {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.1f}; local: one process, {torch.get_num_threads()} torch threads; "
        f"Ray: {workers} workers, 1 CPU each"
    )
    rows = [
        ("local batch", n / local, f"{local_1:.1f} s and {local_2:.1f} s"),
        ("ray, starting Ray", n / cold, f"{cold:.1f} s"),
        ("ray, Ray running", n / running, f"{running:.1f} s"),
        ("ray, workers up", per_worker * workers, f"{overhead:.1f} s of the job was not refining"),
    ]
    for name, rate, note in rows:
        ratio = "" if name == "local batch" else f"{rate / (n / local):4.0%} of local, "
        each = "" if name == "local batch" else f"{rate / workers:.2f}/s per worker, "
        print(f"{name:18} {rate:6.2f} images/s  {ratio}{each}({note})")


if __name__ == "__main__":
    main()
