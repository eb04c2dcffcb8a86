"""Training batches cut from a split that lives on the training device, as airbench's loader does.

A DataLoader gathers each batch on the host (a Python list of indices per batch) and copies it to
the device; on a fast GPU that per-step host work and copy are on the critical path. Here the
split moves to the device once, each epoch's order is one ``randperm`` copied over once, and a
batch is a slice of that order and one gather, all on the device.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from datamodules.sources import DataError


def epoch_order(n: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1) -> Tensor:
    """This process's share of a seeded shuffle of range(n), as ``DistributedSampler(shuffle=True)``
    deals it: the same permutation on every process (seed + epoch), padded by repeating its start
    to a multiple of ``world_size``, then every ``world_size``-th index from ``rank``."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
    if world_size > 1:
        padding = -n % world_size
        order = torch.cat([order, order.repeat(padding // n + 1)[:padding]])[rank::world_size]
    return order


class DeviceBatches:
    """Shuffled training batches ``(images, labels[, indices])`` of tensors on ``device``.

    Args:
        images: uint8 images ``(N, 3, H, W)`` of the split; moved to ``device`` once.
        labels: int64 labels ``(N,)``.
        batch_size: images per batch (per process under DDP).
        device: the training device.
        seed: with the epoch, seeds each epoch's order (same on every process, the same again
            when a run resumes at that epoch).
        epoch: returns the current epoch when an epoch's iteration starts.
        rank, world_size: this process's shard under DDP.
        with_indices: batches also carry the images' indices in the split (for per-image
            augmentation such as alternating flips).

    A last batch of one image is dropped (BatchNorm cannot train on one); any other last batch is
    kept, as the tutorial's DataLoader kept it.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        batch_size: int,
        device: torch.device,
        seed: int,
        epoch: Callable[[], int],
        rank: int = 0,
        world_size: int = 1,
        with_indices: bool = False,
    ) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        if len(labels) < world_size:
            raise DataError(
                f"{len(labels)} training images for {world_size} processes: each needs at least one; "
                "add images or use fewer --trainer.devices"
            )
        self.images = images.to(device)
        self.labels = labels.to(device)
        self.batch_size, self.device, self.seed, self.epoch = batch_size, device, seed, epoch
        self.rank, self.world_size, self.with_indices = rank, world_size, with_indices
        shard = -(-len(labels) // world_size)  # every process's share, padded as DistributedSampler pads
        self.drop_last = shard % batch_size == 1
        self.num_batches = shard // batch_size if self.drop_last else -(-shard // batch_size)

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[tuple[Tensor, ...]]:
        order = epoch_order(len(self.labels), self.seed, self.epoch(), self.rank, self.world_size)
        order = order.to(self.device, non_blocking=True)
        for start in range(0, self.num_batches * self.batch_size, self.batch_size):
            idx = order[start : start + self.batch_size]
            if self.with_indices:
                yield self.images[idx], self.labels[idx], idx
            else:
                yield self.images[idx], self.labels[idx]
