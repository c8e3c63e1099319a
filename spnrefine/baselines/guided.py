"""Guided filter (He et al., ECCV 2010 / TPAMI 2013) on box filters, and the refiner built on it."""

from __future__ import annotations

import cv2
import numpy as np

# Best mean of (IoU, F@2px, mBA) over DAVIS, horses, CamVid and ISNet coarse maps in a
# r ∈ {1,2,4,8,16} × eps ∈ {1e-4..1e-1} grid (benchmarks/baselines_quality.py --grid): coarse
# maps from ×8 downsampling are wrong within a few pixels, and larger windows blur more than
# they snap.
DEFAULT_RADIUS = 2
DEFAULT_EPS = 1e-3


def _box_mean(x: np.ndarray, radius: int) -> np.ndarray:
    """Mean over a (2r+1)² window of each H×W plane of x (…×H×W), borders as in cv2.blur."""
    size = (2 * radius + 1, 2 * radius + 1)
    out = np.empty_like(x)
    # One contiguous plane per call: faster than cv2's interleaved multi-channel path.
    for plane, dst in zip(
        x.reshape(-1, *x.shape[-2:]), out.reshape(-1, *x.shape[-2:]), strict=True
    ):
        cv2.blur(plane, size, dst=dst)
    return out


def guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """Edge-preserving smoothing of `src` steered by `guide`.

    guide: H×W (gray guide) or H×W×3 (colour guide, full 3×3 covariance per window), values
    expected in [0, 1] so that `eps` (the regulariser added to the window variance) keeps its
    usual scale; computed in float32, accurate for eps ≥ 1e-5. src: H×W or C×H×W, all channels
    filtered at once. Returns float32 of src's shape: q = mean(a)·I + mean(b), where (a, b) is
    the per-window ridge fit p ≈ a·I + b. A constant guide gives the box mean of the box mean.
    """
    guide = np.asarray(guide, dtype=np.float32)
    src = np.asarray(src)
    if guide.ndim not in (2, 3) or (guide.ndim == 3 and guide.shape[2] != 3):
        raise ValueError(f"guide must be H×W or H×W×3, got {guide.shape}")
    hw = guide.shape[:2]
    if src.shape[-2:] != hw or src.ndim not in (2, 3):
        raise ValueError(f"src {src.shape} must be H×W or C×H×W with H×W = {hw}")
    p = np.ascontiguousarray(src.reshape(-1, *hw), dtype=np.float32)
    mean_p = _box_mean(p, radius)

    if guide.ndim == 2:
        mean_i = _box_mean(guide, radius)
        var_i = _box_mean(guide * guide, radius) - mean_i * mean_i
        cov_ip = _box_mean(guide * p, radius) - mean_i * mean_p
        a = cov_ip / (var_i + eps)
        b = mean_p - a * mean_i
        mean_a, mean_b = _box_mean(np.stack([a, b]), radius)
        q = mean_a * guide + mean_b
        return q.reshape(src.shape)

    i_r, i_g, i_b = np.ascontiguousarray(np.moveaxis(guide, -1, 0))
    m_r, m_g, m_b = _box_mean(np.stack([i_r, i_g, i_b]), radius)
    products = np.stack([i_r * i_r, i_r * i_g, i_r * i_b, i_g * i_g, i_g * i_b, i_b * i_b])
    e_rr, e_rg, e_rb, e_gg, e_gb, e_bb = _box_mean(products, radius)
    s_rr = e_rr - m_r * m_r + eps
    s_rg = e_rg - m_r * m_g
    s_rb = e_rb - m_r * m_b
    s_gg = e_gg - m_g * m_g + eps
    s_gb = e_gb - m_g * m_b
    s_bb = e_bb - m_b * m_b + eps
    # Closed-form inverse of the symmetric 3×3 (Σ + εI): adjugate / determinant.
    inv_rr = s_gg * s_bb - s_gb * s_gb
    inv_rg = s_rb * s_gb - s_rg * s_bb
    inv_rb = s_rg * s_gb - s_rb * s_gg
    inv_gg = s_rr * s_bb - s_rb * s_rb
    inv_gb = s_rg * s_rb - s_rr * s_gb
    inv_bb = s_rr * s_gg - s_rg * s_rg
    inv_det = 1.0 / (s_rr * inv_rr + s_rg * inv_rg + s_rb * inv_rb)

    c_r, c_g, c_b = _box_mean(np.stack([i_r * p, i_g * p, i_b * p]), radius)
    c_r -= m_r * mean_p
    c_g -= m_g * mean_p
    c_b -= m_b * mean_p
    a_r = (inv_rr * c_r + inv_rg * c_g + inv_rb * c_b) * inv_det
    a_g = (inv_rg * c_r + inv_gg * c_g + inv_gb * c_b) * inv_det
    a_b = (inv_rb * c_r + inv_gb * c_g + inv_bb * c_b) * inv_det
    b = mean_p - a_r * m_r - a_g * m_g - a_b * m_b
    mean_ar, mean_ag, mean_ab, mean_b = _box_mean(np.stack([a_r, a_g, a_b, b]), radius)
    q = mean_ar * i_r + mean_ag * i_g + mean_ab * i_b + mean_b
    return q.reshape(src.shape)


def refine_guided(
    image: np.ndarray,
    probs: np.ndarray,
    radius: int = DEFAULT_RADIUS,
    eps: float = DEFAULT_EPS,
    gray: bool = False,
) -> np.ndarray:
    """Guided-filter each probability channel with the image (RGB uint8) as guide.

    probs: C×H×W, summing to 1 over C. Returns C×H×W float32 probabilities (clipped at 0,
    renormalised). `gray=True` uses the luma of the image as a single-channel guide.
    """
    image = np.asarray(image)
    probs = np.asarray(probs, dtype=np.float32)
    if (
        image.ndim != 3
        or image.shape[2] != 3
        or probs.ndim != 3
        or probs.shape[1:] != image.shape[:2]
    ):
        raise ValueError(
            f"need image H×W×3 and probs C×H×W of the same H×W, got {image.shape}, {probs.shape}"
        )
    guide = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if gray else image
    guide = guide.astype(np.float32) / 255.0
    c = probs.shape[0]
    if c == 1:
        return probs.copy()
    # The filter is linear and keeps constants, so the filtered channels still sum to 1:
    # filtering C-1 channels and taking the last as the remainder halves the binary case.
    head = guided_filter(guide, probs[:-1], radius, eps)
    q = np.clip(np.concatenate([head, 1.0 - head.sum(0, keepdims=True)]), 0.0, None)
    total = q.sum(0, keepdims=True)
    return np.where(total > 0, q / np.maximum(total, 1e-12), 1.0 / c).astype(np.float32)
