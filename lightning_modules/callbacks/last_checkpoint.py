"""LastCheckpoint: ``last.ckpt`` holds the state after the latest training epoch, always.

Since Lightning 2.6, ``ModelCheckpoint(save_last=True)`` writes last.ckpt only when a top-k
checkpoint is saved at the same step ("Only save last checkpoint if a checkpoint was actually
saved in this step"). With ``save_top_k=1`` an epoch that does not improve ``val/acc`` then
leaves last.ckpt at the best epoch, and ``--ckpt_path last`` would silently resume from there and
retrain the epochs in between. This is a second ModelCheckpoint, configured through its public
arguments only: no monitor, one file named ``last``, saved at the end of every training epoch
(after that epoch's validation, if any), overwritten in place, and saved when the run is
interrupted, except during a validation: a state saved there would count the epoch as done,
and a resumed run would never validate it, so last.ckpt stays at the end of the epoch before.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from lightning.pytorch.callbacks import ModelCheckpoint
from typing_extensions import override

from lightning_modules.callbacks.finite_loss import NonFiniteLossError


class LastCheckpoint(ModelCheckpoint):
    """``last.ckpt`` after every training epoch, and on Ctrl-C, SIGTERM or a crash.

    Args:
        dirpath: where to write it; None: the run's ``checkpoints/`` folder, beside the best checkpoint.
        every_n_epochs: epochs between saves (1: every epoch, what ``--ckpt_path last`` needs to lose nothing).
    """

    def __init__(self, dirpath: str | None = None, every_n_epochs: int = 1) -> None:
        super().__init__(
            dirpath=dirpath,
            filename="last",
            monitor=None,
            save_top_k=1,
            every_n_epochs=every_n_epochs,
            save_on_train_epoch_end=True,
            enable_version_counter=False,
            save_on_exception=True,
        )

        # Set when an interruption came during validation and last.ckpt was left at the epoch before.
        self.kept_previous = False

    @override
    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if isinstance(exception, NonFiniteLossError):
            return  # the weights are NaN: last.ckpt keeps the last good epoch
        if trainer.validating:
            self.kept_previous = True
            return
        with _without_lightnings_note():
            super().on_exception(trainer, pl_module, exception)


class _DropNote(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "was raised with message" not in str(record.msg)


@contextlib.contextmanager
def _without_lightnings_note() -> Iterator[None]:
    """ModelCheckpoint.on_exception logs "An X was raised with message: ..., saved checkpoint to ...": the
    command line's own one-line error (or its interruption report, which names last.ckpt) says it once."""
    log, note = logging.getLogger("lightning.pytorch.utilities.rank_zero"), _DropNote()
    log.addFilter(note)
    try:
        yield
    finally:
        log.removeFilter(note)
