"""scripts/make_davis_mix.py: links a DAVIS training folder whose training sequences carry the
real coarse maps, and without its data stops with one line saying what is missing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "make_davis_mix.py"


def run(*args: object, data: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SPNREFINE_DATA"}
    if data is not None:
        env["SPNREFINE_DATA"] = str(data)
    command = [sys.executable, str(SCRIPT), *map(str, args)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


def make_data(root: Path, sequences: int = 10, frames: int = 3) -> Path:
    """Empty stand-ins for DAVIS frames, masks and real coarse maps (the script only links)."""
    for folder in ("davis/images", "davis/masks", "davis-coarse"):
        (root / folder).mkdir(parents=True)
    for s in range(sequences):
        for f in range(frames):
            stem = f"seq{s}_{f:05d}"
            (root / "davis" / "images" / f"{stem}.jpg").touch()
            (root / "davis" / "masks" / f"{stem}.png").touch()
        (root / "davis-coarse" / f"seq{s}_00000.png").touch()
    return root


def test_without_its_data_the_script_says_what_is_missing_in_one_line(tmp_path: Path):
    result = run("--out", tmp_path / "mix")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "make_davis_mix.py: give --data DIR (or set SPNREFINE_DATA): the folder holding davis/ "
        "and davis-coarse/"
    ]
    data = make_data(tmp_path / "data")
    (data / "davis" / "masks" / "seq3_00001.png").unlink()
    result = run("--out", tmp_path / "mix", data=data)
    assert result.returncode == 1
    missing = data / "davis" / "masks" / "seq3_00001.png"
    assert result.stderr.strip().splitlines() == [
        f"make_davis_mix.py: {missing} is missing (the mask of seq3_00001.jpg)"
    ]
    assert not (tmp_path / "mix").exists()


def test_the_mix_links_every_frame_and_the_real_maps_of_training_sequences_only(tmp_path: Path):
    data = make_data(tmp_path / "data")
    out = tmp_path / "mix"
    result = run("--out", out, data=data)
    assert result.returncode == 0, result.stderr
    assert len(list((out / "images").iterdir())) == len(list((out / "masks").iterdir())) == 30
    held_out = result.stdout.strip().rpartition(": ")[2].split(", ")
    linked = sorted(p.name for p in (out / "coarse").iterdir())
    assert len(held_out) == 2  # VAL_FRACTION of the 10 sequences
    assert linked == sorted(f"seq{s}_00000.png" for s in range(10) if f"seq{s}" not in held_out)
    assert all((out / "coarse" / name).resolve().parent == data / "davis-coarse" for name in linked)
