"""LineProgress: plain lines whose training loss is the epoch's running mean, not one batch's."""

from __future__ import annotations

import re

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_modules import ImageClassifier
from lightning_modules.callbacks import LineProgress


class Losses(L.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def test_step_and_epoch_lines_show_the_running_mean(capsys):
    torch.manual_seed(0)
    model = ImageClassifier(nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 3)), class_names=["a", "b", "c"])
    images = torch.randint(0, 256, (24, 3, 4, 4), dtype=torch.uint8)
    data = DataLoader(TensorDataset(images, torch.randint(0, 3, (24,))), batch_size=4)
    losses = Losses()
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_model_summary=False,
                        callbacks=[LineProgress(every_n_steps=2), losses], limit_val_batches=0)  # fmt: skip
    trainer.fit(model, data)
    out = capsys.readouterr().out
    step_lines = [float(v) for v in re.findall(r"epoch 0 step \d \| train/loss ([\d.]+)", out)]
    expected = [sum(losses.losses[:n]) / n for n in (2, 4, 6)]
    assert step_lines == pytest.approx(expected, abs=1e-4)
    assert len(set(losses.losses)) > 1  # a last-batch figure would differ from the mean
    epoch_line = re.search(r"epoch 0/0 step 6 \| train/loss ([\d.]+)", out)
    assert float(epoch_line.group(1)) == pytest.approx(sum(losses.losses) / 6, abs=1e-4)


def test_running_loss_sums_in_float32_under_true_half_precision():
    progress = LineProgress()
    progress.on_train_epoch_start(None, None)
    for _ in range(1000):
        progress.on_train_batch_end(None, None, {"loss": torch.tensor(0.9972, dtype=torch.bfloat16)}, None, 0)
    assert float(progress._loss_sum) / progress._losses == pytest.approx(0.9972, abs=1e-2)


def test_the_live_bar_shows_the_watched_figures_and_no_version_number(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger

    from lightning_modules.callbacks.progress import LiveBar

    class Seen(L.Callback):
        def on_train_end(self, trainer, pl_module) -> None:
            self.metrics = bar.get_metrics(trainer, pl_module)

    torch.manual_seed(0)
    model = ImageClassifier(
        nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 3)), class_names=["a", "b", "c"], image_size=4
    )
    images = torch.randint(0, 256, (24, 3, 4, 4), dtype=torch.uint8)
    data = DataLoader(TensorDataset(images, torch.randint(0, 3, (24,))), batch_size=4)
    bar, seen = LiveBar(), Seen()
    logger = TensorBoardLogger(tmp_path, name="bar")  # a logger: Lightning's bar would show its v_num
    trainer = L.Trainer(max_epochs=2, callbacks=[bar, seen], logger=logger, enable_checkpointing=False)
    trainer.fit(model, data, data)
    assert "v_num" not in seen.metrics
    assert {"val/acc", "val/loss"} <= set(seen.metrics)
    assert float(seen.metrics["val/acc"]) == pytest.approx(float(trainer.callback_metrics["val/acc"]), abs=1e-4)
