"""StageScores (the module's sync-free metrics) against torchmetrics' definitions on random batches."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score, MulticlassPrecision, MulticlassRecall

from lightning_modules.metrics import StageScores, confusion_counts

labels = st.integers(min_value=0, max_value=4)


@settings(max_examples=60, deadline=None)
@given(
    batches=st.lists(st.lists(st.tuples(labels, labels), min_size=1, max_size=12), min_size=1, max_size=4),
    num_classes=st.integers(min_value=5, max_value=7),
)
def test_scores_equal_torchmetrics(batches, num_classes):
    ours = StageScores(num_classes)
    reference = {
        "acc": MulticlassAccuracy(num_classes, average="micro"),
        "precision": MulticlassPrecision(num_classes, average="macro"),
        "recall": MulticlassRecall(num_classes, average="macro"),
        "f1": MulticlassF1Score(num_classes, average="macro"),
        "acc_per_class": MulticlassAccuracy(num_classes, average=None),
    }
    weighted_loss, images = 0.0, 0
    for i, pairs in enumerate(batches):
        preds = torch.tensor([p for p, _ in pairs])
        targets = torch.tensor([t for _, t in pairs])
        loss = torch.tensor(0.5 + i)  # batches of different sizes and losses: the mean must weigh images
        ours.update(preds, targets, loss)
        for metric in reference.values():
            metric.update(preds, targets)
        weighted_loss, images = weighted_loss + loss.item() * len(pairs), images + len(pairs)
    values = ours.compute()
    for name, metric in reference.items():
        assert values[name].tolist() == pytest.approx(metric.compute().tolist(), abs=1e-6), name
    assert values["loss"].item() == pytest.approx(weighted_loss / images)


def test_confusion_counts_rows_are_true_classes():
    counts = confusion_counts(torch.tensor([0, 1, 2, 0]), torch.tensor([0, 1, 1, 2]), 3)
    assert counts.tolist() == [[1, 0, 0], [0, 1, 1], [1, 0, 0]]


def test_reset_starts_a_new_epoch():
    scores = StageScores(3)
    scores.update(torch.tensor([0, 0]), torch.tensor([1, 1]), torch.tensor(2.0))
    scores.reset()
    scores.update(torch.tensor([1]), torch.tensor([1]), torch.tensor(1.0))
    values = scores.compute()
    assert values["acc"].item() == 1.0 and values["loss"].item() == 1.0


def test_an_interrupted_validation_leaves_nothing_for_the_next():
    from lightning_modules.classifier import ImageClassifier

    model = ImageClassifier(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3, 3)), class_names=["a", "b", "c"])
    model.val_metrics.update(torch.tensor([0, 0]), torch.tensor([1, 1]), torch.tensor(5.0))  # a validation cut short
    model.on_validation_epoch_start()
    model.val_metrics.update(torch.tensor([1]), torch.tensor([1]), torch.tensor(1.0))
    assert model.val_metrics.compute()["acc"].item() == 1.0
