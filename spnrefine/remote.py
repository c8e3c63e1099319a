"""Pairs whose files are URIs (s3://, gs://, hdfs://, abfs://, file://: what pyarrow.fs, and so
Ray Data, reads): staged through a local temporary folder so that `refine_pair` runs on them
unchanged, and the output published to its URI only once whole."""

from __future__ import annotations

import functools
import secrets
import tempfile
import time
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from spnrefine.errors import SpnrefineError
from spnrefine.pair import Pair, PairOptions, PairReport, is_uri, refine_pair

if TYPE_CHECKING:
    from spnrefine.api import Refiner


def refine_uri_pair(refiner: Refiner, pair: Pair, options: PairOptions) -> PairReport:
    """`refine_pair` for a pair with URIs (a pair of local paths goes straight to it).

    A local output's resume rule is spnrefine.resume's, applied before the pair comes here; a
    URI output is done when it exists (checked before the inputs are fetched). Inputs are
    copied to a temporary folder; a URI output is refined there, written beside its target
    under a hidden temporary name and moved over it, so a reader (or a rerun) never sees part
    of one."""
    if pair.problem or not any(is_uri(p) for p in (pair.image, pair.coarse, pair.out)):
        return refine_pair(refiner, pair, options)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="spnrefine-") as tmp:
        staged = _staged(pair, Path(tmp))
        # The staged output's name and the URI differ only in what precedes the suffix.
        cut = 0 if pair.name_out else len(_suffix(pair.out))
        stem, base = len(staged.out) - cut, pair.out[: len(pair.out) - cut]
        try:
            done = None
            if is_uri(pair.out) and not options.overwrite:
                uris = [base + str(c)[stem:] for c in staged.candidates(options.soft)]
                done = next(filter(_exists, uris), None)
            if done is not None:  # the resume rule, before any input is fetched
                seconds = round(time.perf_counter() - started, 4)
                return PairReport(pair.image, pair.coarse, str(done), "skipped", seconds)
            for uri, local in ((pair.image, staged.image), (pair.coarse, staged.coarse)):
                if uri != local:
                    Path(local).write_bytes(_read(uri))
        except SpnrefineError as err:
            seconds = round(time.perf_counter() - started, 4)
            return PairReport(pair.image, pair.coarse, None, "failed", seconds, str(err))
        report = refine_pair(refiner, staged, options)
        if report.status == "ok" and is_uri(pair.out):
            target = base + report.out[stem:]
            try:
                _publish(Path(report.out).read_bytes(), target)
            except SpnrefineError as err:
                report.status, report.error, target = "failed", str(err), None
            report.out = target
    for uri, local in ((pair.image, staged.image), (pair.coarse, staged.coarse)):
        if report.error and uri != local:
            report.error = report.error.replace(local, uri)
    report.image, report.coarse = pair.image, pair.coarse
    report.seconds = round(time.perf_counter() - started, 4)
    return report


def _staged(pair: Pair, folder: Path) -> Pair:
    """The pair with each URI replaced by a path in `folder` (same suffix: formats follow it)."""

    def local(path: str, name: str) -> str:
        return str(folder / (name + _suffix(path))) if is_uri(path) else path

    out = pair.out
    if is_uri(out):
        out = str(folder / "out") if pair.name_out else local(out, "out")
    return replace(
        pair, image=local(pair.image, "image"), coarse=local(pair.coarse, "coarse"), out=out
    )


def _suffix(uri: str) -> str:
    return PurePosixPath(urlsplit(uri).path).suffix if is_uri(uri) else Path(uri).suffix


def _resolve(uri: str):
    """(filesystem, path in it) for a URI; one filesystem per scheme and host, reused."""
    parts = urlsplit(uri)
    filesystem, root = _filesystem(f"{parts.scheme}://{parts.netloc}/")
    return filesystem, root.rstrip("/") + unquote(parts.path)


@functools.lru_cache(maxsize=32)
def _filesystem(root: str):
    from pyarrow import fs

    try:
        return fs.FileSystem.from_uri(root)
    except Exception as err:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, ...
        raise SpnrefineError(f"cannot open the filesystem: {err}", root) from None


def _exists(uri: str) -> bool:
    from pyarrow import fs

    filesystem, path = _resolve(uri)
    try:
        return filesystem.get_file_info(path).type != fs.FileType.NotFound
    except OSError as err:
        raise SpnrefineError(f"cannot look the output up: {err}", uri) from None


def _read(uri: str) -> bytes:
    filesystem, path = _resolve(uri)
    try:
        with filesystem.open_input_stream(path) as f:
            data = f.read()
    except FileNotFoundError:
        raise SpnrefineError("file not found", uri) from None
    except OSError as err:
        raise SpnrefineError(f"cannot read the file: {err}", uri) from None
    if not data:
        raise SpnrefineError("empty file", uri)
    return data


def _publish(data: bytes, uri: str) -> None:
    """Write under a hidden temporary name beside `uri`, then move it over `uri`: a rename
    where the filesystem has one; on object stores the object appears whole on the move."""
    filesystem, path = _resolve(uri)
    folder, name = path.rsplit("/", 1)
    tmp = f"{folder}/.{name}.{secrets.token_hex(4)}.tmp"
    try:
        with filesystem.open_output_stream(tmp) as f:
            f.write(data)
        filesystem.move(tmp, path)
    except OSError as err:
        try:
            filesystem.delete_file(tmp)
        except OSError:
            pass
        raise SpnrefineError(f"cannot write the file: {err}", uri) from None
