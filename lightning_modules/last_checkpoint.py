"""ModelCheckpointWithLast: Lightning's ModelCheckpoint, with last.ckpt written after every epoch.

Since Lightning 2.6, ``save_last=True`` writes last.ckpt only when a top-k checkpoint is saved at
the same step (model_checkpoint.py: "Only save last checkpoint if a checkpoint was actually saved
in this step"). With ``save_top_k=1`` an epoch that does not improve ``val/acc`` then leaves
last.ckpt at the best epoch, and ``--ckpt_path last`` would silently resume from there and
retrain the epochs in between. This subclass writes it after every training epoch (and validation)
when nothing else was saved at that step.
"""

from __future__ import annotations

from lightning.pytorch.callbacks import ModelCheckpoint


class ModelCheckpointWithLast(ModelCheckpoint):
    """ModelCheckpoint whose ``save_last`` means the state after the latest epoch (or validation)."""

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        # Always, not only when Lightning saves at epoch end: with --trainer.check_val_every_n_epoch N
        # an epoch without validation would otherwise leave last.ckpt N-1 epochs behind. Validation
        # of this epoch (if any) has already run, and what it saved is not saved twice.
        self._save_last_if_missing(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_missing(trainer)

    def _save_last_if_missing(self, trainer) -> None:
        # Skips when anything (a top-k checkpoint and last.ckpt with it) was already saved at this step.
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
