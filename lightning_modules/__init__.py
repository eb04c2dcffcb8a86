"""The model side of the project: ImageClassifier (the LightningModule) and its networks (nets/),
schedules, callbacks/, inference/ (plain torch: using a trained model) and cli/ (command lines).

ImageClassifier is imported lazily: prediction imports ``lightning_modules.inference`` and must
not pay for importing Lightning and torchmetrics.
"""

__all__ = ["ImageClassifier"]


def __getattr__(name: str):
    if name == "ImageClassifier":
        from lightning_modules.classifier import ImageClassifier

        return ImageClassifier
    raise AttributeError(f"module 'lightning_modules' has no attribute {name!r}")
