"""The LightningModule and the networks it can hold."""

from lightning_modules.classifier import ImageClassifier

__all__ = ["ImageClassifier"]
