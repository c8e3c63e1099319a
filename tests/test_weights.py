"""Resolving weight specs: local folders and files, $SPNREFINE_WEIGHTS, the bundled default,
and hf-hub:owner/name[@revision] from a Hugging Face cache built here, offline."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch

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


def _save_with_config(model: SPNRefiner, folder: Path, config: dict) -> Path:
    """Weights of ``model`` beside a hand-written config.json (as an earlier release wrote)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE))
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    return folder


# weights/config.json of the first default (commit ec738dd), less its checksum.
FIRST_DEFAULT_CONFIG = {
    "extra": {"data": ["data/davis", "data/horses", "data/camvid"]},
    "hidden": 8,
    "merge": "learned",
    "mode": "three_way",
    "name": "spnrefine",
    "readout": 16,
    "tile": 128,
    "widths": [16, 32, 48, 64],
}


def test_weights_of_the_first_default_load_as_the_unet_they_were(tmp_path: Path):
    # Then: U-Net guidance, one gate set per hidden channel, ELU; no field said so.
    then = ModelConfig(
        hidden=8, gate_groups=8, guidance="unet", widths=(16, 32, 48, 64), activation="elu"
    )
    trained = SPNRefiner(then).eval()
    folder = _save_with_config(trained, tmp_path / "old", FIRST_DEFAULT_CONFIG)
    model, info = load_weights(folder)
    assert (model.config.guidance, model.config.gate_groups) == ("unet", 8)
    assert (model.config.activation, model.config.architecture) == ("elu", "spn-refiner")
    image, probs = torch.rand(1, 3, 32, 32), torch.rand(1, 2, 32, 32).softmax(1)
    with torch.no_grad():
        assert torch.equal(model(image, probs), trained(image, probs))


def test_weights_of_the_light_net_before_relu_load_with_elu(tmp_path: Path):
    trained = SPNRefiner(ModelConfig(widths=(8, 16), activation="elu")).eval()
    config = json.loads(trained.config.to_json())
    del config["activation"], config["architecture"]
    model, _ = load_weights(_save_with_config(trained, tmp_path / "v2", config))
    assert (model.config.guidance, model.config.activation) == ("light", "elu")


def test_todays_config_without_an_architecture_is_the_spn_refiner(model_dir: Path):
    config = json.loads((model_dir / CONFIG_FILE).read_text())
    assert config["architecture"] == "spn-refiner"
    bundled = json.loads((REPO / "weights" / CONFIG_FILE).read_text())
    assert "architecture" not in bundled  # written before the field existed
    assert ModelConfig.from_dict(
        {k: v for k, v in bundled.items() if k != "weights_sha256"}
    ).architecture == ("spn-refiner")


def test_unknown_architecture_is_a_one_line_error(model_dir: Path, tmp_path: Path):
    folder = tmp_path / "w"
    shutil.copytree(model_dir, folder)
    config = json.loads((folder / CONFIG_FILE).read_text())
    config["architecture"] = "spn-refiner-v9"
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(SpnrefineError, match="unknown architecture 'spn-refiner-v9'") as err:
        load_weights(folder)
    assert "\n" not in str(err.value)


def test_a_registered_architecture_is_built_from_its_name(model_dir: Path, monkeypatch):
    from spnrefine.model import ARCHITECTURES

    class Traced(SPNRefiner):
        pass

    monkeypatch.setitem(ARCHITECTURES, "traced", Traced)
    folder = model_dir.parent / "traced"
    model = tiny_model()
    model.config.architecture = "traced"
    save_model(model, folder)
    assert type(load_weights(folder)[0]) is Traced


def test_weights_of_another_shape_fail_in_one_short_line(tmp_path: Path):
    trained = SPNRefiner(ModelConfig(guidance="unet", widths=(8, 16, 24)))
    config = json.loads(tiny_model().config.to_json())
    folder = _save_with_config(trained, tmp_path / "x", config)
    with pytest.raises(SpnrefineError, match="do not match config.json") as err:
        load_weights(folder)
    message = str(err.value)
    assert "\n" not in message and len(message.removeprefix(str(folder))) < 300, message
    assert "missing tensors" in message and "unexpected tensors" in message
