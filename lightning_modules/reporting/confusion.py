"""A confusion matrix built from evaluation step outputs, and the per-class figures it implies.

Shared by the callbacks that draw or report results, so each collects what it needs from the
module's step outputs (``{"preds", "targets"}``) instead of reading the module's state.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_modules.metrics import confusion_counts


class ConfusionCounter:
    """Counts (true class, predicted class) pairs over an epoch; rows: true, columns: predicted."""

    def __init__(self) -> None:
        self.counts: Tensor | None = None

    def reset(self) -> None:
        self.counts = None

    def update(self, preds: Tensor, targets: Tensor, num_classes: int) -> None:
        batch = confusion_counts(preds, targets, num_classes)
        self.counts = batch if self.counts is None else self.counts + batch

    def compute(self, pl_module, num_classes: int) -> Tensor:
        """The matrix summed over every process (a collective call under DDP: all ranks must make it)."""
        counts = self.counts if self.counts is not None else torch.zeros(num_classes, num_classes, dtype=torch.int64)
        counts = counts.to(pl_module.device)
        if pl_module.trainer.world_size > 1:
            counts = pl_module.all_gather(counts).sum(dim=0)
        return counts.cpu()


def per_class_metrics(matrix: Tensor) -> dict[str, list[float]]:
    """Precision, recall (= per-class accuracy) and F1 per class from a confusion matrix."""
    m = matrix.to(torch.float64)
    hits = m.diag()
    precision = hits / m.sum(dim=0).clamp(min=1)
    recall = hits / m.sum(dim=1).clamp(min=1)
    f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
    return {"precision": precision.tolist(), "recall": recall.tolist(), "f1": f1.tolist(), "acc": recall.tolist()}
