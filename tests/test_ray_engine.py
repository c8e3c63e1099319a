"""`batch --engine ray` on a cluster of two one-CPU raylets on the loopback address, with
Ray's token authentication on: the local batch's outputs byte for byte, bad pairs in the
report, nothing rewritten on a rerun, a job killed part-way that a rerun finishes with no pair
lost and none redone, a driver without the token refused in one line, and workers that import
the installed package whatever the driver's working directory holds."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from spnrefine.api import Refiner
from spnrefine.batch import Pair, PairOptions, find_pairs, refine_pair
from spnrefine.checkpoint import save_model
from spnrefine.cli import app
from spnrefine.model import ModelConfig, SPNRefiner
from spnrefine.ray_engine import INSTALL_HINT, TOKEN_SOURCES, run_batch_ray
from spnrefine.remote import refine_uri_pair

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
GOOD, CORRUPT = 19, "zz-corrupt"
needs_ray = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None,
    reason="Ray is not installed: pip install 'spnrefine[ray]'",
)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = SPNRefiner(ModelConfig(hidden=2, gate_groups=2, widths=(8, 16), readout=4))
    return save_model(model, tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="module")
def pairs_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """19 crops of the examples at 256×144 with their coarse maps cropped alike and shrunk to
    32×18, side by side, and one image whose file is cut short."""
    folder = tmp_path_factory.mktemp("pairs")
    for i in range(GOOD):
        name = ("astronaut", "coffee")[i % 2]
        image = Image.open(EXAMPLES / f"{name}.jpg").convert("RGB")
        coarse = Image.open(EXAMPLES / f"{name}_coarse.png").resize(image.size, Image.BILINEAR)
        box = (9 * i, 7 * i, 9 * i + 320, 7 * i + 180)
        stem = f"{name}_{i:02d}"
        image.crop(box).resize((256, 144), Image.BICUBIC).save(folder / f"{stem}.jpg", quality=90)
        small = np.asarray(coarse.crop(box).resize((32, 18), Image.BILINEAR)) > 127
        Image.fromarray(small.astype(np.uint8) * 255).save(folder / f"{stem}_coarse.png")
    good = (folder / f"{stem}.jpg").read_bytes()
    (folder / f"{CORRUPT}.jpg").write_bytes(good[: len(good) // 3])
    (folder / f"{CORRUPT}_coarse.png").write_bytes((folder / f"{stem}_coarse.png").read_bytes())
    return folder


@pytest.fixture(scope="module")
def cli(model_dir: Path) -> Callable:
    def run(*args: object):
        env = {"SPNREFINE_WEIGHTS": str(model_dir), "NO_COLOR": "1"}
        return CliRunner().invoke(app, [str(a) for a in args], env=env, catch_exceptions=False)

    return run


@pytest.fixture(scope="module")
def local_outputs(cli: Callable, pairs_folder: Path, tmp_path_factory) -> Path:
    """The local `batch` on one thread, as a Ray worker with one CPU runs. (The random test
    model leaves pixels near 0.5, where convolution rounding that depends on the thread count
    decides; the trained weights give the same bytes on any thread count.)"""
    out = tmp_path_factory.mktemp("local") / "refined"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = cli("batch", pairs_folder, "--out", out, "-q")
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 1, result.stderr  # the corrupt pair
    assert len(outputs(out)) == GOOD
    return out


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def without_ray_settings(env: dict[str, str]) -> dict[str, str]:
    """The environment with no Ray address or credentials of the machine's own."""
    names = ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
    return {name: value for name, value in env.items() if name not in names}


@pytest.fixture(scope="module")
def cluster():
    """Two raylets of one CPU each on 127.0.0.1 (a head and a second node), started with
    `ray start` and Ray's token authentication, in their own process groups and temporary
    folder, on free ports; killed at the end. Yields the address and the token."""
    token = secrets.token_hex(32)
    env = {**without_ray_settings(os.environ), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    # Short: Ray's socket paths under it must fit in 107 bytes.
    temp = tempfile.mkdtemp(prefix="spnr-ray-")
    port = free_port()
    address = f"127.0.0.1:{port}"

    def ray_start(*args: str) -> list[str]:
        common = ("--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats")
        agent = f"--dashboard-agent-listen-port={free_port()}"
        return [sys.executable, "-m", "ray.scripts.scripts", "start", *common, agent, *args]

    head = ray_start(
        "--head",
        f"--port={port}",
        "--include-dashboard=false",
        f"--dashboard-port={free_port()}",
        f"--temp-dir={temp}",
    )
    groups = []
    try:
        for command in (head, ray_start(f"--address={address}")):
            start = subprocess.Popen(
                command,
                env=env,
                start_new_session=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            groups.append(start.pid)
            _, err = start.communicate(timeout=180)
            assert start.returncode == 0, err.decode(errors="replace")[-3000:]
        yield address, token
    finally:
        stop_groups(groups)
        shutil.rmtree(temp, ignore_errors=True)


def stop_groups(groups: list[int]) -> None:
    """End every process of these process groups: SIGTERM, then SIGKILL after 10 s."""
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        alive = []
        for group in groups:
            try:
                os.killpg(group, sig)
                alive.append(group)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while alive and time.monotonic() < deadline:
            time.sleep(0.2)
            alive = [group for group in alive if group_alive(group)]
        if not alive:
            return
        groups = alive


def group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
        return True
    except ProcessLookupError:
        return False


@pytest.fixture(scope="module")
def ray_address(cluster):
    """This test process connected to the cluster, as a notebook would be."""
    address, token = cluster
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("RAY_ADDRESS", raising=False)
        patch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
        patch.setenv("RAY_AUTH_MODE", "token")
        patch.setenv("RAY_AUTH_TOKEN", token)
        import ray  # after the settings: Ray reads them once, when imported

        ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
        try:
            yield address
        finally:
            ray.shutdown()


def outputs(folder: Path) -> dict[str, tuple[int, int]]:
    """Finished outputs by name, with the inode and mtime that show whether one was rewritten
    (hidden temporaries of a killed write are not outputs)."""
    if not folder.is_dir():
        return {}
    files = (p for p in folder.iterdir() if not p.name.startswith("."))
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in files}


def as_uris(pair: Pair) -> Pair:
    return replace(
        pair,
        image=Path(pair.image).as_uri(),
        coarse=Path(pair.coarse).as_uri(),
        out=Path(pair.out).as_uri(),
    )


def assert_same_bytes(folder: Path, expected: Path) -> None:
    assert sorted(outputs(folder)) == sorted(outputs(expected))
    for name in outputs(expected):
        assert (folder / name).read_bytes() == (expected / name).read_bytes(), name


@needs_ray
def test_ray_batch_writes_the_local_bytes_reports_the_corrupt_pair_and_reruns_writing_nothing(
    cli,
    ray_address,
    pairs_folder: Path,
    local_outputs: Path,
    model_dir: Path,
    tmp_path: Path,
    monkeypatch,
):
    # Relative paths, as typed: the workers get them made absolute, the report shows them as
    # given.
    monkeypatch.chdir(tmp_path)
    folder = Path(os.path.relpath(pairs_folder))
    result = cli("batch", folder, "--engine", "ray", "--out", "refined", "--report", "report.json")
    assert result.exit_code == 1, result.stderr
    out = tmp_path / "refined"
    assert_same_bytes(out, local_outputs)
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["summary"] == {**data["summary"], "ok": GOOD, "failed": 1, "skipped": 0}
    failed = [p for p in data["pairs"] if p["status"] == "failed"]
    assert [p["image"] for p in failed] == [str(folder / f"{CORRUPT}.jpg")]
    assert failed[0]["error"].startswith(f"{folder / CORRUPT}.jpg: ")
    assert {p["out"] for p in data["pairs"] if p["out"]} == {f"refined/{n}" for n in outputs(out)}
    assert f"{GOOD} refined, 0 already done, 1 failed" in result.stderr

    # Again from Python, with every path a file:// URI: each finished output is skipped (the
    # workers check the URIs), nothing is written.
    before = outputs(out)
    pairs = [as_uris(pair) for pair in find_pairs(pairs_folder, out_dir=out)]
    refiner = Refiner.load(str(model_dir), device="cpu")
    reports = list(run_batch_ray(refiner, pairs, PairOptions()))
    assert sorted(r.status for r in reports) == ["failed"] + ["skipped"] * GOOD
    assert {r.out for r in reports if r.out} == {(out / name).as_uri() for name in before}
    assert outputs(out) == before


@needs_ray
def test_a_killed_ray_job_rerun_finishes_the_rest_and_redoes_nothing(
    ray_address, pairs_folder: Path, local_outputs: Path, model_dir: Path, tmp_path: Path
):
    import ray

    out, report = tmp_path / "refined", tmp_path / "report.json"
    command = [
        *(sys.executable, "-c", "from spnrefine.cli import app; app()"),
        *("batch", pairs_folder, "--engine", "ray", "--address", ray_address),
        *("--num-workers", "1", "--out", out, "--report", report, "-q"),
    ]
    command = [str(c) for c in command]
    env = {**os.environ, "SPNREFINE_WEIGHTS": str(model_dir)}
    job = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while len(outputs(out)) < 2:
        assert job.poll() is None, job.stderr.read().decode()
        assert time.monotonic() < deadline, "no outputs after 120 s"
        time.sleep(0.01)
    job.kill()
    job.wait()
    job.stderr.close()
    # The cluster ends the dead driver's worker; until its CPU is free it may still write.
    deadline = time.monotonic() + 120
    while ray.available_resources().get("CPU", 0) < 2:
        assert time.monotonic() < deadline, "the killed job's worker is still running"
        time.sleep(0.1)
    first = outputs(out)
    assert 2 <= len(first) < GOOD, "the job was not killed part-way"

    rerun = subprocess.run(command, env=env, capture_output=True, timeout=300)
    assert rerun.returncode == 1, rerun.stderr.decode()  # the corrupt pair
    second = outputs(out)
    assert {name: second[name] for name in first} == first  # none rewritten
    assert_same_bytes(out, local_outputs)  # none lost
    summary = json.loads(report.read_text())["summary"]
    assert summary == {**summary, "ok": GOOD - len(first), "skipped": len(first), "failed": 1}


def cli_command(*args: object) -> list[str]:
    """The command line as a user's shell runs it: `-P` keeps the working directory off the
    driver's own import path, as the `spnrefine` script does."""
    return [sys.executable, "-P", "-c", "from spnrefine.cli import app; app()", *map(str, args)]


@needs_ray
def test_workers_import_the_installed_package_from_a_folder_holding_a_spnrefine_and_stay_quiet(
    ray_address, pairs_folder: Path, local_outputs: Path, model_dir: Path, tmp_path: Path
):
    # Ray puts the driver's working directory first on the workers' import path; a clone
    # named spnrefine there was imported by the workers instead of the installed package.
    shadow = tmp_path / "spnrefine"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("raise ImportError('the working folder spnrefine')\n")
    out = tmp_path / "refined"
    command = cli_command("batch", pairs_folder, "--engine", "ray", "--address", ray_address)
    command += ["--out", str(out)]
    env = {**os.environ, "SPNREFINE_WEIGHTS": str(model_dir), "NO_COLOR": "1"}
    result = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 1, result.stderr  # the corrupt pair
    assert_same_bytes(out, local_outputs)
    # What the local batch says, and nothing of Ray's (its core_worker.cc note included).
    lines = [line for line in result.stderr.splitlines() if not line.startswith("refining")]
    assert lines[-1].startswith(f"{GOOD} refined, 0 already done, 1 failed in "), lines
    assert lines[:-1] == [line for line in lines[:-1] if CORRUPT in line], lines


@needs_ray
def test_a_driver_without_the_clusters_token_is_refused_at_once_in_one_line_naming_it(
    cluster, pairs_folder: Path, model_dir: Path, tmp_path: Path
):
    address, token = cluster
    env = {**without_ray_settings(os.environ), "SPNREFINE_WEIGHTS": str(model_dir)}
    command = cli_command("batch", pairs_folder, "--engine", "ray", "--address", address)
    command += ["--out", str(tmp_path / "refined"), "-q"]
    wrong = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * len(token)}
    cases = [
        ({}, "uses token authentication: set RAY_AUTH_MODE=token, with the cluster's token"),
        (wrong, "refused the token: give the cluster's token"),
    ]
    for settings, problem in cases:
        result = subprocess.run(
            command, env={**env, **settings}, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 2
        assert result.stderr.strip().splitlines() == [
            f"error: the Ray cluster at {address} {problem} in {TOKEN_SOURCES}"
        ]


@pytest.mark.skipif(importlib.util.find_spec("pyarrow") is None, reason="needs pyarrow (ray[data])")
def test_uri_pairs_write_the_local_bytes_resume_and_report_missing_inputs_by_uri(
    pairs_folder: Path, model_dir: Path, tmp_path: Path
):
    refiner = Refiner.load(str(model_dir), device="cpu")
    options = PairOptions()
    good = find_pairs(pairs_folder, out_dir=tmp_path / "local")[0]
    (tmp_path / "local").mkdir()
    assert refine_pair(refiner, good, options).status == "ok"
    expected = (tmp_path / "local" / (Path(good.out).name + ".png")).read_bytes()

    (tmp_path / "uris").mkdir()
    named = as_uris(replace(good, out=str(tmp_path / "uris" / "named")))
    exact = replace(as_uris(good), out=(tmp_path / "uris" / "exact.png").as_uri(), name_out=False)
    for pair, written in ((named, "named.png"), (exact, "exact.png")):
        report = refine_uri_pair(refiner, pair, options)
        assert report.status == "ok", report.error
        assert report.out == (tmp_path / "uris" / written).as_uri()
        assert (report.image, report.coarse) == (pair.image, pair.coarse)
        assert (tmp_path / "uris" / written).read_bytes() == expected
        assert refine_uri_pair(refiner, pair, options).status == "skipped"
    assert sorted(p.name for p in (tmp_path / "uris").iterdir()) == ["exact.png", "named.png"]

    missing = replace(named, image=(tmp_path / "nowhere.jpg").as_uri())
    report = refine_uri_pair(refiner, replace(missing, out=missing.out + "-2"), options)
    assert report.status == "failed"
    assert report.error == f"{missing.image}: file not found"
    unknown = refine_uri_pair(refiner, replace(named, out="nofs://bucket/x"), options)
    assert unknown.status == "failed" and "cannot open the filesystem" in unknown.error


@needs_ray
def test_an_address_where_nothing_listens_fails_at_once_in_one_line(
    pairs_folder: Path, model_dir: Path, tmp_path: Path
):
    command = [sys.executable, "-c", "from spnrefine.cli import app; app()", "batch"]
    command += [str(pairs_folder), "--engine", "ray", "--address", "127.0.0.1:1", "-q"]
    command += ["--out", str(tmp_path / "out")]
    env = {**os.environ, "SPNREFINE_WEIGHTS": str(model_dir), "NO_COLOR": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: cannot reach Ray at 127.0.0.1:1: Connection refused"
    ]


def test_engine_ray_without_ray_says_how_to_install_it(
    cli, pairs_folder: Path, tmp_path: Path, monkeypatch
):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    monkeypatch.setitem(sys.modules, "ray.data", None)
    result = cli("batch", pairs_folder, "--engine", "ray", "--out", tmp_path / "out")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [f"error: {INSTALL_HINT}"]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--address", "auto"), "--address is an option of --engine ray"),
        (("--num-workers", "2"), "--num-workers is an option of --engine ray"),
        (("--engine", "ray", "--num-workers", "0"), "--num-workers 0: must be at least 1"),
        (("--engine", "ray", "--device", "cuda"), "not --device"),
    ],
)
def test_ray_options_are_checked_before_anything_runs(
    cli, pairs_folder: Path, tmp_path: Path, args: tuple, message: str
):
    result = cli("batch", pairs_folder, "--out", tmp_path / "out", *args)
    assert result.exit_code == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
