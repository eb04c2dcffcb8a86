"""Other loggers than TensorBoard: everything that reads a run (report, compare, resume) still works."""

from __future__ import annotations

import csv
import json

from helpers import make_image_folder

from lightning_modules.cli.compare import load_run
from lightning_modules.cli.fit import fit_main


def test_csv_logger_run_resumes_reports_and_compares_the_whole_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_image_folder(tmp_path / "data", {"train": 8, "test": 4})
    args = [
        "--data.data_dir", "data", "--data.cache_dir", "cache", "--data.val_size", "6", "--data.batch_size", "6",
        "--trainer.logger", "CSVLogger", "--trainer.logger.save_dir", "runs", "--trainer.logger.name", "csv",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        # The best checkpoint is then an early epoch, so testing it restores older callback states.
        "--checkpoint.monitor", "val/loss", "--checkpoint.mode", "max",
    ]  # fmt: skip
    assert fit_main([*args, "--trainer.max_epochs", "2"]) == 0
    assert fit_main([*args, "--trainer.max_epochs", "4", "--ckpt_path", "last"]) == 0
    run = tmp_path / "runs" / "csv" / "version_0"
    assert not (tmp_path / "runs" / "csv" / "version_1").exists()

    with (run / "metrics.csv").open(newline="") as file:
        rows = list(csv.DictReader(file))
    val_epochs = [int(r["epoch"]) for r in rows if r.get("val/acc")]
    assert val_epochs == [0, 1, 2, 3]  # the rows from before the resume are kept
    assert any(r.get("test/acc") for r in rows)

    report = json.loads((run / "report.json").read_text())
    assert "epoch=03" not in report["best_checkpoint"]  # the case this test is about
    assert [row["epoch"] for row in report["epochs"]] == [0, 1, 2, 3]
    assert report["test"]["test/acc"] is not None
    compared = load_run(run)
    assert compared["epochs"] == 4 and compared["recipe"].startswith("csv")
