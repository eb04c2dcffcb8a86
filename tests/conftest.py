"""Pytest fixtures and hooks only; the plain helpers they use (and tests import) live in helpers.py.

The fixtures import helpers when they run, not here: helpers imports Lightning, and Lightning imported
while pytest loads this file (before its logging handlers are on the root logger) turns off propagation
of its own logger, so caplog would see none of Lightning's messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture
def skip_md5(monkeypatch):
    """Fake official batches cannot match the real md5 sums: accept them, in this test only."""
    from torchvision.datasets import cifar

    monkeypatch.setattr(cifar, "check_integrity", lambda *args, **kwargs: True)


@pytest.fixture(autouse=True)
def private_cache_home(tmp_path, monkeypatch):
    """Decoded-image caches of runs that name no --data.cache_dir go to the test's own folder, never
    to the user's ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


@pytest.fixture
def cache_dir(tmp_path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    from helpers import save_checkpoint

    return save_checkpoint(tmp_path / "model.ckpt")


@pytest.fixture(scope="session")
def tta_run(tmp_path_factory):
    """One fit with mirror+translate TTA and a test split, shared by the tests that only read it."""
    from helpers import noisy_folder, tta_run_args

    from lightning_modules.cli.fit import fit_main

    work = tmp_path_factory.mktemp("tta_run")
    noisy_folder(work / "data", {"train": 40, "test": 30})
    code = fit_main([*tta_run_args(work), "--trainer.max_epochs", "2"])
    assert code == 0
    run_dir = work / "runs" / "tutorial" / "version_0"
    return work, run_dir, json.loads((run_dir / "report.json").read_text())
