"""The command line's conventions: --version and python -m spnrefine, an example in every
command's --help, flags without a type placeholder, and help text that wraps to the terminal
instead of breaking where the source has a newline or being cut off."""

from __future__ import annotations

import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from spnrefine import __version__
from spnrefine.cli import app

COMMANDS = sorted(typer.main.get_command(app).commands)


def help_text(*args: str, width: int) -> str:
    result = CliRunner().invoke(app, [*args, "--help"], terminal_width=width)
    assert result.exit_code == 0, result.output
    return result.output


def test_version_is_printed_by_the_command_and_by_python_m():
    assert CliRunner().invoke(app, ["--version"]).output == f"spnrefine {__version__}\n"
    done = subprocess.run(
        [sys.executable, "-m", "spnrefine", "--version"], capture_output=True, text=True
    )
    assert (done.returncode, done.stdout) == (0, f"spnrefine {__version__}\n")


def test_python_m_spnrefine_names_itself_spnrefine():
    done = subprocess.run(
        [sys.executable, "-m", "spnrefine", "refine", "--help"], capture_output=True, text=True
    )
    assert done.returncode == 0 and done.stdout.startswith("Usage: spnrefine refine ")


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_every_help_ends_with_examples_of_its_own_command(command: str):
    text = help_text(*filter(None, [command]), width=100)
    examples = [line.strip() for line in text.split("Examples:", 1)[1].splitlines() if line]
    assert examples and all("spnrefine " in line for line in examples)
    assert any(f"spnrefine {command}" in line for line in examples)


@pytest.mark.parametrize("command", ["", *COMMANDS])
@pytest.mark.parametrize("width", [60, 80, 100])
def test_help_wraps_to_the_terminal_and_cuts_nothing(command: str, width: int):
    text = help_text(*filter(None, [command]), width=width)
    assert "<bool>" not in text
    assert "…" not in text
    lines = text.split("Examples:", 1)[0].splitlines()  # example lines are kept whole
    assert max(len(line) for line in lines) <= width
    # Wrapped, not broken: a line of the description never ends where the next line's first
    # word would still have fitted.
    description = lines[2 : lines.index("", 2)]
    for line, after in zip(description, description[1:], strict=False):
        assert len(line) + 1 + len(after.split()[0]) > width, (line, after)


def test_the_command_list_shows_whole_summaries():
    text = help_text(width=80)
    listed = text.split("Commands:", 1)[1].split("Examples:", 1)[0]
    assert "..." not in listed
    for command in COMMANDS:
        assert f"  {command} " in listed


def test_flags_take_no_value_and_have_no_negative_form():
    text = help_text("refine", width=100)
    assert "--soft  " in text and "--no-soft" not in text
    result = CliRunner().invoke(app, ["refine", "a.jpg", "b.png", "--soft=yes"])
    assert result.exit_code == 2
