"""CIFAR10DataModule: splits, loaders, batches, on-device augmentation; augmentation functions."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch
from helpers import CLASSES, make_image_folder, make_official_batches
from PIL import Image

from datamodules import CIFAR10DataModule, DataError, augment, sources


def make_dm(root, cache_dir, **kwargs) -> CIFAR10DataModule:
    dm = CIFAR10DataModule(data_dir=str(root), cache_dir=str(cache_dir), **kwargs)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_classes_are_known_before_setup(tmp_path):
    root = make_image_folder(tmp_path / "d", {"train": 1})
    dm = CIFAR10DataModule(data_dir=str(root))
    assert dm.classes == list(CLASSES) and dm.num_classes == 3


def test_seeded_split_sizes_and_reproducibility(tmp_path, cache_dir):
    root = make_image_folder(tmp_path / "d", {"train": 10})
    dm = make_dm(root, cache_dir, val_size=6, split_seed=1)
    assert len(dm.train_split) == 24 and len(dm.val_split) == 6
    same = make_dm(root, cache_dir, val_size=6, split_seed=1)
    assert torch.equal(dm.val_split.images, same.val_split.images)
    other = make_dm(root, cache_dir, val_size=6, split_seed=2)
    assert not torch.equal(dm.val_split.labels, other.val_split.labels) or not torch.equal(
        dm.val_split.images, other.val_split.images
    )
    # No image is in both train and val.
    train_rows = {bytes(x.numpy()) for x in dm.train_split.images}
    assert not any(bytes(x.numpy()) in train_rows for x in dm.val_split.images)


def test_val_folder_replaces_the_split(tmp_path, cache_dir):
    root = make_image_folder(tmp_path / "d", {"train": 4, "val": 2, "test": 1})
    dm = make_dm(root, cache_dir, val_size=9999)  # ignored: there is a val/ folder
    assert (len(dm.train_split), len(dm.val_split), len(dm.test_split)) == (12, 6, 3)
    assert dm.has_test_split


def test_official_source_splits(tmp_path, skip_md5):
    root = make_official_batches(tmp_path / "off", per_batch=4, test=5)
    dm = CIFAR10DataModule(data_dir=str(root), val_size=5, download=False)
    dm.setup("fit")
    assert dm.num_classes == 10
    assert (len(dm.train_split), len(dm.val_split), len(dm.test_split)) == (15, 5, 5)


def test_val_size_too_large(tmp_path, cache_dir):
    root = make_image_folder(tmp_path / "d", {"train": 2})
    with pytest.raises(DataError, match="val_size must be between 1 and 5"):
        make_dm(root, cache_dir, val_size=6)


@pytest.mark.parametrize("option", ["batch_size", "image_size", "eval_batch_size"])
def test_non_positive_sizes_are_refused(tmp_path, option):
    root = make_image_folder(tmp_path / "d", {"train": 1})
    with pytest.raises(DataError, match=f"--data.{option} must be a whole number from 1 to"):
        CIFAR10DataModule(data_dir=str(root), **{option: 0})


def test_loader_batches(tmp_path, cache_dir):
    root = make_image_folder(tmp_path / "d", {"train": 10, "test": 2})
    dm = make_dm(root, cache_dir, val_size=5, batch_size=8, eval_batch_size=4)
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (8, 3, 32, 32) and images.dtype == torch.uint8 and labels.dtype == torch.int64
    batches = list(dm.val_dataloader())
    assert [len(b[1]) for b in batches] == [4, 1]
    # Evaluation order is the split's order, so every image is seen exactly once.
    assert torch.equal(torch.cat([b[0] for b in batches]), dm.val_split.images)
    # 25 training images in batches of 8 would leave a last batch of one image, which BatchNorm cannot
    # train on: that one batch is dropped (a different image each epoch, as the order is shuffled).
    assert [len(b[1]) for b in dm.train_dataloader()] == [8, 8, 8]
    dm = make_dm(root, cache_dir, val_size=6, batch_size=7)
    seen = torch.cat([b[1] for b in dm.train_dataloader()])
    assert sorted(seen.tolist()) == sorted(dm.train_split.labels.tolist())


def test_augmentation_only_on_training_batches(tmp_path, cache_dir):
    root = make_image_folder(tmp_path / "d", {"train": 4})
    dm = make_dm(root, cache_dir, val_size=2, crop_padding=4, flip=True)
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(16)
    dm.trainer = SimpleNamespace(training=False)
    out, out_labels = dm.on_after_batch_transfer((images, labels), 0)
    assert torch.equal(out, images) and torch.equal(out_labels, labels)
    dm.trainer = SimpleNamespace(training=True)
    torch.manual_seed(0)
    out, out_labels = dm.on_after_batch_transfer((images, labels), 0)
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert not torch.equal(out, images) and torch.equal(out_labels, labels)


def test_tutorial_recipe_has_no_augmentation(tmp_path, cache_dir):
    root = make_image_folder(tmp_path / "d", {"train": 4})
    dm = make_dm(root, cache_dir, val_size=2)
    dm.trainer = SimpleNamespace(training=True)
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    assert torch.equal(dm.on_after_batch_transfer((images, torch.zeros(4)), 0)[0], images)


# --- augmentation functions ------------------------------------------------------------------


def test_crop_at_matches_slicing():
    padded = torch.arange(2 * 1 * 6 * 6, dtype=torch.int64).view(2, 1, 6, 6)
    dy, dx = torch.tensor([0, 2]), torch.tensor([1, 0])
    out = augment.crop_at(padded, dy, dx, 4, 4)
    assert torch.equal(out[0], padded[0, :, 0:4, 1:5])
    assert torch.equal(out[1], padded[1, :, 2:6, 0:4])


def test_random_crop_is_a_shifted_window_of_the_padded_image():
    torch.manual_seed(0)
    images = torch.randint(1, 256, (32, 3, 8, 8), dtype=torch.uint8)  # no zeros: padding is recognisable
    out = augment.random_crop(images, padding=2)
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    offsets = set()
    for i in range(len(images)):
        windows = [(dy, dx) for dy in range(5) for dx in range(5)]
        matches = [(dy, dx) for dy, dx in windows if torch.equal(out[i], padded[i, :, dy : dy + 8, dx : dx + 8])]
        assert matches, f"image {i} is not a window of its padded image"
        offsets.add(matches[0])
    assert len(offsets) > 5  # offsets vary per image
    assert torch.equal(augment.random_crop(images, padding=0), images)


def test_random_flip_mirrors_about_half():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (400, 3, 4, 4), dtype=torch.uint8)
    out = augment.random_flip(images)
    flipped = torch.tensor([torch.equal(o, i.flip(2)) for o, i in zip(out, images, strict=True)])
    kept = torch.tensor([torch.equal(o, i) for o, i in zip(out, images, strict=True)])
    assert bool((flipped | kept).all())
    assert 150 < int(flipped.sum()) < 250


def test_alternating_flip_shows_each_image_both_ways_in_consecutive_epochs():
    images = torch.randint(0, 256, (6, 3, 4, 4), dtype=torch.uint8)
    first = torch.tensor([True, False, True, True, False, False])
    seen = [augment.alternating_flip(images, first, epoch) for epoch in range(4)]
    for i in range(len(images)):
        mirrored = [torch.equal(s[i], images[i].flip(2)) for s in seen]
        assert mirrored == [bool(first[i]), not first[i], bool(first[i]), not first[i]]
        assert all(torch.equal(s[i], images[i]) != m for s, m in zip(seen, mirrored, strict=True))


def test_alternate_flip_through_the_datamodule(tmp_path, cache_dir):
    root = make_image_folder(tmp_path / "d", {"train": 6})
    with pytest.raises(DataError, match="needs --data.flip true"):
        CIFAR10DataModule(data_dir=str(root), cache_dir=str(cache_dir), alternate_flip=True)
    torch.manual_seed(3)
    dm = make_dm(root, cache_dir, val_size=4, batch_size=5, flip=True, alternate_flip=True)
    first_flips = dm.first_flips.clone()
    assert first_flips.shape == (len(dm.train_split),) and 0 < int(first_flips.sum()) < len(first_flips)
    torch.manual_seed(3)  # the same training seed draws the same first-epoch flips
    assert torch.equal(make_dm(root, cache_dir, val_size=4, flip=True, alternate_flip=True).first_flips, first_flips)
    images, labels, indices = next(iter(dm.train_dataloader()))  # training batches carry image indices
    assert torch.equal(images, dm.train_split.images[indices]) and torch.equal(labels, dm.train_split.labels[indices])
    for epoch in (0, 1, 2):
        dm.trainer = SimpleNamespace(training=True, current_epoch=epoch)
        out, out_labels = dm.on_after_batch_transfer((images, labels, indices), 0)
        assert torch.equal(out_labels, labels)
        for i, index in enumerate(indices.tolist()):
            assert torch.equal(out[i], images[i].flip(2) if bool(first_flips[index]) ^ (epoch % 2 == 1) else images[i])
    dm.trainer = None
    assert len(next(iter(dm.val_dataloader()))) == 2  # evaluation batches stay (images, labels)


def test_resize_keeps_flat_images_flat_and_averages_blocks():
    flat = torch.full((2, 3, 32, 32), 77, dtype=torch.uint8)
    assert torch.equal(augment.resize(flat, 16), torch.full((2, 3, 16, 16), 77, dtype=torch.uint8))
    # Halving is antialiased (without it bilinear would sample single pixels): away from the border
    # a checkerboard turns mid-grey.
    board = ((torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2 * 200).to(torch.uint8).expand(1, 3, 8, 8)
    assert torch.equal(augment.resize(board, 4)[..., 1:3, 1:3], torch.full((1, 3, 2, 2), 100, dtype=torch.uint8))
    # A left-right ramp stays ordered left to right.
    ramp = (torch.arange(32) * 8).to(torch.uint8).expand(1, 3, 32, 32)
    row = augment.resize(ramp, 24)[0, 0, 5].int()
    assert (row.diff() > 0).all()
    assert augment.resize(ramp, 32) is ramp
    # Working in chunks (memory) does not change a pixel; non-square inputs become square.
    noise = torch.randint(0, 256, (5, 3, 20, 30), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(augment.resize(noise, 12, chunk=2), augment.resize(noise, 12, chunk=5))
    assert augment.resize(noise, 12).shape == (5, 3, 12, 12)


def test_progressive_sizes_resize_training_batches_per_epoch(tmp_path, cache_dir):
    root = make_image_folder(tmp_path / "d", {"train": 6})
    for bad in ([8, 33], [1, 32]):
        with pytest.raises(DataError, match="each size must be from 2 to --data.image_size"):
            CIFAR10DataModule(data_dir=str(root), cache_dir=str(cache_dir), progressive_sizes=bad)
    dm = make_dm(root, cache_dir, val_size=4, batch_size=5, crop_padding=2, flip=True, progressive_sizes=[16, 24])
    images, labels = next(iter(dm.train_dataloader()))
    for epoch, size in ((0, 16), (1, 24), (5, 24)):  # the last size holds for later epochs
        dm.trainer = SimpleNamespace(training=True, current_epoch=epoch)
        out, out_labels = dm.on_after_batch_transfer((images, labels), 0)
        assert out.shape == (5, 3, size, size) and out.dtype == torch.uint8
        assert torch.equal(out_labels, labels)
    dm.trainer = None
    val_images, val_labels = next(iter(dm.val_dataloader()))
    dm.trainer = SimpleNamespace(training=False, current_epoch=0)
    assert dm.on_after_batch_transfer((val_images, val_labels), 0)[0].shape[-1] == 32  # evaluation at full size


# --- start-up cost: read only what is used, scan once ----------------------------------------


def decoded_splits(monkeypatch) -> list[str]:
    """The split folder of every image decoded from now on."""
    seen: list[str] = []
    read = sources.read_image

    def recording(path, *args, **kwargs):
        seen.append(path.parts[-3])
        return read(path, *args, **kwargs)

    monkeypatch.setattr(sources, "read_image", recording)
    return seen


def test_eval_dataloader_decodes_only_the_split_it_scores(tmp_path, cache_dir, monkeypatch):
    root = make_image_folder(tmp_path / "d", {"train": 4, "test": 2})
    (root / "train" / "cat" / "broken.png").write_bytes(b"not an image")  # never read when scoring test
    seen = decoded_splits(monkeypatch)
    dm = CIFAR10DataModule(data_dir=str(root), cache_dir=str(cache_dir), val_size=3)
    assert dm.has_test_split and seen == []  # known from the layout
    assert len(dm.eval_dataloader("test").dataset) == 6
    assert set(seen) == {"test"} and dm.train_split is None
    # val is the seeded hold-out of train, so it needs train (here with a file it cannot decode).
    with pytest.raises(DataError, match="cannot decode image"):
        dm.eval_dataloader("val")


def test_eval_of_val_reads_the_val_folder_alone(tmp_path, cache_dir, monkeypatch):
    root = make_image_folder(tmp_path / "d", {"train": 4, "val": 2})
    seen = decoded_splits(monkeypatch)
    dm = CIFAR10DataModule(data_dir=str(root), cache_dir=str(cache_dir))
    assert not dm.has_test_split
    assert len(dm.eval_dataloader("val").dataset) == 6 and set(seen) == {"val"}
    assert len(dm.eval_dataloader("train").dataset) == 12  # val/ exists: all of train, no hold-out
    with pytest.raises(DataError, match="no test split in"):
        dm.eval_dataloader("test")
    # A fit start after that reads nothing again and ends with every split.
    seen.clear()
    dm.setup("fit")
    assert seen == [] and (len(dm.train_split), len(dm.val_split)) == (12, 6)


def test_official_test_split_reads_only_test_batch(tmp_path, skip_md5):
    root = make_official_batches(tmp_path / "off", per_batch=4, test=5)
    (root / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"garbage: never unpickled for test")
    dm = CIFAR10DataModule(data_dir=str(root), download=False)
    assert dm.has_test_split
    assert len(dm.eval_dataloader("test").dataset) == 5 and dm.train_split is None


def test_a_fit_start_scans_the_folder_once_and_still_sees_changes(tmp_path, cache_dir, monkeypatch):
    root = make_image_folder(tmp_path / "d", {"train": 4, "test": 1})
    scans = []
    scan = sources.scan_folder

    def counting(*args, **kwargs):
        scans.append(args)
        return scan(*args, **kwargs)

    monkeypatch.setattr(sources, "scan_folder", counting)
    for start in ("cold", "warm"):
        scans.clear()
        dm = make_dm(root, cache_dir, val_size=2)
        assert len(scans) == 1, f"{start} start scanned the folder {len(scans)} times"
        assert dm.has_test_split and len(scans) == 1
    # The one scan still checks the cache against the files: an edited image is decoded again.
    edited = root / "train" / "cat" / "0000.png"
    Image.new("RGB", (32, 32), (7, 7, 7)).save(edited)
    os.utime(edited, ns=(1, 1))
    dm = make_dm(root, cache_dir, val_size=2)
    everything = torch.cat([dm.train_split.images, dm.val_split.images])
    assert any((image == 7).all() for image in everything)
