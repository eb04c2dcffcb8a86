"""Data for CIFAR-10 training: sources, batching and on-device augmentation.

CIFAR10DataModule is imported lazily so that prediction, which only reads image files, does
not import Lightning.
"""

from datamodules.sources import CIFAR10_CLASSES, DataError

__all__ = ["CIFAR10DataModule", "CIFAR10_CLASSES", "DataError"]


def __getattr__(name: str):
    if name == "CIFAR10DataModule":
        from datamodules.cifar10 import CIFAR10DataModule

        return CIFAR10DataModule
    raise AttributeError(f"module 'datamodules' has no attribute {name!r}")
