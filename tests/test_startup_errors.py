"""Values that torch or Lightning refuse (or divide by) end in one line before anything trains, and a
fresh run that could not start leaves no run folder."""

from __future__ import annotations

import pytest
import torch
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
        (["--trainer.val_check_interval", "0"], "val_check_interval 0: use a fraction of an epoch in (0, 1]"),
        (["--trainer.val_check_interval", "0.0"], "val_check_interval 0.0"),
        # Started by hand, the first process would wait for the second machine forever.
        (["--trainer.num_nodes", "2"], "not started by a multi-node launcher"),
        (["--trainer.num_nodes", "0"], "--trainer.num_nodes 0: use a whole number of 1 or more"),
        (["--checkpoint.dirpath", "taken"], "taken is a file, where a folder is needed"),
        (["--last_checkpoint.dirpath", "taken"], "taken is a file, where a folder is needed"),
        (["--checkpoint.dirpath", "taken/sub/dir"], "taken is a file, where a folder is needed"),
        # Fails in the data's set-up, once the trainer has made its run folder (an event file).
        (["--data.val_size", "0"], "val_size must be between 1 and"),
    ],
)
def test_a_refused_value_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, capsys, args, says):
    from lightning_modules.cli.fit import MULTI_NODE_LAUNCHERS

    for name in MULTI_NODE_LAUNCHERS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    make_image_folder(tmp_path / "data", {"train": 4})
    (tmp_path / "taken").write_text("a file the user has")
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


@pytest.mark.parametrize(
    "args, says",
    [
        (["--trainer.accelerator", "tpu"], "torch_xla"),
        (["--trainer.precision", "transformer-engine"], "transformer_engine"),
    ],
)
def test_a_trainer_choice_whose_package_is_missing_is_one_line(tmp_path, monkeypatch, capsys, args, says):
    import importlib.util

    module = says
    if importlib.util.find_spec(module) is not None:
        pytest.skip(f"{module} is installed here")
    monkeypatch.chdir(tmp_path)
    make_image_folder(tmp_path / "data", {"train": 4})
    assert exit_status(fit_main, [*BASE, *args]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert "Traceback" not in err and last.startswith("error: the configuration was refused") and says in last


def test_a_failure_after_the_first_step_is_said_once(tmp_path, monkeypatch, capsys):
    """Lightning's own note of the exception ("An X was raised with message: ...") is not printed beside
    the command's one line."""
    import logging

    monkeypatch.chdir(tmp_path)
    make_image_folder(tmp_path / "data", {"train": 4})
    notes = []  # Lightning's logging handler holds the stderr of its import, which capsys does not see
    handler = logging.Handler()
    handler.emit = lambda record: notes.append(record.getMessage())
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addHandler(handler)
    try:
        assert exit_status(fit_main, [*BASE, "--checkpoint.monitor", "val/bogus"]) == 2
    finally:
        logging.getLogger("lightning.pytorch.utilities.rank_zero").removeHandler(handler)
    err = capsys.readouterr().err
    assert notes and not [n for n in notes if "was raised with message" in n], notes
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "val/bogus" in line]
    assert len(errors) == 1 and errors[0].startswith("error: "), err


@pytest.mark.parametrize(
    "change, says",
    [
        (lambda c: None, None),  # resumes: the same Tudui, though named by its module's path (nets.tudui.Tudui)
        (lambda c: c.update(hyper_parameters=["net"]), "its hyper_parameters are a list, not a mapping"),
        (lambda c: c["hyper_parameters"]["net"].update(init_args=["num_classes"]), "Tudui(init_args ['num_classes'])"),
        (
            lambda c: c["hyper_parameters"]["net"]["init_args"].update(num_classes=4),
            "trained with the network Tudui(num_classes=4), but this run builds Tudui(num_classes=3)",
        ),
        (lambda c: c["state_dict"].update(mean=torch.zeros(7, 7)), "size mismatch for mean"),
        # A class path that names a module, not a class: compared as written, never a traceback.
        (
            lambda c: c["hyper_parameters"]["net"].update(class_path="torch.nn.functional.math"),
            "trained with the network math(num_classes=3)",
        ),
    ],
)
def test_a_checkpoint_to_resume_is_checked_in_one_line(tmp_path, monkeypatch, capsys, change, says):
    from helpers import save_checkpoint

    monkeypatch.chdir(tmp_path)
    make_image_folder(tmp_path / "data", {"train": 4})
    path = save_checkpoint(tmp_path / "model.ckpt")  # built in Python, as a user's own code would
    checkpoint = torch.load(path, weights_only=True)
    change(checkpoint)
    torch.save(checkpoint, path)
    status = exit_status(fit_main, [*BASE, "--ckpt_path", "model.ckpt"])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if says is None:
        assert status == 0, err
    else:
        last = err.strip().splitlines()[-1]
        assert status == 2 and last.startswith("error: ") and says in last, last


LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefg", "bcdefgh", strict=True)
)  # 9**8 values once the aliases are expanded, in 300 bytes


@pytest.mark.timeout(60)  # the bug this guards against is a hang (a FIFO) or memory filling up
@pytest.mark.parametrize(
    "command, args, where",
    [
        ("fit", ["--config", "{}"], "--config {}"),
        ("fit", ["-c", "{}"], "-c {}"),  # LightningCLI's short name for --config
        ("fit", ["--model.net", "{}"], "--model.net {}"),  # a class's arguments from a file
        ("fit", ["--config", "outer.yaml"], "--config outer.yaml"),  # named inside a config
        ("evaluate", ["--data", "{}", "--ckpt_path", "m.ckpt"], "--data {}"),
    ],
)
@pytest.mark.parametrize("kind, says", [("fifo", "is not a regular file"), ("laughs", "expands to over 100,000")])
def test_a_config_file_that_never_ends_is_refused_before_reading(
    tmp_path, monkeypatch, capsys, command, args, where, kind, says
):
    import os

    from lightning_modules.cli.evaluate import evaluate_main

    monkeypatch.chdir(tmp_path)
    if kind == "fifo":
        os.mkfifo(tmp_path / "config.yaml")  # no writer: reading it would wait forever
    else:
        (tmp_path / "config.yaml").write_text(LAUGHS)
    (tmp_path / "outer.yaml").write_text("data: config.yaml\n")
    main = fit_main if command == "fit" else evaluate_main
    assert exit_status(main, [a.format("config.yaml") for a in args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: {where.format('config.yaml')}") and says in err[-1], err
