"""A map-style dataset over in-memory tensors that hands out whole batches in one indexing op (evaluation)."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import Dataset


class TensorBatches(Dataset):
    """``images[indices], labels[indices]`` for a whole batch of indices at once.

    The DataLoader calls ``__getitems__`` with the sampler's batch of indices, so a batch costs
    one gather instead of ``batch_size`` ``__getitem__`` calls plus a collate. It stays a plain
    map-style dataset with a normal sampler, so Lightning can still swap in a
    ``DistributedSampler`` for DDP. (Training batches come from ``DeviceBatches``.)
    """

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.images[index], self.labels[index]

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.int64)
        return self.images[idx], self.labels[idx]


def keep_batch(batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """collate_fn for TensorBatches: the batch is already stacked (module-level so workers can pickle it)."""
    return batch
