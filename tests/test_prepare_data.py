"""scripts/prepare_data.py: every converter on a tiny fake snapshot it builds (a real git
repository laid out like the source), the MAT reader, downscaling, splits; and
scripts/check_data.py's edge-tightness measure on masks drawn on and outside an edge."""

from __future__ import annotations

import importlib.util
import io
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


prep = _script("prepare_data")
check = _script("check_data")


# ---- a minimal MAT level-5 writer (the format's own layout, so the reader meets real bytes)


def _el(kind: int, payload: bytes) -> bytes:
    return struct.pack("<II", kind, len(payload)) + payload + b"\0" * (-len(payload) % 8)


def _matrix(value, name: bytes = b"") -> bytes:
    if isinstance(value, dict):
        mx, shape = 2, (1, 1)
        names = b"".join(k.encode().ljust(32, b"\0") for k in value)
        body = _el(5, struct.pack("<i", 32)) + _el(1, names)
        body += b"".join(_el(14, _matrix(v)) for v in value.values())
    elif isinstance(value, list):
        mx, shape = 1, (1, len(value))
        body = b"".join(_el(14, _matrix(v)) for v in value)
    elif isinstance(value, str):
        mx, shape = 4, (1, len(value))
        body = _el(4, np.array([ord(c) for c in value], "<u2").tobytes())
    elif value.dtype == np.float64:
        mx, shape, body = 6, value.shape, _el(9, value.tobytes(order="F"))
    else:
        mx, shape, body = 9, value.shape, _el(2, value.astype(np.uint8).tobytes(order="F"))
    head = _el(6, struct.pack("<II", mx, 0)) + _el(5, np.array(shape, "<i4").tobytes())
    return head + _el(1, name) + body


def write_mat(variables: dict, compress: bool = True) -> bytes:
    out = b"MATLAB 5.0 MAT-file, test".ljust(116) + b"\0" * 8 + struct.pack("<H", 0x0100) + b"IM"
    for name, value in variables.items():
        element = _el(14, _matrix(value, name.encode()))
        if compress:
            data = zlib.compress(element)
            element = struct.pack("<II", 15, len(data)) + data
        out += element
    return out


def test_read_mat_reads_numeric_cell_struct_and_char():
    labels = np.arange(12, dtype=np.uint8).reshape(3, 4)
    for compress in (True, False):
        data = write_mat(
            {
                "groundtruth": labels,
                "names": ["null", "bag"],
                "gt": [{"Segmentation": np.eye(2) + 1}],
            },
            compress,
        )
        out = prep.read_mat(data)
        assert np.array_equal(out["groundtruth"], labels)
        assert [str(n) for n in out["names"].flatten()] == ["null", "bag"]
        assert np.array_equal(out["gt"].flatten()[0].flatten()[0]["Segmentation"], np.eye(2) + 1)
    with pytest.raises(ValueError):
        prep.read_mat(b"not a mat file")


# ---- the fake snapshot

H, W = 40, 56


def _img(fmt: str = "JPEG", mode: str = "RGB", size=(W, H)) -> bytes:
    rng = np.random.default_rng(len(fmt) + len(mode))
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(buf, fmt)
    return buf.getvalue()


def _mask(fmt: str = "PNG", value: int = 255, size=(W, H), mode: str = "L") -> bytes:
    w, h = size
    m = np.zeros((h, w), np.uint8)
    m[h // 4 : h // 2, w // 4 : w // 2] = value
    buf = io.BytesIO()
    im = Image.fromarray(m, "L")
    if mode == "P":
        im = im.convert("P")
    im.save(buf, fmt)
    return buf.getvalue()


def _files() -> dict[str, bytes]:
    labels = np.zeros((H, W), np.uint8)
    labels[5:20, 5:30], labels[25:35, 10:40] = 41, 5
    crack = np.ones((H, W))
    crack[10:12, :] = 2
    root = "feral-cat-segmentation.v1i.yolov8"
    yolo = b"0 0.1 0.1 0.5 0.1 0.5 0.6 0.1 0.6\n"
    fov = np.zeros((H, W), np.uint8)
    fov[2:-2, 2:-2] = 255
    fov_gif = io.BytesIO()
    Image.fromarray(fov, "L").save(fov_gif, "GIF")
    target = np.full((H, W), 255, np.uint8)
    target[10:14, 5:50] = 0  # ink
    target_png = io.BytesIO()
    Image.fromarray(target, "L").save(target_png, "PNG")
    nid = "ab" * 32
    return {
        # clothing: a photo past the last one the project may use must never be read
        "photos/0001.jpg": _img(),
        "photos/1234.jpg": _img(),
        "annotations/pixel-level/0001.mat": write_mat({"groundtruth": labels}),
        "annotations/pixel-level/1234.mat": write_mat({"groundtruth": labels}),
        "label_list.mat": write_mat({"label_list": ["null", "accessories"]}),
        # nuclei
        f"stage1_train/{nid}/images/{nid}.png": _img("PNG", "RGB"),
        f"stage1_train/{nid}/masks/a.png": _mask(),
        f"stage1_train/{nid}/masks/b.png": _mask(size=(W, H), value=255)[:],
        # cats: two augmented copies of one original (one kept), one original in valid/
        f"{root}/train/images_1st_500/g1_png.rf.aaa.jpg": _img(),
        f"{root}/train/labels_1st_500/g1_png.rf.aaa.txt": yolo,
        f"{root}/train/images_2nd_500/g1_png.rf.bbb.jpg": _img(),
        f"{root}/train/labels_2nd_500/g1_png.rf.bbb.txt": yolo,
        f"{root}/valid/images/g2_jpg.rf.ccc.jpg": _img(),
        f"{root}/valid/labels/g2_jpg.rf.ccc.txt": yolo,
        # documents
        "Dataset/DIBCO2010_H01_source.png": _img("PNG"),
        "Dataset/DIBCO2010_H01_target.png": target_png.getvalue(),
        # tiles: one defect, eight defect-free (every 8th kept)
        "MT_Blowhole/Imgs/exp1_num_1.jpg": _img("JPEG", "L"),
        "MT_Blowhole/Imgs/exp1_num_1.png": _mask(),
        **{f"MT_Free/Imgs/exp0_num_{i}.jpg": _img("JPEG", "L") for i in range(8)},
        **{f"MT_Free/Imgs/exp0_num_{i}.png": _mask(value=0) for i in range(8)},
        # retina: DRIVE with irregular names as upstream ("34manual1", "mask .gif"), and CHASE
        "DRIVE/training/images/21_training.tif": _img("TIFF"),
        "DRIVE/training/1st_manual/21manual1.gif": _mask("GIF"),
        "DRIVE/training/mask/21_training_mask .gif": fov_gif.getvalue(),
        "CHASEDB1/Image_01L.jpg": _img(),
        "CHASEDB1/Image_01L_1stHO.png": _mask(),
        # cracks
        "image/001.jpg": _img(),
        "groundTruth/001.mat": write_mat(
            {"groundTruth": [{"Segmentation": crack, "Boundaries": crack > 1}]}
        ),
        # people: mask stored at half size
        "Training_Images/1.jpg": _img(),
        "Ground_Truth/1.png": _mask(size=(W // 2, H // 2)),
        # rocks
        "VOCdevkit/VOC2007/JPEGImages/000001.jpg": _img("JPEG", "L"),
        "VOCdevkit/VOC2007/SegmentationClass/000001.png": _mask(value=3, mode="P"),
        "VOCdevkit/VOC2007/JPEGImages/000002.jpg": _img("JPEG", "L"),
        "VOCdevkit/VOC2007/SegmentationClass/000002.png": _mask(value=2, mode="P"),
        "VOCdevkit/VOC2007/ImageSets/Segmentation/val.txt": b"000002\n",
        # hands
        "Training_Images/2.png": _img("PNG"),
        "Ground_Truth/2.png": _mask(),
        "val_images/1000.png": _img("PNG"),
        "val_masks/1000.png": _mask(),
    }


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory) -> tuple[Path, str]:
    work = tmp_path_factory.mktemp("snap")
    for rel, data in _files().items():
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / rel).write_bytes(data)
    git = ["git", "-C", str(work), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git[:3] + ["init", "-q"], check=True)
    subprocess.run(git + ["add", "-A"], check=True)
    subprocess.run(git + ["commit", "-qm", "fake"], check=True)
    commit = subprocess.run(git + ["rev-parse", "HEAD"], check=True, capture_output=True)
    return work / ".git", commit.stdout.decode().strip()


def _prepared(name: str, snapshot, out: Path) -> tuple[dict, dict[str, np.ndarray]]:
    info = prep.prepare(prep.SOURCES[name], prep.Snapshot(*snapshot), out, log=lambda m: None)
    root = out / name
    masks = {p.stem: np.asarray(Image.open(p)) for p in sorted((root / "masks").glob("*.png"))}
    for stem, mask in masks.items():
        with Image.open(root / "images" / f"{stem}.jpg") as im:
            assert im.mode == "RGB" and im.size == (mask.shape[1], mask.shape[0])
    text = (root / "SOURCE.txt").read_text()
    assert prep.SOURCES[name].repo in text and prep.SOURCES[name].commit in text
    splits = dict(line.split("\t") for line in (root / "splits.txt").read_text().splitlines())
    assert set(splits) == set(masks) and set(splits.values()) <= {"train", "val"}
    return info, masks


EXPECTED = {  # set: (stems, mask values)
    "clothing": ({"0001"}, {0, 5, 41}),
    "nuclei": ({"abababababababab"}, {0, 255}),
    "cats": ({"g1-png", "g2-jpg"}, {0, 255}),
    "documents": ({"DIBCO2010_H01"}, {0, 255}),
    "tiles": ({"Blowhole_exp1_num_1", "Free_exp0_num_7"}, {0, 255}),
    "retina": ({"drive_21", "chase_01L"}, {0, 1, 255}),
    "cracks": ({"001"}, {0, 255}),
    "people": ({"1"}, {0, 255}),
    "rocks": ({"000001", "000002"}, {0, 2, 3}),
    "hands": ({"2", "1000"}, {0, 255}),
}


def test_every_source_has_a_fake_snapshot_case():
    assert set(EXPECTED) == set(prep.SOURCES)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_converter_writes_pairs_from_a_fake_snapshot(name, snapshot, tmp_path):
    info, masks = _prepared(name, snapshot, tmp_path)
    stems, values = EXPECTED[name]
    if name == "people":  # only the pair with a Ground_Truth of its own stem
        assert "1" in masks
    else:
        assert set(masks) == stems
    assert set(np.unique(np.concatenate([m.ravel() for m in masks.values()]))) == values
    assert info["pairs"] == len(masks)


def test_clothing_reads_only_the_photos_the_project_may_use(snapshot, tmp_path):
    _prepared("clothing", snapshot, tmp_path)
    assert not list(tmp_path.rglob("1234*"))
    assert list(tmp_path.rglob("0001*"))
    assert (tmp_path / "clothing" / "classes.txt").read_text().split() == ["null", "accessories"]


def test_cats_keep_one_copy_per_original_and_take_valid_as_val(snapshot, tmp_path):
    _prepared("cats", snapshot, tmp_path)
    splits = (tmp_path / "cats" / "splits.txt").read_text()
    assert splits == "g1-png\ttrain\ng2-jpg\tval\n"
    mask = np.asarray(Image.open(tmp_path / "cats" / "masks" / "g1-png.png"))
    ys, xs = np.nonzero(mask)  # the polygon 0.1..0.5 × 0.1..0.6 of the image, filled
    assert abs(xs.min() - 0.1 * W) <= 1 and abs(xs.max() - 0.5 * W) <= 1
    assert abs(ys.min() - 0.1 * H) <= 1 and abs(ys.max() - 0.6 * H) <= 1


def test_retina_marks_outside_the_field_of_view_void(snapshot, tmp_path):
    _, masks = _prepared("retina", snapshot, tmp_path)
    drive = masks["drive_21"]
    assert (drive[:2] == 255).all() and (drive[2:-2, 2:-2] != 255).all()
    assert (masks["chase_01L"] != 255).all()


def test_documents_invert_ink_and_cracks_take_class_two(snapshot, tmp_path):
    _, docs = _prepared("documents", snapshot, tmp_path)
    ink = docs["DIBCO2010_H01"]
    assert (ink[10:14, 5:50] == 255).all() and ink.sum() == 255 * 4 * 45
    _, cracks = _prepared("cracks", snapshot, tmp_path)
    assert (cracks["001"][10:12] == 255).all() and cracks["001"].sum() == 255 * 2 * W


def test_large_pairs_are_downscaled(snapshot, tmp_path, monkeypatch):
    monkeypatch.setattr(prep, "MAX_SIDE", 28)
    info, masks = _prepared("retina", snapshot, tmp_path)
    assert info["downscaled"] == 2
    assert all(max(m.shape) == 28 for m in masks.values())
    assert set(np.unique(masks["drive_21"])) <= {0, 1, 255} and (masks["drive_21"] == 255).any()


def test_missing_snapshot_is_reported_not_fatal(tmp_path, capsys):
    assert prep.main(["cracks", "--mirror", str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    assert "no snapshot" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        prep.main(["no-such-set"])


def test_splits_keep_groups_together():
    pairs = [prep.Pair(f"s{i}", np.empty(0), np.empty(0), group=f"g{i % 5}") for i in range(50)]
    splits = prep.assign_splits(pairs)
    for g in range(5):
        assert len({splits[f"s{i}"] for i in range(g, 50, 5)}) == 1
    assert sum(v == "val" for v in splits.values()) == 10


def test_edge_profile_finds_a_loose_mask_outside_the_edge():
    image = np.full((120, 120, 3), 40, np.uint8)
    image[30:90, 30:90] = 220
    exact = np.zeros((120, 120), np.uint8)
    exact[30:90, 30:90] = 255
    loose = np.zeros_like(exact)
    loose[27:93, 27:93] = 255
    assert abs(check.peak_offset(check.edge_profile(image, exact))) < 0.5
    assert check.peak_offset(check.edge_profile(image, loose)) < -2
