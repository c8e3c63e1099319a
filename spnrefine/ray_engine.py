"""`batch --engine ray`: a batch's pairs spread over Ray Data workers, each holding the refiner
once. Pairing, the resume rule and the report are spnrefine.batch's, refining and writing a pair
spnrefine.pair's; this module only moves pairs to workers and reports back."""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import socket
import sys
import sysconfig
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING

from rich.console import Console

from spnrefine.batch import with_progress
from spnrefine.errors import SpnrefineError
from spnrefine.pair import Pair, PairOptions, PairReport, is_uri
from spnrefine.remote import refine_uri_pair
from spnrefine.resume import Resume

if TYPE_CHECKING:
    from spnrefine.api import Refiner

INSTALL_HINT = "--engine ray needs Ray: pip install 'spnrefine[ray]'"
TOKEN_SOURCES = "RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token"
# Ray's core prints this once per driver for every actor pool, Ray Data's own included: the
# pool's constructor arguments live in the object store, which the driver keeps (issue 53727).
ACTOR_ARGUMENTS_NOTE = b"has constructor arguments in the object store and max_restarts > 0"
# A task's pairs are refined one after another by one worker: enough pairs to hide the cost of
# a task (milliseconds), few enough that a worker's death repeats little and the bar moves.
PAIRS_PER_TASK = 16


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide a Ray batch runs.

    `address`: a running cluster (`ray://host:10001`, `host:6379`, `auto`); None takes
    $RAY_ADDRESS, else starts a local Ray for this run and stops it afterwards.
    `num_workers`: model replicas; None is one per `cpus_per_worker` CPUs of the cluster, or
    per `gpus_per_worker` GPUs when that is set. With GPUs the workers refine on CUDA.
    """

    address: str | None = None
    num_workers: int | None = None
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0


def require_ray() -> None:
    """Fail with the install command when Ray Data is not importable."""
    try:
        import ray.data  # noqa: F401
    except ImportError:
        raise SpnrefineError(INSTALL_HINT) from None


def engine_options(
    engine: str,
    *,
    device: str,
    address: str | None,
    num_workers: int | None,
    gpus_per_worker: float | None,
) -> RayOptions | None:
    """The `batch` command's --engine and its options, checked together before anything
    loads: None for the local engine, else the Ray settings (and Ray must be importable)."""
    if engine != "ray":
        given = {
            "--address": address,
            "--num-workers": num_workers,
            "--gpus-per-worker": gpus_per_worker,
        }
        for name, value in given.items():
            if value is not None:
                raise SpnrefineError(f"{name} is an option of --engine ray")
        return None
    gpus = gpus_per_worker or 0.0
    if device == "cuda" and not gpus:
        raise SpnrefineError(
            "--engine ray gives workers GPUs with --gpus-per-worker G, not --device"
        )
    if device == "cpu" and gpus:
        raise SpnrefineError("--device cpu and --gpus-per-worker contradict each other")
    ray_options = RayOptions(address, num_workers, gpus)
    _check(ray_options)
    require_ray()
    return ray_options


def run_batch_ray(
    refiner: Refiner,
    pairs: list[Pair],
    options: PairOptions,
    ray_options: RayOptions | None = None,
    *,
    console: Console | None = None,
) -> Iterator[PairReport]:
    """Refine `pairs` on Ray workers, yielding each report as its task finishes (not in
    order). Connects (or starts Ray) now, so a bad address fails here, not mid-iteration.

    `refiner` is shipped to every worker once (moved to the worker's GPU when it has one); a
    worker runs `refine_uri_pair`, which skips finished outputs and writes new ones atomically, so
    a rerun after a crash redoes nothing. Paths may be URIs (s3://, gs://, file://, ...; see
    spnrefine.remote). A pair whose task failed all the same is reported as failed, never
    dropped."""
    ray_options = ray_options or RayOptions()
    _check(ray_options)
    require_ray()
    started_here = _connect(ray_options.address)
    try:
        workers = ray_options.num_workers or _default_workers(ray_options)
    except SpnrefineError:
        if started_here:
            import ray

            ray.shutdown()
        raise
    return _stream(refiner, pairs, options, ray_options, workers, console, started_here)


def _check(ray_options: RayOptions) -> None:
    if ray_options.num_workers is not None and ray_options.num_workers < 1:
        raise SpnrefineError(f"--num-workers {ray_options.num_workers}: must be at least 1")
    if ray_options.gpus_per_worker < 0:
        raise SpnrefineError(f"--gpus-per-worker {ray_options.gpus_per_worker}: must be ≥ 0")
    if ray_options.cpus_per_worker <= 0:
        raise SpnrefineError(f"cpus per worker {ray_options.cpus_per_worker}: must be > 0")


def _connect(address: str | None) -> bool:
    """Join the cluster at `address` (or $RAY_ADDRESS), or start a local Ray; True when this
    call started or joined it and so must shut it down. An already connected driver (a
    notebook, a test) is used as it is."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    # Worker logs are not forwarded: stdout carries --json, and errors come back in reports.
    settings = {"log_to_driver": False, "logging_level": logging.ERROR}
    if address is not None:
        _check_reachable(address)
        _check_token(address)
    try:
        with _outside_the_working_directory():
            if address is None:
                # "local" starts a new Ray even where `ray start` left one running. It listens
                # on the loopback address only: a laptop's Ray is not for the network.
                ray.init(
                    address="local",
                    include_dashboard=False,
                    _node_ip_address="127.0.0.1",
                    **settings,
                )
            else:
                ray.init(address=address, **settings)
    except Exception as err:  # noqa: BLE001 - Ray raises many types for an unreachable cluster
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        where = f"at {address}" if address else "locally"
        hint = ""
        if address is not None and os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
            hint = " (a cluster with token authentication also needs RAY_AUTH_MODE=token)"
        raise SpnrefineError(f"cannot start or reach Ray {where}: {first_line}{hint}") from None
    return True


@contextmanager
def _outside_the_working_directory() -> Iterator[None]:
    """Ray puts the driver's working directory first on every worker's import path, so a
    folder named `spnrefine` there (a clone's root) would shadow the installed package in the
    workers. Connect from the standard library's folder instead: it is on every worker's
    path already and holds no `spnrefine`. Local paths are made absolute before they travel."""
    here = os.getcwd()
    os.chdir(sysconfig.get_path("stdlib"))
    try:
        yield
    finally:
        os.chdir(here)


def _check_token(address: str) -> None:
    """Fail at once, naming the token, where the cluster at `address` refuses this driver's
    credentials: Ray itself retries for 20 s, prints a warning a second, and then says only
    "Failed to connect". Only `host:port` addresses of the cluster's GCS are asked."""
    if "://" in address or address == "auto":
        return
    import ray.exceptions

    try:
        from ray._raylet import GcsClient
    except ImportError:  # another Ray release: ray.init reports what goes wrong
        return
    try:
        with _native_stderr_to(os.devnull):  # its one warning line says what we say below
            GcsClient(address=address)
    except ray.exceptions.AuthenticationError:
        if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
            raise SpnrefineError(
                f"the Ray cluster at {address} uses token authentication: set "
                f"RAY_AUTH_MODE=token, with the cluster's token in {TOKEN_SOURCES}"
            ) from None
        raise SpnrefineError(
            f"the Ray cluster at {address} refused the token: give the cluster's token in "
            f"{TOKEN_SOURCES}"
        ) from None
    except Exception:  # noqa: BLE001 - anything else is ray.init's to report
        pass


@contextmanager
def _native_stderr_to(path: str) -> Iterator[None]:
    """File descriptor 2 (where Ray's C++ core logs) sent to `path` for a synchronous call."""
    sys.stderr.flush()
    saved = os.dup(2)
    target = os.open(path, os.O_WRONLY)
    os.dup2(target, 2)
    os.close(target)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@contextmanager
def _without_native_lines(note: bytes) -> Iterator[None]:
    """While the job runs, copy what Ray's C++ core writes to file descriptor 2 to the real
    stderr, all but the lines holding `note`. Python's sys.stderr (the progress bar, errors)
    writes straight to the real stderr meanwhile, so a terminal stays a terminal. Only where
    sys.stderr is this process's own (not a notebook's or a test runner's)."""
    python_stderr = sys.stderr
    if python_stderr is None or python_stderr is not sys.__stderr__ or not _is_fd2(python_stderr):
        yield
        return
    python_stderr.flush()
    real = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def copy() -> None:
        with open(read_end, "rb") as pipe:
            for line in pipe:
                if note not in line:
                    os.write(real, line)
        os.close(real)

    copier = threading.Thread(target=copy, name="spnrefine-stderr", daemon=True)
    copier.start()
    encoding, errors = python_stderr.encoding, python_stderr.errors
    sys.stderr = open(os.dup(real), "w", encoding=encoding, errors=errors, buffering=1)
    try:
        yield
    finally:
        sys.stderr.close()
        sys.stderr = python_stderr
        # Closing the pipe's last write end lets the copier finish what is left, then stop.
        os.dup2(real, 2)
        copier.join(timeout=5)


def _is_fd2(stream) -> bool:
    try:
        return stream.fileno() == 2
    except (OSError, ValueError, AttributeError):
        return False


def _check_reachable(address: str) -> None:
    """Fail at once where nothing listens at a `host:port` or `ray://host:port` address; Ray
    itself would retry for minutes. Other forms (`auto`) are left to Ray."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if "://" in host or not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
    except OSError as err:
        raise SpnrefineError(f"cannot reach Ray at {address}: {err.strerror or err}") from None


def _stream(
    refiner: Refiner,
    pairs: list[Pair],
    options: PairOptions,
    ray_options: RayOptions,
    workers: int,
    console: Console | None,
    started_here: bool,
) -> Iterator[PairReport]:
    import ray
    import ray.data

    try:
        # The resume rule runs here, in the one process that writes the manifests.
        resume = Resume(refiner, options)
        planned = resume.plan(pairs)
        todo = {i: pair for i, (pair, done) in enumerate(planned) if done is None}
        skipped = [
            PairReport(pair.image, pair.coarse, str(done), "skipped", 0.0)
            for pair, done in planned
            if done is not None
        ]
        if not todo:
            yield from with_progress(iter(skipped), len(pairs), console)
            return
        gpus = ray_options.gpus_per_worker
        per_task = max(1, min(PAIRS_PER_TASK, math.ceil(len(todo) / (4 * workers))))
        tasks = math.ceil(len(todo) / per_task)
        # More workers than tasks would start (import torch, receive the model) for nothing.
        workers = min(workers, tasks)
        rows = [{"index": i, **asdict(_absolute(pair))} for i, pair in todo.items()]
        dataset = ray.data.from_items(rows, override_num_blocks=tasks)
        # Ray restarts a dead worker and reruns its task; a task that fails all the same
        # drops its block rather than the job, and its pairs are reported as failed below.
        dataset.context.max_errored_blocks = -1
        # The one progress bar is ours, on stderr; Ray Data's bars and logs would mix in.
        dataset.context.enable_progress_bars = False
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        refined = dataset.map_batches(
            RefineWorker,
            fn_constructor_kwargs={
                # Shipped from the CPU: a CUDA tensor cannot be unpickled on a CPU worker.
                "refiner": refiner if refiner.device == "cpu" else refiner.to("cpu"),
                "options": options,
                "device": "cuda" if gpus > 0 else "cpu",
                "threads": max(1, int(ray_options.cpus_per_worker)),
            },
            batch_size=per_task,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=ray_options.cpus_per_worker,
            num_gpus=gpus,
        )
        reports = itertools.chain(skipped, _reports(refined, todo, resume))
        with _without_native_lines(ACTOR_ARGUMENTS_NOTE):
            yield from with_progress(reports, len(pairs), console)
    finally:
        if started_here:
            ray.shutdown()


def _default_workers(ray_options: RayOptions) -> int:
    import ray

    resources = ray.cluster_resources()
    if ray_options.gpus_per_worker > 0:
        if not resources.get("GPU"):
            raise SpnrefineError("--gpus-per-worker: the Ray cluster has no GPUs")
        return max(1, int(resources["GPU"] / ray_options.gpus_per_worker))
    return max(1, int(resources.get("CPU", 1) / ray_options.cpus_per_worker))


def _reports(refined, todo: dict[int, Pair], resume: Resume) -> Iterator[PairReport]:
    """The workers' reports as they arrive (each recorded in its output folder's manifest),
    then a failed one for each pair that got none."""
    reported = set()
    for row in refined.iter_rows():
        reported.add(row["index"])
        pair = todo[row["index"]]
        report = _as_given(PairReport(**json.loads(row["report"])), pair)
        resume.record(pair, report)
        yield report
    for index, pair in todo.items():
        if index not in reported:
            error = f"{pair.image}: its Ray task failed; a rerun tries it again"
            yield PairReport(pair.image, pair.coarse, None, "failed", 0.0, error)


def _absolute(pair: Pair) -> Pair:
    """Local paths made absolute, since workers need not share the driver's folder; on a
    cluster they must name the same files on every node (a shared filesystem), or be URIs."""

    def absolute(path: str | None) -> str | None:
        return path if not path or is_uri(path) else os.path.abspath(path)

    return replace(
        pair, image=absolute(pair.image), coarse=absolute(pair.coarse), out=absolute(pair.out)
    )


def _as_given(report: PairReport, pair: Pair) -> PairReport:
    """The report in the paths the user gave, as the local batch writes it."""
    resolved = _absolute(pair)
    for given, used in ((pair.image, resolved.image), (pair.coarse, resolved.coarse)):
        if report.error and given and given != used:
            report.error = report.error.replace(used, given)
    if report.out and pair.out != resolved.out and report.out.startswith(resolved.out):
        report.out = pair.out + report.out[len(resolved.out) :]
    report.image, report.coarse = pair.image, pair.coarse
    return report


class RefineWorker:
    """One model replica in the actor pool: built once per worker, then fed pair batches."""

    def __init__(self, refiner: Refiner, options: PairOptions, device: str, threads: int):
        import cv2
        import numba

        # Ray gives the worker `threads` CPUs; more threads (OpenCV's, torch's or the numba
        # kernels') would fight the other workers for the same cores.
        cv2.setNumThreads(threads)
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        if device != "cpu":
            import torch

            torch.set_num_threads(threads)
        self.refiner = refiner.to(device)
        self.refiner.expect_many()  # a worker refines many pairs: the kernels that pay over many
        self.options = options

    def __call__(self, batch):
        import pyarrow as pa

        indices, reports = [], []
        for row in batch.to_pylist():
            indices.append(row.pop("index"))
            report = refine_uri_pair(self.refiner, Pair(**row), self.options)
            reports.append(json.dumps(asdict(report)))
        return pa.table({"index": indices, "report": reports})
