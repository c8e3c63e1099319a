"""What a cheaper guidance net would buy on this CPU: the per-tile time of the torch-free
refiner (OpenCV's DNN for the guidance net, then the kernels) for several guidance widths.

    python benchmarks/guidance_cost.py [--widths 12,24,48,96 8,16,32,64 ...] [--tiles 4]
                                       [--repeats 7] [--kernels numba|numpy]

Every other setting is the bundled model's (`weights/config.json`). The weights of each
architecture are random (the time does not depend on their values); the bundled weights
themselves are timed too, as the first row, for reference. Printed per 128×128 tile, the
minimum and median over the repeats: the guidance net alone (one `forward` of `--tiles`
tiles) and the whole model call (`LeanRefiner.logits`: the net, the gate normalisation,
the embedding, the propagation and the tail, on a binary map), with the net's multiply-adds.
Needs torch (the `torch` extra) to make the random weights.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def multiply_adds(widths: tuple[int, ...], tile: int, cues: int) -> float:
    """Multiply-adds of the light guidance net on one tile (3×3 convolutions and the head)."""
    from spnrefine.model.config import FUSION_EXTRA, GATES_PER_GROUP

    total, side, cin = 0.0, tile, 3 + cues
    total += side * side * cin * widths[0] * 9
    for prev, width in zip(widths[:-1], widths[1:], strict=True):
        side //= 2
        total += side * side * (prev * width + width * width) * 9
    for skip, width in zip(reversed(widths[1:-1]), reversed(widths[2:]), strict=True):
        side *= 2
        total += side * side * (width + skip) * skip * 9
    head_in = widths[0] + FUSION_EXTRA
    total += tile * tile * (widths[1] + widths[0]) * head_in * 9
    return total + tile * tile * head_in * 4 * GATES_PER_GROUP


def timed(call, repeats: int) -> list[float]:
    call()  # OpenCV plans the net on its first call
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--widths", nargs="+", default=["12,24,48,96", "8,16,32,64", "8,16,24,32", "6,12,24,48"]
    )
    parser.add_argument("--tiles", type=int, default=4, help="tiles per model call")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--kernels", choices=("numba", "numpy"), default="numba")
    args = parser.parse_args()

    import torch

    from spnrefine.checkpoint import read_checkpoint
    from spnrefine.model import build_model
    from spnrefine.model.config import NUM_CUES
    from spnrefine.model.lean import LeanRefiner

    config, bundled = read_checkpoint(ROOT / "weights")
    rng = np.random.default_rng(0)
    tile = 128
    image = rng.random((args.tiles, 3, tile, tile), dtype=np.float32)
    fg = rng.random((args.tiles, 1, tile, tile), dtype=np.float32)
    probs = np.concatenate([1 - fg, fg], 1)
    x = np.concatenate([image, rng.random((args.tiles, NUM_CUES, tile, tile), np.float32)], 1)

    rows = [("bundled weights", config)]
    for text in args.widths:
        widths = tuple(int(v) for v in text.split(","))
        rows.append((f"widths {text}", replace(config, widths=widths)))
    print(f"{args.tiles} tiles of {tile}×{tile} per call, {args.kernels} kernels; ms per tile")
    print(f"{'net':<24}{'MMAC':>7}  {'guidance net (min / median)':>28}  {'whole model call':>20}")
    for name, cfg in rows:
        if name == "bundled weights":
            state = bundled
        else:
            torch.manual_seed(0)
            state = {k: v.numpy() for k, v in build_model(cfg).state_dict().items()}
        refiner = LeanRefiner(cfg, state, kernels=args.kernels)
        net = refiner.net

        def forward(net=net) -> None:
            net.setInput(x)
            net.forward()

        guide = [t * 1000 / args.tiles for t in timed(forward, args.repeats)]
        whole = [
            t * 1000 / args.tiles
            for t in timed(lambda r=refiner: r.logits(image, probs), args.repeats)
        ]
        mmac = multiply_adds(cfg.widths, tile, NUM_CUES) / 1e6
        print(
            f"{name:<24}{mmac:>7.0f}  {min(guide):>13.1f} / {statistics.median(guide):<12.1f}"
            f"  {min(whole):>8.1f} / {statistics.median(whole):.1f}"
        )


if __name__ == "__main__":
    main()
