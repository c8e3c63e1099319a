"""`python -m spnrefine`: the command line, as the `spnrefine` command runs it."""

from spnrefine.cli import app

app(prog_name="spnrefine")
