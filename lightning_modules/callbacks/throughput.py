"""ImagesPerSecond: training throughput as a logged metric (and a progress-bar field)."""

from __future__ import annotations

import time

import lightning as L


class ImagesPerSecond(L.Callback):
    """Logs ``train/images_per_s``: training images per wall-clock second since the last validation.

    Measured on the host clock from the start of the epoch (or the end of the previous
    validation) to the start of validation, so it includes data loading and augmentation but not
    validation itself. Costs one addition per batch.
    """

    def __init__(self) -> None:
        self.images = 0
        self.mark = 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.images, self.mark = 0, time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.images += len(batch[1])

    def on_validation_start(self, trainer, pl_module) -> None:
        seconds = time.perf_counter() - self.mark
        if trainer.sanity_checking or not self.images or seconds <= 0:
            return
        rate = self.images / seconds * trainer.world_size
        pl_module.log("train/images_per_s", rate, prog_bar=True, rank_zero_only=True)

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.images, self.mark = 0, time.perf_counter()
