"""scripts/make_coarse.py: k-fold splits, coarse-map sizes and writing, the ISNet and MediaPipe
pre-processing, the runners' outputs and resumption on a tiny set, and the quality numbers."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spnrefine.upsample import same_aspect

REPO = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location(
        "make_coarse", REPO / "scripts" / "make_coarse.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_coarse"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


mc = _load()


def make_set(root: Path, name: str, *, multiclass: bool = False, groups: int = 4, per: int = 3):
    """A tiny prepared set: ``groups`` videos of ``per`` frames, 40×56 images with a bright
    rectangle that is the foreground (binary) or class 1, with class 2 below (multi-class)."""
    folder = root / name
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    rng = np.random.default_rng(0)
    for g in range(groups):
        for f in range(per):
            stem = f"seq{g}_{f:05d}"
            image = rng.integers(0, 60, (40, 56, 3), dtype=np.uint8)
            top, left = 5 + 2 * g, 8 + 3 * f
            image[top : top + 20, left : left + 24] = 220
            mask = np.zeros((40, 56), np.uint8)
            mask[top : top + 20, left : left + 24] = 1 if multiclass else 255
            if multiclass:
                mask[34:, :] = 2
                mask[0, 0] = 255  # void
            Image.fromarray(image).save(folder / "images" / f"{stem}.jpg", quality=95)
            Image.fromarray(mask).save(folder / "masks" / f"{stem}.png")
    if multiclass:
        (folder / "classes.txt").write_text("bg\nbox\nfloor\n")
    return mc.find_set(name, root, root / "absent")


def test_kfold_keeps_groups_whole_and_covers_every_stem_once():
    stems = [f"v{g}_{f:05d}" for g in range(7) for f in range(g + 2)]
    folds = mc.kfold(stems, 3)
    assert sorted(s for fold in folds for s in fold) == sorted(stems)
    assert all(folds)
    owner = {s: k for k, fold in enumerate(folds) for s in fold}
    for g in range(7):
        assert len({owner[s] for s in stems if s.startswith(f"v{g}_")}) == 1
    sizes = [len(f) for f in folds]
    assert max(sizes) - min(sizes) <= 9  # the largest group has 8 frames


def test_kfold_leaves_no_fold_empty_after_a_large_group():
    stems = [f"big_{i:05d}" for i in range(10)] + ["c_00000", "d_00000", "e_00000", "f_00000"]
    folds = mc.kfold(stems, 5)
    assert all(folds)
    assert sorted(len(f) for f in folds) == [1, 1, 1, 1, 10]


def test_weak_plan_never_trains_on_a_val_stem_and_predicts_every_stem_once():
    stems = [f"v{g}_{f:05d}" for g in range(8) for f in range(3)]
    split = {s: "val" if s.startswith(("v2_", "v5_")) else "train" for s in stems}
    plan = mc.weak_plan(stems, split, 3)
    assert len(plan) == 4
    predicted = [s for _, predict in plan for s in predict]
    assert sorted(predicted) == sorted(stems)
    for train, predict in plan:
        assert not set(train) & set(predict)
        assert all(split[s] == "train" for s in train)
    assert sorted(plan[-1][1]) == sorted(s for s in stems if split[s] == "val")
    assert len(mc.weak_plan(stems, {}, 3)) == 3


def test_kfold_refuses_fewer_groups_than_folds():
    with pytest.raises(ValueError, match="2 groups"):
        mc.kfold(["a_00001", "a_00002", "b_00001"], 3)


@pytest.mark.parametrize("hw", [(480, 854), (360, 480), (112, 195), (1040, 1388), (33, 7)])
@pytest.mark.parametrize("stride", [8, 16])
def test_coarse_size_keeps_the_aspect_spnrefine_accepts(hw, stride):
    h, w = mc.coarse_size(*hw, stride)
    assert h >= 1 and w >= 1
    assert same_aspect((h, w), hw)


def test_write_png_is_atomic_and_lossless(tmp_path):
    values = np.arange(60, dtype=np.uint8).reshape(6, 10) * 4
    path = tmp_path / "coarse-x" / "a.png"
    mc.write_png(path, values)
    with Image.open(path) as im:
        assert im.mode == "L"
        np.testing.assert_array_equal(np.asarray(im), values)
    assert [p.name for p in path.parent.iterdir()] == ["a.png"]


def test_resize_probs_area_averages_when_shrinking():
    prob = np.zeros((16, 16), np.float32)
    prob[:, :8] = 1.0
    small = mc.resize_probs(prob, (2, 4))
    np.testing.assert_allclose(small, [[1, 1, 0, 0], [1, 1, 0, 0]], atol=1e-6)
    assert mc.soft_png(np.array([0.0, 0.5, 1.0])).tolist() == [0, 128, 255]


def test_resize_probs_takes_many_classes():
    probs = np.random.default_rng(0).random((16, 24, 11)).astype(np.float32)
    small = mc.resize_probs(probs, (4, 6))
    assert small.shape == (4, 6, 11)
    np.testing.assert_allclose(small[..., 7], mc.resize_probs(probs[..., 7], (4, 6)), atol=1e-6)
    np.testing.assert_allclose(small[0, 0], probs[:4, :4].mean((0, 1)), atol=1e-5)


def test_isnet_input_is_stretched_square_and_centred():
    rgb = np.full((30, 50, 3), 128, np.uint8)
    rgb[:, :, 0] = 255
    x = mc.isnet_input(rgb, 64)
    assert x.shape == (1, 3, 64, 64) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, 0], 127 / 256)
    np.testing.assert_allclose(x[0, 1:], 0.0)


def test_mediapipe_input_is_nhwc_in_unit_range():
    rgb = np.zeros((90, 160, 3), np.uint8)
    rgb[..., 2] = 255
    x = mc.mediapipe_input(rgb, 144, 256)
    assert x.shape == (1, 144, 256, 3) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, ..., 2], 1.0)
    np.testing.assert_allclose(x[0, ..., :2], 0.0)


def test_assemble_isnet_joins_the_chunks_and_checks_the_size(tmp_path):
    dist = tmp_path / "pkg" / "package" / "dist"
    dist.mkdir(parents=True)
    (dist / "h1").write_bytes(b"abc")
    (dist / "h2").write_bytes(b"de")
    entry = {"chunks": [{"hash": "h1"}, {"hash": "h2"}], "size": 5}
    (dist / "resources.json").write_text(json.dumps({"/models/small": entry}))
    assert mc.assemble_isnet(tmp_path / "pkg", "small") == b"abcde"
    entry["size"] = 6
    (dist / "resources.json").write_text(json.dumps({"/models/small": entry}))
    with pytest.raises(SystemExit, match="expected 6"):
        mc.assemble_isnet(tmp_path / "pkg", "small")


def _resize_graph(size: int, folded: bool = False) -> bytes:
    """A graph shaped like ISNet's resizes: sizes = concat(shape(x)[:2], an H,W constant) as in
    the fp16 export, or (``folded``) one N,C,H,W initializer as in the 8-bit export; two
    Resize nodes share it."""
    pytest.importorskip("onnx", reason="onnx is not installed (scripts' own environment)")
    from onnx import TensorProto, helper, numpy_helper

    half = size // 2
    initializers = []
    if folded:
        sizes = numpy_helper.from_array(np.array([1, 3, half, half], np.int64), "sizes")
        initializers.append(sizes)
        nodes = []
    else:
        nodes = [
            helper.make_node("Shape", ["input"], ["shape"]),
            helper.make_node(
                "Constant", [], ["start"], value=numpy_helper.from_array(np.array([0]))
            ),
            helper.make_node("Constant", [], ["end"], value=numpy_helper.from_array(np.array([2]))),
            helper.make_node("Slice", ["shape", "start", "end"], ["nc"]),
            helper.make_node(
                "Constant", [], ["hw"], value=numpy_helper.from_array(np.array([half, half]))
            ),
            helper.make_node("Concat", ["nc", "hw"], ["sizes"], axis=0),
        ]
    nodes += [
        helper.make_node("Resize", ["input", "", "", "sizes"], ["small"], mode="linear"),
        helper.make_node("Resize", ["input", "", "", "sizes"], ["small2"], mode="nearest"),
        helper.make_node("Add", ["small", "small2"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, half, half])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    return model.SerializeToString()


@pytest.mark.parametrize("folded", [False, True])
def test_rescale_isnet_scales_every_resize_target_once_and_the_input(folded):
    onnx = pytest.importorskip("onnx", reason="onnx is not installed (scripts' own environment)")
    from onnx import numpy_helper

    model = onnx.load_from_string(mc.rescale_isnet(_resize_graph(1024, folded), 256))
    tensors = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            tensors[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    assert tensors["sizes" if folded else "hw"].tolist()[-2:] == [128, 128]
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [
        1,
        3,
        256,
        256,
    ]
    with pytest.raises(ValueError, match="multiple of 32"):
        mc.rescale_isnet(_resize_graph(1024, folded), 300)
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    session = ort.InferenceSession(mc.rescale_isnet(_resize_graph(1024, folded), 64))
    (out,) = session.run(None, {"input": np.zeros((1, 3, 64, 64), np.float32)})
    assert out.shape == (1, 3, 32, 32)


def _fake_segmenter(calls: list[str]) -> mc.Pretrained:
    def build(tools: Path):
        def predict(rgb: np.ndarray) -> dict[str, np.ndarray]:
            calls.append(rgb.shape)
            bright = (rgb.mean(-1) > 128).astype(np.float32)
            return {"": bright, "d6": np.full((17, 17), 0.25, np.float32)}

        return predict

    return mc.Pretrained("fake", build, ("", "d6"), "a threshold on brightness")


def test_run_pretrained_writes_every_output_and_stride_and_resumes(tmp_path):
    prepared = make_set(tmp_path, "toy")
    calls: list = []
    seg = _fake_segmenter(calls)
    assert mc.run_pretrained(prepared, seg, tmp_path, (8, 16), every=2, log=lambda m: None) == 6
    assert sorted(seg.sources((8, 16))) == ["fake-d6-s16", "fake-d6-s8", "fake-s16", "fake-s8"]
    for stem in prepared.stems()[::2]:
        with Image.open(prepared.coarse_path("fake-s8", stem)) as im:
            assert im.size == (7, 5) and im.mode == "L"
            fg = np.asarray(im)
        assert fg.max() > 200 and fg.min() < 60  # the bright box, soft at its edges
        with Image.open(prepared.coarse_path("fake-d6-s16", stem)) as im:
            assert im.size == (4, 2)
            assert np.asarray(im).tolist() == [[64] * 4] * 2
    assert not prepared.coarse_path("fake-s8", prepared.stems()[1]).exists()
    assert mc.run_pretrained(prepared, seg, tmp_path, (8, 16), every=2, log=lambda m: None) == 0
    assert len(calls) == 6


def test_run_pretrained_refuses_a_multiclass_set(tmp_path):
    prepared = make_set(tmp_path, "toy", multiclass=True)
    with pytest.raises(SystemExit, match="multi-class"):
        mc.run_pretrained(prepared, _fake_segmenter([]), tmp_path, log=lambda m: None)


@pytest.mark.parametrize("multiclass", [False, True])
def test_run_weak_gives_every_image_a_held_out_map_and_resumes(tmp_path, multiclass):
    pytest.importorskip("torch")
    prepared = make_set(tmp_path, "toy", multiclass=multiclass, groups=5)
    val = [s for s in prepared.stems() if s.startswith("seq4_")]
    lines = [f"{s}\t{'val' if s in val else 'train'}" for s in prepared.stems()]
    (prepared.root / "splits.txt").write_text("\n".join(lines) + "\n")
    config = mc.WeakConfig(folds=2, input_size=32, steps=3, batch=4)
    assert mc.run_weak(prepared, config, (8, 16), log=lambda m: None) == 3
    for stem in prepared.stems():
        for stride, size in ((8, (7, 5)), (16, (4, 2))):
            with Image.open(prepared.coarse_path(f"weak-k2-s{stride}", stem)) as im:
                assert im.size == size and im.mode == "L"
                values = np.asarray(im)
            if multiclass:
                assert values.max() <= 2
    assert mc.run_weak(prepared, config, (8, 16), log=lambda m: None) == 0


def test_weak_learns_the_box_on_held_out_images(tmp_path):
    pytest.importorskip("torch")
    prepared = make_set(tmp_path, "toy", groups=4, per=4)
    config = mc.WeakConfig(folds=2, input_size=32, steps=60, batch=8)
    mc.run_weak(prepared, config, (8,), log=lambda m: None)
    assert mc.evaluate(prepared, "weak-k2-s8").iou > 0.5


def test_evaluate_scores_a_downsampled_truth_high_and_an_empty_map_zero(tmp_path):
    prepared = make_set(tmp_path, "toy")
    for stem in prepared.stems():
        truth = prepared.mask(stem).astype(np.float32) / 255
        mc.write_png(
            prepared.coarse_path("good", stem), mc.soft_png(mc.resize_probs(truth, (10, 14)))
        )
        mc.write_png(prepared.coarse_path("empty", stem), np.zeros((5, 7), np.uint8))
    good, empty = mc.evaluate(prepared, "good"), mc.evaluate(prepared, "empty")
    assert good.images == 12 and good.iou > 0.9 and good.boundary_f > 0.8
    assert empty.iou == 0.0 and empty.worst == 0.0
    table = mc.quality_table(prepared)
    assert "| good | 12 |" in table and "| empty | 12 | 0.000 |" in table
    assert good.ideal == pytest.approx(good.iou) and 0.7 < empty.ideal < good.ideal  # 5×7 vs 10×14
    by_group = mc.quality_table(prepared, by_group=True)
    assert "| group | empty | good |" in by_group
    assert "| seq2 | 0.00 (3) |" in by_group
    only = mc.quality_table(prepared, every=4, sources=["good"])
    assert "| good | 3 |" in only and "empty" not in only


def test_a_set_of_class_ids_0_1_with_void_is_binary_and_void_is_not_scored(tmp_path):
    prepared = make_set(tmp_path, "toy")
    for stem in prepared.stems():
        path = prepared.root / "masks" / f"{stem}.png"
        box = np.asarray(Image.open(path)) == 255
        box[:, :20] = False  # the coarse map is wrong (empty) where the mask is void
        coarse = mc.soft_png(mc.resize_probs(box.astype(np.float32), (10, 14)))
        mc.write_png(prepared.coarse_path("right", stem), coarse)
        labels = box.astype(np.uint8)
        labels[:, :20] = 255
        Image.fromarray(labels).save(path)
    prepared = mc.find_set("toy", tmp_path, tmp_path / "absent")
    assert not prepared.foreground_255 and not prepared.multiclass
    assert set(np.unique(prepared.labels(prepared.stems()[0]))) == {0, 1, 255}
    assert mc.evaluate(prepared, "right").iou > 0.6


def test_evaluate_multiclass_uses_class_ids(tmp_path):
    prepared = make_set(tmp_path, "toy", multiclass=True)
    for stem in prepared.stems():
        labels = prepared.labels(stem).copy()
        labels[labels == 255] = 0
        small = np.asarray(Image.fromarray(labels).resize((28, 20), Image.NEAREST))
        mc.write_png(prepared.coarse_path("good", stem), small)
        mc.write_png(prepared.coarse_path("flat", stem), np.zeros((5, 7), np.uint8))
    assert mc.evaluate(prepared, "good").iou > 0.85
    flat = mc.evaluate(prepared, "flat")
    assert flat.iou < 0.4 and flat.ideal > 0.6


def _real_segmenter(name: str, modules: tuple[str, ...]):
    """A registered pretrained segmenter, built from the npm packages under MAKE_COARSE_TOOLS
    (default /work/tools/npm); skips where the packages or their runtimes are absent."""
    import os

    for module in modules:
        pytest.importorskip(module, reason=f"{module} is not installed (the scripts' environment)")
    tools = Path(os.environ.get("MAKE_COARSE_TOOLS", str(mc.TOOLS)))
    if not (tools / mc.IMGLY_DATA).is_dir() or not (tools / mc.MEDIAPIPE).is_dir():
        pytest.skip(f"the npm packages are not unpacked under {tools}")
    return mc.PRETRAINED[name].build(tools)


@pytest.mark.parametrize(
    ("name", "modules", "example"),
    [
        ("mediapipe256", ("ai_edge_litert",), "astronaut"),
        ("isnet-med1024", ("onnxruntime",), "coffee"),
    ],
)
def test_real_segmenter_reproduces_the_example_coarse_map(name, modules, example):
    # examples/<name>_coarse.png were made with MediaPipe's own pipeline (pip mediapipe) and
    # with @imgly's recipe: the same model run here must give nearly the same 64×64 map.
    predict = _real_segmenter(name, modules)
    rgb = np.asarray(Image.open(REPO / "examples" / f"{example}.jpg").convert("RGB"))
    ours = mc.soft_png(mc.resize_probs(np.clip(predict(rgb)[""], 0, 1), (64, 64)))
    theirs = np.asarray(Image.open(REPO / "examples" / f"{example}_coarse.png"))
    assert np.abs(ours.astype(int) - theirs).mean() < 4
    assert ((ours > 127) == (theirs > 127)).mean() > 0.98
