"""CIFAR10DataModule: where the images come from, how they are split, batched and augmented."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
import torch

# Lightning's own sampler for evaluation without padding (what its predict loop uses). Not in its
# documented API; tests/test_architecture.py fails if it moves or starts padding.
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torch.utils.data import DataLoader

from datamodules import augment, sources
from datamodules.device_batches import DeviceBatches
from datamodules.sources import DataError, Split
from datamodules.tensor_batches import TensorBatches, keep_batch

SPLITS = ("train", "val", "test")
DEFAULT_DATA_DIR = "data"


class CIFAR10DataModule(L.LightningDataModule):
    """CIFAR-10 (or any image-folder tree) as uint8 batches, augmented on the training device.

    Args:
        data_dir: a folder holding ``cifar-10-batches-py/`` or ``cifar-10-python.tar.gz`` (official
            CIFAR-10; the archive is unpacked once), or an image-folder tree ``train/<class>/*`` with
            optional ``val/`` and ``test/``. An absent or empty folder gets the official files
            downloaded into it when ``download`` allows.
        download: allow downloading the official files. Default (null): only into the default
            folder ``data``; true: into any absent or empty ``data_dir``; false: never.
        cache_dir: where decoded image folders are cached (default ``~/.cache/cifar10-lightning``).
        val_size: images held out of train for validation, by a seeded split; ignored when the
            tree has a ``val/`` folder.
        split_seed: seed of that split; kept apart from the training seed so that changing one
            does not move images between train and validation.
        batch_size: training batch size (images).
        eval_batch_size: validation/test batch size; defaults to ``batch_size``.
        image_size: images are resized to ``image_size`` x ``image_size`` pixels when they differ.
        crop_padding: random-crop augmentation: pad by this many pixels, crop back at a random
            offset (0: off).
        flip: random horizontal flip augmentation.
        alternate_flip: with ``flip``, mirror each image in every other epoch (from a random start
            per image) instead of tossing a coin each epoch; airbench's trick for short runs.
        progressive_sizes: progressive resizing: the training image size (pixels) of each epoch, the
            last one kept for any later epochs, e.g. ``[16, 24, 32]``. Augmented training batches are
            shrunk (bilinear, antialiased); validation and test always see ``image_size``. A step at
            16 px costs about a quarter of one at 32 px, and small early epochs still teach the
            coarse features, so a short CPU run gets more epochs into the same minutes.
        num_workers: DataLoader worker processes for validation and test (training batches are cut on
            the device). 0 is right here: a batch is one tensor index.
        skip_bad_images: leave out image files that cannot be decoded (with a warning and a
            count) instead of stopping at the first one.
    """

    def __init__(
        self,
        data_dir: str = "data",
        download: bool | None = None,
        cache_dir: str | None = None,
        val_size: int = 5000,
        split_seed: int = 0,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        image_size: int = 32,
        crop_padding: int = 0,
        flip: bool = False,
        alternate_flip: bool = False,
        progressive_sizes: list[int] | None = None,
        num_workers: int = 0,
        skip_bad_images: bool = False,
    ) -> None:
        super().__init__()
        for name, value, most in (("batch_size", batch_size, 2**20), ("image_size", image_size, 1024)):
            if not 1 <= value <= most:
                raise DataError(f"--data.{name} must be a whole number from 1 to {most:,}; got {value}")
        if eval_batch_size is not None and not 1 <= eval_batch_size <= 2**20:
            raise DataError(f"--data.eval_batch_size must be a whole number from 1 to {2**20:,}; got {eval_batch_size}")
        if crop_padding < 0 or num_workers < 0:
            raise DataError("--data.crop_padding and --data.num_workers must be >= 0")
        if crop_padding > image_size:  # the padded batch would be (image_size + 2 * padding)^2 per image
            raise DataError(
                f"--data.crop_padding {crop_padding}: use at most --data.image_size ({image_size}); 4 is usual"
            )
        if alternate_flip and not flip:
            raise DataError("--data.alternate_flip true needs --data.flip true")
        if progressive_sizes is not None and not all(2 <= size <= image_size for size in progressive_sizes):
            raise DataError(
                f"--data.progressive_sizes {list(progressive_sizes)}: each size must be from 2 to --data.image_size "
                f"({image_size}) pixels; use null to train at image_size throughout"
            )
        self.save_hyperparameters()
        # Known without decoding anything, so the CLI can link num_classes/class names into the model.
        # A mistyped --data.data_dir must not become a new folder with a download running into it.
        self.download = download if download is not None else Path(data_dir) == Path(DEFAULT_DATA_DIR)
        self.classes: list[str] = sources.discover_classes(data_dir, self.download)
        self.train_split: Split | None = None
        self.val_split: Split | None = None
        self.test_split: Split | None = None
        self.first_flips: Tensor | None = None  # alternate_flip: which images are mirrored in epoch 0
        self.shuffle_seed = 0  # the training seed at setup: with the epoch, it orders each epoch

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_size(self) -> int:
        return self.hparams.image_size

    def train_size(self, epoch: int) -> int:
        """Training image size of ``epoch`` (0-based), from ``progressive_sizes``."""
        sizes = self.hparams.progressive_sizes
        return sizes[min(epoch, len(sizes) - 1)] if sizes else self.image_size

    def _source_kwargs(self, stage: str | None = None) -> dict:
        """Options of sources.prepare/load, with the source splits that ``stage`` (a Lightning stage, or
        one split name from eval_dataloader) needs and that are not loaded yet: scoring test/ never reads
        train/, while fit reads every split, test included for the test after training."""
        hp = self.hparams
        present = sources.available_splits(hp.data_dir, self.download)
        # Lightning's stages are str enums ("test" == TrainerFn.TESTING): compare, keep our own names.
        wanted = ("val",) if stage == "validate" else tuple(s for s in SPLITS if s == stage) or SPLITS
        read = set()
        for split in wanted:
            if getattr(self, f"{split}_split") is not None:
                continue
            if split in present:
                read.add(split)
            elif split == "val":  # without a val/ folder, val is the seeded hold-out of train
                read.add("train")
        return {
            "splits": tuple(s for s in SPLITS if s in read),
            "download": self.download,
            "cache_dir": hp.cache_dir,
            "image_size": hp.image_size,
            "skip_bad_images": hp.skip_bad_images,
            "log": rank_zero_info,
        }

    def prepare_data(self) -> None:
        # Lightning passes no stage here; the trainer's state names the one starting (test needs only test/).
        kwargs = self._source_kwargs(getattr(getattr(self.trainer, "state", None), "fn", None))
        if kwargs["splits"]:
            # setup() in this process reuses the scan, so a start stats every file once. Other DDP
            # processes (prepare_data runs on one per node) scan for themselves.
            self._listing = sources.prepare(self.hparams.data_dir, **kwargs)

    def setup(self, stage: str | None = None) -> None:
        kwargs = self._source_kwargs(stage)
        if not kwargs["splits"]:
            return
        start = time.perf_counter()
        listing, self._listing = getattr(self, "_listing", None), None
        data = sources.load(self.hparams.data_dir, listing=listing, **kwargs)
        if data.classes != self.classes:
            raise DataError(f"class folders changed while starting up: {self.classes} -> {data.classes}")
        present = sources.available_splits(self.hparams.data_dir, self.download)
        hold_out = data.train is not None and "val" not in present
        loaded = []
        if data.train is not None:
            if hold_out:
                hp = self.hparams
                train_idx, val_idx = sources.split_indices(len(data.train), hp.val_size, hp.split_seed)
                self.train_split = Split(data.train.images[train_idx], data.train.labels[train_idx])
                self.val_split = Split(data.train.images[val_idx], data.train.labels[val_idx])
            else:
                self.train_split = data.train
            # From the training seed (set before setup), so a rerun or a resumed run flips the same way;
            # every DDP process draws the same bits, and batches carry global indices.
            self.shuffle_seed = torch.initial_seed()
            generator = torch.Generator().manual_seed(self.shuffle_seed)
            self.first_flips = torch.rand(len(self.train_split), generator=generator) < 0.5
            loaded.append(f"train {len(self.train_split):,}")
        if data.val is not None:
            self.val_split = data.val
            loaded.append(f"val {len(self.val_split):,} (val/ folder)")
        elif hold_out:
            loaded.append(f"val {len(self.val_split):,} (seeded split of train, split_seed={self.hparams.split_seed})")
        if data.test is not None:
            self.test_split = data.test
            loaded.append(f"test {len(self.test_split):,}")
        elif "test" not in present:
            loaded.append("test none")
        rank_zero_info(
            f"Data ({data.kind}, {self.num_classes} classes, {self.image_size}x{self.image_size}): "
            f"{' | '.join(loaded)} [loaded in {time.perf_counter() - start:.1f} s]"
        )

    @property
    def has_test_split(self) -> bool:
        # From the layout, so asking decodes nothing.
        return self.test_split is not None or "test" in sources.available_splits(self.hparams.data_dir, self.download)

    def _loader(self, split: Split | None, name: str) -> DataLoader:
        """An evaluation loader: the split in its stored order, each image exactly once."""
        if split is None:
            raise DataError(f"no {name} split in {self.hparams.data_dir}; add {name}/<class>/ images there")
        hp = self.hparams
        dataset = TensorBatches(split.images, split.labels)
        sampler = None
        trainer = self.trainer
        if trainer is not None and trainer.world_size > 1:
            # Lightning's default DistributedSampler pads the last shard with repeated images, which
            # would count them twice in validation and test metrics; this one gives each image to
            # exactly one process (shards may differ by one image, which evaluation tolerates).
            sampler = UnrepeatedDistributedSampler(
                dataset, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False
            )
        return DataLoader(
            dataset,
            batch_size=hp.eval_batch_size or hp.batch_size,
            sampler=sampler,
            collate_fn=keep_batch,
            num_workers=hp.num_workers,
            pin_memory=self._on_cuda(),
            persistent_workers=hp.num_workers > 0,
        )

    def _on_cuda(self) -> bool:
        trainer = self.trainer
        return trainer is not None and trainer.strategy.root_device.type == "cuda"

    def train_dataloader(self) -> DeviceBatches:
        """Shuffled training batches cut on the training device from the split, which moves there once.

        Each epoch's order comes from the training seed and the epoch number, so every DDP process
        deals the same shuffle (each its own shard, as DistributedSampler would) and a run resumed at
        an epoch shuffles it as the uninterrupted run did.
        """
        if self.train_split is None:
            raise DataError(f"no train split in {self.hparams.data_dir}; add train/<class>/ images there")
        trainer = self.trainer
        device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
        if self.hparams.alternate_flip:
            self.first_flips = self.first_flips.to(device)  # indexed by each batch's indices, on the device
        return DeviceBatches(
            self.train_split.images,
            self.train_split.labels,
            self.hparams.batch_size,
            device,
            seed=self.shuffle_seed,
            epoch=lambda: self.trainer.current_epoch if self.trainer is not None else 0,
            rank=trainer.global_rank if trainer is not None else 0,
            world_size=trainer.world_size if trainer is not None else 1,
            with_indices=self.hparams.alternate_flip,
        )

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_split, "val")

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_split, "test")

    def eval_dataloader(self, split: str) -> DataLoader:
        """An evaluation loader (in order, no augmentation) over "train", "val" or "test"; for scoring a
        checkpoint on any split (scripts/evaluate.py)."""
        if split not in SPLITS:
            raise DataError(f"split {split!r}: use one of {', '.join(SPLITS)}")
        self.setup(split)  # reads only what scoring this split needs: test/ alone for "test"
        return self._loader(getattr(self, f"{split}_split"), split)

    def on_after_batch_transfer(self, batch: tuple[Tensor, ...], dataloader_idx: int) -> tuple[Tensor, Tensor]:
        if not (isinstance(batch, (tuple, list)) and len(batch) in (2, 3)):
            return batch  # not one of our batches, e.g. the model's example input for its summary
        images, labels = batch[:2]
        if self.trainer is not None and self.trainer.training:
            images = augment.random_crop(images, self.hparams.crop_padding)
            if self.hparams.alternate_flip:
                flips = self.first_flips.to(images.device)[batch[2]]
                images = augment.alternating_flip(images, flips, self.trainer.current_epoch)
            elif self.hparams.flip:
                images = augment.random_flip(images)
            if self.hparams.progressive_sizes:
                images = augment.resize(images, self.train_size(self.trainer.current_epoch))
        return images, labels
