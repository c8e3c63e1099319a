"""The dense-CRF baseline as a user would run it: a plain script that reads an image and a
coarse mask, runs pydensecrf (DeepLab parameters, 5 iterations) and writes the mask.

    python benchmarks/densecrf_script.py IMAGE COARSE OUT.png
    python benchmarks/densecrf_script.py --folder DIR OUT_DIR  # DIR/images + DIR/coarse

`benchmarks/whole_process.py` times it against `spnrefine refine` and `spnrefine batch`. The
coarse mask (a PNG: 0..255 foreground probability) is upsampled bilinearly, as spnrefine does,
and the CRF is spnrefine's own baseline (`--method crf`), so both refine the same input.
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np

from spnrefine.baselines.crf import refine_crf


def crf_mask(image_path: Path, coarse_path: Path, out_path: Path) -> None:
    image = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
    coarse = cv2.imread(str(coarse_path), cv2.IMREAD_GRAYSCALE)
    if image is None or coarse is None:
        sys.exit(f"{image_path if image is None else coarse_path}: cannot read it")
    h, w = image.shape[:2]
    fg = cv2.resize(coarse.astype(np.float32) / 255.0, (w, h), interpolation=cv2.INTER_LINEAR)
    probs = np.stack([1.0 - fg, fg])
    rgb = np.ascontiguousarray(image[:, :, ::-1])
    marginals = refine_crf(rgb, probs, iterations=5)
    cv2.imwrite(str(out_path), (marginals.argmax(0) * 255).astype(np.uint8))


def main(argv: list[str]) -> None:
    if len(argv) == 3 and argv[0] == "--folder":
        folder, out = Path(argv[1]), Path(argv[2])
        out.mkdir(parents=True, exist_ok=True)
        for image in sorted((folder / "images").iterdir()):
            crf_mask(image, folder / "coarse" / f"{image.stem}.png", out / f"{image.stem}.png")
    elif len(argv) == 3:
        crf_mask(Path(argv[0]), Path(argv[1]), Path(argv[2]))
    else:
        sys.exit(__doc__.split("\n\n")[1])


if __name__ == "__main__":
    main(sys.argv[1:])
