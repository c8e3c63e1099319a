"""The ``spnrefine`` command line: thin Typer commands over the Python API.

Each module registers its commands on the shared app; importing this package loads them all.
"""

from spnrefine.cli import bench, eval, refine, train  # noqa: F401  (they register their commands)
from spnrefine.cli.common import app


def main() -> None:
    app()


__all__ = ["app", "main"]
