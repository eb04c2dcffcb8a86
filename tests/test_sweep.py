"""scripts/sweep.py: searches, seed repeats, pruning, interruption and resume, one-line errors."""

from __future__ import annotations

import json

import optuna
import pytest
import yaml
from helpers import exit_status, make_image_folder

from lightning_modules.cli.sweep import sweep_main
from lightning_modules.reporting.tables import mean_sd

TINY = [
    "--data.data_dir", "data", "--data.cache_dir", "cache", "--data.val_size", "6", "--data.batch_size", "6",
    "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
]  # fmt: skip


@pytest.fixture
def work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_image_folder(tmp_path / "data", {"train": 8, "test": 3})
    (tmp_path / "space.yaml").write_text(
        "optimizer.init_args.lr: {type: float, low: 0.001, high: 0.1, log: true}\n"
        "model.label_smoothing: {type: categorical, choices: [0.0, 0.1]}\n"
    )
    return tmp_path


def study_of(work, name="space"):
    storage = f"sqlite:///{work / 'runs' / 'sweeps' / name / 'study.db'}"
    return optuna.load_study(study_name=name, storage=storage)


def test_a_search_runs_ordinary_runs_and_writes_the_best_config(work, capsys):
    assert sweep_main(["--space", "space.yaml", "--n_trials", "3", "--pruner", "none", *TINY,
                       "--trainer.max_epochs", "1"]) == 0  # fmt: skip
    out = work / "runs" / "sweeps" / "space"
    study = study_of(work)
    assert len(study.trials) == 3 and all(t.state.name == "COMPLETE" for t in study.trials)
    for t in study.trials:
        report = json.loads((out / "trials" / f"trial_{t.number:03d}" / "report.json").read_text())
        assert report["best_val_acc"] == pytest.approx(t.value)
        config = yaml.safe_load((out / "trials" / f"trial_{t.number:03d}" / "config.yaml").read_text())
        assert config["optimizer"]["init_args"]["lr"] == pytest.approx(t.params["optimizer.init_args.lr"])
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best["optimizer"]["init_args"]["lr"] == pytest.approx(study.best_params["optimizer.init_args.lr"])
    assert best["trainer"]["logger"]["init_args"]["save_dir"] == "runs"
    assert (out / "trials.png").stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "3 complete trials: val/acc" in printed and "Best: trial" in printed


def test_seeds_give_mean_and_sd_over_one_recipe(work, capsys):
    assert sweep_main(["--seeds", "2", *TINY, "--trainer.max_epochs", "1"]) == 0
    study = study_of(work, "tutorial_seeds")
    assert sorted(t.params["seed_everything"] for t in study.trials) == [0, 1]
    vals = [100 * t.value for t in study.trials]
    assert f"2 complete trials: val/acc {mean_sd(vals)}%" in capsys.readouterr().out
    assert not (work / "runs" / "sweeps" / "tutorial_seeds" / "best.yaml").exists()


def test_pruning_stops_trials_behind_the_others(work):
    # lr 1e-9 learns nothing; the median pruner stops such trials after their second validation.
    (work / "space.yaml").write_text("optimizer.init_args.lr: {type: categorical, choices: [0.05, 1.0e-9]}\n")
    args = ["--space", "space.yaml", "--sampler", "random", "--n_trials", "2", *TINY, "--trainer.max_epochs", "4"]
    assert sweep_main([*args, "--name", "warm"]) == 0  # two complete trials for the pruner to compare with
    storage = f"sqlite:///{work / 'runs' / 'sweeps' / 'warm' / 'study.db'}"
    assert sweep_main([*args, "--name", "warm", "--n_trials", "6", "--storage", storage]) == 0
    study = optuna.load_study(study_name="warm", storage=storage)
    pruned = [t for t in study.trials if t.state.name == "PRUNED"]
    assert pruned and all(t.params["optimizer.init_args.lr"] == 1e-9 for t in pruned)
    assert all(len(t.intermediate_values) < 4 for t in pruned)


def test_ctrl_c_keeps_finished_trials_and_the_same_command_goes_on(work, capsys):
    args = ["--space", "space.yaml", "--pruner", "none", *TINY, "--trainer.max_epochs", "2"]
    assert sweep_main([*args, "--n_trials", "2"]) == 0
    interrupt = "--trainer.callbacks+=helpers.InterruptValidationOfEpoch1"
    assert exit_status(sweep_main, [*args, "--n_trials", "4", interrupt]) == 130
    assert "the 2 finished trials are kept" in capsys.readouterr().err
    assert sweep_main([*args, "--n_trials", "4"]) == 0
    states = [t.state.name for t in study_of(work).trials]
    assert states.count("COMPLETE") == 4 and states.count("FAIL") == 1


@pytest.mark.parametrize(
    "space, extra, message",
    [
        (
            "model.no_such_option: {type: float, low: 0, high: 1}",
            ["--n_trials", "1"],
            "no_such_option is not an option",
        ),
        ("data.batch_size: {type: categorical, choices: [many]}", ["--n_trials", "1"], "refused the first value"),
        ("model.label_smoothing: {type: float, low: 1, high: 0}", [], "`low <= high` must hold"),
        ("model.label_smoothing: {type: normal}", [], "give a type, one of float, int, categorical"),
        ("model.label_smoothing: [0.1, 0.2]", [], "give a type"),
        ("model.label_smoothing: {type: float, low: 0, high: 0.2}", ["--sampler", "grid"], "needs choices"),
        (
            "model.label_smoothing: {type: float, low: 0, high: 0.2}",
            ["--timeout", "-1"],
            "--timeout: -1 is not a positive number",
        ),
        ("model.label_smoothing: {type: float, low: 0, high: 0.2}", [], "say how long to search"),
        ("[unclosed", ["--n_trials", "1"], "not readable YAML"),
    ],
)
def test_bad_search_spaces_are_one_line_errors(work, capsys, space, extra, message):
    (work / "space.yaml").write_text(space + "\n")
    status = exit_status(sweep_main, ["--space", "space.yaml", *extra, *TINY])
    err = capsys.readouterr().err
    assert status == 2 and message in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert not (work / "runs" / "sweeps" / "space" / "trials").exists()
