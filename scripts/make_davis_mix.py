"""Build a DAVIS training folder whose training sequences carry the real ISNet coarse maps.

    python scripts/make_davis_mix.py [--data DIR] [--out runs/davis-mix] [--seed 0]

The folder links every frame of ``DIR/davis`` (images/, masks/) and, under coarse/, the
``DIR/davis-coarse`` map of each frame that has one, except in the sequences that
``spnrefine train --split-seed SEED`` holds out. So the split (whole sequences, drawn from the
same stems) and the validation patches are those of plain ``davis``, no held-out sequence's
real map is seen in training, and about a tenth of the training frames (every 10th frame)
trains on a real segmenter's map instead of a synthesised one. Files are symbolic links:
nothing is copied. DIR is the development data folder, by default $SPNREFINE_DATA; without it
the script stops with one line saying what is missing.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from spnrefine.train.data import VAL_FRACTION, group_of, split_stems

DATA_VAR = "SPNREFINE_DATA"


def fail(message: str) -> None:
    sys.exit(f"make_davis_mix.py: {message}")


def davis_files(data: Path | None) -> tuple[Path, Path, list[str]]:
    """The DAVIS folder, its coarse-map folder and its frames' stems, every frame with a mask;
    or exit with one line naming what is missing."""
    if data is None:
        fail(f"give --data DIR (or set {DATA_VAR}): the folder holding davis/ and davis-coarse/")
    davis, coarse = data / "davis", data / "davis-coarse"
    for folder in (davis / "images", davis / "masks", coarse):
        if not folder.is_dir():
            fail(f"{folder} is missing (DIR must hold davis/images, davis/masks, davis-coarse)")
    stems = sorted(p.stem for p in (davis / "images").glob("*.jpg"))
    if not stems:
        fail(f"{davis / 'images'} holds no .jpg frames")
    for stem in stems:
        if not (davis / "masks" / f"{stem}.png").is_file():
            fail(f"{davis / 'masks' / stem}.png is missing (the mask of {stem}.jpg)")
    return davis, coarse, stems


def link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_symlink() or dst.exists():
        dst.unlink()
    os.symlink(src.resolve(), dst)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/davis-mix"))
    parser.add_argument("--seed", type=int, default=0, help="the training run's split seed")
    default = os.environ.get(DATA_VAR)
    parser.add_argument(
        "--data",
        type=Path,
        default=Path(default) if default else None,
        help=f"default: ${DATA_VAR}",
    )
    args = parser.parse_args()

    davis, coarse, stems = davis_files(args.data)
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
