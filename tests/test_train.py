"""Training on tiny synthetic data: data checks, coarse synthesis, loss, checkpoints, resume."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from spnrefine.checkpoint import load_model, save_model
from spnrefine.errors import SpnrefineError
from spnrefine.model import ModelConfig, SPNRefiner
from spnrefine.train.average import WeightAverage
from spnrefine.train.config import TrainConfig
from spnrefine.train.data import (
    IGNORE,
    Recipe,
    load_dataset,
    sample_batch,
    sample_patch,
    split_stems,
    synthesize_coarse,
)
from spnrefine.train.loop import train
from spnrefine.train.loss import refinement_loss, thin_parts

TINY = ModelConfig(hidden=2, gate_groups=2, widths=(8, 16), readout=8, tile=32)


def state_checksum(model: torch.nn.Module) -> str:
    """A checksum of the parameters themselves, independent of the file they came from."""
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def make_folder(root, n=6, size=(48, 40), classes=2, seed=0):
    """Images of a bright disc (or several discs of class ids) on a dark noisy background."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    for i in range(n):
        labels = np.zeros((h, w), np.uint8)
        image = rng.integers(0, 60, (h, w, 3)).astype(np.uint8)
        for c in range(1, classes):
            cy, cx, r = rng.integers(8, h - 8), rng.integers(8, w - 8), rng.integers(5, 12)
            disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            labels[disc] = c
            image[disc] = (200 * c // classes + 50, 180, 90)
        mask = labels * 255 if classes == 2 else labels
        Image.fromarray(image).save(root / "images" / f"seq{i % 3}_{i:05d}.png")
        Image.fromarray(mask).save(root / "masks" / f"seq{i % 3}_{i:05d}.png")
    return root


def tiny_config(data, out, **kw) -> TrainConfig:
    base = dict(
        data=[str(d) for d in data],
        out=str(out),
        steps=4,
        val_every=2,
        batch_size=2,
        val_patches=2,
        warmup=1,
        val_fraction=0.34,
        model=TINY,
    )
    base.update(kw)
    return TrainConfig(**base)


def test_binary_and_multiclass_folders_get_their_class_counts(tmp_path):
    binary = load_dataset(make_folder(tmp_path / "b"), 0.34)
    multi = load_dataset(make_folder(tmp_path / "m", classes=4), 0.34)
    assert (binary.num_classes, binary.class_values) == (2, [0, 255])
    assert multi.num_classes == 4
    assert set(np.unique(binary.train[0].labels)) <= {0, 1}


def test_validation_split_keeps_groups_together(tmp_path):
    stems = [f"dog_{i:05d}" for i in range(5)] + [f"cat_{i:05d}" for i in range(5)]
    stems += [f"owl_{i:05d}" for i in range(5)]
    val = split_stems(tmp_path, stems, 0.34, seed=3)
    groups = {s.split("_")[0] for s in val}
    assert len(groups) == 1 and len(val) == 5


def test_splits_file_decides_the_validation_set(tmp_path):
    root = make_folder(tmp_path / "d")
    stems = sorted(p.stem for p in (root / "images").iterdir())
    (root / "splits.txt").write_text(
        f"{stems[0]}\tval\n" + "".join(f"{s}\ttrain\n" for s in stems[1:])
    )
    data = load_dataset(root)
    assert [s.stem for s in data.val] == [stems[0]]


def test_missing_mask_is_a_clear_error(tmp_path):
    root = make_folder(tmp_path / "d")
    next((root / "masks").iterdir()).unlink()
    with pytest.raises(SpnrefineError, match="has no mask"):
        load_dataset(root)


def test_size_mismatch_is_a_clear_error(tmp_path):
    root = make_folder(tmp_path / "d")
    mask = next((root / "masks").iterdir())
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(mask)
    with pytest.raises(SpnrefineError, match="but its mask is 10×10") as err:
        load_dataset(root)
    assert mask.name in str(err.value)


def test_unreadable_image_is_a_clear_error(tmp_path):
    root = make_folder(tmp_path / "d")
    image = next((root / "images").iterdir())
    image.write_bytes(b"not a png")
    with pytest.raises(SpnrefineError, match="not an image") as err:
        load_dataset(root)
    assert image.name in str(err.value)


def _png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares width×height 8-bit gray pixels, with one empty IDAT."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


@pytest.mark.parametrize("folder", ["images", "masks", "coarse"])
def test_training_files_have_the_pixel_limit_that_refine_has(tmp_path, folder):
    root = make_folder(tmp_path / "d")
    (root / "coarse").mkdir(exist_ok=True)
    stem = sorted(p.stem for p in (root / "images").iterdir())[0]
    for old in (root / folder).glob(stem + ".*"):
        old.unlink()
    bomb = root / folder / f"{stem}.png"
    bomb.write_bytes(_png_declaring(30_000, 30_000))
    with pytest.raises(SpnrefineError, match="more than the limit") as err:
        load_dataset(root)
    assert bomb.name in str(err.value)


def _disc_coarse(root, stem: str) -> np.ndarray:
    """The soft foreground of ``stem``'s mask at a quarter of its size (float32, 0..1)."""
    mask = np.asarray(Image.open(root / "masks" / f"{stem}.png"), np.float32) / 255
    return cv2.resize(mask, (mask.shape[1] // 4, mask.shape[0] // 4), interpolation=cv2.INTER_AREA)


def test_binary_coarse_maps_are_read_in_every_format_refine_reads(tmp_path):
    root = make_folder(tmp_path / "d")
    stems = sorted(p.stem for p in (root / "images").iterdir())
    (root / "coarse").mkdir()
    soft = {stem: _disc_coarse(root, stem) for stem in stems[:4]}
    np.save(root / "coarse" / f"{stems[0]}.npy", soft[stems[0]])
    np.savez(
        root / "coarse" / f"{stems[1]}.npz", probs=np.stack([1 - soft[stems[1]], soft[stems[1]]])
    )
    Image.fromarray(np.round(soft[stems[2]] * 65535).astype(np.uint16)).save(
        root / "coarse" / f"{stems[2]}.png"
    )
    Image.fromarray((soft[stems[3]] > 0.5).astype(np.uint8)).save(  # a 0/1 mask
        root / "coarse" / f"{stems[3]}.png"
    )
    data = load_dataset(root, val_fraction=0)
    samples = {s.stem: s for s in data.train}
    for i, stem in enumerate(stems[:4]):
        fg = samples[stem].coarse[1]
        expected = soft[stem] if i < 3 else (soft[stem] > 0.5).astype(np.float32)
        stretched = cv2.resize(expected, fg.shape[::-1], interpolation=cv2.INTER_LINEAR)
        np.testing.assert_allclose(fg, stretched, atol=1e-4, err_msg=stem)
    assert all(samples[stem].coarse is None for stem in stems[4:])


def test_multiclass_coarse_ids_map_to_the_masks_classes_and_void_carries_none(tmp_path):
    root = make_folder(tmp_path / "m", classes=4)
    stem = sorted(p.stem for p in (root / "images").iterdir())[0]
    mask = np.asarray(Image.open(root / "masks" / f"{stem}.png"))
    ids = mask.copy()
    ids[:4] = 255  # void rows
    (root / "coarse").mkdir()
    Image.fromarray(ids).save(root / "coarse" / f"{stem}.png")
    data = load_dataset(root, val_fraction=0)
    coarse = next(s for s in data.train if s.stem == stem).coarse
    assert coarse.shape == (4, *mask.shape)
    np.testing.assert_array_equal(coarse[:, 4:].argmax(0), mask[4:])
    assert coarse[:, :4].max() == 0


def test_missing_masks_folder_is_a_clear_error(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(SpnrefineError, match="masks/"):
        load_dataset(tmp_path)


def test_synthetic_coarse_is_a_probability_map_that_misses_the_boundary():
    labels = np.zeros((64, 64), np.uint8)
    labels[16:48, 20:50] = 1
    labels[0:4, 0:4] = IGNORE
    coarse = synthesize_coarse(labels, 2, np.random.default_rng(0))
    assert coarse.shape == (2, 64, 64)
    np.testing.assert_allclose(coarse.sum(0), 1, atol=1e-5)
    assert coarse.min() >= 0
    unsure = (coarse.max(0) < 0.9).sum()
    assert unsure > 50  # the edge got blurred by the downsampling
    assert (coarse.argmax(0) == labels)[labels != IGNORE].mean() > 0.8


def test_validation_protocol_is_deterministic_x8_downsampling():
    labels = np.zeros((64, 64), np.uint8)
    labels[:, 30:] = 1
    a = synthesize_coarse(labels, 2, None, factor=8)
    b = synthesize_coarse(labels, 2, None, factor=8)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a[1, :, 45:] - 1).max() < 1e-6  # far from the edge it stays certain


def test_recipe_draws_factors_in_its_range_and_leaves_its_clean_share_unperturbed(monkeypatch):
    import spnrefine.train.data as data_module

    labels = np.zeros((96, 96), np.uint8)
    labels[20:70, 30:80] = 1
    seen: list[tuple] = []
    monkeypatch.setattr(data_module, "downsample_probs", lambda p, size: seen.append(size) or p)
    shapes: list[bool] = []
    real = data_module.perturb_labels
    monkeypatch.setattr(data_module, "perturb_labels", lambda *a: shapes.append(True) or real(*a))
    # The default recipe draws as the recipe always did, so earlier runs resume to the same
    # batches: perturbed with probability 0.8, then a factor log-uniform in 4..16.
    for seed in range(20):
        expect = np.random.default_rng(seed)
        perturbed = expect.random() < 0.8
        if perturbed:
            real(labels, 2, expect)
        factor = float(np.exp(expect.uniform(np.log(4), np.log(16))))
        seen.clear(), shapes.clear()
        synthesize_coarse(labels, 2, np.random.default_rng(seed))
        assert seen == [(round(96 / factor), round(96 / factor))]
        assert shapes == [True] * perturbed
    seen.clear(), shapes.clear()
    rng = np.random.default_rng(0)
    for _ in range(400):
        synthesize_coarse(labels, 2, rng, recipe=Recipe((2.0, 3.0), clean=0.75))
    sides = np.array([size[0] for size in seen])
    assert sides.min() >= round(96 / 3) and sides.max() <= round(96 / 2)
    assert len(set(sides)) > 5  # drawn, not fixed
    assert 0.2 < len(shapes) / 400 < 0.3  # a quarter perturbed
    assert Recipe((0.5, 4.0)).check() and Recipe((8.0, 4.0)).check()
    assert Recipe((2.0, float("inf"))).check() and Recipe((float("nan"), 4.0)).check()
    assert Recipe(clean=1.5).check() and Recipe(clean=float("nan")).check()
    assert Recipe().check() is None


def test_a_hard_share_of_the_maps_is_each_small_pixels_majority_class():
    import cv2

    labels = np.zeros((96, 96), np.uint8)
    labels[20:70, 30:81] = 1
    rng = np.random.default_rng(0)
    recipe = Recipe((8.0, 8.0), clean=1.0, hard=1.0)  # unperturbed, ×8, all hard
    coarse = synthesize_coarse(labels, 2, rng, recipe=recipe)
    small = cv2.resize(labels.astype(np.float32), (12, 12), interpolation=cv2.INTER_AREA)
    hard = cv2.resize((small > 0.5).astype(np.float32), (96, 96), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(coarse[1], hard, atol=1e-6)
    soft = synthesize_coarse(labels, 2, None, factor=8)
    assert np.abs(soft[1] - hard).max() > 0.2  # a cell three parts foreground: 0.75 there
    # A share: about that many maps are hard (their values a bilinear blend of 0s and 1s).
    recipe = Recipe((8.0, 8.0), clean=1.0, hard=0.3)
    rng = np.random.default_rng(1)
    count = 0
    for _ in range(200):
        count += np.allclose(synthesize_coarse(labels, 2, rng, recipe=recipe)[1], hard, atol=1e-6)
    assert 0.2 < count / 200 < 0.4
    assert Recipe(hard=1.5).check() and Recipe(hard=float("nan")).check()


def test_factors_and_clean_share_are_saved_and_fixed_for_a_resume(tmp_path):
    from typer.testing import CliRunner

    from spnrefine.cli import app

    data = make_folder(tmp_path / "d", size=(96, 96))
    out = tmp_path / "run"
    base = ["train", str(data), "--out", str(out), "--steps", "2", "--val-every", "2"]
    small = ["--val-patches", "2", "--batch-size", "2", "--widths", "4,4", "--hidden", "4"]
    result = CliRunner().invoke(app, [*base, *small, "--factors", "4", "-q"])
    assert result.exit_code == 2 and "MIN,MAX" in result.output
    for bad in ("8,2", "2,inf", "nan,4", "0.5,4"):
        result = CliRunner().invoke(app, [*base, *small, "--factors", bad, "-q"])
        assert result.exit_code == 2 and "1 ≤ MIN ≤ MAX" in result.output, bad
    result = CliRunner().invoke(app, [*base, *small, "--clean-share", "nan", "-q"])
    assert result.exit_code != 0 and not (out / "train_state.json").exists()
    result = CliRunner().invoke(
        app,
        [*base, *small, "--factors", "1.5,6", "--clean-share", "0.5", "--hard-share", "0.25"]
        + ["--until", "1", "-q"],
    )
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "train_state.json").read_text())["config"]
    assert saved["factors"] == [1.5, 6.0] and saved["clean_share"] == 0.5
    assert saved["hard_share"] == 0.25
    refused = CliRunner().invoke(app, [*base, "--resume", "--hard-share", "0.5", "-q"])
    assert refused.exit_code != 0 and "--hard-share" in refused.output
    refused = CliRunner().invoke(app, [*base, "--resume", "--factors", "2,6", "-q"])
    assert refused.exit_code != 0
    assert "started with --factors 1.5,6; resume it with the same" in refused.output
    resumed = CliRunner().invoke(app, [*base, "--resume", "-q"])  # the run's own recipe
    assert resumed.exit_code == 0, resumed.output
    assert json.loads((out / "train_state.json").read_text())["step"] == 2


def test_multiclass_batches_keep_only_present_classes(tmp_path):
    data = load_dataset(make_folder(tmp_path / "m", classes=6, n=6, size=(200, 200)), 0.34)
    batch = sample_batch(data, np.random.default_rng(0), 4, tile=32)
    assert batch["coarse"].shape[1] < 6
    labels = batch["labels"]
    assert labels[labels != IGNORE].max() < batch["coarse"].shape[1]


def test_refiner_is_class_agnostic_and_permutation_equivariant():
    torch.manual_seed(0)
    model = SPNRefiner(TINY).eval()
    image = torch.rand(1, 3, 32, 32)
    probs = torch.softmax(torch.randn(1, 5, 32, 32), 1)
    order = torch.tensor([3, 0, 4, 1, 2])
    with torch.no_grad():
        out = model(image, probs)
        permuted = model(image, probs[:, order])
    torch.testing.assert_close(permuted, out[:, order], atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        assert model(image, probs[:, :2]).shape == (1, 2, 32, 32)


def test_a_few_steps_lower_the_loss(tmp_path):
    data = make_folder(tmp_path / "d", n=6)
    config = tiny_config([data], tmp_path / "run", steps=30, val_every=30, lr=1e-2, batch_size=4)
    dataset = load_dataset(data, config.val_fraction)
    fixed = sample_batch(dataset, np.random.default_rng(123), 8, tile=32)
    batch = {k: torch.from_numpy(v) for k, v in fixed.items()}

    def loss_of(model):
        model.eval()
        with torch.no_grad():
            logits = model(batch["image"], batch["coarse"])
            return refinement_loss(logits, batch["labels"], batch["coarse"]).item()

    torch.manual_seed(config.seed)
    before = loss_of(SPNRefiner(TINY))
    out = train(config)
    assert loss_of(load_model(out)) < 0.8 * before


def test_thin_parts_are_what_an_opening_removes_per_class():
    labels = torch.zeros(1, 64, 64, dtype=torch.long)
    labels[0, 10:36, 10:40] = 1  # a thick square ...
    labels[0, 20:22, 10:40] = 0  # ... cut by a 2 px background gap
    labels[0, 46:49, 5:] = 1  # a 3 px line, 10 px below the square
    labels[0, 58:64, 0:64] = 1  # 6 px thick but cut by the patch edge: not thin, nor the gap
    labels[0, 0:5, 0:5] = IGNORE
    thin = thin_parts(labels, 2)
    assert thin[0, 20:22, 10:40].all() and thin[0, 46:49, 5:].all()
    assert not thin[0, 49:, :].any()
    assert not thin[0, 10:20, 10:40].any() and not thin[0, 22:36, 10:40].any()
    assert not thin[0, :5, :5].any()  # ignored pixels are never thin
    assert thin.sum() == 2 * 30 + 3 * 59
    assert not thin_parts(labels, 2, width=1).any()


def test_thin_weight_raises_the_loss_of_missing_a_thin_part():
    labels = torch.zeros(1, 32, 32, dtype=torch.long)
    labels[0, :, 14:17] = 1  # a 3 px line
    labels[0, :, 24:] = 1  # a thick part
    coarse = torch.full((1, 2, 32, 32), 0.5)
    miss_thin = torch.zeros(1, 2, 32, 32)
    miss_thin[:, 1, :, 24:] = 4.0  # the thick part right, the line missed
    miss_thin[:, 0] = 2.0
    miss_thick = torch.zeros(1, 2, 32, 32)
    miss_thick[:, 1, :, 14:17] = 4.0
    miss_thick[:, 1, :, 27:] = 4.0  # 3 px of the thick part's edge missed
    miss_thick[:, 0] = 2.0
    plain = [refinement_loss(x, labels, coarse).item() for x in (miss_thin, miss_thick)]
    thin = [
        refinement_loss(x, labels, coarse, thin_weight=4).item() for x in (miss_thin, miss_thick)
    ]
    assert plain[0] == pytest.approx(plain[1])  # the same number of pixels wrong
    assert thin[0] > thin[1]


def test_checkpoint_round_trips_exactly(tmp_path):
    torch.manual_seed(1)
    model = SPNRefiner(TINY)
    for p in model.parameters():
        p.data.normal_()
    save_model(model, tmp_path / "ckpt")
    loaded = load_model(tmp_path / "ckpt")
    assert state_checksum(loaded) == state_checksum(model)
    assert loaded.config == model.config
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["hidden"] == TINY.hidden


def test_resume_continues_where_it_stopped(tmp_path):
    data = make_folder(tmp_path / "d")
    straight = train(tiny_config([data], tmp_path / "straight", steps=4))
    train(tiny_config([data], tmp_path / "split", steps=4, until=2))
    assert json.loads((tmp_path / "split" / "train_state.json").read_text())["step"] == 2
    resumed = train(tiny_config([data], tmp_path / "split", steps=4), resume=True)
    assert state_checksum(load_model(resumed)) == state_checksum(load_model(straight))
    history = json.loads((resumed / "train_state.json").read_text())["history"]
    assert [h["step"] for h in history] == [0, 2, 4]
    moments = load_file(str(resumed / "train_state.safetensors"))
    assert moments and all(torch.isfinite(v).all() for v in moments.values())


def test_fine_tune_starts_from_given_weights(tmp_path):
    data = make_folder(tmp_path / "d")
    base = train(tiny_config([data], tmp_path / "base", steps=2))
    tuned = train(tiny_config([data], tmp_path / "tuned", steps=2, init=str(base), lr=0.0))
    # With a zero learning rate the weights stay those it started from (BatchNorm's running
    # statistics still move, as they do in any training step).
    start, after = load_model(base), load_model(tuned)
    for (name, p), (_, q) in zip(start.named_parameters(), after.named_parameters(), strict=True):
        assert torch.equal(p, q), name
    assert state_checksum(after) != state_checksum(SPNRefiner(TINY))


def test_fine_tune_can_widen_the_guidance_net(tmp_path):
    data = make_folder(tmp_path / "d")
    base = train(tiny_config([data], tmp_path / "base", steps=2))
    tuned = train(
        tiny_config([data], tmp_path / "wide", steps=2, init=str(base), widen_to=(8, 24), lr=0.0)
    )
    start, after = load_model(base), load_model(tuned)
    assert after.config.widths == (8, 24) and after.num_parameters() > start.num_parameters()
    old = start.guidance.down[1][0][0].weight  # 16 → 24 output channels, the old ones first
    assert torch.equal(after.guidance.down[1][0][0].weight[:16], old)
    with pytest.raises(SpnrefineError, match="each at least the trained 8,16"):
        train(tiny_config([data], tmp_path / "narrow", steps=1, init=str(base), widen_to=(8, 8)))


def test_train_cli_refuses_architecture_flags_with_init(tmp_path):
    from typer.testing import CliRunner

    from spnrefine.cli import app

    data = make_folder(tmp_path / "d")
    base = train(tiny_config([data], tmp_path / "base", steps=1))
    args = ["train", str(data), "--out", str(tmp_path / "x"), "--init", str(base)]
    result = CliRunner().invoke(app, [*args, "--hidden", "4", "--merge", "max"])
    assert result.exit_code == 2
    text = " ".join(result.output.replace("│", " ").split())  # rich boxes and wraps the message
    assert "--hidden, --merge: fixed by the --init weights" in text


def test_worker_processes_cut_the_same_batches_in_the_same_order(tmp_path):
    from spnrefine.train.prefetch import batches

    folders = [str(make_folder(tmp_path / "a")), str(make_folder(tmp_path / "b", classes=3))]
    datasets = [load_dataset(d, 0.34, 0) for d in folders]
    steps = dict(seed=5, batch_size=2, tile=32, first=3, last=12)
    inline = list(batches(datasets, (folders, 0.34, 0, ()), **steps))
    ahead = list(batches([], (folders, 0.34, 0, ()), **steps, workers=2))
    assert len(inline) == len(ahead) == 9
    for one, two in zip(inline, ahead, strict=True):
        assert one.keys() == two.keys()
        for key in one:
            assert np.array_equal(one[key], two[key]), key


def test_a_worker_that_cannot_load_its_data_stops_the_run_instead_of_hanging(tmp_path):
    missing = str(tmp_path / "missing")
    # in a subprocess with a time limit: before the fix the pool respawned the worker forever
    code = (
        "from spnrefine.train.prefetch import batches\n"
        f"list(batches([], ([{missing!r}], 0.34, 0, ()), seed=0, batch_size=2, tile=32,"
        " first=0, last=2, workers=1))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "missing" in done.stderr


def test_training_with_workers_equals_training_without(tmp_path):
    data = make_folder(tmp_path / "d")
    plain = train(tiny_config([data], tmp_path / "plain", steps=3))
    pooled = train(tiny_config([data], tmp_path / "pooled", steps=3, workers=2))
    assert state_checksum(load_model(pooled)) == state_checksum(load_model(plain))


def test_split_seed_keeps_the_held_out_data_while_the_patches_change(tmp_path):
    data = make_folder(tmp_path / "d", n=9)
    base = tiny_config([data], tmp_path / "a", steps=1, val_fraction=0.5)
    moved = tiny_config([data], tmp_path / "b", steps=1, val_fraction=0.5, seed=3)
    kept = tiny_config([data], tmp_path / "c", steps=1, val_fraction=0.5, seed=3, split_seed=0)
    val = {}
    for name, config in (("base", base), ("moved", moved), ("kept", kept)):
        dataset = load_dataset(data, config.val_fraction, config.held_out_seed)
        val[name] = sorted(s.stem for s in dataset.val)
    assert val["kept"] == val["base"] != val["moved"]


def test_resume_with_another_seed_or_split_is_refused(tmp_path):
    data = make_folder(tmp_path / "d")
    train(tiny_config([data], tmp_path / "run", steps=4, until=2, seed=2, split_seed=0))
    for kw in ({"seed": 0}, {"seed": 2}, {"seed": 2, "split_seed": 1}):
        with pytest.raises(SpnrefineError, match="--seed 2 --split-seed 0"):
            train(tiny_config([data], tmp_path / "run", steps=4, **kw), resume=True)
    resumed = train(tiny_config([data], tmp_path / "run", steps=4, seed=2, split_seed=0), True)
    assert json.loads((resumed / "train_state.json").read_text())["step"] == 4


def test_weight_average_follows_the_trained_weights():
    torch.manual_seed(0)
    model = SPNRefiner(TINY)
    average = WeightAverage(model, decay=0.5)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    for _ in range(200):
        average.update(model)
    # Many updates toward fixed weights converge on them; one update moves only part way.
    for name, value in average.model.state_dict().items():
        assert torch.allclose(value.float(), model.state_dict()[name].float(), atol=1e-5), name
    fresh = WeightAverage(SPNRefiner(TINY), decay=0.5)
    fresh.model.load_state_dict(start)
    fresh.update(model)
    weight = next(k for k in start if k.endswith("weight"))
    moved = fresh.model.state_dict()[weight] - start[weight]
    assert 0 < moved.abs().min() and moved.abs().max() < 1.0
    with pytest.raises(ValueError, match="--ema"):
        WeightAverage(model, decay=1.0)


def assert_resumes_exactly_only_with(tmp_path, data, straight, refusal: str, **flags):
    """A 4-step run stopped at step 2 is refused a resume without ``flags`` and, resumed with
    them, ends where the uninterrupted run ``straight`` did."""
    train(tiny_config([data], tmp_path / "split", steps=4, until=2, **flags))
    with pytest.raises(SpnrefineError, match=refusal):
        train(tiny_config([data], tmp_path / "split", steps=4), resume=True)
    resumed = train(tiny_config([data], tmp_path / "split", steps=4, **flags), resume=True)
    assert state_checksum(load_model(resumed)) == state_checksum(load_model(straight))


def test_ema_run_saves_the_average_and_resumes_exactly(tmp_path):
    data = make_folder(tmp_path / "d")
    straight = train(tiny_config([data], tmp_path / "straight", steps=4, ema=0.9))
    plain = train(tiny_config([data], tmp_path / "plain", steps=4))
    # The saved weights are the average, not the trained weights (those are the plain run's).
    assert state_checksum(load_model(straight)) != state_checksum(load_model(plain))
    live = load_file(str(straight / "train_state.safetensors"))
    trained = {k[len("live.") :]: v for k, v in live.items() if k.startswith("live.")}
    model = SPNRefiner(load_model(plain).config)
    model.load_state_dict(trained, strict=True)
    assert state_checksum(model) == state_checksum(load_model(plain))
    history = json.loads((straight / "train_state.json").read_text())["history"]
    assert all("val_live" in h for h in history)

    assert_resumes_exactly_only_with(tmp_path, data, straight, "--ema 0.9", ema=0.9)


def test_thin_weight_run_resumes_exactly_and_only_with_the_same_weight(tmp_path):
    data = make_folder(tmp_path / "d")
    straight = train(tiny_config([data], tmp_path / "straight", steps=4, thin_weight=4.0))
    plain = train(tiny_config([data], tmp_path / "plain", steps=4))
    assert state_checksum(load_model(straight)) != state_checksum(load_model(plain))
    assert_resumes_exactly_only_with(tmp_path, data, straight, "--thin-weight 4.0", thin_weight=4.0)


def test_average_weights_is_the_mean_and_refuses_other_architectures(tmp_path):
    from spnrefine.train.average import average_weights

    torch.manual_seed(3)
    first, second = SPNRefiner(TINY), SPNRefiner(TINY)
    for p in second.parameters():
        p.data.normal_()
    save_model(first, tmp_path / "a")
    save_model(second, tmp_path / "b")
    averaged = average_weights([str(tmp_path / "a"), str(tmp_path / "b")])
    for name, value in averaged.state_dict().items():
        if value.is_floating_point():
            mean = (first.state_dict()[name] + second.state_dict()[name]) / 2
            torch.testing.assert_close(value, mean)
    assert averaged.config.extra["averaged"] == [str(tmp_path / "a"), str(tmp_path / "b")]
    save_model(
        SPNRefiner(ModelConfig(hidden=4, gate_groups=2, widths=(8, 16), tile=32)), tmp_path / "c"
    )
    with pytest.raises(SpnrefineError, match="not the architecture"):
        average_weights([str(tmp_path / "a"), str(tmp_path / "c")])
    with pytest.raises(SpnrefineError, match="at least two"):
        average_weights([str(tmp_path / "a")])


# ---- several coarse sources per image (coarse-<source>/ folders beside images/ and masks/)


def add_source(root, name, fg_value=None, scale=4, classes=2):
    """A coarse-<name>/ folder with each image's map at 1/scale: a constant foreground
    ``fg_value`` (binary) or the masks' class ids nearest-downsampled (multi-class)."""
    folder = root / f"coarse-{name}"
    folder.mkdir()
    for mask_path in sorted((root / "masks").glob("*.png")):
        mask = np.asarray(Image.open(mask_path))
        h, w = mask.shape[0] // scale, mask.shape[1] // scale
        if classes == 2:
            small = np.full((h, w), fg_value, np.uint8)
        else:
            small = mask[::scale, ::scale][:h, :w]
        Image.fromarray(small).save(folder / mask_path.name)
    return folder


def test_warping_a_small_map_equals_upsampling_then_warping():
    from spnrefine.train.sources import warp_small
    from spnrefine.upsample import upsample_probs

    rng = np.random.default_rng(0)
    small = rng.random((2, 12, 17)).astype(np.float32)
    image_hw = (96, 136)
    matrix = cv2.getRotationMatrix2D((70.0, 50.0), 11.0, 1.3)
    matrix[:, 2] += np.array([32, 32]) - np.array([70.0, 50.0])
    warp = {"dsize": (64, 64), "flags": cv2.INTER_LINEAR, "borderMode": cv2.BORDER_REFLECT_101}
    full = upsample_probs(small, image_hw)
    expected = np.stack([cv2.warpAffine(c, matrix, **warp) for c in full])
    got = warp_small(small, image_hw, matrix, 64)
    assert got.shape == (2, 64, 64)
    # two bilinear steps against one: equal up to the second interpolation's smoothing
    assert np.abs(got - expected).mean() < 0.02
    identity = np.float32([[1, 0, 0], [0, 1, 0]])
    flat = np.full((2, 12, 17), 0.25, np.float32)
    assert np.allclose(warp_small(flat, image_hw, identity, 64), 0.25)


def test_coarse_source_patterns_pick_folders_and_a_typo_is_an_error(tmp_path):
    from spnrefine.train.sources import check_patterns, source_folders

    data = make_folder(tmp_path / "d")
    for name in ("isnet1024-s8", "weak-k5-s8", "mediapipe256-s8"):
        (data / f"coarse-{name}").mkdir()
    assert list(source_folders(data, ["isnet*", "weak-*"])) == ["isnet1024-s8", "weak-k5-s8"]
    assert source_folders(data, []) == {} and source_folders(data, ["isnet512"]) == {}
    other = make_folder(tmp_path / "other")  # a folder without sources may join the mix
    check_patterns(["weak-*"], {data: list(source_folders(data, ["*"])), other: []})
    with pytest.raises(SpnrefineError, match="coarse-isnet512/ folder.*mediapipe256-s8"):
        check_patterns(["isnet512"], {data: list(source_folders(data, ["*"])), other: []})
    with pytest.raises(SpnrefineError, match="--coarse-source isnet512"):
        train(tiny_config([data, other], tmp_path / "run", coarse_sources=["isnet512"]))


def test_coarse_maps_read_as_small_probabilities(tmp_path):
    from spnrefine.train.sources import read_coarse_map

    soft = tmp_path / "soft.png"
    Image.fromarray(np.full((5, 7), 51, np.uint8)).save(soft)
    probs = read_coarse_map(soft, [0, 255])
    assert probs.shape == (2, 5, 7) and np.allclose(probs[1], 0.2) and np.allclose(probs.sum(0), 1)
    ids = np.array([[0, 3, 9, 255]], np.uint8)  # 9: an id the masks never hold; 255: void
    Image.fromarray(ids).save(tmp_path / "ids.png")
    probs = read_coarse_map(tmp_path / "ids.png", [0, 1, 2, 3])
    assert probs.shape == (4, 1, 4)
    assert probs[:, 0, 0].tolist() == [1, 0, 0, 0] and probs[:, 0, 1].tolist() == [0, 0, 0, 1]
    assert probs[:, 0, 2].sum() == 0 and probs[:, 0, 3].sum() == 0


def test_training_patches_mix_real_sources_with_the_synthetic_recipe(tmp_path):
    data = make_folder(tmp_path / "d", n=6, size=(64, 64))
    add_source(data, "all-fg", fg_value=255)
    add_source(data, "unsure", fg_value=128)
    dataset = load_dataset(data, 0.34, 0, ("all-fg", "unsure"))
    assert all(set(s.sources) == {"all-fg", "unsure"} for s in dataset.train)
    assert all(s.sources["unsure"].shape == (2, 16, 16) for s in dataset.train)
    assert all(not s.sources for s in dataset.val)  # validation keeps its fixed protocol
    rng = np.random.default_rng(0)
    kinds = []
    for _ in range(60):
        patch = sample_patch(dataset.train[0], 2, rng)
        if patch is None:
            continue
        fg = patch.coarse[1]
        unsure = np.allclose(fg, 0.5, atol=0.01)
        kinds.append("all-fg" if np.allclose(fg, 1) else "unsure" if unsure else "synthetic")
    assert {"all-fg", "unsure", "synthetic"} <= set(kinds)
    # without sources the batches are those of before: no extra draws from the stream
    plain = load_dataset(data, 0.34, 0)
    a = sample_batch(plain, np.random.default_rng(3), 4)
    b = sample_batch(load_dataset(data, 0.34, 0, ()), np.random.default_rng(3), 4)
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_multiclass_sources_carry_the_class_ids(tmp_path):
    data = make_folder(tmp_path / "d", n=6, size=(64, 64), classes=4)
    add_source(data, "ids", scale=2, classes=4)
    dataset = load_dataset(data, 0.34, 0, ("ids",))
    sample = dataset.train[0]
    small = sample.sources["ids"]
    assert small.shape == (dataset.num_classes, 32, 32)
    assert np.array_equal(small.argmax(0), sample.labels[::2, ::2])


def test_coarse_sources_train_resume_and_refuse_another_mix(tmp_path):
    data = make_folder(tmp_path / "d")
    add_source(data, "half", fg_value=128)
    straight = train(tiny_config([data], tmp_path / "straight", steps=4, coarse_sources=["half"]))
    assert_resumes_exactly_only_with(
        tmp_path, data, straight, "--coarse-source", coarse_sources=["half"]
    )


def test_a_new_run_refuses_a_folder_holding_one_unless_overwrite(tmp_path):
    data = make_folder(tmp_path / "d")
    out = train(tiny_config([data], tmp_path / "run", steps=2))
    before = (out / "best" / "model.safetensors").read_bytes()
    with pytest.raises(SpnrefineError, match="already holds a training run.*--overwrite"):
        train(tiny_config([data], out, steps=2, seed=5))
    assert (out / "best" / "model.safetensors").read_bytes() == before
    train(tiny_config([data], out, steps=2, seed=5), overwrite=True)
    history = json.loads((out / "train_state.json").read_text())["history"]
    assert [h["step"] for h in history] == [0, 2]
    assert json.loads((out / "train_state.json").read_text())["config"]["seed"] == 5


def test_a_second_train_process_is_locked_out_of_the_folder(tmp_path):
    from spnrefine.train.loop import _locked

    data = make_folder(tmp_path / "d")
    with _locked(tmp_path / "run"):  # as another process would hold it
        with pytest.raises(SpnrefineError, match="another spnrefine train .* is writing"):
            train(tiny_config([data], tmp_path / "run", steps=2))
    train(tiny_config([data], tmp_path / "run", steps=2))  # free again


def test_resume_refuses_changed_settings_unless_override_and_records_it(tmp_path):
    data = make_folder(tmp_path / "d")
    train(tiny_config([data], tmp_path / "run", steps=4, until=2, lr=0.01))
    for change, flag in (({"lr": 0.02}, "--lr 0.01"), ({"steps": 8}, "--steps 4")):
        with pytest.raises(SpnrefineError, match=f"started with {flag}, not"):
            train(tiny_config([data], tmp_path / "run", **{"steps": 4, "lr": 0.01, **change}), True)
    with pytest.raises(SpnrefineError, match="started with --init"):
        train(tiny_config([data], tmp_path / "run", steps=4, lr=0.01, init="default"), True)
    train(tiny_config([data], tmp_path / "run", steps=4, lr=0.02), resume=True, override=True)
    state = json.loads((tmp_path / "run" / "train_state.json").read_text())
    assert state["step"] == 4 and state["config"]["lr"] == 0.02
    assert state["config"]["changes"] == [{"step": 2, "lr": [0.01, 0.02]}]


def _cli(*args):
    from typer.testing import CliRunner

    from spnrefine.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], env={"NO_COLOR": "1"})


TINY_FLAGS = ["--hidden", "2", "--gate-groups", "2", "--widths", "8,16", "--val-patches", "2"]


def test_cli_resume_restores_the_runs_settings(tmp_path):
    data = make_folder(tmp_path / "d", n=9)
    out = tmp_path / "run"
    common = ["train", data, "-o", out, "--batch-size", "2", "--val-fraction", "0.34"]
    settings = [*common, *TINY_FLAGS, "--steps", "4", "--val-every", "2", "--lr", "0.01"]
    settings += ["--warmup", "1"]
    first = _cli(*settings, "--until", "2")
    assert first.exit_code == 0, first.output
    # Nothing but the data and --resume: the run's steps, learning rate and warm-up go on.
    resumed = _cli("train", data, "-o", out, "--resume")
    assert resumed.exit_code == 0, resumed.output
    state = json.loads((out / "train_state.json").read_text())
    assert state["step"] == 4
    assert (state["config"]["lr"], state["config"]["warmup"], state["config"]["steps"]) == (
        0.01,
        1,
        4,
    )
    # The first command again with --resume: the same settings, nothing refused.
    same = _cli(*settings, "--resume")
    assert same.exit_code == 0, same.output
    wider = _cli("train", data, "-o", out, "--resume", "--widths", "8,24")
    assert wider.exit_code == 2 and "fixed by the run's checkpoint (8,16)" in wider.output
    refused = _cli("train", data, "-o", out, "--resume", "--batch-size", "4")
    assert refused.exit_code == 2 and "--batch-size 2, not --batch-size 4" in refused.output
    again = _cli(*common, *TINY_FLAGS, "--steps", "2")
    assert again.exit_code == 2 and "already holds a training run" in again.output


def test_step_zero_scores_the_start_and_history_time_goes_on_after_resume(tmp_path):
    data = make_folder(tmp_path / "d")
    base = train(tiny_config([data], tmp_path / "base", steps=2))
    out = tmp_path / "tuned"
    train(tiny_config([data], out, steps=4, until=2, init=str(base)))
    train(tiny_config([data], out, steps=4, init=str(base)), resume=True)
    state = json.loads((out / "train_state.json").read_text())
    history = state["history"]
    assert [h["step"] for h in history] == [0, 2, 4] and history[0]["loss"] is None
    start = json.loads((base / "train_state.json").read_text())["history"][-1]["val"]
    assert history[0]["val"][0]["refined"] == start[0]["refined"]  # the init's own score
    times = [h["time"] for h in history]
    assert times == sorted(times) and times[2] > times[1] > 0
    assert json.loads((out / "config.json").read_text())["extra"]["init"] == str(base)


def test_progress_is_written_as_lines_when_stderr_is_not_a_terminal(tmp_path, monkeypatch):
    import io

    from rich.console import Console

    from spnrefine.train import progress

    monkeypatch.setattr(progress, "LINE_EVERY_S", 0.0)
    data = make_folder(tmp_path / "d")
    log = io.StringIO()
    console = Console(file=log, force_terminal=False, width=200)
    train(tiny_config([data], tmp_path / "run", steps=4), console=console)
    text = log.getvalue()
    for step in range(1, 5):
        assert f"step {step}/4 loss" in text and "s/step" in text
    assert "step 0 val d:" in text and "step 4 val d:" in text


def test_interrupt_says_which_checkpoint_was_kept_and_how_to_resume(tmp_path, monkeypatch):
    import io

    from rich.console import Console

    from spnrefine.train import loop

    data = make_folder(tmp_path / "d")
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return refinement_loss(*args, **kwargs)

    monkeypatch.setattr(loop, "refinement_loss", interrupted)
    log = io.StringIO()
    config = tiny_config([data], tmp_path / "run", steps=4)
    with pytest.raises(KeyboardInterrupt):
        train(config, console=Console(file=log, width=300))
    text = " ".join(log.getvalue().split())
    assert "interrupted at step 2" in text and "checkpoint of step 2" in text
    assert f"--out {tmp_path / 'run'} --resume" in text


def test_train_quiet_prints_nothing_on_success(tmp_path):
    data = make_folder(tmp_path / "d", n=9)
    args = ["train", data, "-o", tmp_path / "run", "--steps", "2", "--val-every", "2", "-q"]
    result = _cli(*args, *TINY_FLAGS, "--batch-size", "2", "--val-fraction", "0.34")
    assert result.exit_code == 0, result.output
    assert result.output == ""


def test_data_weights_decide_how_often_each_folder_gives_the_batch(tmp_path):
    from spnrefine.train.prefetch import Mix, step_batch

    folders = [make_folder(tmp_path / "a"), make_folder(tmp_path / "b", seed=1)]
    datasets = [load_dataset(d, 0.34, 0) for d in folders]
    only_b = [step_batch(datasets, 0, 2, 32, s, Mix((0.0, 1.0))) for s in range(6)]
    alone = [step_batch(datasets[1:], 0, 2, 32, s, Mix((1.0,))) for s in range(6)]
    assert all(np.array_equal(x["image"], y["image"]) for x, y in zip(only_b, alone, strict=True))
    picks = [Mix((3.0, 1.0)).pick(2, np.random.default_rng([0, s])) for s in range(4000)]
    assert 0.72 < picks.count(0) / len(picks) < 0.78
    assert all(Mix((0.0, 1.0)).pick(2, np.random.default_rng(s)) == 1 for s in range(50))
    # no weights: the draw of before, so earlier runs resume to the same batches
    same = [Mix().pick(2, np.random.default_rng([0, s])) for s in range(20)]
    assert same == [int(np.random.default_rng([0, s]).integers(2)) for s in range(20)]


def test_real_share_decides_how_often_a_patch_takes_a_real_map(tmp_path):
    from spnrefine.train.sources import SYNTHETIC, pick_source

    rng = np.random.default_rng(0)
    assert {pick_source(["a", "b"], rng, 0.0) for _ in range(50)} == {SYNTHETIC}
    assert {pick_source(["a", "b"], rng, 1.0) for _ in range(50)} == {"a", "b"}
    picks = [pick_source(["a", "b"], rng, 0.25) for _ in range(4000)]
    assert 0.22 < (len(picks) - picks.count(SYNTHETIC)) / len(picks) < 0.28
    assert pick_source([], rng, 1.0) == SYNTHETIC
    data = make_folder(tmp_path / "d", n=6, size=(64, 64))
    add_source(data, "all-fg", fg_value=255)
    dataset = load_dataset(data, 0.34, 0, ("all-fg",))
    fg = sample_batch(dataset, np.random.default_rng(1), 8, 64, real_share=1.0)["coarse"][:, 1]
    assert np.allclose(fg, 1)


def test_train_cli_takes_data_weights_and_refuses_a_wrong_count(tmp_path):
    from typer.testing import CliRunner

    from spnrefine.cli import app

    a, b = make_folder(tmp_path / "a"), make_folder(tmp_path / "b")
    out = tmp_path / "run"
    base = ["train", str(a), str(b), "--out", str(out), "--steps", "2", "--val-every", "2"]
    small = ["--val-patches", "2", "--batch-size", "2", "--widths", "4,4", "--hidden", "4"]
    result = CliRunner().invoke(app, [*base, *small, "--data-weights", "1", "-q"])
    assert result.exit_code == 2  # and said, --quiet or not
    assert "--data-weights gives 1 share(s) for 2 data folder(s)" in result.output
    result = CliRunner().invoke(app, [*base, *small, "--data-weights", "x,1", "-q"])
    assert result.exit_code == 2
    result = CliRunner().invoke(app, [*base, *small, "--real-share", "0.5", "-q"])
    assert result.exit_code == 2
    assert "--real-share: no real maps to share" in result.output
    add_source(a, "half", fg_value=128)
    base += ["--coarse-source", "half"]
    result = CliRunner().invoke(
        app, [*base, *small, "--data-weights", "3,1", "--real-share", "0.3", "-q"]
    )
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "train_state.json").read_text())["config"]
    assert saved["data_weights"] == [3.0, 1.0] and saved["real_share"] == 0.3
