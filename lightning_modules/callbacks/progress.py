"""Progress that suits where the output goes: a live bar in a terminal, plain lines elsewhere."""

from __future__ import annotations

import sys
import time

import torch
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar

# Shown in the bar and the lines once logged (each epoch): what a user watches.
WATCHED = ("val/loss", "val/acc", "train/images_per_s")


def shown_value(key: str, value) -> str:
    """A metric as the bar and the lines show it: rates as whole numbers, the rest to 4 decimals."""
    return f"{float(value):.0f}" if key.endswith("per_s") else f"{float(value):.4f}"


def progress_bar_class_path() -> str:
    """Rich's bar for an interactive terminal; plain lines for CI logs and files (no control characters)."""
    if sys.stdout.isatty() and sys.stderr.isatty():
        return "lightning_modules.callbacks.progress.LiveBar"
    return "lightning_modules.callbacks.LineProgress"


class LiveBar(RichProgressBar):
    """Lightning's rich bar, showing what the plain lines show: val/loss, val/acc and images/s once
    an epoch has logged them, and not the logger's version number (``v_num``), which means nothing
    to a reader. Epochs are numbered from 0 as everywhere in the project (checkpoint names, reports,
    the plain lines): ``Epoch 6/6`` is the last of 7."""

    def get_metrics(self, trainer, pl_module) -> dict:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        for key in WATCHED:
            value = trainer.callback_metrics.get(key)
            if value is not None and key not in items:
                items[key] = shown_value(key, value)
        return items


class LineProgress(ProgressBar):
    """One plain line per epoch, plus one every ``every_n_steps`` training steps (0: none).

    Made for logs: no carriage returns or ANSI codes, so a CI log or ``fit.py > log.txt``
    reads as text. Each line has the epoch, step, loss, validation accuracy, images/s and an
    estimate of the time left. The loss is the epoch's mean so far (one batch's loss jumps),
    summed on the device from the steps' outputs and read back only when a line prints, so a
    step never waits for the device. (The module's own ``train/loss`` is logged after the epoch's
    validation, too late for the line printed when validation ends.)
    """

    def __init__(self, every_n_steps: int = 0) -> None:
        super().__init__()
        self.every_n_steps = every_n_steps
        self._enabled = True
        self._fit_start = 0.0
        self._validated_epoch = -1
        self._loss_sum = None  # step lines: this epoch's summed training loss, on the device
        self._losses = 0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _print(self, text: str) -> None:
        if self._enabled and self.trainer.is_global_zero:
            print(text, flush=True)

    def _fields(self, keys: tuple[str, ...]) -> str:
        """The epoch's running training loss, then ``keys`` among the logged metrics."""
        metrics = self.get_metrics(self.trainer, self.trainer.lightning_module)
        shown = [f"train/loss {float(self._loss_sum) / self._losses:.4f}"] if self._losses else []
        for key in keys:
            if key in metrics:
                value = metrics[key]
                shown.append(f"{key} {shown_value(key, value)}")
        return " | ".join(shown)

    def on_train_start(self, trainer, pl_module) -> None:
        self._fit_start = time.perf_counter()
        self._validated_epoch = -1

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._loss_sum, self._losses = None, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            loss = loss.detach().float()  # a bfloat16 sum (true half precision) would stop growing
            self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
            self._losses += 1
        if self.every_n_steps and (batch_idx + 1) % self.every_n_steps == 0:
            self._print(f"epoch {trainer.current_epoch} step {trainer.global_step} | {self._fields(())}")

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        self._validated_epoch = trainer.current_epoch
        self._print_epoch_line(trainer, with_validation=True)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # Runs after this epoch's validation, if there was one. Without one (check_val_every_n_epoch > 1)
        # the line still comes, without the previous validation's figures, which would look current.
        if self._validated_epoch != trainer.current_epoch:
            self._print_epoch_line(trainer, with_validation=False)

    def _print_epoch_line(self, trainer, with_validation: bool) -> None:
        epochs_done = trainer.current_epoch + 1
        elapsed = time.perf_counter() - self._fit_start
        left = ""
        if trainer.max_epochs and trainer.max_epochs > 0:
            remaining = max(trainer.max_epochs - epochs_done, 0) * elapsed / epochs_done
            left = f" | {elapsed:.0f} s elapsed, ~{remaining:.0f} s left"
        # Numbered from 0, last = max_epochs - 1, as Lightning's bar, the checkpoints and the report do.
        last = f"/{trainer.max_epochs - 1}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        epoch = f"epoch {trainer.current_epoch}{last}"
        keys = WATCHED if with_validation else ("train/images_per_s",)
        self._print(f"{epoch} step {trainer.global_step} | {self._fields(keys)}{left}")
