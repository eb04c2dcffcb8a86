"""A full disk ends in one line and leaves nothing half-written: export, and the image cache (which
is only a speed-up, so training goes on without it)."""

from __future__ import annotations

import shutil
from collections import namedtuple

import torch
from helpers import exit_status, make_image_folder, save_checkpoint

from datamodules import CIFAR10DataModule
from lightning_modules.cli.export import export_main


def test_export_into_a_full_folder_is_one_line_and_leaves_no_file(tmp_path, monkeypatch, capsys):
    checkpoint = save_checkpoint(tmp_path / "model.ckpt")
    out = tmp_path / "out"
    out.mkdir()
    usage = namedtuple("usage", "total used free")
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9, 1 << 20) if str(p) == str(out) else real(p))
    args = ["--ckpt_path", str(checkpoint), "--format", "torchscript", "--output", str(out / "model.pt")]
    assert exit_status(export_main, args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "MiB free, the export needs about" in err[0]
    assert list(out.iterdir()) == []


def test_a_cache_that_cannot_be_written_is_skipped_with_a_note(tmp_path, monkeypatch):
    make_image_folder(tmp_path / "data", {"train": 4})
    notes = []

    def full_disk(obj, f, *args, **kwargs):
        f.write(b"PK half")
        raise RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing file")

    monkeypatch.setattr(torch, "save", full_disk)
    data = CIFAR10DataModule(str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"), val_size=3)
    monkeypatch.setattr("datamodules.cifar10.rank_zero_info", notes.append)
    data.prepare_data()
    data.setup("fit")
    assert len(data.train_split.labels) == 9  # trained on as if the cache had been written
    assert any("Could not write the image cache" in str(note) for note in notes)
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]  # no half-written cache file


def test_a_disk_that_fills_up_during_training_ends_in_one_line_and_keeps_the_last_checkpoint(
    tmp_path, monkeypatch, capsys
):
    from lightning_modules.cli.fit import fit_main

    quiet = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]

    monkeypatch.chdir(tmp_path)
    make_image_folder(tmp_path / "data", {"train": 4})
    args = ["--data.data_dir", "data", "--data.val_size", "3", "--data.batch_size", "3", "--test", "false", *quiet]
    real_save = torch.save

    def fills_up(obj, f, *a, **k):  # epoch 0's checkpoints are written; then the disk is full
        if isinstance(obj, dict) and obj.get("epoch", 0) >= 1:
            raise RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing file")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", fills_up)
    assert exit_status(fit_main, [*args, "--trainer.max_epochs", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        err[-1].startswith("error: ")
        and "could not write the checkpoint" in err[-1]
        and "Traceback" not in "\n".join(err)
    )
    monkeypatch.setattr(torch, "save", real_save)
    last = tmp_path / "runs" / "tutorial" / "version_0" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["epoch"] == 0  # complete, from the epoch before
    assert not list(last.parent.glob(".*.tmp"))


def test_a_writer_threads_full_disk_error_is_left_to_the_main_threads_one_line(monkeypatch):
    """TensorBoard writes events from its own thread; on a full disk Python printed that thread's
    traceback after fit.py's one-line error (the main thread gets the same error on its next flush)."""
    import threading

    from lightning_modules.cli.frame import quiet_writer_thread_errors

    printed = []
    monkeypatch.setattr(threading, "excepthook", lambda args: printed.append(args.exc_type))
    quiet_writer_thread_errors()

    def thread_of(module: str, error: type[Exception]) -> None:
        def run(self):
            raise error("No space left on device")

        kind = type("_AsyncWriterThread", (threading.Thread,), {"run": run, "__module__": module})
        thread = kind()
        thread.start()
        thread.join()

    thread_of("tensorboard.summary.writer.event_file_writer", OSError)
    assert printed == []
    thread_of("tensorboard.summary.writer.event_file_writer", ValueError)  # a bug, not the disk: shown
    thread_of("some.other.library", OSError)
    assert printed == [ValueError, OSError]
