"""Fully connected CRF (Krähenbühl & Koltun, NeurIPS 2011) over probabilities, via pydensecrf."""

from __future__ import annotations

from typing import TYPE_CHECKING

from spnrefine.errors import SpnrefineError

if TYPE_CHECKING:
    import numpy as np

# DeepLab's kernel parameters: bilateral w=4, θα=67 px, θβ=3 (DeepLab v2 ResNet-101, VOC),
# Gaussian w=3, θγ=3 px (DeepLab v1 / v2-LargeFOV). DeepLab ran 10 mean-field iterations;
# 5 get most of the change at half the cost.
DEFAULT_ITERATIONS = 5
DEFAULT_POS_W = 3.0
DEFAULT_POS_XY_STD = 3.0
DEFAULT_BI_W = 4.0
DEFAULT_BI_XY_STD = 67.0
DEFAULT_BI_RGB_STD = 3.0
MISSING = "needs pydensecrf: pip install 'spnrefine[crf]'"


def crf_available() -> bool:
    """True when pydensecrf imports (it is the optional `crf` extra)."""
    try:
        import pydensecrf.densecrf  # noqa: F401
    except ImportError:
        return False
    return True


def refine_crf(
    image: np.ndarray,
    probs: np.ndarray,
    iterations: int = DEFAULT_ITERATIONS,
    pos_w: float = DEFAULT_POS_W,
    pos_xy_std: float = DEFAULT_POS_XY_STD,
    bi_w: float = DEFAULT_BI_W,
    bi_xy_std: float = DEFAULT_BI_XY_STD,
    bi_rgb_std: float = DEFAULT_BI_RGB_STD,
    min_prob: float = 1e-8,
) -> np.ndarray:
    """Dense-CRF mean-field inference with unary −log(max(p, min_prob)).

    image: H×W×3 uint8 RGB; probs: C×H×W summing to 1 over C. Returns C×H×W float32
    marginals. Raises SpnrefineError when pydensecrf is not installed.
    """
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError as exc:
        raise SpnrefineError(f"dense CRF {MISSING}") from exc
    import numpy as np

    image = np.asarray(image)
    probs = np.asarray(probs, dtype=np.float32)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be H×W×3 uint8, got {image.shape} {image.dtype}")
    if probs.ndim != 3 or probs.shape[1:] != image.shape[:2]:
        raise ValueError(f"probs {probs.shape} must be C×H×W with H×W = {image.shape[:2]}")
    c, h, w = probs.shape
    crf = dcrf.DenseCRF2D(w, h, c)
    unary = -np.log(np.clip(probs, min_prob, 1.0)).reshape(c, -1)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    crf.addPairwiseGaussian(sxy=pos_xy_std, compat=pos_w)
    crf.addPairwiseBilateral(
        # pydensecrf's Cython signature rejects read-only buffers (decoded images are).
        sxy=bi_xy_std,
        srgb=bi_rgb_std,
        rgbim=np.array(image, order="C", copy=True),
        compat=bi_w,
    )
    marginals = np.asarray(crf.inference(iterations), dtype=np.float32)
    return marginals.reshape(c, h, w)
