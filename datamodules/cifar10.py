"""CIFAR10DataModule: where the images come from, how they are split, batched and augmented."""

from __future__ import annotations

import time

import lightning as L
import torch

# Lightning's own sampler for evaluation without padding (what its predict loop uses). Not in its
# documented API; tests/test_architecture.py fails if it moves or starts padding.
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torch.utils.data import DataLoader

from datamodules import augment, sources
from datamodules.sources import DataError, Split
from datamodules.tensor_batches import TensorBatches, keep_batch

SPLITS = ("train", "val", "test")


class CIFAR10DataModule(L.LightningDataModule):
    """CIFAR-10 (or any image-folder tree) as uint8 batches, augmented on the training device.

    Args:
        data_dir: a folder holding ``cifar-10-batches-py/`` (official CIFAR-10), or an image-folder
            tree ``train/<class>/*`` with optional ``val/`` and ``test/``. An absent or empty
            folder gets the official files downloaded into it when ``download`` is true.
        download: allow downloading the official files.
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
        num_workers: DataLoader worker processes. 0 is right here: a batch is one tensor index.
        skip_bad_images: leave out image files that cannot be decoded (with a warning and a
            count) instead of stopping at the first one.
    """

    def __init__(
        self,
        data_dir: str = "data",
        download: bool = True,
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
        for name, value in (("batch_size", batch_size), ("image_size", image_size)):
            if value < 1:
                raise DataError(f"--data.{name} must be a positive integer; got {value}")
        if eval_batch_size is not None and eval_batch_size < 1:
            raise DataError(f"--data.eval_batch_size must be a positive integer; got {eval_batch_size}")
        if crop_padding < 0 or num_workers < 0:
            raise DataError("--data.crop_padding and --data.num_workers must be >= 0")
        if alternate_flip and not flip:
            raise DataError("--data.alternate_flip true needs --data.flip true")
        if progressive_sizes is not None and not all(2 <= size <= image_size for size in progressive_sizes):
            raise DataError(
                f"--data.progressive_sizes {list(progressive_sizes)}: each size must be from 2 to --data.image_size "
                f"({image_size}) pixels; use null to train at image_size throughout"
            )
        self.save_hyperparameters()
        # Known without decoding anything, so the CLI can link num_classes/class names into the model.
        self.classes: list[str] = sources.discover_classes(data_dir, download)
        self.train_split: Split | None = None
        self.val_split: Split | None = None
        self.test_split: Split | None = None
        self.first_flips: Tensor | None = None  # alternate_flip: which images are mirrored in epoch 0

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

    def _source_kwargs(self) -> dict:
        hp = self.hparams
        return {
            "download": hp.download,
            "cache_dir": hp.cache_dir,
            "image_size": hp.image_size,
            "skip_bad_images": hp.skip_bad_images,
            "log": rank_zero_info,
        }

    def prepare_data(self) -> None:
        sources.prepare(self.hparams.data_dir, **self._source_kwargs())

    def setup(self, stage: str | None = None) -> None:
        if self.train_split is not None:
            return
        start = time.perf_counter()
        data = sources.load(self.hparams.data_dir, **self._source_kwargs())
        if data.classes != self.classes:
            raise DataError(f"class folders changed while starting up: {self.classes} -> {data.classes}")
        if data.val is not None:
            self.train_split, self.val_split = data.train, data.val
            how = "val/ folder"
        else:
            train_idx, val_idx = sources.split_indices(len(data.train), self.hparams.val_size, self.hparams.split_seed)
            self.train_split = Split(data.train.images[train_idx], data.train.labels[train_idx])
            self.val_split = Split(data.train.images[val_idx], data.train.labels[val_idx])
            how = f"seeded split of train, split_seed={self.hparams.split_seed}"
        self.test_split = data.test
        # From the training seed (set before setup), so a rerun or a resumed run flips the same way;
        # every DDP process draws the same bits, and batches carry global indices.
        generator = torch.Generator().manual_seed(torch.initial_seed())
        self.first_flips = torch.rand(len(self.train_split), generator=generator) < 0.5
        test = f"{len(self.test_split):,}" if self.test_split is not None else "none"
        rank_zero_info(
            f"Data ({data.kind}, {self.num_classes} classes, {self.image_size}x{self.image_size}): "
            f"train {len(self.train_split):,} | val {len(self.val_split):,} ({how}) | test {test} "
            f"[loaded in {time.perf_counter() - start:.1f} s]"
        )

    @property
    def has_test_split(self) -> bool:
        if self.test_split is None:
            self.setup()
        return self.test_split is not None

    def _loader(self, split: Split | None, name: str, train: bool) -> DataLoader:
        if split is None:
            raise DataError(f"no {name} split in {self.hparams.data_dir}; add {name}/<class>/ images there")
        hp = self.hparams
        dataset = TensorBatches(split.images, split.labels, with_indices=train and hp.alternate_flip)
        sampler = None
        trainer = self.trainer
        if not train and trainer is not None and trainer.world_size > 1:
            # Lightning's default DistributedSampler pads the last shard with repeated images, which
            # would count them twice in validation and test metrics; this one gives each image to
            # exactly one process (shards may differ by one image, which evaluation tolerates).
            sampler = UnrepeatedDistributedSampler(
                dataset, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False
            )
        return DataLoader(
            dataset,
            batch_size=hp.batch_size if train else (hp.eval_batch_size or hp.batch_size),
            shuffle=train,
            sampler=sampler,
            # A last batch of a few images gives a noisy gradient step; the tutorial kept it, so do we
            # unless it would be a single image (BatchNorm cannot train on one).
            drop_last=train and len(split) % hp.batch_size == 1,
            collate_fn=keep_batch,
            num_workers=hp.num_workers,
            pin_memory=self._on_cuda(),
            persistent_workers=hp.num_workers > 0,
        )

    def _on_cuda(self) -> bool:
        trainer = self.trainer
        return trainer is not None and trainer.strategy.root_device.type == "cuda"

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_split, "train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_split, "val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_split, "test", train=False)

    def eval_dataloader(self, split: str) -> DataLoader:
        """An evaluation loader (in order, no augmentation) over "train", "val" or "test"; for scoring a
        checkpoint on any split (scripts/evaluate.py)."""
        if split not in SPLITS:
            raise DataError(f"split {split!r}: use one of {', '.join(SPLITS)}")
        self.setup()
        return self._loader(getattr(self, f"{split}_split"), split, train=False)

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
