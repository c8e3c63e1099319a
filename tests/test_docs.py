"""The docs stay true: docs/cli.md is what scripts/make_cli_reference.py writes from the CLI
today, docs/results.md shows the commands scripts/make_docs_figures.py runs, and every page
and picture the docs link to exists."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_cli_reference_matches_the_cli():
    expected = load_script("make_cli_reference").render()
    assert (DOCS / "cli.md").read_text(encoding="utf-8") == expected, (
        "docs/cli.md is out of date: run python scripts/make_cli_reference.py"
    )


def test_cli_reference_lists_every_command():
    import typer

    from spnrefine.cli import app

    text = (DOCS / "cli.md").read_text(encoding="utf-8")
    for name in typer.main.get_command(app).commands:
        assert f"\n## {name}\n" in text


def test_results_page_shows_the_commands_that_make_its_pictures():
    figures = load_script("make_docs_figures")
    text = (DOCS / "results.md").read_text(encoding="utf-8")
    for case in figures.cases():
        command = figures.command_text(figures.refine_command(case, figures.WORK))
        assert command in text, f"docs/results.md lacks: {command}"
        assert f"(img/results-{case.name}.jpg)" in text


def test_relative_links_in_docs_and_readme_resolve():
    pages = [REPO / "README.md", *sorted(DOCS.glob("*.md"))]
    broken = []
    for page in pages:
        text = page.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(REPO)} -> {target}")
    assert not broken, "broken links: " + ", ".join(broken)


def test_docs_and_shipped_files_name_no_folder_outside_a_fresh_clone():
    # A user's clone has no development-data folder beside it and no /work; the development
    # data is named $SPNREFINE_DATA where a page needs it.
    shipped = [REPO / "README.md", *DOCS.glob("*.md"), REPO / "examples" / "README.md"]
    shipped += [*(REPO / "weights").glob("*.json"), *(REPO / "weights").glob("*.md")]
    found = []
    for path in shipped:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if re.search(r"(\.\./|\b)shared/(data|examples)|/work/", line):
                found.append(f"{path.relative_to(REPO)}:{number}")
    assert not found, "paths outside the repository: " + ", ".join(found)
