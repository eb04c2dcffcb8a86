"""Helpers shared by the tests (fixtures live in conftest.py)."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

from lightning.pytorch.callbacks import Callback


def exit_status(main: Callable[[list[str]], int | None], args: list[str]) -> int:
    """A command's exit status, called in-process: its return value, or the code of a SystemExit
    (argument parsers exit on their own)."""
    try:
        return main(args) or 0
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 1


class SigtermDuringTest(Callback):
    """Sends this process SIGTERM when the first test batch starts, as a scheduler's kill would."""

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        os.kill(os.getpid(), signal.SIGTERM)


class InterruptValidationOfEpoch1(Callback):
    """Ctrl-C in the middle of epoch 1's validation (the last epoch of a 2-epoch run)."""

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if trainer.current_epoch == 1 and not trainer.sanity_checking:
            raise KeyboardInterrupt
