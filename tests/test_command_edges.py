"""What no other test ran (issue 30, item 6): serve's own usage errors and ``--host 0.0.0.0``,
predict failing to write its ``--output``, ``--trainer.accelerator cuda`` on a machine without CUDA,
the metric ReduceLROnPlateau follows, and evaluate, export, compare and sweep run as scripts."""

from __future__ import annotations

import json
import socket
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from helpers import asgi_request, exit_status, free_port, make_image_folder, run_script, save_checkpoint
from PIL import Image

from lightning_modules.cli import serve as serve_module
from lightning_modules.cli.evaluate import evaluate_main
from lightning_modules.cli.fit import fit_main
from lightning_modules.cli.predict import predict_main

QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


class StubRun:
    """Stands in for serve.py's ``run``: records the app and the address serve.py built; serves nothing."""

    def __init__(self) -> None:
        self.calls: list[tuple[object, tuple]] = []

    def __call__(self, app, listening) -> None:
        self.calls.append((app, listening.getsockname()))
        listening.close()


@pytest.fixture
def stub_server(monkeypatch):
    stub = StubRun()
    monkeypatch.setattr(serve_module, "run", stub)
    return stub


# --- serve: usage errors, before any server is built ----------------------------------------------


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["--batch_timeout", "30"], "--batch_timeout 30.0: use less than 30 s"),
        (["--host", "10.1.2.3"], "invalid choice: '10.1.2.3'"),
        (["--ckpt_path", "missing.ckpt"], "no checkpoint at missing.ckpt"),
    ],
    ids=["batch-timeout-over-the-request-timeout", "host-not-offered", "no-checkpoint"],
)
def test_serve_usage_errors_are_one_line_and_start_nothing(stub_server, tmp_path, monkeypatch, capsys, extra, says):
    monkeypatch.chdir(tmp_path)
    save_checkpoint(tmp_path / "model.ckpt")
    assert exit_status(serve_module.serve_main, ["--ckpt_path", "model.ckpt", *extra]) == 2
    assert says in one_line(capsys)
    assert stub_server.calls == []


# --- serve --host 0.0.0.0 -------------------------------------------------------------------------


@pytest.mark.parametrize(("host", "other_names"), [("127.0.0.1", False), ("0.0.0.0", True), ("::", True)])
def test_serve_host_binds_there_and_decides_which_host_names_are_answered(stub_server, checkpoint, host, other_names):
    port = free_port()
    assert serve_module.serve_main(["--ckpt_path", str(checkpoint), "--host", host, "--port", str(port)]) == 0
    ((app, address),) = stub_server.calls
    assert address[:2] == (host, port)
    assert asgi_request(app, "GET", "/health", host=f"127.0.0.1:{port}")[0] == 200
    status, body = asgi_request(app, "GET", "/health", host=f"serving-box.example:{port}")  # another machine's name
    if other_names:
        assert status == 200 and body == b"ok"
    else:  # loopback only: a web page reaching it through DNS rebinding is refused
        assert status == 400 and b"--host 0.0.0.0" in body


def test_serve_on_port_0_announces_the_port_it_listens_on(stub_server, checkpoint, capsys):
    assert serve_module.serve_main(["--ckpt_path", str(checkpoint), "--port", "0"]) == 0
    ((_, address),) = stub_server.calls
    assert address[1] > 0 and f"at http://127.0.0.1:{address[1]}\n" in capsys.readouterr().out


def test_serve_on_a_port_in_use_is_one_line(stub_server, checkpoint, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert exit_status(serve_module.serve_main, ["--ckpt_path", str(checkpoint), "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in one_line(capsys) and stub_server.calls == []


# --- predict cannot write its --output ------------------------------------------------------------


def test_predict_that_cannot_write_its_output_says_so_and_keeps_the_rows(checkpoint, tmp_path, capsys):
    Image.new("RGB", (32, 32), (200, 40, 40)).save(tmp_path / "red.png")
    (tmp_path / "afile").write_text("a file, not a folder")
    output = tmp_path / "afile" / "preds.json"
    assert predict_main(["--ckpt_path", str(checkpoint), str(tmp_path / "red.png"), "--output", str(output)]) == 1
    captured = capsys.readouterr()
    assert captured.out.startswith(f"{tmp_path / 'red.png'}\t")  # the row was printed all the same
    assert f"error: cannot write {output} (" in captured.err and "the rows above are complete" in captured.err
    assert "Traceback" not in captured.err and "wrote" not in captured.err
    assert not list(tmp_path.rglob(".*.tmp"))


def test_predict_to_an_output_that_is_a_folder_is_refused_before_reading_any_image(checkpoint, tmp_path, capsys):
    Image.new("RGB", (32, 32), (200, 40, 40)).save(tmp_path / "red.png")
    (tmp_path / "preds.json").mkdir()
    args = ["--ckpt_path", str(checkpoint), str(tmp_path / "red.png"), "--output", str(tmp_path / "preds.json")]
    assert exit_status(predict_main, args) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "names a folder, not a file" in captured.err


# --- --trainer.accelerator cuda without CUDA ------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("accelerator", ["cuda", "gpu"])
@pytest.mark.parametrize("command", ["fit", "evaluate", "predict", "serve"])
def test_a_cuda_accelerator_without_cuda_is_one_line(stub_server, tmp_path, monkeypatch, capsys, command, accelerator):
    monkeypatch.chdir(tmp_path)
    save_checkpoint(tmp_path / "model.ckpt")
    make_image_folder(tmp_path / "data", {"train": 3, "test": 2})
    Image.new("RGB", (32, 32)).save(tmp_path / "x.png")
    main, args = {
        "fit": (fit_main, ["--data.data_dir", "data", "--data.val_size", "3", "--trainer.max_epochs", "1", *QUIET]),
        "evaluate": (evaluate_main, ["--ckpt_path", "model.ckpt", "--data.data_dir", "data"]),
        "predict": (predict_main, ["--ckpt_path", "model.ckpt", "x.png"]),
        "serve": (serve_module.serve_main, ["--ckpt_path", "model.ckpt"]),
    }[command]
    assert exit_status(main, [*args, "--trainer.accelerator", accelerator]) == 2
    assert accelerator in one_line(capsys).lower()
    assert stub_server.calls == []
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").rglob("*.ckpt"))


# --- ReduceLROnPlateau follows val/loss -----------------------------------------------------------


def plateau_run(tmp_path, monkeypatch, *scheduler: str) -> tuple[list[dict], dict]:
    """A 3-epoch fit with the scheduler given; (report.json's epochs, the scheduler's saved state)."""
    monkeypatch.chdir(tmp_path)
    make_image_folder(tmp_path / "data", {"train": 8})
    args = [
        "--data.data_dir", "data", "--data.val_size", "9", "--data.batch_size", "5", "--test", "false",
        *scheduler, "--lr_scheduler.patience", "0", "--trainer.max_epochs", "3", *QUIET,
    ]  # fmt: skip
    assert fit_main(args) == 0
    run_dir = tmp_path / "runs" / "tutorial" / "version_0"
    epochs = json.loads((run_dir / "report.json").read_text())["epochs"]
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    (state,) = last["lr_schedulers"]
    # last.ckpt is written after validation, before that epoch's scheduler step: it has seen the
    # epochs before the last one.
    assert len(epochs) == 3 and state["last_epoch"] == 2
    return epochs[:2], state


def test_reduce_lr_on_plateau_follows_the_validation_loss(tmp_path, monkeypatch):
    epochs, state = plateau_run(tmp_path, monkeypatch, "--lr_scheduler", "torch.optim.lr_scheduler.ReduceLROnPlateau")
    # Its best is the lowest validation loss it was given, not any other metric's.
    assert state["mode"] == "min"
    assert state["best"] == pytest.approx(min(e["val/loss"] for e in epochs), rel=1e-6)


def test_reduce_lr_on_plateau_follows_the_monitor_it_is_given(tmp_path, monkeypatch):
    lightning_plateau = ["--lr_scheduler", "ReduceLROnPlateau", "--lr_scheduler.monitor", "val/acc"]
    epochs, state = plateau_run(tmp_path, monkeypatch, *lightning_plateau, "--lr_scheduler.mode", "max")
    assert state["best"] == pytest.approx(max(e["val/acc"] for e in epochs), rel=1e-6)


# --- evaluate, export, compare and sweep as scripts -----------------------------------------------


@pytest.mark.slow
def test_sweep_compare_evaluate_and_export_run_as_scripts(tmp_path):
    """Each scripts/*.py in a process of its own, as a user runs it, on what the sweep made: its one
    run is compared, evaluated and exported (those three at once, to save their start-up time)."""
    make_image_folder(tmp_path / "data", {"train": 6, "test": 2})
    tiny = ["--data.data_dir", "data", "--data.val_size", "6", "--trainer.max_epochs", "1", *QUIET]
    sweep = run_script("sweep.py", "--seeds", "1", *tiny, cwd=tmp_path)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    run_dir = tmp_path / "runs" / "sweeps" / "tutorial_seeds" / "trials" / "trial_000"
    assert "1 complete trials" in sweep.stdout and (run_dir / "report.json").is_file()

    ckpt = str(run_dir / "checkpoints" / "last.ckpt")
    commands = {
        "compare.py": [str(run_dir), "--output", "compare.png"],
        "evaluate.py": ["--ckpt_path", ckpt, "--data.data_dir", "data", "--output_dir", "eval"],
        "export.py": ["--ckpt_path", ckpt, "--format", "torchscript", "--output", "m.pt", "--images", "data/test"],
        "export.py, a usage error": ["--ckpt_path", ckpt, "--format", "pdf"],  # the exit status gets out
    }
    with ThreadPoolExecutor(max_workers=len(commands)) as pool:
        futures = {
            name: pool.submit(run_script, name.split(",")[0], *args, cwd=tmp_path) for name, args in commands.items()
        }
        results = {name: future.result() for name, future in futures.items()}
    bad = results.pop("export.py, a usage error")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    for script, result in results.items():
        assert result.returncode == 0, f"{script}: {result.stderr[-3000:]}"
    assert str(run_dir) in results["compare.py"].stdout and (tmp_path / "compare.png").stat().st_size > 1000
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert sum(map(sum, report["confusion_matrix"]["matrix"])) == 6
    assert "parity passed on 6 images" in results["export.py"].stdout and (tmp_path / "m.pt").is_file()
