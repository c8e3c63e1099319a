"""Scores of refined label patches during training: IoU or mIoU, and boundary F."""

from __future__ import annotations

import numpy as np

from spnrefine.metrics import ConfusionMatrix, IoUAccumulator, boundary_f, mean_boundary_f
from spnrefine.train.data import IGNORE


class PatchScores:
    """Predicted vs true label patches of one dataset (binary: class 1 is the foreground)."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.confusion = ConfusionMatrix(num_classes, IGNORE)
        self.iou = IoUAccumulator()
        self.boundary: list[float] = []

    def update(self, pred: np.ndarray, labels: np.ndarray) -> None:
        for p, gt in zip(pred, labels, strict=True):
            ignore = gt == IGNORE
            if self.num_classes == 2:
                self.iou.update(p == 1, gt == 1, ignore)
                self.boundary.append(boundary_f(p == 1, gt == 1, ignore=ignore))
            else:
                self.confusion.update(p, gt)
                self.boundary.append(mean_boundary_f(p, gt, ignore_index=IGNORE))

    def summary(self) -> dict[str, float]:
        bf = float(np.nanmean(self.boundary))
        if self.num_classes == 2:
            region = {"iou": self.iou.dataset_iou}
        else:
            region = {"miou": self.confusion.miou()}
        return {**region, "boundary_f": bf, "score": (next(iter(region.values())) + bf) / 2}
