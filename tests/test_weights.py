"""Resolving weight specs: local folders and files, $SPNREFINE_WEIGHTS, the bundled default,
and hf-hub:owner/name[@revision] from a Hugging Face cache built here, offline."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import huggingface_hub.constants
import pytest

from spnrefine.checkpoint import CONFIG_FILE, WEIGHTS_FILE, save_model, sha256_file
from spnrefine.errors import SpnrefineError
from spnrefine.model import ModelConfig, SPNRefiner
from spnrefine.weights import ENV_VAR, bundled_weights_folder, load_weights, resolve_weights

REPO = Path(__file__).resolve().parents[1]
HAS_BUNDLED = (REPO / "weights" / WEIGHTS_FILE).is_file()
COMMIT_A = "a" * 40
COMMIT_B = "b" * 40


def tiny_model(hidden: int = 2) -> SPNRefiner:
    return SPNRefiner(
        ModelConfig(hidden=hidden, gate_groups=1, widths=(8, 16), readout=4, name="tiny")
    )


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_model(tiny_model(), tmp_path_factory.mktemp("weights"))


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache as huggingface_hub lays it out: owner/name with main → COMMIT_A, and a second
    snapshot COMMIT_B holding other weights. The Hub itself is unreachable (offline)."""
    cache = tmp_path / "hub"
    repo = cache / "models--owner--name"
    save_model(tiny_model(hidden=2), repo / "snapshots" / COMMIT_A)
    save_model(tiny_model(hidden=3), repo / "snapshots" / COMMIT_B)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT_A)
    # huggingface_hub reads these settings when it is imported, so the module's copies are
    # patched too; the environment is for any subprocess.
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache


def test_local_folder_loads_and_reports_checksum_and_config(model_dir: Path):
    model, info = load_weights(model_dir)
    assert isinstance(model, SPNRefiner)
    assert info.source == "local"
    assert info.name == "tiny"
    assert info.sha256 == sha256_file(model_dir / WEIGHTS_FILE)
    assert info.config["hidden"] == 2
    assert "weights_sha256" not in info.config
    assert info.parameters == model.num_parameters()


def test_safetensors_file_loads_with_its_config_beside_it(model_dir: Path):
    _, info = load_weights(model_dir / WEIGHTS_FILE)
    assert info.path == str(model_dir.resolve())


def test_env_var_names_the_weights_when_no_spec_is_given(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv(ENV_VAR, str(model_dir))
    where = resolve_weights(None)
    assert where.path == model_dir
    assert ENV_VAR in where.source


def test_explicit_spec_wins_over_env_var(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "elsewhere"))
    assert resolve_weights(str(model_dir)).path == model_dir


def test_missing_local_weights_are_a_one_line_error(tmp_path: Path):
    with pytest.raises(SpnrefineError) as err:
        resolve_weights(tmp_path / "nope")
    assert "nope" in str(err.value) and "\n" not in str(err.value)


def test_pickle_checkpoint_is_refused(tmp_path: Path):
    (tmp_path / "model.pt").write_bytes(b"\x80\x04pickle")
    with pytest.raises(SpnrefineError, match="pickles are not loaded"):
        load_weights(tmp_path / "model.pt")


@pytest.mark.skipif(HAS_BUNDLED, reason="weights/ beside the package takes precedence")
def test_default_is_found_where_a_wheel_installs_data_files(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    installed = tmp_path / "prefix" / "share" / "spnrefine" / "weights"
    shutil.copytree(model_dir, installed)
    monkeypatch.setattr("sysconfig.get_path", lambda *args, **kw: str(tmp_path / "prefix"))
    assert bundled_weights_folder() == installed
    assert resolve_weights("default").source == "bundled"


@pytest.mark.skipif(HAS_BUNDLED, reason="the bundled weights are present")
def test_missing_default_weights_say_to_pass_weights(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.raises(SpnrefineError, match="--weights") as err:
        resolve_weights(None)
    assert "\n" not in str(err.value)


@pytest.mark.skipif(not HAS_BUNDLED, reason="weights/model.safetensors is not there yet")
def test_default_spec_loads_the_repository_weights_folder():
    where = resolve_weights("default")
    assert where.path == REPO / "weights"
    load_weights("default")


def test_hub_spec_loads_main_from_the_offline_cache(hub_cache: Path):
    _, info = load_weights("hf-hub:owner/name")
    assert info.source == "hf-hub"
    assert info.revision == COMMIT_A
    assert info.config["hidden"] == 2
    snapshot = hub_cache / "models--owner--name" / "snapshots" / COMMIT_A
    assert info.sha256 == sha256_file(snapshot / WEIGHTS_FILE)


def test_hub_spec_at_a_commit_loads_that_snapshot(hub_cache: Path):
    _, info = load_weights(f"hf-hub:owner/name@{COMMIT_B}")
    assert info.revision == COMMIT_B
    assert info.config["hidden"] == 3


def test_hub_spec_not_cached_offline_is_a_one_line_error(hub_cache: Path):
    with pytest.raises(SpnrefineError, match="not in the Hugging Face cache") as err:
        resolve_weights("hf-hub:owner/missing")
    assert str(err.value).startswith("hf-hub:owner/missing: ")
    assert "\n" not in str(err.value)


def test_hub_branch_not_cached_offline_is_a_one_line_error(hub_cache: Path):
    with pytest.raises(SpnrefineError, match="not in the Hugging Face cache"):
        resolve_weights("hf-hub:owner/name@dev")


@pytest.mark.parametrize("spec", ["hf-hub:name-only", "hf-hub:a/b/c", "hf-hub:/name"])
def test_malformed_hub_spec_is_an_error(spec: str):
    with pytest.raises(SpnrefineError, match="owner/name"):
        resolve_weights(spec)


def test_hub_snapshot_with_a_bad_checksum_is_refused(hub_cache: Path):
    snapshot = hub_cache / "models--owner--name" / "snapshots" / COMMIT_A
    data = bytearray((snapshot / WEIGHTS_FILE).read_bytes())
    data[-1] ^= 0xFF
    (snapshot / WEIGHTS_FILE).write_bytes(bytes(data))
    with pytest.raises(SpnrefineError, match="checksum"):
        load_weights("hf-hub:owner/name")


def test_weights_command_reads_the_hub_cache_set_in_the_environment(hub_cache: Path):
    """The real path a user takes: environment variables only, in a fresh process."""
    env = {**os.environ, "HF_HUB_CACHE": str(hub_cache), "HF_HUB_OFFLINE": "1"}

    def weights_command(spec: str) -> subprocess.CompletedProcess:
        code = "from spnrefine.cli import app; app()"
        command = [sys.executable, "-c", code, "weights", "--weights", spec]
        return subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)

    ok = weights_command("hf-hub:owner/name")
    assert ok.returncode == 0, ok.stderr
    assert COMMIT_A in ok.stdout and "hf-hub" in ok.stdout
    missing = weights_command("hf-hub:owner/other")
    assert missing.returncode == 2
    assert missing.stderr.strip().count("\n") == 0
    assert "Traceback" not in missing.stderr
    assert "hf-hub:owner/other" in missing.stderr
    assert not (hub_cache / "models--owner--other" / "snapshots").exists()


def test_config_file_is_required_beside_a_safetensors_file(model_dir: Path, tmp_path: Path):
    shutil.copy(model_dir / WEIGHTS_FILE, tmp_path / "alone.safetensors")
    with pytest.raises(SpnrefineError, match=CONFIG_FILE):
        load_weights(tmp_path / "alone.safetensors")
