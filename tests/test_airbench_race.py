"""scripts/bench/airbench_race.py on a CPU: the data export, the log parsing and our side's runs."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import REPO, load_bench_script, make_image_folder


def load_race():
    return load_bench_script("airbench_race")


def test_export_writes_fit_splits_in_airbench_format(tmp_path, monkeypatch):
    from datamodules import CIFAR10DataModule

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    make_image_folder(tmp_path / "data", {"train": 10})
    race = load_race()
    assert race.export_split(str(tmp_path / "data"), tmp_path / "out", val_size=6, split_seed=0) == {
        "train": 24,
        "test": 6,
    }
    data = CIFAR10DataModule(str(tmp_path / "data"), download=False, val_size=6)
    data.setup("fit")
    for name, split in (("train", data.train_split), ("test", data.val_split)):
        saved = torch.load(tmp_path / "out" / "cifar10" / f"{name}.pt", weights_only=True)
        assert saved["images"].dtype == torch.uint8 and saved["images"].shape[1:] == (32, 32, 3)  # NHWC
        assert torch.equal(saved["images"].permute(0, 3, 1, 2), split.images)
        assert saved["labels"].dtype == torch.int64 and torch.equal(saved["labels"], split.labels)
        assert saved["classes"] == ["cat", "dog", "ship"]


def test_final_rows_of_each_run_are_read_from_an_airbench_log():
    log = "\n".join([
        "---------------------------------------------------------------------------------------------",
        "|  run     |  epoch  |  train_loss  |  train_acc  |  val_acc  |  tta_val_acc  |  total_time_seconds  |",
        "|  0       |      1  |      1.2345  |     0.5000  |   0.6000  |               |              0.5000  |",
        "|          |   eval  |      0.9000  |     0.8000  |   0.9350  |       0.9401  |              3.8300  |",
        "|  1       |      1  |      1.2000  |     0.5100  |   0.6100  |               |              0.4900  |",
        "|          |   eval  |      0.9100  |     0.8100  |   0.9340  |       0.9395  |              3.7900  |",
        "Mean: 0.9398    Std: 0.0004",
    ])  # fmt: skip
    assert load_race().airbench_rows(log) == [{"acc": 0.9401, "seconds": 3.83}, {"acc": 0.9395, "seconds": 3.79}]


@pytest.mark.slow
def test_our_side_runs_and_the_table_prints(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    make_image_folder(tmp_path / "data", {"train": 10})
    race = load_race()
    extra = ("--trainer.max_epochs 1 --data.batch_size 8 --data.eval_batch_size 6 --trainer.precision 32-true "
             "--model.net.widths [8,16,16] --trainer.enable_progress_bar false")  # fmt: skip
    assert race.main(["--images_dir", str(tmp_path / "data"), "--sides", "ours", "--runs", "2", "--val_size", "6",
                      "--accelerator", "cpu", "--extra", extra, "--work_dir", str(tmp_path / "race"),
                      "--json", str(tmp_path / "race.json")]) == 0  # fmt: skip
    figures = json.loads((tmp_path / "race.json").read_text())["results"]["ours"]
    # Each fit's training steps take part of its wall time (wall_s is the mean over the runs).
    assert len(figures["accs"]) == 2 and min(figures["train_s"]) > 0 and sum(figures["train_s"]) / 2 < figures["wall_s"]
    out = capsys.readouterr().out
    assert "wall s per run" in out and "ours  2" in out
    assert "train s / airbench94" not in out  # no airbench side ran, so there is nothing to divide by
    with pytest.raises(SystemExit):
        race.main(["--images_dir", str(tmp_path / "data"), "--sides", "airbench94"])  # no --airbench_dir


def test_sides_and_variants_plan_the_race_in_order(tmp_path):
    race = load_race()
    args = race.parse_args(["--images_dir", "d", "--airbench_dir", "a", "--runs", "5",
                            "--sides", "airbench94,ours,airbench94_muon:3",
                            "--variant", "muon:3=--config configs/fast_muon.yaml --trainer.max_epochs 2",
                            "--variant", "bf16-true:1=--trainer.precision bf16-true"])  # fmt: skip
    steps = race.plan(args)
    assert [(s["side"], s["runs"]) for s in steps] == [
        ("airbench94", 5), ("ours", 5), ("airbench94_muon", 3), ("ours+muon", 3), ("ours+bf16-true", 1)
    ]  # fmt: skip
    recipe = str(REPO / "configs" / "fast.yaml")
    assert steps[3]["recipes"] == [recipe, str(REPO / "configs" / "fast_muon.yaml")]  # a config, not an option
    assert steps[3]["options"] == ["--trainer.max_epochs", "2"]
    assert steps[4]["recipes"] == [recipe] and steps[4]["options"] == ["--trainer.precision", "bf16-true"]
    for bad in (["--sides", "ours:x"], ["--sides", "theirs"], ["--variant", "no equals sign"]):
        with pytest.raises(SystemExit):
            race.plan(race.parse_args(["--images_dir", "d", *bad]))


def test_a_failed_side_is_told_in_one_line():
    race = load_race()
    error = "RuntimeError: Input type (float) and bias type (c10::BFloat16) should be the same"
    failed = SystemExit(
        f"error: seed 0 exited with 1: Seed set to 0\nTraceback (most recent call last):\n  ...\n{error}\n"
    )
    assert race.one_line(failed) == f"seed 0 exited with 1: {error}"
    assert (
        race.one_line(SystemExit("error: seed 1 exited with 2: error: bad option"))
        == "seed 1 exited with 2: bad option"
    )
    assert race.one_line(ValueError("not enough values to unpack")) == "not enough values to unpack"


def test_a_side_that_would_pass_the_deadline_is_skipped():
    race = load_race()
    results = {"airbench94": {"wall_s": 100.0}, "ours": {"wall_s": 20.0}, "ours+bf16-true": {"error": "x"}}
    now = race.time.perf_counter()
    step = {"side": "ours+compile", "runs": 2}
    assert race.out_of_time(step, results, now, deadline_s=None) is None
    assert race.out_of_time(step, results, now, deadline_s=45) is None  # 2 runs at ours's 20 s
    assert race.out_of_time(step, results, now, deadline_s=35).startswith("skipped: 0 s gone, ~40 s more")
    assert race.out_of_time({"side": "airbench94_muon", "runs": 5}, results, now - 10, deadline_s=5) is not None


def test_table_compares_with_each_airbench_side_and_lists_failures():
    race = load_race()
    results = {
        "airbench94": {"accs": [0.90, 0.91], "train_s": [2.0, 2.0], "wall_s": 5.0},
        "ours": {"accs": [0.89, 0.90], "train_s": [6.0, 6.0], "wall_s": 24.0},
        "airbench94_muon": {"accs": [0.91], "train_s": [3.0], "wall_s": 6.0},
        "ours+bf16-true": {"error": "seed 0 exited with 1: RuntimeError: boom"},
        "ours+compile": {"skipped": "skipped: 400 s gone"},
    }
    lines = race.table(results).splitlines()
    assert lines[0].endswith("wall s per run  train s / airbench94  train s / airbench94_muon")
    assert lines[2].split()[0] == "ours" and lines[2].split()[-2:] == ["3.00x", "2.00x"]
    assert lines[-2:] == [
        "ours+bf16-true: seed 0 exited with 1: RuntimeError: boom",
        "ours+compile: skipped: 400 s gone",
    ]


@pytest.mark.slow
def test_a_failing_variant_is_one_line_and_the_race_goes_on(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    make_image_folder(tmp_path / "data", {"train": 10})
    extra = ("--trainer.max_epochs 1 --data.batch_size 8 --data.eval_batch_size 6 --trainer.precision 32-true "
             "--model.net.widths [8,16,16] --trainer.enable_progress_bar false")  # fmt: skip
    argv = ["--images_dir", str(tmp_path / "data"), "--sides", "", "--val_size", "6", "--accelerator", "cpu",
            "--extra", extra, "--variant", "bad:1=--trainer.no_such_option 3",
            "--variant", "muon:1=--config configs/fast_muon.yaml", "--work_dir", str(tmp_path / "race"),
            "--json", str(tmp_path / "race.json")]  # fmt: skip
    assert load_race().main(argv) == 1
    results = json.loads((tmp_path / "race.json").read_text())["results"]
    error = results["ours+bad"]["error"]  # sweep.py's check of the options, before any run
    assert error.startswith("seed runs: ") and "unrecognized arguments: --trainer.no_such_option 3" in error
    assert len(results["ours+muon"]["accs"]) == 1
    out = capsys.readouterr().out
    assert f"error: ours+bad: {error}" in out
    assert "ours+muon  1" in out and out.rstrip().splitlines()[-1] == f"ours+bad: {error}"
