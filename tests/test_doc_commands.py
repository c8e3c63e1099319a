"""The README and the quick start work as written: every shell command and Python snippet on
them runs, in one temporary folder holding a copy of examples/ (as a clone's root does),
README first and then the quick start, in page order, as a new user meets them. A command
that fails, or an output the next one trips over, fails the build.

Not run: `pip install ...` (this environment is what those commands make; CI installs it with
the README's test command), `python -m pytest` (this test suite), and a block that its page
marks `<!-- not run by the tests: REASON -->` (it needs data the user brings, or runs for
hours); every spnrefine command in such a block is still parsed (`--help` added), so a renamed
command or option fails here too. Files the pages write are checked against .gitignore, so
following the docs in a clone leaves `git status` clean."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = ("README.md", "docs/quickstart.md")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
NOT_RUN = re.compile(r"<!-- not run by the tests: (.+?) -->\s*$")
SKIPPED = ("pip install", "python -m pytest")


def code_blocks(page: str) -> list[tuple[str, str, str | None]]:
    """The page's bash and python blocks: (language, code, the reason it is not run)."""
    text = (REPO / page).read_text(encoding="utf-8")
    blocks = []
    for match in FENCE.finditer(text):
        language, code = match.group(1), match.group(2)
        if language not in ("bash", "python"):
            continue
        before = text[: match.start()].rstrip().splitlines()
        reason = NOT_RUN.match(before[-1].strip()) if before else None
        blocks.append((language, code, reason.group(1) if reason else None))
    return blocks


def shell_commands(code: str) -> list[str]:
    """A bash block's commands, one per logical line (backslash continuations joined), with
    the install and test-suite commands left out."""
    commands = []
    for line in code.replace("\\\n", " ").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = [p for p in line.split(" && ") if not p.strip().startswith(SKIPPED)]
        if parts:
            commands.append(" && ".join(parts))
    return commands


def spnrefine_invocations(command: str) -> list[list[str]]:
    """Each `spnrefine ...` in a shell command, up to the next shell operator or comment."""
    words = shlex.split(command, comments=True)
    found = []
    for i, word in enumerate(words):
        if word == "spnrefine":
            end = next(
                (j for j in range(i + 1, len(words)) if words[j] in ("|", "&&", ";", "||")),
                len(words),
            )
            found.append(words[i + 1 : end])
    return found


def environment() -> dict[str, str]:
    """This Python's scripts first on PATH (`spnrefine`, `python`), the bundled weights, no
    network, no colour."""
    env = {k: v for k, v in os.environ.items() if k not in ("SPNREFINE_WEIGHTS", "NO_COLOR")}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(HF_HUB_OFFLINE="1", NO_COLOR="1")
    return env


def run(args: list[str] | str, cwd: Path, where: str, shell: bool = False) -> None:
    result = subprocess.run(
        ["bash", "-o", "pipefail", "-c", args] if shell else args,
        cwd=cwd,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, (
        f"{where} exited {result.returncode}:\n{result.stderr[-3000:]}{result.stdout[-1000:]}"
    )


def test_the_pages_name_the_blocks_they_do_not_run_and_say_why():
    for page in PAGES:
        for language, code, reason in code_blocks(page):
            if reason is not None:
                assert language == "bash" and len(reason) > 10, (page, code)


def test_every_command_and_snippet_of_the_readme_and_quickstart_runs_as_written(tmp_path: Path):
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    before = {p for p in tmp_path.rglob("*")}
    ran = 0
    for page in PAGES:
        for number, (language, code, reason) in enumerate(code_blocks(page), 1):
            where = f"{page}, block {number}"
            if language == "python":
                (tmp_path / "snippet.py").write_text(code, encoding="utf-8")
                run([sys.executable, "snippet.py"], tmp_path, f"{where} (python)")
                (tmp_path / "snippet.py").unlink()
                ran += 1
                continue
            for command in shell_commands(code):
                if reason is None:
                    run(command, tmp_path, f"{where}: {command}", shell=True)
                    ran += 1
                    continue
                for args in spnrefine_invocations(command):
                    # Parsed, not run: --help is eager, so a bad command or option still fails.
                    run(["spnrefine", *args, "--help"], tmp_path, f"{where}: {command}")
    assert ran >= 10, "the pages lost their commands, or this test stopped finding them"

    # Folders with a trailing slash, as .gitignore's folder patterns match them.
    written = sorted(
        str(p.relative_to(tmp_path)) + ("/" if p.is_dir() else "")
        for p in set(tmp_path.rglob("*")) - before
    )
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("no git repository here to check .gitignore against")
    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", "--stdin"],
        cwd=REPO,
        input="\n".join(written),
        capture_output=True,
        text=True,
    ).stdout.split()
    # A file is covered when it, or a folder above it, is ignored.
    folders = [i.rstrip("/") for i in ignored]
    uncovered = [
        path
        for path in written
        if not any(path.rstrip("/") == f or path.startswith(f + "/") for f in folders)
    ]
    assert not uncovered, f"the docs write files .gitignore does not cover: {uncovered}"
