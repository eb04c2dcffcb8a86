"""A newcomer's first start: the hand-downloaded archive works, a mistyped path is not created, and a
start that fails leaves nothing behind (no run folder, no report line)."""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import pytest
from helpers import exit_status, make_official_batches

from datamodules import sources
from lightning_modules.cli.fit import fit_main

QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
RUN = ["--trainer.max_epochs", "1", "--data.val_size", "10", "--data.batch_size", "10", "--test", "false", *QUIET]


def official_archive(data: Path) -> Path:
    """data/cifar-10-python.tar.gz holding cifar-10-batches-py/, as the official archive does."""
    work = data.parent / "archive-src"
    make_official_batches(work)
    data.mkdir(parents=True, exist_ok=True)
    archive = data / sources.OFFICIAL_ARCHIVE
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(work / sources.OFFICIAL_FOLDER, arcname=sources.OFFICIAL_FOLDER)
    shutil.rmtree(work)
    return archive


def test_the_archive_in_the_data_folder_is_unpacked_once_and_trains(tmp_path, monkeypatch, skip_md5):
    monkeypatch.chdir(tmp_path)
    archive = official_archive(tmp_path / "data")
    assert fit_main(RUN) == 0
    assert (tmp_path / "data" / sources.OFFICIAL_FOLDER / "data_batch_1").is_file()
    assert archive.is_file()  # kept: it is the user's download
    assert not list((tmp_path / "data").glob(".unpacking-*"))

    def no_second_unpack(*args, **kwargs):
        raise AssertionError("the archive was unpacked again")

    monkeypatch.setattr(tarfile, "open", no_second_unpack)
    assert fit_main(RUN) == 0


def test_an_archive_with_another_md5_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    official_archive(tmp_path / "data")  # not the real archive: its md5 differs
    assert exit_status(fit_main, RUN) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "md5" in err[-1] and "download it again" in err[-1]
    assert not (tmp_path / "data" / sources.OFFICIAL_FOLDER).exists()
    assert not (tmp_path / "runs").exists()


def hostile_archive(data: Path, kind: str) -> Path:
    data.mkdir(parents=True)
    archive = data / sources.OFFICIAL_ARCHIVE
    with tarfile.open(archive, "w:gz") as tar:
        folder = tarfile.TarInfo(sources.OFFICIAL_FOLDER)
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        entry = tarfile.TarInfo(f"{sources.OFFICIAL_FOLDER}/data_batch_1")
        if kind == "outside":
            entry.name = f"{sources.OFFICIAL_FOLDER}/../../escaped.txt"
        elif kind == "link":
            entry.type, entry.linkname = tarfile.SYMTYPE, "/etc/passwd"
        elif kind == "huge":
            entry.size = sources.ARCHIVE_MAX_BYTES + 1
        payload = b"x" * entry.size if kind == "huge" else b""
        tar.addfile(entry, io.BytesIO(payload) if payload else None)
    return archive


@pytest.mark.parametrize("kind", ["outside", "link", "huge"])
def test_a_hostile_archive_writes_nothing(tmp_path, monkeypatch, capsys, skip_md5, kind):
    monkeypatch.chdir(tmp_path)
    hostile_archive(tmp_path / "data", kind)
    assert exit_status(fit_main, RUN) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "download the archive again" in err[-1]
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [sources.OFFICIAL_ARCHIVE]
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "runs").exists()


def test_a_mistyped_data_dir_is_named_not_created(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert exit_status(fit_main, [*RUN, "--data.data_dir", "dta/cifar"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: data_dir dta/cifar does not exist") and "--data.download true" in err[-1]
    assert not (tmp_path / "dta").exists() and not (tmp_path / "runs").exists()


def test_a_failed_download_leaves_no_run_folder_and_no_report_line(tmp_path, monkeypatch, capsys, caplog):
    from torchvision.datasets import CIFAR10

    def offline(self):
        raise OSError("<urlopen error [Errno -2] Name or service not known>")

    monkeypatch.setattr(CIFAR10, "download", offline)
    monkeypatch.chdir(tmp_path)
    caplog.set_level("INFO")
    assert exit_status(fit_main, RUN) == 2  # the default data folder: downloading is allowed there
    out, err = capsys.readouterr()
    assert "could not download" in err.strip().splitlines()[-1] and sources.OFFICIAL_ARCHIVE in err
    assert "Report:" not in out + err + caplog.text
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()


def test_the_readme_smoke_run_checks_a_setup_and_writes_nothing(tmp_path, monkeypatch, capsys):
    from helpers import make_image_folder

    monkeypatch.chdir(tmp_path)
    make_image_folder(tmp_path / "data", {"train": 8, "test": 3})
    assert fit_main(["--trainer.fast_dev_run", "true", "--data.val_size", "6", *QUIET]) == 0
    assert "test/acc" in capsys.readouterr().out and not (tmp_path / "runs").exists()
