"""Seeing the training: figures, progress output, TensorBoard content, run report, compare.py, a browser."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest
import torch
from helpers import free_port, make_image_folder, run_script
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_modules.callbacks import progress
from lightning_modules.cli.compare import compare_main
from lightning_modules.reporting import figures

NAMES = ["cat", "dog", "ship"]


# --- figures for known inputs ----------------------------------------------------------------


def test_confusion_matrix_figure_shows_the_counts():
    matrix = torch.tensor([[5, 0, 1], [2, 3, 0], [0, 0, 4]])
    fig = figures.confusion_matrix_figure(matrix, NAMES)
    ax = fig.axes[0]
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): int(t.get_text()) for t in ax.texts}
    assert cells == {(i, j): int(matrix[i, j]) for i in range(3) for j in range(3)}
    assert "accuracy 80.0%" in ax.get_title()  # (5 + 3 + 4) / 15
    assert [t.get_text() for t in ax.get_xticklabels()] == NAMES
    shown = ax.images[0].get_array()
    assert shown[1, 0] == pytest.approx(0.4)  # colour = share of the true class's row


def test_per_class_bars_and_misclassified_grid():
    fig = figures.per_class_bar_figure([0.5, 1.0, 0.25], NAMES)
    assert [round(p.get_height(), 3) for p in fig.axes[0].patches] == [0.5, 1.0, 0.25]
    images = torch.zeros(3, 3, 8, 8, dtype=torch.uint8)
    fig = figures.misclassified_figure(images, [0, 1, 2], [1, 2, 0], NAMES)
    assert [t.get_text() for t in fig.axes[0].texts] == ["cat\n-> dog", "dog\n-> ship", "ship\n-> cat"]
    canvas = fig.axes[0].images[0].get_array()
    assert canvas.shape[:2] == (12, 3 * 10) and (canvas[:8, :8] == 0).all()  # the images are on the canvas


def test_progress_bar_follows_the_terminal(monkeypatch):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert progress.progress_bar_class_path().endswith("LiveBar")
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False, raising=False)
    assert progress.progress_bar_class_path().endswith("LineProgress")


# --- one real run, looked at from every side -------------------------------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    work = tmp_path_factory.mktemp("visual")
    make_image_folder(work / "data", {"train": 12, "test": 4})
    result = run_script(
        "fit.py", "--data.data_dir", "data", "--data.val_size", "12", "--data.batch_size", "8",
        "--trainer.max_epochs", "2", "--trainer.log_every_n_steps", "1", cwd=work,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return work, work / "runs" / "tutorial" / "version_0", result


@pytest.mark.slow
def test_non_tty_output_is_plain_lines(run):
    _, _, result = run
    output = result.stdout + result.stderr
    assert "\r" not in output and "\x1b[" not in output  # no progress-bar redraws, no ANSI codes
    epoch_lines = [line for line in result.stdout.splitlines() if line.startswith("epoch ")]
    assert len(epoch_lines) == 2
    assert "val/acc" in epoch_lines[-1] and "train/images_per_s" in epoch_lines[-1] and "s left" in epoch_lines[-1]


@pytest.mark.slow
def test_tensorboard_has_figures_hparams_graph_and_throughput(run):
    _, run_dir, _ = run
    events = EventAccumulator(str(run_dir), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    for stage in ("val", "test"):
        for name in ("confusion_matrix", "acc_per_class", "misclassified"):
            assert f"{stage}/{name}" in tags["images"]
    assert len(events.Images("val/confusion_matrix")) == 2  # after each validation
    image = Image.open(io.BytesIO(events.Images("test/confusion_matrix")[0].encoded_image_string))
    assert image.size[0] > 200
    for scalar in ("train/images_per_s", "val/f1", "hp/best_val_acc", "hp/test_acc"):
        assert scalar in tags["scalars"]
    assert tags["graph"]
    assert events.PluginTagToContent("hparams")  # the HPARAMS tab has this run


@pytest.mark.slow
def test_run_report_files(run):
    _, run_dir, result = run
    report = json.loads((run_dir / "report.json").read_text())
    for key in ("config", "best_checkpoint", "epochs", "test", "wall_time_s", "train_images_per_s", "versions",
                "device", "confusion_matrix"):  # fmt: skip
        assert key in report, key
    assert len(report["epochs"]) == 2 and {"val/acc", "train/acc", "wall_s"} <= set(report["epochs"][0])
    assert report["epochs"][1]["wall_s"] > report["epochs"][0]["wall_s"]
    # Training steps only: less than the time to the last validation, which also holds start-up and validations.
    assert 0 < report["train_seconds"] < report["epochs"][1]["wall_s"]
    assert set(report["test"]["per_class"]) == set(NAMES)
    assert set(report["test"]["per_class"]["cat"]) == {"acc", "precision", "recall", "f1"}
    matrix = report["confusion_matrix"]["matrix"]
    assert report["confusion_matrix"]["stage"] == "test" and sum(map(sum, matrix)) == 12
    assert report["config"]["data"]["val_size"] == 12 and report["versions"]["torch"] == torch.__version__
    markdown = (run_dir / "report.md").read_text()
    assert "| epoch | step |" in markdown and "![confusion matrix](confusion_matrix.png)" in markdown
    assert Image.open(run_dir / "confusion_matrix.png").size[0] > 200
    # The console ends with a compact per-class table.
    assert "class  precision  recall     f1" in result.stdout and "\nship " in result.stdout


@pytest.mark.slow
def test_compare_prints_runs_and_draws_curves(run, tmp_path, capsys):
    _, run_dir, _ = run
    other = tmp_path / "other"
    shutil.copytree(run_dir, other)
    report = json.loads((other / "report.json").read_text())
    report["best_val_acc"] = 0.75
    (other / "report.json").write_text(json.dumps(report))
    assert compare_main([str(run_dir), str(other), "--output", str(tmp_path / "c.png")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["run", "recipe", "epochs"]
    assert "75.00%" in lines[2] and "tutorial (Tudui)" in lines[1]
    assert Image.open(tmp_path / "c.png").size[0] > 300
    assert compare_main([str(tmp_path / "nothing")]) == 2


# --- a real browser --------------------------------------------------------------------------


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
BLUES_MAX = np.array([8, 48, 107])  # the darkest colour of the confusion matrix's "Blues" map


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_tensorboard_in_headless_chromium(run, tmp_path):
    work, _, _ = run
    port = free_port()
    board = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(work / "runs"), "--host", "127.0.0.1",
         "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                scalars = json.load(urllib.request.urlopen(f"{base}/data/plugin/scalars/tags", timeout=5))
                if scalars:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline and board.poll() is None, "TensorBoard did not start"
            time.sleep(0.5)
        (run_name,) = scalars
        assert {"train/loss", "val/acc", "val/loss"} <= set(scalars[run_name])
        query = urllib.parse.urlencode({"run": run_name, "tag": "val/acc"})
        points = json.load(urllib.request.urlopen(f"{base}/data/plugin/scalars/scalars?{query}", timeout=10))
        assert len(points) == 2
        shot = tmp_path / "images.png"
        subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,1000", "--virtual-time-budget=20000",
             f"--screenshot={shot}", f"{base}/?darkMode=false#images"],
            capture_output=True, timeout=120, check=True,
        )  # fmt: skip
        pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3).astype(int)
        # The confusion-matrix image reached the page: its darkest cells are on screen.
        assert (np.abs(pixels - BLUES_MAX).sum(axis=1) < 30).sum() > 500
    finally:
        board.terminate()
        board.wait(timeout=20)


def test_hparams_yaml_says_how_the_run_was_configured(run):
    # Lightning writes it once, empty, before anything is logged; the run's own hyper-parameters belong there.
    import yaml

    _, run_dir, _ = run
    hparams = yaml.safe_load((run_dir / "hparams.yaml").read_text())
    assert hparams["class_names"] == list(NAMES) and hparams["net"]["class_path"].endswith("Tudui")
