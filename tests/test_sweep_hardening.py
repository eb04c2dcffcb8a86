"""scripts/sweep.py under bad search spaces, failing trials and Ctrl-C: a space fit.py would refuse
anywhere in it is refused before any trial, in one line; a failed trial is recorded and the study
goes on (exit status 1, done in part); after Ctrl-C the same command draws new values, and neither
Optuna's traceback nor its warning is printed."""

from __future__ import annotations

import logging
from pathlib import Path

import optuna
import pytest
import yaml
from helpers import exit_status, make_image_folder

from lightning_modules.callbacks import NonFiniteLossError
from lightning_modules.cli import fit as fit_module
from lightning_modules.cli.sweep import sweep, sweep_main

TINY = [
    "--data.data_dir", "data", "--data.cache_dir", "cache", "--data.val_size", "6", "--data.batch_size", "6",
    "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
]  # fmt: skip
LR = "optimizer.init_args.lr"


@pytest.fixture
def work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_image_folder(tmp_path / "data", {"train": 8, "test": 3})
    return tmp_path


@pytest.fixture
def optuna_records(caplog):
    """Optuna's log records, which its own handler writes past pytest's capture: through the root
    logger instead, for caplog."""
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    yield lambda: [r for r in caplog.records if r.name.startswith("optuna") and r.levelno >= logging.WARNING]
    optuna.logging.disable_propagation()
    optuna.logging.enable_default_handler()


def study_of(work, name="space"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{work / 'runs' / 'sweeps' / name / 'study.db'}")


def fake_fit(monkeypatch, behaviour=lambda lr: None) -> list[float]:
    """fit.py's fit replaced by a quick one that writes what the sweep reads (config.yaml) and returns
    val/acc 0.5, after ``behaviour(lr)``, which may raise as fit does. Returns the lr of every call."""
    calls = []

    def fit(args, callbacks=(), resume_hint=True):
        options = dict(zip(args[::2], args[1::2], strict=False))
        lr = float(options[f"--{LR}"])
        calls.append(lr)
        run_dir = Path(options["--run_dir"])  # each trial's folder, as sweep.py names it
        run_dir.mkdir(parents=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump({"optimizer": {"init_args": {"lr": lr}}}))
        behaviour(lr)
        return {"best_val_acc": 0.5, "test": None, "run_dir": str(run_dir)}

    monkeypatch.setattr(fit_module, "fit", fit)
    return calls


@pytest.mark.parametrize(
    "space, says",
    [
        (f"{LR}: {{type: float, low: 0.01, high: 0.1, step: 0}}", "step"),
        (f"{LR}: {{type: float, low: 0.01, high: 0.1, step: -0.01}}", "step"),
        (f"{LR}: {{type: float, low: 0.01, high: 0.1, step: '0.01'}}", "step"),
        ("data.batch_size: {type: int, low: 2, high: 8, step: 1.5}", "step"),
        (f"{LR}: {{type: float, low: 0.01, high: 0.1, step: 0.01, log: true}}", "step and log"),
        ("data.batch_size: {type: int, low: 2, high: 8, step: 2, log: true}", "step and log"),
        (f"{LR}: {{type: float, low: 0.01, high: 0.1, log: 'yes'}}", "log"),
        ("data.batch_size: {type: categorical, choices: 6}", "choices"),
        ("data.batch_size: {type: categorical, choices: '68'}", "choices"),
        ("data.batch_size: {type: int, low: 2, high: 8, choices: [4]}", "choices"),
        # fit.py refuses a value after the first: found before any trial, the value named
        ("data.batch_size: {type: categorical, choices: [6, many]}", "data.batch_size"),
        ("data.batch_size: {type: categorical, choices: [6, 3, 0]}", "0"),
        ("model.label_smoothing: {type: float, low: 0.0, high: 1.5}", "1.5"),
    ],
)
def test_bad_spaces_are_refused_before_any_trial(work, capsys, space, says):
    (work / "space.yaml").write_text(space + "\n")
    status = exit_status(sweep_main, ["--space", "space.yaml", "--n_trials", "4", "--sampler", "random", *TINY])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and lines[0].startswith("error: --space space.yaml"), err
    assert says in lines[0] and "Traceback" not in err, err
    assert not (work / "runs").exists()


def test_a_failed_trial_is_recorded_and_the_study_goes_on(work, monkeypatch, capsys, optuna_records):
    def diverge(lr):
        if lr == 0.02:
            raise NonFiniteLossError("the training loss is nan at epoch 0, step 1: lower --optimizer.lr")

    fake_fit(monkeypatch, diverge)
    (work / "space.yaml").write_text(f"{LR}: {{type: categorical, choices: [0.01, 0.02, 0.03]}}\n")
    args = ["--space", "space.yaml", "--sampler", "grid", "--pruner", "none", *TINY]
    assert sweep_main(args) == 1  # done in part
    trials = study_of(work).trials
    assert sorted(t.state.name for t in trials) == ["COMPLETE", "COMPLETE", "FAIL"]
    assert [t.params[LR] for t in trials if t.state.name == "FAIL"] == [0.02]
    err = capsys.readouterr().err
    failed = [line for line in err.splitlines() if line.startswith("Trial") and "failed" in line]
    assert failed == ["Trial 1 failed: the training loss is nan at epoch 0, step 1: lower --optimizer.lr"], err
    assert "1 trials of this session failed" in err
    assert "Traceback" not in err and not optuna_records()
    # The same command goes on: one more trial brings it to 3 finished; nothing fails, so exit status 0.
    assert sweep_main([*args, "--n_trials", "3"]) == 0
    assert [t.state.name for t in study_of(work).trials].count("COMPLETE") == 3


def test_the_seed_runner_still_raises_for_a_failed_run(work, monkeypatch):
    def fail_seed_1(lr):
        raise NonFiniteLossError("diverged")

    fake_fit(monkeypatch, fail_seed_1)
    (work / "space.yaml").write_text(f"{LR}: {{type: categorical, choices: [0.01, 0.02]}}\n")
    with pytest.raises(RuntimeError, match="trial 0 failed"):
        sweep(["--space", "space.yaml", "--sampler", "grid", *TINY])
    assert [t.state.name for t in study_of(work).trials] == ["FAIL", "FAIL"]  # both ran


def test_after_ctrl_c_the_same_command_draws_new_values(work, monkeypatch, capsys, optuna_records):
    (work / "space.yaml").write_text(f"{LR}: {{type: float, low: 0.001, high: 0.1, log: true}}\n")
    args = ["--space", "space.yaml", "--pruner", "none", *TINY]
    calls = fake_fit(monkeypatch)
    assert sweep_main([*args, "--n_trials", "1"]) == 0

    def ctrl_c(lr):
        raise SystemExit(130)  # what fit does on Ctrl-C, after saying what it saved

    fake_fit(monkeypatch, ctrl_c)
    assert sweep_main([*args, "--n_trials", "2"]) == 130
    err = capsys.readouterr().err
    assert "Interrupted: the 1 finished trials are kept" in err and "Traceback" not in err, err
    assert not optuna_records()
    calls += fake_fit(monkeypatch)
    assert sweep_main([*args, "--n_trials", "2"]) == 0
    trials = study_of(work).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE"]
    values = [t.params[LR] for t in trials]
    assert len(set(values)) == 3, values  # each session drew new values, not the first session's again


def test_a_real_diverging_trial_fails_alone(work, capsys):
    """Real fits: lr 1e30 diverges (NonFiniteLossError in fit), the study still runs the other value."""
    (work / "space.yaml").write_text(f"{LR}: {{type: categorical, choices: [1.0e+30, 0.01]}}\n")
    args = ["--space", "space.yaml", "--sampler", "grid", "--pruner", "none", *TINY, "--trainer.max_epochs", "1"]
    assert exit_status(sweep_main, args) == 1
    states = {t.params[LR]: t.state.name for t in study_of(work).trials}
    assert states == {1e30: "FAIL", 0.01: "COMPLETE"}
    err = capsys.readouterr().err
    assert "Traceback" not in err and "failed" in err


@pytest.mark.parametrize(
    "args, says",
    [
        (["--seeds", "99999999999999999999"], "not a number of seeds from 1 to 10,000"),
        (["--space", "space.yaml", "--n_trials", "1", "--seed", "-1"], "not a seed from 0 to 4294967295"),
        (["--space", "space.yaml", "--n_trials", "1", "--seed", str(2**32)], "not a seed from 0 to 4294967295"),
    ],
)
def test_seeds_out_of_range_are_refused_before_a_study_exists(work, capsys, args, says):
    (work / "space.yaml").write_text(f"{LR}: {{type: float, low: 0.01, high: 0.1}}\n")
    assert exit_status(sweep_main, [*args, *TINY]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and says in err[0], err
    assert not (work / "runs").exists()  # no study.db, no trial folder


@pytest.mark.timeout(60)  # the bug this guards against is a hang
@pytest.mark.parametrize("option", ["--space", "--config"])
def test_a_fifo_as_the_space_or_a_config_is_refused_without_waiting(work, capsys, option):
    import os

    os.mkfifo(work / "pipe.yaml")  # no writer: reading it would wait forever
    (work / "space.yaml").write_text(f"{LR}: {{type: float, low: 0.01, high: 0.1}}\n")
    args = ["--space", "pipe.yaml"] if option == "--space" else ["--space", "space.yaml", "--config", "pipe.yaml"]
    assert exit_status(sweep_main, [*args, "--n_trials", "1", *TINY]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: {option} pipe.yaml is not a regular file"), err
