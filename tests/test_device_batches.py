"""Training batches cut on the device: every image once per epoch, shards dealt as DistributedSampler
deals them, the same order again for the same seed and epoch."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DistributedSampler

from datamodules.device_batches import DeviceBatches, epoch_order
from datamodules.sources import DataError


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 60), world_size=st.integers(1, 4), seed=st.integers(0, 1000), epoch=st.integers(0, 5))
def test_shards_are_distributed_samplers(n, world_size, seed, epoch):
    for rank in range(world_size):
        sampler = DistributedSampler(range(n), num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
        sampler.set_epoch(epoch)
        assert epoch_order(n, seed, epoch, rank, world_size).tolist() == list(sampler)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 50), batch_size=st.integers(1, 16), with_indices=st.booleans())
def test_an_epoch_shows_every_image_once(n, batch_size, with_indices):
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 2, 2).contiguous()
    labels = torch.arange(n)
    loader = DeviceBatches(images, labels, batch_size, torch.device("cpu"), 7, lambda: 0, with_indices=with_indices)
    batches = list(loader)
    assert len(batches) == len(loader)
    seen = torch.cat([b[1] for b in batches])
    for batch in batches:
        assert torch.equal(batch[0][:, 0, 0, 0].long(), batch[1])  # images and labels stay paired
        if with_indices:
            assert torch.equal(batch[2], batch[1])
        assert len(batch[1]) > 1 or n == 1 or batch_size == 1  # never a last batch of one image
    dropped = n % batch_size == 1 and batch_size > 1
    assert len(seen) == n - dropped and len(set(seen.tolist())) == len(seen)


def test_order_follows_seed_and_epoch():
    epoch = [0]
    loader = DeviceBatches(torch.zeros(40, 3, 2, 2, dtype=torch.uint8), torch.arange(40), 8, torch.device("cpu"),
                           3, lambda: epoch[0])  # fmt: skip
    first = torch.cat([b[1] for b in loader])
    assert torch.equal(first, torch.cat([b[1] for b in loader]))  # a resumed epoch shuffles alike
    epoch[0] = 1
    assert not torch.equal(first, torch.cat([b[1] for b in loader]))


def test_more_processes_than_images_is_refused_in_one_line():
    with pytest.raises(DataError, match="2 training images for 3 processes"):
        DeviceBatches(torch.zeros(2, 3, 2, 2, dtype=torch.uint8), torch.arange(2), 4, torch.device("cpu"), 0,
                      lambda: 0, rank=0, world_size=3)  # fmt: skip
