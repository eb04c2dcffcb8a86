"""Reading official batches and image folders into uint8 tensors; the cache; data errors."""

from __future__ import annotations

import os
import pickle
import urllib.error

import numpy as np
import pytest
import torch
from helpers import CLASSES, make_image_folder, make_official_batches
from PIL import Image

from datamodules import augment, sources
from datamodules.sources import CIFAR10_CLASSES, DataError


def test_image_folder_tensors_labels_and_splits(tmp_path, cache_dir):
    root = make_image_folder(tmp_path / "data", {"train": 5, "val": 2, "test": 3})
    data = sources.load(root, cache_dir=cache_dir, log=lambda m: None)
    assert data.kind == "folder"
    assert data.classes == list(CLASSES)
    assert data.train.images.shape == (15, 3, 32, 32) and data.train.images.dtype == torch.uint8
    assert data.train.labels.dtype == torch.int64
    assert data.train.labels.tolist() == [0] * 5 + [1] * 5 + [2] * 5  # label = index of the sorted class folder
    assert len(data.val) == 6 and len(data.test) == 9
    # Pixels are the file's pixels, channels first.
    first = np.array(Image.open(root / "train" / "cat" / "0000.png"))
    assert torch.equal(data.train.images[0], torch.from_numpy(first).permute(2, 0, 1))


def test_image_folder_without_val_and_test(tmp_path, cache_dir):
    data = sources.load(make_image_folder(tmp_path / "d", {"train": 4}), cache_dir=cache_dir, log=lambda m: None)
    assert data.val is None and data.test is None and len(data.train) == 12


def test_other_sizes_and_formats_are_resized(tmp_path, cache_dir):
    root = make_image_folder(tmp_path / "d", {"train": 2}, size=40, suffix=".jpg")
    Image.new("L", (20, 30), 128).save(root / "train" / "cat" / "gray.bmp")  # grayscale BMP: via Pillow
    data = sources.load(root, cache_dir=cache_dir, image_size=32, log=lambda m: None)
    assert data.train.images.shape == (7, 3, 32, 32)
    gray = data.train.images[data.train.labels == 0][-1]
    assert (gray == 128).all()  # grey becomes R=G=B, a flat image stays flat when resized
    small = sources.load(root, cache_dir=cache_dir, image_size=16, log=lambda m: None)
    assert small.train.images.shape == (7, 3, 16, 16)
    # Decoding at another size uses the same shrink as progressive resizing (datamodules.augment).
    full = sources.load(root, cache_dir=cache_dir, image_size=40, log=lambda m: None)
    assert torch.equal(small.train.images, augment.resize(full.train.images, 16))


def test_official_batches(tmp_path, skip_md5):
    root = make_official_batches(tmp_path / "off", per_batch=6, test=8)
    assert sources.detect_layout(root, download=False) == "official"
    data = sources.load(root, download=False)
    assert data.kind == "official" and data.classes == list(CIFAR10_CLASSES)
    assert data.train.images.shape == (30, 3, 32, 32) and data.train.images.dtype == torch.uint8
    assert data.test.images.shape == (8, 3, 32, 32) and data.val is None
    with open(root / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        raw = pickle.load(f)
    assert data.train.labels[:6].tolist() == raw["labels"]
    assert torch.equal(data.train.images[0].reshape(-1), torch.from_numpy(raw["data"][0]))


def test_cache_is_reused(tmp_path, cache_dir, monkeypatch):
    root = make_image_folder(tmp_path / "d", {"train": 3})
    first = sources.load(root, cache_dir=cache_dir, log=lambda m: None)
    assert len(list(cache_dir.glob("*.pt"))) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded an image although the cache is valid")

    monkeypatch.setattr(sources, "read_image", no_decoding)
    again = sources.load(root, cache_dir=cache_dir, log=lambda m: None)
    assert torch.equal(first.train.images, again.train.images)
    assert torch.equal(first.train.labels, again.train.labels)


@pytest.mark.parametrize("change", ["add", "remove", "edit"])
def test_cache_is_invalidated_when_files_change(tmp_path, cache_dir, change):
    root = make_image_folder(tmp_path / "d", {"train": 3})
    before = sources.load(root, cache_dir=cache_dir, log=lambda m: None)
    target = root / "train" / "dog" / "0001.png"
    if change == "add":
        Image.new("RGB", (32, 32), (1, 2, 3)).save(root / "train" / "dog" / "new.png")
    elif change == "remove":
        target.unlink()
    else:
        Image.new("RGB", (32, 32), (9, 9, 9)).save(target)
        os.utime(target, ns=(1, 1))  # a different mtime even on coarse-clock filesystems
    after = sources.load(root, cache_dir=cache_dir, log=lambda m: None)
    expected = {"add": 10, "remove": 8, "edit": 9}[change]
    assert len(after.train) == expected
    if change == "edit":
        assert not torch.equal(before.train.images, after.train.images)
        assert (after.train.images[4] == 9).all()
    assert len(list(cache_dir.glob("*.pt"))) == 1  # the stale cache file is removed


def test_an_old_cache_format_is_rebuilt_not_misread(tmp_path, cache_dir, monkeypatch):
    root = make_image_folder(tmp_path / "data", {"train": 2})
    messages: list[str] = []
    monkeypatch.setattr(sources, "CACHE_FORMAT", sources.CACHE_FORMAT - 1)
    sources.load(root, cache_dir=cache_dir, log=messages.append)
    monkeypatch.undo()
    messages.clear()
    sources.load(root, cache_dir=cache_dir, log=messages.append)
    assert any(m.startswith("Decoding") for m in messages), "a cache of the old format was trusted"
    assert len(list(cache_dir.glob("*.pt"))) == 1  # the stale one is removed


def test_damaged_cache_is_rebuilt(tmp_path, cache_dir):
    root = make_image_folder(tmp_path / "d", {"train": 2})
    good = sources.load(root, cache_dir=cache_dir, log=lambda m: None)
    (cache_file,) = cache_dir.glob("*.pt")
    cache_file.write_bytes(b"not a torch file")
    messages = []
    again = sources.load(root, cache_dir=cache_dir, log=messages.append)
    assert torch.equal(good.train.images, again.train.images)
    assert any("rebuilding" in m for m in messages)
    # Altered but still a valid torch file: the content hash catches it, never a silent wrong answer.
    blob = torch.load(cache_file, weights_only=True)
    blob["train_labels"].zero_()
    torch.save(blob, cache_file)
    messages.clear()
    again = sources.load(root, cache_dir=cache_dir, log=messages.append)
    assert any("content hash" in m for m in messages)
    assert sorted(again.train.labels.tolist()) == [0, 0, 1, 1, 2, 2]


def test_split_indices_are_seeded_and_disjoint():
    train, val = sources.split_indices(100, 20, seed=3)
    assert len(train) == 80 and len(val) == 20
    assert sorted(torch.cat([train, val]).tolist()) == list(range(100))
    train2, val2 = sources.split_indices(100, 20, seed=3)
    assert torch.equal(val, val2) and torch.equal(train, train2)
    _, val3 = sources.split_indices(100, 20, seed=4)
    assert not torch.equal(val, val3)
    for bad in (0, 100, 150):
        with pytest.raises(DataError, match="val_size"):
            sources.split_indices(100, bad, seed=0)


# --- errors: one line, naming the fix --------------------------------------------------------


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_missing_data_dir(tmp_path):
    with pytest.raises(DataError) as err:
        sources.detect_layout(tmp_path / "nope", download=False)
    assert "does not exist" in one_line(err) and "--data.data_dir" in one_line(err)


def test_folder_with_something_else_is_not_downloaded_into(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match="neither cifar-10-python.tar.gz, cifar-10-batches-py/ nor train/"):
        sources.detect_layout(tmp_path / "d", download=True)


def test_no_images(tmp_path, cache_dir):
    for name in ("cat", "dog"):
        (tmp_path / "d" / "train" / name).mkdir(parents=True)
        (tmp_path / "d" / "train" / name / "readme.txt").write_text("not an image")
    with pytest.raises(DataError) as err:
        sources.load(tmp_path / "d", cache_dir=cache_dir)
    assert "holds no images" in one_line(err)


def test_no_class_folders(tmp_path, cache_dir):
    (tmp_path / "d" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="has no class folders"):
        sources.load(tmp_path / "d", cache_dir=cache_dir)


def test_class_folder_missing_from_a_split(tmp_path, cache_dir):
    root = make_image_folder(tmp_path / "d", {"train": 2, "val": 1})
    for f in (root / "val" / "ship").iterdir():
        f.unlink()
    (root / "val" / "ship").rmdir()
    with pytest.raises(DataError) as err:
        sources.load(root, cache_dir=cache_dir)
    assert "ship missing from val/" in one_line(err)


def test_download_failure_offline_names_both_ways_out(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tv_utils
    from torchvision.datasets import cifar

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", offline)
    monkeypatch.setattr(cifar, "download_and_extract_archive", offline)
    with pytest.raises(DataError) as err:
        sources.load(tmp_path / "empty", download=True)
    message = one_line(err)
    assert "could not download" in message
    assert "cifar-10-python.tar.gz" in message and "--data.data_dir" in message


def test_corrupted_official_batch_is_refused(tmp_path):
    root = make_official_batches(tmp_path / "off")
    # Real md5 check (not patched): fake files fail it, as a damaged download would.
    with pytest.raises(DataError) as err:
        sources.load(root, download=False)
    assert "integrity" in one_line(err) and "download again" in one_line(err)


def decoded_paths(monkeypatch) -> list[str]:
    """Records the path of every image decoded from now on, as 'split/class/file'."""
    seen: list[str] = []
    read = sources.read_image

    def recording(path, *args, **kwargs):
        seen.append("/".join(path.parts[-3:]))
        return read(path, *args, **kwargs)

    monkeypatch.setattr(sources, "read_image", recording)
    return seen


def test_each_split_is_cached_on_its_own(tmp_path, cache_dir, monkeypatch):
    root = make_image_folder(tmp_path / "d", {"train": 3, "test": 2})
    before = sources.load(root, cache_dir=cache_dir, log=lambda m: None)
    (train_cache,) = cache_dir.glob("*-train-*.pt")
    # A cache of format 3 and older (all splits in one file, no split in its name) is removed.
    legacy = cache_dir / f"{train_cache.name.rsplit('-', 2)[0]}-{'0' * 16}.pt"
    legacy.write_bytes(b"old")
    seen = decoded_paths(monkeypatch)
    Image.new("RGB", (32, 32), (9, 9, 9)).save(root / "train" / "dog" / "0001.png")
    os.utime(root / "train" / "dog" / "0001.png", ns=(1, 1))
    after = sources.load(root, cache_dir=cache_dir, log=lambda m: None)
    # Editing a training image rebuilds train's cache only: test/ is not decoded again.
    assert seen and all(p.startswith("train/") for p in seen), seen
    assert (after.train.images[4] == 9).all()
    assert torch.equal(before.test.images, after.test.images) and torch.equal(before.test.labels, after.test.labels)
    assert sorted(p.name.split("-")[-2] for p in cache_dir.glob("*.pt")) == ["test", "train"]
    assert not legacy.exists()


def test_only_the_asked_splits_are_read(tmp_path, cache_dir, monkeypatch, skip_md5):
    root = make_image_folder(tmp_path / "d", {"train": 3, "val": 1, "test": 2})
    (root / "train" / "dog" / "broken.png").write_bytes(b"not an image")
    seen = decoded_paths(monkeypatch)
    data = sources.load(root, splits=("test",), cache_dir=cache_dir, log=lambda m: None)
    assert data.train is None and data.val is None and len(data.test) == 6
    assert len(seen) == 6 and all(p.startswith("test/") for p in seen)
    assert sources.available_splits(root, download=False) == ("train", "val", "test")
    # Official files: scoring test reads test_batch only.
    official = make_official_batches(tmp_path / "off", test=5)
    (official / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"garbage")
    data = sources.load(official, splits=("test",), download=False)
    assert data.train is None and len(data.test) == 5
