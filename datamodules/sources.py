"""Read CIFAR-10 into uint8 tensors, once: the official python batches or an image-folder tree.

Two layouts are understood, chosen from what ``data_dir`` holds:

* official: ``data_dir/cifar-10-batches-py`` (read and md5-checked by torchvision, downloaded
  into ``data_dir`` when it is absent or empty and downloading is allowed), or the archive
  ``data_dir/cifar-10-python.tar.gz`` as downloaded by hand (md5-checked and unpacked once);
* image folder: ``data_dir/train/<class>/*`` with optional ``val/`` and ``test/`` beside it.

Image folders are decoded once and cached as one ``.pt`` file per split in a cache directory
(the data folder may be read-only), so scoring test/ never decodes train/. A split's cache key
includes every file's path, size and mtime, so adding, removing or editing an image rebuilds it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from datamodules.atomic_files import atomic_write
from datamodules.augment import resize
from datamodules.image_reader import SUFFIXES, ImageFileError, is_image_file, read_image

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
OFFICIAL_FOLDER = "cifar-10-batches-py"
OFFICIAL_ARCHIVE = "cifar-10-python.tar.gz"  # https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz
# The archive unpacks to 8 files, 178 MB; anything larger or longer is not that archive.
ARCHIVE_MAX_BYTES = 200_000_000
ARCHIVE_MAX_MEMBERS = 16
SPLITS = ("train", "val", "test")
# Bump when the cache layout or decoding changes, so old caches are rebuilt, not misread.
# 3: decoded by the one image reader (image_reader.py), the same as predict and serve; val/test
# stored in a seeded shuffled order. 4: one file per split. 5: large JPEGs decoded at a reduced
# scale (image_reader.DRAFT_MARGIN), within one grey level of the full decode.
CACHE_FORMAT = 5
# Seed of the order val/ and test/ folders are stored in: shuffled, so any prefix
# (--trainer.limit_val_batches) samples every class, and fixed, so every run sees the same order.
ORDER_SEED = 0
# A cache writer's temporary file older than this (seconds) was left by a killed process.
STALE_TEMP_S = 600
# Decoded splits whose cache could not be written, by cache path: decoded once per process, not twice.
_UNWRITTEN: dict[Path, dict] = {}
# Warnings already given by this process.
_WARNED: set[str] = set()
# Cache files (path, size, mtime) whose content hash this process has checked.
_VERIFIED: set[tuple[str, int, int]] = set()


class DataError(Exception):
    """A problem with the user's data or data options; the message says how to fix it."""


@dataclass(frozen=True)
class Split:
    images: Tensor  # (N, 3, H, W) uint8
    labels: Tensor  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class SourceData:
    classes: list[str]
    train: Split | None  # None: not asked for
    val: Split | None  # None: not asked for, or no val/ folder (the caller splits train)
    test: Split | None  # None: not asked for, or no test split available
    kind: str  # "official" or "folder"


@dataclass(frozen=True)
class Listing:
    """One scan of an image-folder tree, handed from prepare() to the load() that follows it, so a
    start stats every file once; the cache it names was checked against these files moments ago."""

    root: Path
    splits: tuple[str, ...]  # the splits scanned (those present are in files)
    classes: list[str]
    files: dict[str, list[tuple[str, int, int, int]]]


def detect_layout(data_dir: str | os.PathLike, download: bool) -> str:
    """Return "official" or "folder" for ``data_dir``, or raise DataError saying what to put there."""
    root = Path(data_dir)
    if (root / OFFICIAL_FOLDER).is_dir() or (root / OFFICIAL_ARCHIVE).is_file():
        return "official"
    if (root / "train").is_dir():
        return "folder"
    if root.is_file():
        raise DataError(f"data_dir {root} is a file; point --data.data_dir at a folder")
    absent_or_empty = not root.exists() or not any(p for p in root.iterdir() if not p.name.startswith("."))
    # Downloading into a folder that holds something else could hide a mistyped path.
    if absent_or_empty and download:
        return "official"
    if not root.exists():
        raise DataError(
            f"data_dir {root} does not exist: check the path, or pass --data.download true to download "
            f"CIFAR-10 into it, or point --data.data_dir at a folder holding {OFFICIAL_ARCHIVE}, "
            f"{OFFICIAL_FOLDER}/ or train/<class>/*"
        )
    raise DataError(
        f"data_dir {root} holds neither {OFFICIAL_ARCHIVE}, {OFFICIAL_FOLDER}/ nor train/<class>/ folders; "
        f"point --data.data_dir at the folder that contains them"
    )


def available_splits(data_dir: str | os.PathLike, download: bool) -> tuple[str, ...]:
    """The splits ``data_dir`` holds, from its layout alone (no image is read)."""
    if detect_layout(data_dir, download) == "official":
        return ("train", "test")
    return tuple(s for s in SPLITS if s == "train" or (Path(data_dir) / s).is_dir())


def discover_classes(data_dir: str | os.PathLike, download: bool) -> list[str]:
    """Class names without decoding any image (cheap enough to call from a constructor)."""
    if detect_layout(data_dir, download) == "official":
        return list(CIFAR10_CLASSES)
    return _class_folders(Path(data_dir) / "train")


def load(
    data_dir: str | os.PathLike,
    *,
    splits: tuple[str, ...] = SPLITS,
    download: bool = True,
    cache_dir: str | os.PathLike | None = None,
    image_size: int = 32,
    skip_bad_images: bool = False,
    log=print,
    listing: Listing | None = None,
) -> SourceData:
    """Load the available ones of ``splits`` as uint8 tensors of ``image_size`` x ``image_size``; no
    other split is read. ``listing``: what prepare() returned for the same tree, to skip a rescan."""
    if detect_layout(data_dir, download) == "official":
        return _load_official(Path(data_dir), download, image_size, splits)
    root = Path(data_dir)
    if listing is not None and (listing.root != root or not set(splits) <= set(listing.splits)):
        listing = None
    cache = Path(cache_dir or default_cache_dir())
    return _load_folder_cached(root, cache, image_size, log, skip_bad_images, splits, listing)[0]


def prepare(
    data_dir: str | os.PathLike,
    *,
    splits: tuple[str, ...] = SPLITS,
    download: bool = True,
    cache_dir: str | os.PathLike | None = None,
    image_size: int = 32,
    skip_bad_images: bool = False,
    log=print,
) -> Listing | None:
    """Download, or build the caches of ``splits``, once (Lightning calls this on one process per node).

    For an image folder it returns the scan it made, for load() in the same process to reuse."""
    if detect_layout(data_dir, download) == "official":
        for split in ("train", "test"):
            if split in splits:
                _official_dataset(Path(data_dir), train=split == "train", download=download)
        return None
    cache = Path(cache_dir or default_cache_dir())
    return _load_folder_cached(Path(data_dir), cache, image_size, log, skip_bad_images, splits, None)[1]


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cifar10-lightning"


# --------------------------------------------------------------------------------------------
# Official CIFAR-10 batches


def unpack_archive(root: Path) -> None:
    """Unpack ``root/cifar-10-python.tar.gz`` into ``root/cifar-10-batches-py``, once: md5-checked,
    only regular files under that one folder (no links, no paths outside it), bounded in size, and
    through a temporary folder renamed into place, so a failed unpack leaves nothing half-done."""
    import shutil
    import tarfile
    import tempfile

    from torchvision.datasets import cifar

    archive = root / OFFICIAL_ARCHIVE
    if not cifar.check_integrity(str(archive), cifar.CIFAR10.tgz_md5):
        raise DataError(
            f"{archive} is not the CIFAR-10 archive (its md5 differs from {cifar.CIFAR10.tgz_md5}): download it "
            "again from https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
        )
    temp = Path(tempfile.mkdtemp(dir=root, prefix=".unpacking-"))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members, total = tar.getmembers(), 0
            for member in members[: ARCHIVE_MAX_MEMBERS + 1]:
                parts = Path(member.name).parts
                total += member.size
                if (
                    len(members) > ARCHIVE_MAX_MEMBERS or total > ARCHIVE_MAX_BYTES
                    or not (member.isfile() or member.isdir())
                    or not parts or parts[0] != OFFICIAL_FOLDER or ".." in parts or Path(member.name).is_absolute()
                ):  # fmt: skip
                    raise DataError(
                        f"{archive}: unexpected entry {member.name!r} (only {OFFICIAL_FOLDER}/ files belong there); "
                        "download the archive again"
                    )
            tar.extractall(temp, members=members, filter="data")
        os.replace(temp / OFFICIAL_FOLDER, root / OFFICIAL_FOLDER)
    except (tarfile.TarError, EOFError, OSError) as err:
        raise DataError(f"cannot unpack {archive} ({err}); download it again, or unpack it by hand there") from None
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def _official_dataset(root: Path, train: bool, download: bool):
    from torchvision.datasets import CIFAR10

    if not (root / OFFICIAL_FOLDER).is_dir() and (root / OFFICIAL_ARCHIVE).is_file():
        unpack_archive(root)
    present = (root / OFFICIAL_FOLDER).is_dir()
    created = not root.exists()
    try:
        return CIFAR10(str(root), train=train, download=download and not present)
    except RuntimeError as err:  # torchvision: "Dataset not found or corrupted"
        if present:
            raise DataError(
                f"{root / OFFICIAL_FOLDER} failed torchvision's md5 integrity check ({err}); delete it "
                f"and download again, or point --data.data_dir at an image-folder tree"
            ) from None
        raise DataError(
            f"CIFAR-10 is not in {root} and downloading is off: put {OFFICIAL_FOLDER}/ there, allow "
            f"--data.download true, or point --data.data_dir at an image-folder tree"
        ) from None
    except OSError as err:  # URLError, socket and DNS failures, disk errors while downloading
        if created:  # a failed start leaves nothing behind
            with contextlib.suppress(OSError):
                root.rmdir()
        raise DataError(
            f"could not download CIFAR-10 into {root} ({err}): download {OFFICIAL_ARCHIVE} by hand "
            f"(https://www.cs.toronto.edu/~kriz/{OFFICIAL_ARCHIVE}) and put it in {root}/, or point "
            "--data.data_dir at an image-folder tree (train/<class>/*.png)"
        ) from None


def _load_official(root: Path, download: bool, image_size: int, wanted: tuple[str, ...]) -> SourceData:
    splits = {}
    for name, train in (("train", True), ("test", False)):
        if name not in wanted:
            continue  # torchvision reads data_batch_1-5 for train only, test_batch for test only
        ds = _official_dataset(root, train=train, download=download)
        # (N, H, W, C) numpy -> (N, C, H, W) contiguous, the layout convolutions want.
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
        splits[name] = Split(resize(images, image_size), torch.tensor(ds.targets, dtype=torch.int64))
    return SourceData(list(CIFAR10_CLASSES), splits.get("train"), None, splits.get("test"), "official")


# --------------------------------------------------------------------------------------------
# Image-folder trees


def _class_folders(split_dir: Path) -> list[str]:
    try:
        names = sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))
    except OSError as err:
        raise DataError(f"cannot list {split_dir}: {err.strerror}") from None
    if len(names) < 2:
        found = f"only {names[0]}/" if names else "no class folders"
        raise DataError(f"{split_dir} has {found}; a classifier needs 2 or more: {split_dir}/<class>/<image files>")
    for name in names:
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:  # undecodable bytes (surrogates): class names end up in logs and checkpoints
            shown = name.encode("utf-8", "backslashreplace").decode()
            raise DataError(f"class folder {split_dir / shown} is not valid UTF-8; rename it") from None
    return names


def scan_folder(
    root: Path, splits: tuple[str, ...] = SPLITS
) -> tuple[list[str], dict[str, list[tuple[str, int, int, int]]]]:
    """Classes (train/'s folders), and per present one of ``splits`` a list of (relative path, label,
    size, mtime_ns) in a stable order: the order in which the DataModule indexes a split's images
    (its validation split included)."""
    classes = _class_folders(root / "train")
    files: dict[str, list[tuple[str, int, int, int]]] = {}
    for split in SPLITS:
        split_dir = root / split
        if split not in splits or not split_dir.is_dir():
            continue
        found = _class_folders(split_dir)
        if found != classes:
            missing = sorted(set(classes) - set(found))
            extra = sorted(set(found) - set(classes))
            what = (
                f"class folder(s) {', '.join(missing)} missing from {split}/"
                if missing
                else f"class folder(s) {', '.join(extra)} in {split}/ are not in train/"
            )
            raise DataError(f"{what}: every split of {root} needs the same class folders as train/")
        entries = []
        for label, name in enumerate(classes):
            with os.scandir(split_dir / name) as it:
                for e in it:
                    if not is_image_file(e.name):  # the one rule, shared with predict's folders
                        continue
                    try:
                        st = e.stat()
                        size, mtime = st.st_size, st.st_mtime_ns
                    except OSError:  # a dangling symlink or a loop: the reader names it when decoding
                        size, mtime = -1, -1
                    entries.append((f"{split}/{name}/{e.name}", label, size, mtime))
        empty = sorted(set(classes) - {classes[e[1]] for e in entries})
        if empty:
            raise DataError(
                f"class folder {split_dir / empty[0]} holds no images: add images or remove the folder "
                f"(expected files ending in {', '.join(sorted(SUFFIXES))})"
            )
        entries.sort()
        if not entries:
            raise DataError(f"no images in {split_dir}: expected files ending in {', '.join(sorted(SUFFIXES))}")
        files[split] = entries
    return classes, files


def _cache_path(root: Path, cache_dir: Path, image_size: int, split: str, classes, entries) -> tuple[Path, str, str]:
    """(cache file, its name's prefix shared by every version of this split, the tree's prefix)."""
    where = hashlib.sha256(f"{root.resolve()}|{image_size}".encode()).hexdigest()[:12]
    content = hashlib.sha256(json.dumps([CACHE_FORMAT, image_size, split, classes, entries]).encode()).hexdigest()[:16]
    tree = f"{root.resolve().name}-{image_size}px-{where}-"
    return cache_dir / f"{tree}{split}-{content}.pt", f"{tree}{split}-", tree


def _load_folder_cached(
    root: Path,
    cache_dir: Path,
    image_size: int,
    log,
    skip_bad_images: bool,
    splits: tuple[str, ...],
    listing: Listing | None,
) -> tuple[SourceData, Listing]:
    if listing is None:
        listing = Listing(root, tuple(splits), *scan_folder(root, splits))
    classes, files = listing.classes, {k: v for k, v in listing.files.items() if k in splits}
    paths = {split: _cache_path(root, cache_dir, image_size, split, classes, files[split]) for split in files}
    blobs: dict[str, dict] = {}
    for split, (path, _, _) in paths.items():
        blob = _UNWRITTEN.get(path)  # decoded earlier in this process, but the cache could not be written
        if blob is None and path.is_file():
            blob = _read_cache(path, log)
        if blob is not None:
            blobs[split] = blob
    missing = [split for split in files if split not in blobs]
    if missing:
        n = sum(len(files[split]) for split in missing)
        log(f"Decoding {n:,} images from {root} (once; cached in {cache_dir})")
        start = time.perf_counter()
        for split in missing:
            blob = _decode_split(root, classes, split, files[split], image_size, log, skip_bad_images)
            blob["digest"] = _digest(blob)
            path, prefix, tree = paths[split]
            if _write_cache(path, prefix, tree, blob, log):
                _VERIFIED.add(_stamp(path))  # its digest was computed from the tensors just written
            else:
                _UNWRITTEN[path] = blob
            blobs[split] = blob
        log(f"Decoded {n:,} images in {time.perf_counter() - start:.1f} s")
    skipped = [rel for split in SPLITS if split in blobs for rel in blobs[split].get("skipped", [])]
    if skipped:
        # The cache remembers unreadable files, so the choice to skip them is made again every run.
        if not skip_bad_images:
            raise DataError(
                f"cannot decode image {root / skipped[0]} ({len(skipped)} unreadable in all); fix or remove it, "
                "or pass --data.skip_bad_images true"
            )
        message = f"Warning: skipped {len(skipped)} unreadable image(s), e.g. {root / skipped[0]}"
        if message not in _WARNED:  # prepare_data and setup both load: say it once per process
            _WARNED.add(message)
            log(message)

    def split(name: str) -> Split | None:
        return Split(blobs[name][f"{name}_images"], blobs[name][f"{name}_labels"]) if name in blobs else None

    return SourceData(list(classes), split("train"), split("val"), split("test"), "folder"), listing


def _read_cache(path: Path, log) -> dict | None:
    """A cache file's blob, or None (and a note) when it is unreadable or its content hash is wrong."""
    try:
        # mmap: the tensors are paged in as batches touch them, so a warm start is ~instant.
        blob = torch.load(path, weights_only=True, mmap=True)
    except Exception as err:  # a damaged cache is rebuilt, never trusted
        log(f"Cache {path} is unreadable ({err}); rebuilding it")
        return None
    # Hashed once per process and file version: prepare_data and setup both load the cache.
    if _stamp(path) not in _VERIFIED:
        if not isinstance(blob, dict) or blob.get("digest") != _digest(blob):
            log(f"Cache {path} does not match its content hash (altered on disk?); rebuilding it")
            return None
        _VERIFIED.add(_stamp(path))
    return blob


def _decode_split(root: Path, classes, split: str, entries, image_size: int, log, skip_bad_images: bool) -> dict:
    if split != "train":
        order = torch.randperm(len(entries), generator=torch.Generator().manual_seed(ORDER_SEED)).tolist()
        entries = [entries[i] for i in order]
    blob: dict = {"classes": classes, "skipped": []}
    images = torch.empty((len(entries), 3, image_size, image_size), dtype=torch.uint8)
    keep = torch.ones(len(entries), dtype=torch.bool)
    for i, (rel, _, _, _) in enumerate(entries):
        try:
            images[i] = read_image(root / rel, image_size)
        except ImageFileError as err:
            if not skip_bad_images:
                raise DataError(
                    f"cannot decode image {err}; fix or remove it, or pass --data.skip_bad_images true"
                ) from None
            keep[i] = False
            blob["skipped"].append(rel)
        if (i + 1) % 10000 == 0:
            log(f"  decoded {i + 1:,}/{len(entries):,} {split} images")
    labels = torch.tensor([e[1] for e in entries], dtype=torch.int64)
    blob[f"{split}_images"] = images[keep] if not keep.all() else images
    blob[f"{split}_labels"] = labels[keep]
    return blob


def _stamp(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path), st.st_size, st.st_mtime_ns


def _digest(blob: dict) -> str:
    """A hash of every tensor and name in a cache blob, so bytes altered on disk are noticed."""
    h = hashlib.blake2b(digest_size=16)
    for key in sorted(k for k in blob if k != "digest"):
        value = blob[key]
        h.update(key.encode())
        if isinstance(value, Tensor):
            h.update(memoryview(value.contiguous().numpy()).cast("B"))
        else:
            h.update(json.dumps(value).encode())
    return h.hexdigest()


def _write_cache(path: Path, prefix: str, tree: str, blob: dict, log) -> bool:
    """Write the cache atomically; False (and a note) when the folder is not writable."""
    try:
        # A temporary file left by a killed writer (older than any write in progress) is removed.
        for leftover in path.parent.glob(f".{prefix}*.tmp"):
            if time.time() - leftover.stat().st_mtime > STALE_TEMP_S:
                leftover.unlink(missing_ok=True)
        # A concurrent reader (another DDP process, another run) sees the old file or the whole new one.
        atomic_write(path, lambda f: torch.save(blob, f))
        for stale in path.parent.glob(f"{prefix}*.pt"):
            if stale != path:
                stale.unlink(missing_ok=True)
        # Formats 3 and older kept every split in one file, named without the split: never read now.
        for old in path.parent.glob(f"{tree}{'?' * 16}.pt"):
            old.unlink(missing_ok=True)
        return True
    except (OSError, RuntimeError) as err:  # torch.save on a full disk raises RuntimeError, not OSError
        # The data is already decoded in memory; only the next start gets slower.
        reason = getattr(err, "strerror", None) or (str(err).splitlines() or [type(err).__name__])[0][:120]
        log(f"Could not write the image cache {path} ({reason}); set --data.cache_dir to a writable folder with space")
        return False


def split_indices(n: int, val_size: int, seed: int) -> tuple[Tensor, Tensor]:
    """A seeded random (train, val) partition of range(n); the same seed gives the same split.

    Train indices are sorted (the loader shuffles them anyway); validation keeps its random order,
    so any prefix of it is a fair sample."""
    if not 0 < val_size < n:
        raise DataError(f"val_size must be between 1 and {n - 1} for {n:,} training images; got {val_size}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[val_size:].sort().values, order[:val_size]
