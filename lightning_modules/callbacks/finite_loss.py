"""StopOnNonFiniteLoss: a run whose loss turns NaN or infinite stops there, and says why.

Otherwise it trains on to the end, exits 0 and reports a "best checkpoint" full of NaN. The check
costs no wait for the device during an epoch: each step's loss is compared on the device and
only the first bad step is kept there; it is read back once per epoch, before validation (so a
diverged network is never validated, checkpointed as the best, or saved as last.ckpt).
"""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor


class NonFiniteLossError(Exception):
    """Training diverged; the message names the epoch, the step and the likely cause."""


class StopOnNonFiniteLoss(L.Callback):
    """Raises ``NonFiniteLossError`` at the first epoch whose training loss was NaN or infinite at some
    step. fit.py always adds it; it prints one line and exits 2, and last.ckpt keeps the epoch before."""

    def __init__(self) -> None:
        self._first_bad: Tensor | None = None  # the first step with a non-finite loss this epoch, or -1

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._first_bad = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if not isinstance(loss, Tensor):
            return
        if self._first_bad is None:
            self._first_bad = torch.full((), -1, dtype=torch.int64, device=loss.device)
        bad = ~torch.isfinite(loss.detach()) & (self._first_bad < 0)
        self._first_bad = torch.where(bad, trainer.global_step, self._first_bad)  # the step as a scalar: no new tensor

    def on_validation_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self._check(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._check(trainer)

    def _check(self, trainer) -> None:
        if self._first_bad is None:
            return
        # Every process stops together: one with a NaN would otherwise leave the others waiting.
        first_bad = int(trainer.strategy.reduce(self._first_bad.float(), reduce_op="max"))
        if first_bad < 0:
            self._first_bad = None  # checked clean: the epoch's end does not read it back again
            return
        message = f"the training loss became NaN or infinite at epoch {trainer.current_epoch}, step {first_bad}"
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else None
        if lr is not None:
            message += (
                f": the learning rate ({lr:g}) is likely too high for this network, or --model.mean/--model.std do "
                "not fit the images; lower --optimizer.lr and start again (last.ckpt keeps the epoch before)"
            )
        raise NonFiniteLossError(message)
