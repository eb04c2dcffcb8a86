"""BestCheckpoint: the best epoch's checkpoint, also under a name that never changes: ``best.ckpt``.

ModelCheckpoint names its files after the epoch and score (``epoch=06-val_acc=0.8612.ckpt``), so
a user cannot write a command that uses the best checkpoint before the run ends and they look
the name up. This one keeps ``best.ckpt`` beside them, always the current best: a hard link to
the file (no second copy on disk; a copy where the filesystem has no links), put in place by an
atomic rename, so a reader never sees a half-written or missing ``best.ckpt``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from lightning.pytorch.callbacks import ModelCheckpoint
from typing_extensions import override

from datamodules.atomic_files import fsync_dir

BEST_NAME = "best.ckpt"


class BestCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` (same arguments) that also keeps ``best.ckpt`` pointing at its best file."""

    @override
    def on_train_epoch_end(self, trainer, pl_module) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        self._name_best(trainer)

    @override
    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        self._name_best(trainer)

    def _name_best(self, trainer) -> None:
        best = Path(self.best_model_path) if self.best_model_path else None
        if not trainer.is_global_zero or best is None or not best.is_file() or "://" in self.best_model_path:
            return
        target = best.with_name(BEST_NAME)
        if target.is_file() and os.path.samefile(target, best):
            return
        temp = best.with_name(f".{BEST_NAME}.{os.getpid()}.tmp")
        temp.unlink(missing_ok=True)
        try:
            os.link(best, temp)
        except OSError:  # no hard links here (some network and FAT filesystems)
            shutil.copyfile(best, temp)
        os.replace(temp, target)
        fsync_dir(target.parent)
