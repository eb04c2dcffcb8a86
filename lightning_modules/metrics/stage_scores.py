"""StageScores: accuracy, macro precision/recall/F1, per-class accuracy and mean loss of one stage,
accumulated on the device without ever making the host wait for it.

torchmetrics' classification metrics validate their inputs on every update (``unique``, value
checks), and each check makes the host wait for the device; five of them per training step cost
more than a small network's step. This keeps one confusion matrix and a loss sum, updated with
sync-free tensor ops, and derives every figure from them once per epoch, with torchmetrics'
definitions (macro averages leave out classes absent from both predictions and targets).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


def confusion_counts(preds: Tensor, targets: Tensor, num_classes: int, into: Tensor | None = None) -> Tensor:
    """(true class, predicted class) counts of a batch, added to ``into`` when given; rows: true,
    columns: predicted.

    ``index_add_`` rather than ``bincount``: CUDA's bincount reads the largest value back to size
    its output, which makes the host wait.
    """
    pairs = (targets.detach().long() * num_classes + preds.detach().long()).flatten()  # .long(): free on int64
    if into is None:
        into = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=pairs.device)
    into.view(-1).index_add_(0, pairs, torch.ones_like(pairs))
    return into


def scores_from_confusion(matrix: Tensor) -> dict[str, Tensor]:
    """acc, macro precision / recall / f1 and per-class accuracy (= recall) from a confusion matrix."""
    m = matrix.to(torch.float32)
    hits, predicted, actual = m.diag(), m.sum(dim=0), m.sum(dim=1)
    precision = hits / predicted.clamp(min=1)
    recall = hits / actual.clamp(min=1)
    f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
    present = ((predicted + actual) > 0).to(torch.float32)

    def macro(per_class: Tensor) -> Tensor:
        return (per_class * present).sum() / present.sum().clamp(min=1)

    return {
        "acc": hits.sum() / m.sum().clamp(min=1),
        "precision": macro(precision),
        "recall": macro(recall),
        "f1": macro(f1),
        "acc_per_class": recall,
    }


class StageScores(Metric):
    """Every logged figure of one stage (train, val or test), summed across processes under DDP.

    Args:
        num_classes: number of classes.

    ``update(preds, targets, loss)`` takes predicted labels, true labels and the batch's mean loss;
    ``compute()`` returns ``acc``, ``precision``, ``recall``, ``f1`` (macro), ``acc_per_class`` and
    ``loss`` (the mean over images, so unequal last batches and DDP shards weigh right).
    """

    full_state_update = False

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"StageScores needs at least one class, got {num_classes}")
        self.num_classes = num_classes
        self.add_state("confusion", torch.zeros(num_classes, num_classes, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("loss_sum", torch.zeros((), dtype=torch.float32), dist_reduce_fx="sum")

    def _apply(self, fn, exclude_state=()):
        this = super()._apply(fn, exclude_state)
        # Lightning's true half precision casts the whole module, metric states included; a loss sum
        # in bfloat16 would round every reported loss (0.9972 became 1.0000).
        if this.loss_sum.dtype != torch.float32:
            this.loss_sum = this.loss_sum.float()
            this._defaults["loss_sum"] = this._defaults["loss_sum"].float()
        return this

    def update(self, preds: Tensor, targets: Tensor, loss: Tensor) -> None:
        # A few small ops per step, in place: a training step of a small network is ~1 ms.
        confusion_counts(preds, targets, self.num_classes, into=self.confusion)
        self.loss_sum.add_(loss.detach(), alpha=targets.numel())

    def compute(self) -> dict[str, Tensor]:
        scores = scores_from_confusion(self.confusion)
        scores["loss"] = self.loss_sum / self.confusion.sum().clamp(min=1)
        return scores
