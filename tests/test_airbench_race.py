"""scripts/bench/airbench_race.py on a CPU: the data export, the log parsing and our side's runs."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from conftest import REPO, make_image_folder


def load_race():
    spec = importlib.util.spec_from_file_location("airbench_race", REPO / "scripts" / "bench" / "airbench_race.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
    assert race.main(["--data_dir", str(tmp_path / "data"), "--sides", "ours", "--runs", "2", "--val_size", "6",
                      "--accelerator", "cpu", "--extra", extra, "--work_dir", str(tmp_path / "race"),
                      "--json", str(tmp_path / "race.json")]) == 0  # fmt: skip
    figures = json.loads((tmp_path / "race.json").read_text())["results"]["ours"]
    assert len(figures["accs"]) == 2 and all(0 < s < figures["wall_s"] for s in figures["train_s"])
    out = capsys.readouterr().out
    assert "train s / airbench94" in out and "ours  2" in out
    with pytest.raises(SystemExit):
        race.main(["--data_dir", str(tmp_path / "data"), "--sides", "airbench94"])  # no --airbench_dir
