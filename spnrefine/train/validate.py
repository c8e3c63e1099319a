"""Validation during training: fixed held-out patches, and their scores (IoU or mIoU, and
boundary F) coarse → refined."""

from __future__ import annotations

import numpy as np
import torch

from spnrefine.metrics import ConfusionMatrix, IoUAccumulator, boundary_f, mean_boundary_f
from spnrefine.model import SPNRefiner
from spnrefine.train.config import TrainConfig
from spnrefine.train.data import IGNORE, Dataset, sample_batch


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


def to_torch(batch: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v).to(device) for k, v in batch.items()}


def validation_sets(datasets: list[Dataset], config: TrainConfig) -> list[dict[str, np.ndarray]]:
    """Fixed validation patches per dataset: ×``val_factor`` coarse maps, no augmentation."""
    sets = []
    for i, dataset in enumerate(datasets):
        rng = np.random.default_rng([config.held_out_seed, 7919, i])
        sets.append(
            sample_batch(
                dataset, rng, config.val_patches, config.model.tile, "val", False, config.val_factor
            )
        )
    return sets


@torch.no_grad()
def validate(model: SPNRefiner, datasets, val_sets, device, batch_size: int = 16) -> list[dict]:
    """Score ``model`` on each dataset's validation patches: coarse and refined, per dataset."""
    model.eval()
    results = []
    for dataset, batch in zip(datasets, val_sets, strict=True):
        refined, coarse = PatchScores(dataset.num_classes), PatchScores(dataset.num_classes)
        for start in range(0, len(batch["image"]), batch_size):
            part = {k: v[start : start + batch_size] for k, v in batch.items()}
            t = to_torch(part, device)
            logits = model(t["image"], t["coarse"])
            refined.update(logits.argmax(1).cpu().numpy(), part["labels"])
            coarse.update(part["coarse"].argmax(1), part["labels"])
        results.append(
            {"data": str(dataset.root), "refined": refined.summary(), "coarse": coarse.summary()}
        )
    model.train()
    return results


def mean_score(results: list[dict]) -> float:
    """The mean over datasets of the refined score (the mean of region and boundary scores)."""
    return float(np.mean([r["refined"]["score"] for r in results]))
