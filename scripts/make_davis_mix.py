"""Build a DAVIS training folder whose training sequences carry the real ISNet coarse maps.

    python scripts/make_davis_mix.py [--out runs/davis-mix] [--seed 0]

The folder links every frame of ``shared/data/davis`` (images/, masks/) and, under coarse/,
the ``shared/data/davis-coarse`` map of each frame that has one, except in the sequences that
``spnrefine train --split-seed SEED`` holds out. So the split (whole sequences, drawn from the
same stems) and the validation patches are those of plain ``davis``, no held-out sequence's
real map is seen in training, and about a tenth of the training frames (every 10th frame)
trains on a real segmenter's map instead of a synthesised one. Files are symbolic links:
nothing is copied.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from spnrefine.train.data import VAL_FRACTION, group_of, split_stems

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_symlink() or dst.exists():
        dst.unlink()
    os.symlink(src.resolve(), dst)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/davis-mix"))
    parser.add_argument("--seed", type=int, default=0, help="the training run's split seed")
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args()

    davis, coarse = args.data / "davis", args.data / "davis-coarse"
    stems = sorted(p.stem for p in (davis / "images").iterdir())
    held_out = {group_of(s) for s in split_stems(davis, stems, VAL_FRACTION, args.seed)}
    for stem in stems:
        link(davis / "images" / f"{stem}.jpg", args.out / "images" / f"{stem}.jpg")
        link(davis / "masks" / f"{stem}.png", args.out / "masks" / f"{stem}.png")
    real = [p for p in sorted(coarse.glob("*.png")) if group_of(p.stem) not in held_out]
    for path in real:
        link(path, args.out / "coarse" / path.name)
    print(
        f"{args.out}: {len(stems)} frames, {len(real)} real coarse maps; "
        f"held out (no real maps): {', '.join(sorted(held_out))}"
    )


if __name__ == "__main__":
    main()
