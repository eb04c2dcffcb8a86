"""Values that torch or Lightning refuse (or divide by) end in one line before anything trains, and a
fresh run that could not start leaves no run folder."""

from __future__ import annotations

import pytest
from helpers import exit_status, make_image_folder

from lightning_modules.cli.fit import fit_main

BASE = [
    "--data.data_dir", "data", "--data.val_size", "6", "--data.batch_size", "6", "--trainer.max_epochs", "1",
    "--test", "false", "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
]  # fmt: skip


@pytest.mark.parametrize(
    "args, says",
    [
        (["--trainer.accumulate_grad_batches", "0"], "accumulate_grad_batches 0"),
        (["--trainer.check_val_every_n_epoch", "0"], "check_val_every_n_epoch 0"),
        (["--lr_scheduler", "StepLR", "--lr_scheduler.step_size", "0"], "ZeroDivisionError"),
        (["--optimizer.lr", "-1"], "Invalid learning rate: -1.0"),
        (["--model.label_smoothing", "5"], "label_smoothing 5.0: use a value from 0 to 1"),
        (["--seed_everything", "-1"], "-1 is not in bounds"),
        (["--trainer.val_check_interval", "1000"], "val_check_interval"),
        (["--data.batch_size", "100000000000000000000"], "--data.batch_size must be a whole number"),
        (["--data.image_size", "31"], "Tudui takes 32x32 images"),
        (["--data.crop_padding", "100000"], "--data.crop_padding 100000: use at most"),
        (["--optimizer", "MuonSGD", "--optimizer.lr", "0.1", "--optimizer.muon_lr", "-1"], "muon_lr must be >= 0"),
    ],
)
def test_a_refused_value_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, capsys, args, says):
    monkeypatch.chdir(tmp_path)
    make_image_folder(tmp_path / "data", {"train": 4})
    assert exit_status(fit_main, [*BASE, *args]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and says in last, last
    runs = tmp_path / "runs"
    # A step may have run before a scheduler's first step failed; then last.ckpt is kept, as for Ctrl-C.
    left = sorted(p.relative_to(runs).as_posix() for p in runs.rglob("*") if p.is_file()) if runs.exists() else []
    assert not left or any(name.endswith("last.ckpt") for name in left), left


def test_a_config_file_that_refers_to_itself_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    make_image_folder(tmp_path / "data", {"train": 4})
    (tmp_path / "loop.yaml").write_text("a: &a [*a]\n")  # a YAML alias inside itself
    assert exit_status(fit_main, [*BASE, "--config", "loop.yaml"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("error: ")
