"""Check prepared sets: pairs match in size, mask values, and how tight the annotation's edges are.

For each set, a seeded sample of pairs is opened. Tightness: the mask's foreground (class > 0,
void left out) is eroded or dilated by d pixels, d = -4..4, and the image's gradient magnitude is
averaged over the 2-pixel band around each shifted edge. A mask drawn on the object's edge has
its gradient peak at d = 0; one drawn a few pixels outside the object (a loose polygon) peaks at
d < 0. ``peak`` is the sub-pixel offset of the mean profile's maximum, ``contrast`` the profile
at 0 over its mean at ±4 (higher: the mask's edge sits on a stronger image edge).

    python scripts/check_data.py /work/data/cracks /work/data/cats --overlays /tmp/overlays
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

OFFSETS = range(-4, 5)
VOID = 255


def _shift(fg: np.ndarray, d: int) -> np.ndarray:
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
    if d == 0:
        return fg
    op = cv2.dilate if d > 0 else cv2.erode
    return op(fg, kernel, iterations=abs(d))


def foreground(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(foreground, valid): 0/255 masks have no void; otherwise class > 0, 255 = void."""
    if not (mask == 1).any() and np.isin(mask, (0, 255)).all():
        return mask == 255, np.ones(mask.shape, bool)
    valid = mask != VOID
    return (mask > 0) & valid, valid


def edge_profile(image: np.ndarray, mask: np.ndarray) -> np.ndarray | None:
    """Mean gradient magnitude on the band around the foreground's edge shifted by each offset."""
    grey = cv2.GaussianBlur(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32), (0, 0), 1)
    grad = np.hypot(cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1))
    fg, valid = foreground(mask)
    fg = fg.astype(np.uint8)
    if fg.sum() < 50 or (1 - fg)[valid].sum() < 50:
        return None
    kernel = np.ones((2, 2), np.uint8)
    profile = []
    for d in OFFSETS:
        shifted = _shift(fg, d)
        band = (cv2.dilate(shifted, kernel) != cv2.erode(shifted, kernel)) & valid
        if band.sum() < 20:
            return None
        profile.append(grad[band].mean())
    return np.array(profile)


def peak_offset(profile: np.ndarray) -> float:
    i = int(np.argmax(profile))
    if 0 < i < len(profile) - 1:  # parabola through the maximum and its neighbours
        a, b, c = profile[i - 1 : i + 2]
        den = a - 2 * b + c
        return OFFSETS[i] + (0.5 * (a - c) / den if den else 0.0)
    return float(OFFSETS[i])


def overlay(image: np.ndarray, mask: np.ndarray, size: int = 256) -> np.ndarray:
    """A crop around a boundary point at full resolution, the mask's edge drawn in red."""
    fg = foreground(mask)[0].astype(np.uint8)
    edge = cv2.dilate(fg, np.ones((3, 3), np.uint8)) != fg
    out = image.copy()
    out[edge] = (255, 0, 0)
    points = np.argwhere(edge)
    y, x = points[len(points) // 2] if len(points) else (0, 0)
    h, w = mask.shape
    y0, x0 = max(0, min(h - size, y - size // 2)), max(0, min(w - size, x - size // 2))
    window = (slice(y0, y0 + size), slice(x0, x0 + size))
    crop = np.concatenate([image[window], out[window]], 1)
    return cv2.resize(crop, None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)


def check(root: Path, sample: int, overlays: Path | None) -> dict:
    masks = sorted((root / "masks").glob("*.png"))
    rng = np.random.default_rng(0)
    picked = [masks[i] for i in sorted(rng.permutation(len(masks))[:sample])]
    profiles, values, bad = [], set(), []
    for n, mask_path in enumerate(picked):
        image_path = next((root / "images").glob(mask_path.stem + ".*"))
        image = np.asarray(Image.open(image_path).convert("RGB"))
        mask = np.asarray(Image.open(mask_path))
        if image.shape[:2] != mask.shape:
            bad.append(mask_path.stem)
            continue
        values |= set(np.unique(mask).tolist())
        profile = edge_profile(image, mask)
        if profile is not None:
            profiles.append(profile / profile.max())
        if overlays is not None and n < 3:
            overlays.mkdir(parents=True, exist_ok=True)
            name = f"{root.name}_{mask_path.stem}.png"
            Image.fromarray(overlay(image, mask)).save(overlays / name)
    mean = np.mean(profiles, 0) if profiles else None
    return {
        "pairs": len(masks),
        "opened": len(picked),
        "size mismatches": len(bad),
        "mask values": sorted(values)[:8] + (["..."] if len(values) > 8 else []),
        "peak": None if mean is None else round(float(peak_offset(mean)), 2),
        "contrast": None if mean is None else round(float(mean[4] / mean[[0, -1]].mean()), 2),
        "profile": None if mean is None else " ".join(f"{v:.2f}" for v in mean),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sets", nargs="+", type=Path)
    parser.add_argument("--sample", type=int, default=40)
    parser.add_argument("--overlays", type=Path, help="write 3 edge overlays per set here")
    args = parser.parse_args(argv)
    for root in args.sets:
        info = check(root, args.sample, args.overlays)
        print(f"{root.name}: " + "; ".join(f"{k} {v}" for k, v in info.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
