"""MLflow as fit.py's logger: a real tracking server over HTTP, the local SQLite store, sweeps, and
the settings refused before training (docs/experiments.md, "MLflow")."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from helpers import free_port, make_image_folder

from lightning_modules.cli.compare import load_run
from lightning_modules.cli.fit import fit_main

mlflow = pytest.importorskip("mlflow", reason="pip install -e '.[track]'")

QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def tiny_args() -> list[str]:
    return [
        "--data.data_dir", "data", "--data.cache_dir", "cache", "--data.val_size", "6", "--data.batch_size", "6",
        *QUIET, "--trainer.log_every_n_steps", "1",
    ]  # fmt: skip


class Server:
    """A started ``mlflow server``; ``url()`` waits until it answers (it boots while other tests run)."""

    def __init__(self, work: Path) -> None:
        self.work, self.port = work, free_port()
        command = shutil.which("mlflow")
        prefix = [command] if command else [sys.executable, "-m", "mlflow"]
        self.log = (work / "server.log").open("wb")
        self.process = subprocess.Popen(
            [*prefix, "server", "--backend-store-uri", f"sqlite:///{work / 'mlflow.db'}",
             "--artifacts-destination", str(work / "artifacts"), "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "1"],
            cwd=work, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
            # Without its background job runner: 8 more Python processes, which take ~20 s to start on 2 cores.
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        )  # fmt: skip
        self.ready = False

    def url(self) -> str:
        address = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 120
        while not self.ready:
            try:
                with urllib.request.urlopen(f"{address}/health", timeout=2) as reply:
                    self.ready = reply.status == 200
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"mlflow server did not start: {(self.work / 'server.log').read_text()[-2000:]}")
                time.sleep(0.3)
        return address

    def stop(self) -> None:
        if self.process.poll() is None:
            group = os.getpgid(self.process.pid)  # the server and the workers it started
            os.killpg(group, signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(group, signal.SIGKILL)
                self.process.wait()
        self.log.close()


@pytest.fixture(scope="module")
def fast_root(tmp_path_factory):
    """A temporary folder in memory where the machine has one: SQLite syncs each commit to disk, and
    a new MLflow store is ~60 commits (12 s on this disk, 6 s in memory); removed afterwards."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path_factory.mktemp("mlflow")
        return
    root = Path(tempfile.mkdtemp(prefix="test_mlflow_", dir=shm))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def empty_store(fast_root) -> Path:
    """A new MLflow SQLite store (its tables made once), copied wherever a test starts a store."""
    from mlflow.tracking import MlflowClient

    path = fast_root / "empty.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture(scope="module")
def mlflow_server(fast_root, empty_store):
    """``mlflow server`` on 127.0.0.1 (a free port) with a SQLite store and proxied artifacts in a
    temporary folder, stopped with everything it started when this module's tests are done. It boots
    while the first test runs; ``url()`` waits for it."""
    work = fast_root / "server"
    work.mkdir()
    shutil.copyfile(empty_store, work / "mlflow.db")
    server = Server(work)
    try:
        yield server
    finally:
        server.stop()


def test_sweep_trials_are_runs_of_one_experiment_in_the_default_local_store(
    mlflow_server, empty_store, fast_root, monkeypatch
):
    """(Asks for the server only so that it boots meanwhile, for the next test.)"""
    from mlflow.tracking import MlflowClient

    from lightning_modules.cli.sweep import sweep_main

    work = fast_root / "sweep"
    monkeypatch.chdir(make_image_folder(work / "data", {"train": 8}).parent)
    store = work / "runs" / "mlflow.db"  # the default: beside the runs (made new here, to save 6 s)
    store.parent.mkdir()
    shutil.copyfile(empty_store, store)
    args = ["--seeds", "2", "--name", "tiny", "--trainer.logger", "MLFlowLogger", "--trainer.max_epochs", "1",
            "--test", "false", *tiny_args()]  # fmt: skip
    assert sweep_main(args) == 0

    assert not (work / "mlruns").exists()
    client = MlflowClient(f"sqlite:///{store}")
    experiment = client.get_experiment_by_name("tiny")  # named after the study
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    trials = work / "runs" / "sweeps" / "tiny" / "trials"
    assert [r.info.run_name for r in runs] == ["trial_000", "trial_001"]
    assert sorted(r.data.params["seed_everything"] for r in runs) == ["0", "1"]
    for run, folder in zip(runs, sorted(trials.iterdir()), strict=True):
        assert run.data.tags["run_dir"] == str(folder.resolve())
        assert "val/acc" in run.data.metrics
        assert (folder / "checkpoints" / "last.ckpt").is_file() and (folder / "report.json").is_file()
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"report.json", "checkpoints"} <= artifacts, artifacts
        assert (work / "runs" / "mlartifacts" / run.info.run_id).is_dir()  # beside the store, not in ./mlruns
    assert load_run(trials / "trial_001")["epochs"] == 1


def test_tensorboard_and_mlflow_server_keep_one_run_folder_and_resume_into_one_mlflow_run(
    mlflow_server, fast_root, monkeypatch
):
    from mlflow.tracking import MlflowClient

    url = mlflow_server.url()
    tmp_path = fast_root / "http"
    monkeypatch.chdir(make_image_folder(tmp_path / "data", {"train": 8, "test": 4}).parent)
    args = [
        *tiny_args(), "--trainer.logger.save_dir", "runs", "--trainer.logger.name", "both",
        "--trainer.logger.log_graph", "false",
        "--trainer.logger+=MLFlowLogger", "--trainer.logger.tracking_uri", url,
        "--trainer.logger.experiment_name", "tiny",
    ]  # fmt: skip
    assert fit_main([*args, "--trainer.max_epochs", "2"]) == 0
    assert fit_main([*args, "--trainer.max_epochs", "3", "--ckpt_path", "last"]) == 0

    # One run folder, TensorBoard's, holding everything that reads a run.
    run = tmp_path / "runs" / "both" / "version_0"
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["both"]
    assert sorted(p.name for p in (tmp_path / "runs" / "both").iterdir()) == ["version_0"]
    assert not (tmp_path / "mlruns").exists()
    assert list(run.glob("events.out.tfevents.*"))
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "checkpoints" / "best.ckpt").is_file()
    report = json.loads((run / "report.json").read_text())
    assert [row["epoch"] for row in report["epochs"]] == [0, 1, 2]
    assert load_run(run)["epochs"] == 3

    client = MlflowClient(url)
    experiment = client.get_experiment_by_name("tiny")
    (tracked,) = client.search_runs([experiment.experiment_id])  # the resume went on in the same run
    run_id = tracked.info.run_id
    assert tracked.info.status == "FINISHED"
    assert tracked.data.tags["run_dir"] == str(run.resolve())
    # Metrics per epoch under TensorBoard's names, continued across the resume.
    steps = [m.step for m in client.get_metric_history(run_id, "val/acc")]
    assert len(steps) == 3 and steps == sorted(set(steps)), steps  # epochs 0, 1 and, resumed, 2
    for name in ("train/acc", "train/loss", "val/loss", "test/acc"):
        assert name in tracked.data.metrics, sorted(tracked.data.metrics)
    assert tracked.data.metrics["test/acc"] == pytest.approx(report["test"]["test/acc"])
    # The configuration as parameters (a resumed run keeps those it started with).
    params = tracked.data.params
    assert params["trainer/max_epochs"] == "2" and params["data/batch_size"] == "6"
    assert params["model/net/class_path"] == "lightning_modules.nets.Tudui"
    # The report, figures and best checkpoint as artifacts, over HTTP.
    artifacts = {a.path for a in client.list_artifacts(run_id)} | {
        a.path for a in client.list_artifacts(run_id, "checkpoints")
    }
    expected = {"report.json", "report.md", "config.yaml", "confusion_matrix.png", "acc_per_class.png"}
    assert expected | {"checkpoints/best.ckpt"} <= artifacts, artifacts
    sent = Path(client.download_artifacts(run_id, "report.json", str(tmp_path)))
    assert json.loads(sent.read_text())["epochs"] == report["epochs"]


def refused(capsys, status: int, *words: str) -> str:
    """Exit status 2 with one line ``error: ...`` holding ``words``, and no traceback."""
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert status == 2 and len(errors) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in errors[0], err
    return errors[0]


def read_only_folder(tmp_path: Path) -> Path:
    """A folder this process cannot write into (as root, permissions do not stop it: /sys does)."""
    if os.geteuid() != 0:
        folder = tmp_path / "read_only"
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    if os.access("/sys", os.W_OK) and not _unwritable(Path("/sys")):
        pytest.skip("no read-only folder to test with")
    return Path("/sys")


def _unwritable(folder: Path) -> bool:
    try:
        with tempfile.TemporaryFile(dir=folder):
            return False
    except OSError:
        return True


@pytest.mark.parametrize("case", ["not installed", "no server", "read-only store"])
def test_a_tracking_setting_that_cannot_work_is_one_line_before_anything_is_written(
    case, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    make_image_folder(tmp_path / "data", {"train": 8})
    args = [*tiny_args(), "--trainer.logger", "MLFlowLogger", "--trainer.max_epochs", "1"]
    if case == "not installed":
        monkeypatch.setitem(sys.modules, "mlflow", None)  # as if `pip install mlflow` had never run
        words = ["MLFlowLogger needs mlflow", "pip install -e '.[track]'"]
    elif case == "no server":
        args += ["--trainer.logger.tracking_uri", f"http://127.0.0.1:{free_port()}"]
        words = ["no tracking server answers", "mlflow server"]
    else:
        args += ["--trainer.logger.tracking_uri", f"sqlite:///{read_only_folder(tmp_path) / 'store' / 'mlflow.db'}"]
        words = ["cannot be written", "writable place"]
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    refused(capsys, fit_main(args), "--trainer.logger", *words)
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert [p for p in written if p not in before and not str(p).startswith(("cache", "xdg-cache"))] == []
