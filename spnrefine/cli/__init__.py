"""The ``spnrefine`` command line: thin Typer commands over the Python API.

Each module registers its commands on the shared app; importing this package loads them all.
"""

# Importing a module registers its commands; --help lists them in this order.
from spnrefine.cli import refine, batch, weights, eval, bench, train  # noqa: F401, I001
from spnrefine.cli.common import app


def main() -> None:
    app()


__all__ = ["app", "main"]
