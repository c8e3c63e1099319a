"""Installed without the torch extra: refining works, and what needs torch says so in one line.

Each case runs the CLI in a subprocess where ``import torch`` fails, as after a plain
``pip install spnrefine``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
HAS_BUNDLED = (ROOT / "weights" / "model.safetensors").is_file()

BLOCK_TORCH = (
    "import sys\n"
    "sys.modules['torch'] = None  # import torch raises ImportError, find_spec gives None\n"
    "from spnrefine.cli import app\n"
    "sys.argv = ['spnrefine', *sys.argv[1:]]\n"
    "app()\n"
)


def _spnrefine(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH, *args], capture_output=True, text=True, timeout=300
    )


@pytest.mark.skipif(not HAS_BUNDLED, reason="weights/model.safetensors is not there")
def test_refine_needs_no_torch(tmp_path: Path):
    out = tmp_path / "mask.png"
    done = _spnrefine(
        "refine", str(EXAMPLES / "astronaut.jpg"), str(EXAMPLES / "astronaut_coarse.png"),
        "-o", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert out.stat().st_size > 0


@pytest.mark.parametrize(
    ("args", "feature"),
    [
        (["train", "data/", "-o", "run"], "spnrefine train"),
        (["bench", "--quick"], "spnrefine bench"),
        (
            ["refine", str(EXAMPLES / "astronaut.jpg"), str(EXAMPLES / "astronaut_coarse.png"),
             "--device", "cuda", "-o", "never.png"],
            "--device cuda",
        ),
    ],
    ids=["train", "bench", "cuda"],
)  # fmt: skip
def test_what_needs_torch_says_how_to_install_it(args: list[str], feature: str, tmp_path: Path):
    done = subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH, *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert f"{feature} needs torch" in lines[0]
    assert "pip install 'spnrefine[torch]'" in lines[0]
    assert not any(tmp_path.iterdir())  # nothing written
