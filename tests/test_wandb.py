"""Weights & Biases as fit.py's logger, offline (nothing leaves the machine): the metrics, the config
and the artifacts land in the offline run inside the run folder, read back from the files W&B wrote
(docs/experiments.md, "Weights & Biases")."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import pytest
from helpers import make_image_folder

from lightning_modules.cli.fit import fit_main

pytest.importorskip("wandb", reason="pip install -e '.[track]'")
pytestmark = pytest.mark.slow

BLOCK, HEADER = 32768, 7  # W&B's run log: LevelDB's log format, 32 KiB blocks, 7-byte record headers


def run_log_records(path: Path) -> list:
    """The protobuf records of an offline run's ``run-*.wandb`` log (wandb 0.31 reads it in Go only)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run log"
    pos, chunks, pending = HEADER, [], b""
    while pos + HEADER <= len(data):
        space = BLOCK - pos % BLOCK
        _, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if space < HEADER or kind == 0:  # the rest of a block is padding
            pos += space
            continue
        chunk, pos = data[pos + HEADER : pos + HEADER + length], pos + HEADER + length
        if kind == 1:  # a whole record
            chunks.append(chunk)
        elif kind in (2, 3):  # first or middle piece
            pending = (pending if kind == 3 else b"") + chunk
        else:  # last piece
            chunks.append(pending + chunk)
    records = []
    for chunk in chunks:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(chunk)
        records.append(record)
    return records


def finished_run_log(path: Path, timeout_s: float = 60.0) -> list:
    """The run log's records once W&B's own process has written the run's end: ``wandb.finish()``
    returns before that process has flushed the file (seen in CI: a log with no records yet)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            records = run_log_records(path)
        except Exception:  # a record cut in half by the write in progress
            records = []
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def test_an_offline_run_holds_the_metrics_config_and_artifacts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    make_image_folder(tmp_path / "data", {"train": 6})
    args = [
        "--data.data_dir", "data", "--data.val_size", "6", "--data.batch_size", "6", "--trainer.max_epochs", "2",
        "--test", "false", "--trainer.logger", "WandbLogger", "--trainer.logger.project", "tiny",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
    ]  # fmt: skip
    assert fit_main(args) == 0

    run_dir = tmp_path / "runs" / "tiny" / "version_0"  # the project's run folder, whatever the logger
    assert (run_dir / "checkpoints" / "last.ckpt").is_file() and (run_dir / "config.yaml").is_file()
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    files = offline / "files"
    for name in ("report.json", "report.md", "confusion_matrix.png", "acc_per_class.png", "checkpoints/best.ckpt"):
        assert (files / name).is_file(), f"{name} is not among the run's files"

    records = finished_run_log(next(offline.glob("run-*.wandb")))
    history = [
        {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item}
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]
    validation = [h for h in history if "val/acc" in h]
    epochs = json.loads((run_dir / "report.json").read_text())["epochs"]
    assert [h["epoch"] for h in validation] == [e["epoch"] for e in epochs] == [0, 1]
    for logged, reported in zip(validation, epochs, strict=True):  # TensorBoard's names, the same values
        assert logged["val/loss"] == pytest.approx(reported["val/loss"], rel=1e-6)
        assert logged["val/acc"] == pytest.approx(reported["val/acc"], rel=1e-6)
    assert sum("train/loss" in h for h in history) == 2
    config = {(i.key or "/".join(i.nested_key)) for r in records if r.WhichOneof("record_type") == "config"
              for i in r.config.update}  # fmt: skip
    assert {"trainer", "model", "data", "optimizer"} <= config


def test_a_wandb_refusal_at_the_start_is_one_line_and_leaves_no_run_folder(tmp_path, monkeypatch, capsys):
    """Online without an API key, W&B raises its UsageError once the run starts: one line, as for any
    option refused then, naming W&B's own fix."""
    import wandb
    from helpers import exit_status

    def refuse(*args, **kwargs):
        raise wandb.errors.UsageError("No API key configured. Use `wandb login` to log in.")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(wandb, "init", refuse)
    make_image_folder(tmp_path / "data", {"train": 6})
    args = [
        "--data.data_dir", "data", "--data.val_size", "6", "--trainer.max_epochs", "1", "--test", "false",
        "--trainer.logger", "WandbLogger", "--trainer.logger.project", "tiny", "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip
    assert exit_status(fit_main, args) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert "Traceback" not in err and last.startswith("error: the run could not start") and "wandb login" in last
    assert not (tmp_path / "runs").exists()
