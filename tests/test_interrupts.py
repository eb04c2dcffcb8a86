"""Ctrl-C and SIGTERM end predict, export and serve with exit status 130 and one line on stderr
(``interrupted: ...``), never a traceback, and leave nothing behind: no temporary export files, no
server processes. Real processes, signalled at a point each test waits for."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from helpers import REPO, free_port, make_image_folder, save_checkpoint

from lightning_modules.cli.frame import interrupt_on_signals, one_line_errors

IMAGES = 1500  # predict classifies one at a time: seconds of work left after the first row


def default_signals() -> None:
    """In the child: Ctrl-C and SIGTERM as a terminal's foreground process has them, even when the
    tests run from a background shell (where SIGINT is ignored, and Python then keeps it so)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def start(script: str, *args: str, cwd: Path, stdout=subprocess.PIPE) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(REPO / "scripts" / script), *args],
        cwd=cwd,
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "XDG_CACHE_HOME": str(cwd / "xdg-cache")},
        start_new_session=True,  # its own process group: a terminal's Ctrl-C reaches all of it
        preexec_fn=default_signals,
    )


def group_alive(proc: subprocess.Popen) -> bool:
    try:
        os.killpg(proc.pid, 0)
    except ProcessLookupError:
        return False
    return True


def finish(proc: subprocess.Popen, timeout: float = 60) -> tuple[str, str]:
    """Wait for the process; kill its whole group if it is still there (a test's failure)."""
    try:
        return proc.communicate(timeout=timeout)
    finally:
        if group_alive(proc):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def assert_interrupted(proc: subprocess.Popen, err: str, says: str) -> None:
    lines = err.strip().splitlines()
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and lines and lines[-1] == f"interrupted: {says}", err[-3000:]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("interrupts")
    save_checkpoint(root / "m.ckpt")
    make_image_folder(root / "one", {"x": 1}, classes=("cat",))
    image = (root / "one" / "x" / "cat" / "0000.png").read_bytes()
    (root / "many").mkdir()
    for i in range(IMAGES):
        (root / "many" / f"{i:05d}.png").write_bytes(image)
    return root


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_predict_stops_in_one_line(work, sig):
    proc = start("predict.py", "--ckpt_path", "m.ckpt", "many", "--batch_size", "1", "--output", "p.json", cwd=work)
    try:
        first = proc.stdout.readline()  # the first row: it is classifying now
        assert first.startswith("many/"), first
        proc.send_signal(sig)
        out, err = finish(proc)
    finally:
        finish(proc, timeout=0.1) if proc.poll() is None else None
    assert_interrupted(proc, err, "the rows printed above are complete; no --output file was written")
    assert len(err.strip().splitlines()) == 1, err
    assert 1 + len(out.splitlines()) < IMAGES  # stopped part-way
    assert not list(work.glob("*p.json*"))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_export_stops_in_one_line_and_leaves_no_temporary_file(work, tmp_path, sig):
    before = set(os.listdir(work))
    proc = start("export.py", "--ckpt_path", "m.ckpt", "--format", "onnx", "--images", "many", cwd=work)
    try:
        deadline = time.monotonic() + 120
        while not list(work.glob(".m.onnx.*.tmp")):  # the export has started writing
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
            time.sleep(0.005)
        proc.send_signal(sig)
        _, err = finish(proc)
    finally:
        finish(proc, timeout=0.1) if proc.poll() is None else None
    assert_interrupted(proc, err, "nothing was written")
    assert len(err.strip().splitlines()) == 1, err
    assert set(os.listdir(work)) - {"xdg-cache"} == before - {"xdg-cache"}  # no .tmp, .tmp.data or m.onnx


@pytest.mark.slow
@pytest.mark.parametrize("how", ["ctrl_c_to_the_group", "sigterm"])
def test_serve_stops_in_one_line_and_leaves_no_process(work, tmp_path, how):
    port = free_port()
    with open(tmp_path / "out.log", "w") as out_log:
        proc = start("serve.py", "--ckpt_path", str(work / "m.ckpt"), "--port", str(port), "--trainer.accelerator",
                     "cpu", cwd=tmp_path, stdout=out_log)  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while True:
                assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
                try:
                    if requests.get(f"http://127.0.0.1:{port}/health", timeout=1).text == "ok":
                        break
                except requests.RequestException:
                    time.sleep(0.2)
            if how == "sigterm":
                proc.send_signal(signal.SIGTERM)
            else:  # a terminal's Ctrl-C: every process of the group
                os.killpg(proc.pid, signal.SIGINT)
            _, err = proc.communicate(timeout=60)
            deadline = time.monotonic() + 10
            while group_alive(proc) and time.monotonic() < deadline:
                time.sleep(0.2)
            left = group_alive(proc)
        finally:
            finish(proc, timeout=0.1) if proc.poll() is None or group_alive(proc) else None
    printed = err + (tmp_path / "out.log").read_text()
    assert_interrupted(proc, err, "the server has stopped")
    assert "Traceback" not in printed, printed[-3000:]
    assert not left, "server processes were left running"


def test_the_frame_ends_a_keyboard_interrupt_in_one_line(capsys):
    @one_line_errors(interrupted="what is kept")
    def main() -> int:
        raise KeyboardInterrupt

    assert main() == 130
    assert capsys.readouterr().err == "interrupted: what is kept\n"


def test_sigterm_interrupts_only_inside_the_block_and_the_handlers_come_back():
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt), interrupt_on_signals() as received:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises at the next bytecode
    assert received == [signal.SIGTERM]
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


@pytest.mark.parametrize("script", ["predict.py", "fit.py"])
def test_ctrl_c_while_the_script_is_still_importing_is_quiet(tmp_path, script):
    # 0.3 s in, the script is still importing torch (about a second here): no handler of ours yet.
    proc = start(script, "--help", cwd=tmp_path)
    time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = finish(proc)
    if proc.returncode == 0:
        pytest.skip("the imports finished before the signal (a fast machine); nothing to check")
    assert proc.returncode == 130 and "Traceback" not in err, err[-2000:]


@pytest.mark.parametrize("exporter_does", ["swallows it", "turns it into its own error"])
def test_a_signal_inside_the_onnx_exporter_still_stops_export(tmp_path, monkeypatch, exporter_does):
    """torch's exporter catches a KeyboardInterrupt raised while it imports torch._dynamo: it then fails
    with its own error, or (seen once in CI) finishes as if nothing happened. Either way export stops
    as interrupted and leaves nothing behind."""
    from lightning_modules.cli import export as export_cli

    ckpt = save_checkpoint(tmp_path / "m.ckpt")
    received: list[int] = []

    def exporter(model, example, path):
        received.append(signal.SIGTERM)  # what interrupt_on_signals records before raising
        path.write_bytes(b"half an onnx file")
        if exporter_does == "turns it into its own error":
            raise RuntimeError("Failed to export the model with torch.export")

    monkeypatch.setattr(export_cli, "export_onnx", exporter)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(KeyboardInterrupt):
        export_cli.export(str(ckpt), "onnx", out / "m.onnx", [], signals=received)
    assert list(out.iterdir()) == []  # no m.onnx, no temporary file
