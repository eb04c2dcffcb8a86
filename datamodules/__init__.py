"""Data for CIFAR-10 training: sources, batching and on-device augmentation."""

from datamodules.cifar10 import CIFAR10DataModule
from datamodules.sources import CIFAR10_CLASSES, DataError

__all__ = ["CIFAR10DataModule", "CIFAR10_CLASSES", "DataError"]
