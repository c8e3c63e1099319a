"""The batch resume rule. Each output folder holds a manifest, `.spnrefine-manifest.jsonl`, saying
which inputs (path, size, modification time) and settings (weights sha256, method, tiling,
reading and writing options) produced each output. A pair is done when its output exists and
the manifest says it came from the same inputs and settings; an output of ours that differs is
redone; a file the manifest does not know is never replaced without --overwrite.

The manifest is written by the one process that runs the batch (never by Ray workers), one JSON
line per event: "writing" (with the time) before a pair is sent to be refined, "done" once its
output is whole. A run killed in between leaves "writing": the output counts as done when it
was written after that line (writes are atomic, so it is whole), else the pair is redone."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING

from spnrefine.pair import Pair, PairOptions, PairReport, is_uri

if TYPE_CHECKING:
    from spnrefine.predictor import Predictor

MANIFEST = ".spnrefine-manifest.jsonl"
# Options that change no output byte: where it runs, how many tiles per call, the input limit.
_NOT_IN_OUTPUT = ("overwrite",)


def run_settings(refiner: Predictor, options: PairOptions) -> dict:
    """What, besides the inputs, decides an output's bytes."""
    info = getattr(refiner, "info", None)
    settings = {
        "weights": info.sha256 if info is not None else None,
        "method": refiner.method,
        "tile": refiner.tile,
        "overlap": refiner.overlap,
        "confident": refiner.confident,
        "guard": refiner.guard,
    }
    settings.update({k: v for k, v in asdict(options).items() if k not in _NOT_IN_OUTPUT})
    return settings


class Resume:
    """The resume rule for one batch run: which pairs are done, and the manifest records."""

    def __init__(self, refiner: Predictor, options: PairOptions):
        self.options = options
        self.settings = run_settings(refiner, options)
        self._manifests: dict[Path, dict[str, dict]] = {}
        self._inputs: dict[tuple, dict | None] = {}

    def plan(self, pairs: list[Pair]) -> list[tuple[Pair, Path | None]]:
        """Each pair with its finished output, or with None when it is to be refined (then
        marked `redo` where it replaces an output of ours). Pairs to be refined are recorded as
        "writing" before this returns."""
        planned = [self._decide(pair) for pair in pairs]
        writing: dict[Path, list[dict]] = {}
        now = time.time_ns()
        for pair, done in planned:
            if done is None and self._ours_to_write(pair):
                for target in pair.candidates(self.options.soft):
                    entry = {"output": target.name, "state": "writing", "time": now}
                    entry.update(self._entry(pair))
                    writing.setdefault(target.parent, []).append(entry)
        for folder, entries in writing.items():
            self._append(folder, entries, sync=True)
        return planned

    def record(self, pair: Pair, report: PairReport) -> None:
        """Record a refined pair's output as done (its output file is whole by now)."""
        if report.status != "ok" or report.out is None or is_uri(report.out):
            return
        target = Path(report.out)
        entry = {"output": target.name, "state": "done", **self._entry(pair)}
        self._append(target.parent, [entry], sync=False)

    def _decide(self, pair: Pair) -> tuple[Pair, Path | None]:
        if pair.problem or is_uri(pair.out) or self.options.overwrite:
            return pair, None
        existing = [c for c in pair.candidates(self.options.soft) if c.exists()]
        for output in existing:
            entry = self._manifest(output.parent).get(output.name)
            if entry is None:
                # Not ours: refine_file refuses to replace it, and says so.
                return pair, None
            inputs = self._entry(pair)["inputs"]
            if inputs is not None and entry.get("inputs") == inputs and _made_by(entry, output):
                return pair, output
        return (replace(pair, redo=True) if existing else pair), None

    def _ours_to_write(self, pair: Pair) -> bool:
        if pair.problem or is_uri(pair.out):
            return False
        return self.options.overwrite or all(
            not c.exists() or c.name in self._manifest(c.parent)
            for c in pair.candidates(self.options.soft)
        )

    def _entry(self, pair: Pair) -> dict:
        key = (pair.image, pair.coarse)
        if key not in self._inputs:
            self._inputs[key] = _fingerprint(pair)
        return {"inputs": self._inputs[key] and {**self._inputs[key], **self.settings}}

    def _manifest(self, folder: Path) -> dict[str, dict]:
        if folder not in self._manifests:
            self._manifests[folder] = read_manifest(folder)
        return self._manifests[folder]

    def _append(self, folder: Path, entries: list[dict], *, sync: bool) -> None:
        text = "".join(json.dumps(e, sort_keys=True) + "\n" for e in entries)
        try:
            with open(folder / MANIFEST, "a", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                if sync:
                    os.fsync(f.fileno())
        except OSError:
            return  # no folder, or not writable: the pair itself fails and says why
        manifest = self._manifest(folder)
        for entry in entries:
            manifest[entry["output"]] = entry


def read_manifest(folder: Path) -> dict[str, dict]:
    """The latest entry for each output named in `folder`'s manifest (none when it has none).
    A line cut short by a crash is skipped."""
    entries: dict[str, dict] = {}
    try:
        lines = (folder / MANIFEST).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return entries
    for line in lines:
        try:
            entry = json.loads(line)
            entries[entry["output"]] = entry
        except (ValueError, KeyError, TypeError):
            continue
    return entries


def _made_by(entry: dict, output: Path) -> bool:
    """The output is the one the entry describes: recorded done, or written after the entry
    said it was about to be (by a run that was killed before it could record it)."""
    if entry["state"] == "done":
        return True
    try:
        return entry["state"] == "writing" and output.stat().st_mtime_ns >= entry["time"]
    except (OSError, KeyError, TypeError):
        return False


def _fingerprint(pair: Pair) -> dict | None:
    """The inputs as files: absolute path, size and modification time (None if unreadable)."""
    found = {}
    for role, path in (("image", pair.image), ("coarse", pair.coarse)):
        if path is None or path == "-" or is_uri(path):
            return None
        try:
            stat = os.stat(path)
        except (OSError, ValueError):
            return None
        found[role] = [os.path.abspath(path), stat.st_size, stat.st_mtime_ns]
    return found
