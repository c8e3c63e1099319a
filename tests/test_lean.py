"""The torch-free inference path (`spnrefine.model.lean`) against the torch model: the same
logits for the bundled weights and for any weights a user trains and loads, the same refined
maps through the tiler and the API, and refining on a CPU without importing torch."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from models import trained_looking

from spnrefine.api import Refiner
from spnrefine.checkpoint import load_lean_model, load_model, save_model
from spnrefine.errors import SpnrefineError
from spnrefine.model import ModelConfig, SPNRefiner
from spnrefine.model.fast import fold_batchnorm
from spnrefine.model.lean import LeanRefiner, _State, guidance_graph
from spnrefine.tiling import refine_tiled
from spnrefine.upsample import upsample_probs

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "weights"
EXAMPLES = ROOT / "examples"
HAS_BUNDLED = (BUNDLED / "model.safetensors").is_file()
TOLERANCE = 1e-4


def _tiles(batch: int, classes: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    tiles = rng.integers(0, 256, (batch, 3, size, size), dtype=np.uint8)
    probs = rng.random((batch, classes, size, size), dtype=np.float32)
    return tiles, probs / probs.sum(1, keepdims=True)


def _torch_logits(model: SPNRefiner, tiles: np.ndarray, probs: np.ndarray) -> np.ndarray:
    with torch.enable_grad():  # the plain torch modules, not the CPU fast paths
        image = torch.from_numpy(tiles).float() / 255
        return model(image, torch.from_numpy(probs)).detach().numpy()


@pytest.mark.skipif(not HAS_BUNDLED, reason="weights/model.safetensors is not there")
@pytest.mark.parametrize("kernels", ["numba", "numpy"])
@pytest.mark.parametrize("classes", [1, 2, 5])
def test_bundled_weights_give_the_torch_models_logits(classes: int, kernels: str):
    torch_model, lean = load_model(BUNDLED), load_lean_model(BUNDLED)
    lean.kernels = kernels
    tiles, probs = _tiles(3, classes, 128)
    expected = _torch_logits(torch_model, tiles, probs)
    assert np.abs(lean.tile_logits(tiles, probs) - expected).max() <= TOLERANCE
    # The folded torch model the GPU runs agrees too.
    folded = fold_batchnorm(torch_model).tile_logits(tiles, probs)
    assert np.abs(folded - expected).max() <= TOLERANCE


@pytest.mark.parametrize(
    "config",
    [
        ModelConfig(),
        ModelConfig(guidance="unet", gate_groups=8, widths=(8, 16, 24), activation="elu"),
        ModelConfig(hidden=4, gate_groups=1, widths=(8, 16), readout=6, mode="one_way"),
        ModelConfig(widths=(8, 12, 16), merge="max", activation="elu"),
    ],
    ids=["light", "unet-elu", "one-way", "max-merge"],
)
@pytest.mark.parametrize("kernels", ["numba", "numpy"])
def test_any_saved_weights_load_into_both_paths_alike(
    config: ModelConfig, kernels: str, tmp_path: Path
):
    folder = save_model(trained_looking(config), tmp_path / "weights")
    torch_model, lean = load_model(folder), load_lean_model(folder)
    lean.kernels = kernels
    tiles, probs = _tiles(2, 3, 32)
    expected = _torch_logits(torch_model, tiles, probs)
    assert np.abs(lean.tile_logits(tiles, probs) - expected).max() <= TOLERANCE
    # The gate head is large enough that the gate normalisation is exercised.
    assert np.abs(expected - _torch_logits(SPNRefiner(config).eval(), tiles, probs)).max() > 0.01


def test_the_tiler_gives_the_same_map_on_either_path():
    model = trained_looking(ModelConfig(widths=(8, 16, 24)))
    lean = LeanRefiner(model.config, {k: v.numpy() for k, v in model.state_dict().items()})
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (100, 150, 3), dtype=np.uint8)
    probs = rng.random((3, 100, 150), dtype=np.float32) ** 4
    probs /= probs.sum(0)
    options = {"tile": 64, "overlap": 8, "batch_size": 3}
    expected = refine_tiled(model.tile_logits, image, probs, **options)
    got = refine_tiled(lean.tile_logits, image, probs, **options)
    assert np.abs(got - expected).max() <= TOLERANCE


def test_many_classes_are_refined_in_parts_with_the_same_result(monkeypatch):
    model = trained_looking(ModelConfig(widths=(8, 16)))
    lean = LeanRefiner(model.config, {k: v.numpy() for k, v in model.state_dict().items()})
    tiles, probs = _tiles(2, 7, 32)
    whole = lean.tile_logits(tiles, probs)
    image = tiles[0].transpose(1, 2, 0).copy()
    whole_map = refine_tiled(lean.tile_logits, image, probs[0], tile=16, overlap=4)
    monkeypatch.setattr("spnrefine.model.lean.CLASS_MAPS_PER_PASS", 4)  # 2 classes per pass
    monkeypatch.setattr("spnrefine.tiling.CLASS_TILES_PER_CALL", 7)  # one 7-class tile per call
    np.testing.assert_allclose(lean.tile_logits(tiles, probs), whole, atol=1e-6)
    parts_map = refine_tiled(lean.tile_logits, image, probs[0], tile=16, overlap=4)
    np.testing.assert_allclose(parts_map, whole_map, atol=1e-6)


def test_the_guidance_nets_hidden_layers_are_whole_channel_blocks_with_the_same_output(
    monkeypatch,
):
    # OpenCV's DNN concatenates parts of whole 8-channel blocks fast and others as slowly as
    # a convolution: hidden layers are widened with zero channels, which changes no number.
    model = trained_looking(ModelConfig())  # widths 12, 24, 48, 96: the 12 are widened
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    lean = LeanRefiner(model.config, state)
    graph = guidance_graph(model.config, _State(state))
    widths = {t.name: t.width for t in graph.tensors}
    assert widths.pop("raw") == 4 * model.config.gate_groups * 3
    assert all(width % 8 == 0 for width in widths.values())
    assert 16 in widths.values() and 12 not in widths.values()  # the 12 widened
    tiles, probs = _tiles(2, 2, 64)
    image = tiles.astype(np.float32) / 255
    monkeypatch.setattr("spnrefine.model.lean.CHANNEL_BLOCK", 1)
    narrow = LeanRefiner(model.config, state)
    np.testing.assert_allclose(lean.gates(image, probs), narrow.gates(image, probs), atol=1e-5)


def test_weights_that_do_not_fit_the_config_are_refused(tmp_path: Path):
    model = SPNRefiner(ModelConfig(widths=(8, 16)))
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="missing embed.weight"):
        LeanRefiner(model.config, {k: v for k, v in state.items() if k != "embed.weight"})
    with pytest.raises(ValueError, match="unexpected extra"):
        LeanRefiner(model.config, {**state, "extra": np.zeros(1, np.float32)})
    save_model(model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["weights_sha256"]
    config["hidden"] = 4  # the weights hold 8
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(SpnrefineError, match="do not match config.json"):
        load_lean_model(tmp_path)


def test_a_pickled_lean_refiner_computes_the_same():
    model = trained_looking(ModelConfig(widths=(8, 16)))
    lean = LeanRefiner(model.config, {k: v.numpy() for k, v in model.state_dict().items()})
    tiles, probs = _tiles(1, 2, 32)
    again = pickle.loads(pickle.dumps(lean))
    np.testing.assert_array_equal(again.tile_logits(tiles, probs), lean.tile_logits(tiles, probs))
    assert again.num_parameters() == model.num_parameters()


@pytest.mark.skipif(not HAS_BUNDLED, reason="weights/model.safetensors is not there")
def test_refining_on_the_cpu_does_not_import_torch_nor_numba_for_one_photo(tmp_path: Path):
    code = (
        "import sys\n"
        "from spnrefine import Refiner\n"
        f"result = Refiner.load(device='cpu').refine({str(EXAMPLES / 'astronaut.jpg')!r}, "
        f"{str(EXAMPLES / 'astronaut_coarse.png')!r})\n"
        "assert result.tiles.refined > 0\n"
        "print('torch' in sys.modules, 'numba' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False False"


def test_a_batch_of_two_small_photos_does_not_load_numba(tmp_path: Path):
    # 25 + 24 tiles of 128: fewer than the numpy kernels pay for, where a batch of larger
    # images would load numba for its first image
    for name in ("astronaut.jpg", "astronaut_coarse.png", "coffee.jpg", "coffee_coarse.png"):
        (tmp_path / name).write_bytes((EXAMPLES / name).read_bytes())
    code = (
        "import sys\n"
        "from spnrefine.cli import app\n"
        "try:\n"
        f"    app(['batch', {str(tmp_path)!r}, '--stretch', '-o', {str(tmp_path / 'out')!r}])\n"
        "except SystemExit as done:\n"
        "    assert not done.code, done.code\n"
        "print('numba' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "False"
    assert (tmp_path / "out/astronaut.png").is_file() and (tmp_path / "out/coffee.png").is_file()


def test_a_refiner_moves_from_the_numpy_kernels_to_numba_after_enough_maps(monkeypatch):
    from spnrefine.model import kernels, kernels_numpy, lean

    model = trained_looking(ModelConfig(widths=(8, 16)))
    refiner = LeanRefiner(model.config, {k: v.numpy() for k, v in model.state_dict().items()})
    # as if numba were not loaded yet in this process
    monkeypatch.delitem(sys.modules, "spnrefine.model.kernels")
    tiles, probs = _tiles(4, 2, 32)
    used = []
    for module in (kernels, kernels_numpy):
        original = module.propagate
        monkeypatch.setattr(
            module, "propagate", lambda *a, m=module, f=original: used.append(m) or f(*a)
        )
    first = refiner.tile_logits(tiles, probs)
    assert used == [kernels_numpy]
    refiner.maps_done = lean.NUMPY_MAPS
    second = refiner.tile_logits(tiles, probs)
    assert used[-1] is kernels
    np.testing.assert_allclose(first, second, atol=1e-5)
    # kernels="numpy" never moves; a set the refiner does not have is refused
    refiner.kernels = "numpy"
    refiner.tile_logits(tiles, probs)
    assert used[-1] is kernels_numpy
    with pytest.raises(ValueError, match="kernels must be one of"):
        LeanRefiner(model.config, refiner.state, kernels="fast")


def test_work_announced_ahead_goes_to_numba_from_the_first_call(monkeypatch):
    from spnrefine.model import kernels, kernels_numpy, lean
    from spnrefine.tiling import refine_tiled

    model = trained_looking(ModelConfig(widths=(8, 16)))
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    monkeypatch.delitem(sys.modules, "spnrefine.model.kernels")
    used = []
    for module in (kernels, kernels_numpy):
        original = module.propagate
        monkeypatch.setattr(
            module, "propagate", lambda *a, m=module, f=original: used.append(m) or f(*a)
        )
    tiles, probs = _tiles(4, 2, 32)
    small = LeanRefiner(model.config, state)
    small.expect(8)  # within what the numpy set pays for
    small.tile_logits(tiles, probs)
    assert used == [kernels_numpy]
    many = LeanRefiner(model.config, state)
    many.expect_many()  # a batch of several images
    many.tile_logits(tiles, probs)
    assert used[-1] is kernels
    # a batch whose images hold few tiles between them stays on the numpy set, one whose
    # images hold more (or whose sizes are not known) goes to numba; the counts are read only
    # as far as needed
    few = LeanRefiner(model.config, state)
    few.expect_many([4, 4])
    few.tile_logits(tiles, probs)
    assert used[-1] is kernels_numpy

    def counts(*values):
        yield from values
        raise AssertionError("read past the count that settles it")

    for announced_tiles in (counts(lean.NUMPY_MAPS, 1), counts(4, None)):
        large = LeanRefiner(model.config, state)
        large.expect_many(announced_tiles)
        large.tile_logits(tiles, probs)
        assert used[-1] is kernels
    # the tiler announces an image's tile × class maps before its first model call
    announced = []
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 96, 3), np.uint8)
    fg = np.clip(rng.random((64, 96)) * 1.2, 0, 1).astype(np.float32)
    refine_tiled(
        lambda t, p: np.zeros(p.shape, np.float32),
        image,
        np.stack([1 - fg, fg]),
        tile=32,
        overlap=8,
        expect=announced.append,
    )
    assert announced == [2 * 12]  # 3 × 4 tiles, each unsure, two classes
    assert lean.NUMPY_MAPS > 8


@pytest.mark.skipif(not HAS_BUNDLED, reason="weights/model.safetensors is not there")
def test_the_api_refines_the_bundled_example_as_the_torch_model_does():
    torch_model = load_model(BUNDLED)
    refiner = Refiner.load(BUNDLED, device="cpu", guard=False)
    assert isinstance(refiner.model, LeanRefiner)
    image, coarse = refiner.read_inputs(
        EXAMPLES / "astronaut.jpg", EXAMPLES / "astronaut_coarse.png"
    )
    probs = upsample_probs(coarse.probs, image.shape[:2])
    got = refiner.refine_probs(image, probs)
    expected = refine_tiled(fold_batchnorm(torch_model).tile_logits, image, probs)
    assert np.abs(got - expected).max() <= TOLERANCE
    # A refiner given the torch model runs the same lean path.
    given = Refiner(torch_model, device="cpu", guard=False).refine_probs(image, probs)
    np.testing.assert_allclose(given, got, atol=1e-6)
