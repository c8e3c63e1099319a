"""Test helper: where test inputs live. The examples and a few real maps (tests/data/) are in
the repository; whole development data sets are not, and the tests that read one skip unless
SPNREFINE_DATA names the folder that holds it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
FIXTURES = REPO / "tests" / "data"


def dataset(name: str) -> Path:
    """The folder of data set `name` under $SPNREFINE_DATA, or skip the test saying what is
    missing."""
    root = os.environ.get("SPNREFINE_DATA")
    if not root:
        pytest.skip(f"needs the {name} data set: set SPNREFINE_DATA to the folder holding {name}/")
    path = Path(root) / name
    if not path.is_dir():
        pytest.skip(f"needs the {name} data set: {path} is not a folder")
    return path
