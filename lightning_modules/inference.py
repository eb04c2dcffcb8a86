"""The trained model without the training machinery: what prediction, serving and export run.

Plain torch (no Lightning, torchmetrics or torchvision import), so ``scripts/predict.py`` starts
as fast as the tutorial's test.py. It has the same input contract and the same state_dict keys
(``net.*``, ``mean``, ``std``) as ImageClassifier, so a training checkpoint loads into it as is.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


def normalize_uint8(images: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """uint8 (N, 3, H, W) in 0..255 -> float, scaled to [0, 1], minus mean, over std (per channel)."""
    if images.dtype != torch.uint8:
        raise TypeError(
            f"the classifier takes uint8 images (N, 3, H, W) with values 0..255, got {images.dtype}; "
            "pass raw pixels: the model normalises them itself"
        )
    return (images.float() / 255.0 - mean) / std


class InferenceClassifier(nn.Module):
    """uint8 images in, logits out; knows its class names and input size."""

    def __init__(
        self,
        net: nn.Module,
        class_names: Sequence[str],
        image_size: int,
        mean: Sequence[float] = (0.0, 0.0, 0.0),
        std: Sequence[float] = (1.0, 1.0, 1.0),
    ) -> None:
        super().__init__()
        self.net = net
        self.class_names = [str(c) for c in class_names]
        self.num_classes = len(self.class_names)
        self.image_size = int(image_size)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        # True when the file held no class names and CIFAR-10's were assumed (tutorial .pth files).
        self.class_names_assumed = False

    def forward(self, images: Tensor) -> Tensor:
        return self.net(normalize_uint8(images, self.mean, self.std))
