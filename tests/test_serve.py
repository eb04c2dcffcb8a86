"""scripts/serve.py: a real server on a free loopback port, answered by a real HTTP client."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from helpers import REPO, class_image, save_checkpoint
from PIL import Image

from lightning_modules.cli.predict import predict_main

sys.path.insert(0, str(REPO))
import scripts.bench.common as bench  # noqa: E402

pytestmark = pytest.mark.slow
MAX_BYTES = 20_000


def start_server(work, ckpt, *extra: str) -> tuple[subprocess.Popen, str]:
    """scripts/serve.py on a free loopback port, in a session of its own; returns once /health says ok
    (the benchmarks' start-and-wait, scripts/bench/common.py)."""
    try:
        server = bench.start_server(
            ckpt, "--trainer.accelerator", "cpu", *extra, cwd=work, log=work / "server.log",
            timeout_s=90, own_group=True,  # so that the whole process group can be checked and stopped
        )  # fmt: skip
    except bench.ServerError as err:
        pytest.fail(str(err))
    return server.process, server.url


def group_alive(proc: subprocess.Popen, kill: bool = False) -> bool:
    """Whether any process of the server's group is left (killing them if asked)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL if kill else 0)
    except ProcessLookupError:
        return False
    return True


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    group_alive(proc, kill=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    work = tmp_path_factory.mktemp("serve")
    ckpt = save_checkpoint(work / "model.ckpt")
    proc, url = start_server(work, ckpt, "--max_bytes", str(MAX_BYTES))
    yield url, work, ckpt
    stop(proc)


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def one_bit_png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("1", (width, height)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def known_images(server):
    _, work, ckpt = server
    rng = np.random.default_rng(3)
    paths = []
    for i in range(4):
        path = work / f"known{i}.png"
        path.write_bytes(png_bytes(class_image(rng, i)))
        paths.append(path)
    # What scripts/predict.py says for the same files: the server must agree.
    predict_main(["--ckpt_path", str(ckpt), *map(str, paths), "--top_k", "3", "--output", str(work / "p.json")])
    return paths, json.loads((work / "p.json").read_text())


def test_raw_and_multipart_uploads_agree_with_predict(server, known_images):
    url, _, _ = server
    paths, expected = known_images
    for path, record in zip(paths, expected, strict=True):
        raw = requests.post(f"{url}/predict", data=path.read_bytes(), timeout=30)
        form = requests.post(f"{url}/predict", files={"file": (path.name, path.read_bytes(), "image/png")}, timeout=30)
        for response in (raw, form):
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["label"] == record["label"]
            assert body["probability"] == pytest.approx(record["probability"], abs=1e-5)
            assert [t["label"] for t in body["top_k"]] == [t["label"] for t in record["top_k"]]


@pytest.mark.parametrize(
    ("make_body", "status", "message"),
    [
        (lambda: b"this is text, not an image", 400, "not an image"),
        (lambda: png_bytes(np.zeros((64, 64, 3), np.uint8))[:60], 400, "truncated"),
        (lambda: b"", 400, "empty input"),
        (lambda: png_bytes(np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)), 413, "large"),
        (lambda: one_bit_png(4000, 3001), 400, "12,000,000-pixel limit"),  # a few KB, 12 megapixels
    ],
    ids=["not-an-image", "truncated", "empty", "too-large", "too-many-pixels"],
)
def test_bad_input_is_a_4xx_and_the_server_keeps_serving(server, known_images, make_body, status, message):
    url, _, _ = server
    body = make_body()
    assert status != 413 or len(body) > MAX_BYTES
    response = requests.post(f"{url}/predict", data=body, timeout=30)
    assert response.status_code == status, response.text
    if message:
        detail = response.json()["detail"]
        assert message in detail and "\n" not in detail
    assert requests.get(f"{url}/health", timeout=5).text == "ok"
    good = requests.post(f"{url}/predict", data=known_images[0][0].read_bytes(), timeout=30)
    assert good.status_code == 200


@pytest.mark.parametrize(
    ("headers", "body", "message"),
    [
        ({"Content-Type": "application/json"}, b"{broken", "not valid JSON"),
        ({"Content-Type": "application/json"}, b'{"other": 1}', "image_b64"),
        ({"Content-Type": "multipart/form-data"}, b"--x\r\n", "malformed multipart"),
        (
            {"Content-Type": "multipart/form-data; boundary=x"},
            "".join(f'--x\r\nContent-Disposition: form-data; name="f{i}"\r\n\r\nv\r\n' for i in range(40)).encode()
            + b"--x--\r\n",
            "malformed multipart",
        ),
        ({"Host": "attacker.example"}, b"", "Host header"),
        ({"Content-Type": "application/json"}, b"[" * 5_000 + b"]" * 5_000, "nested too deeply"),
    ],
    ids=[
        "broken-json",
        "json-without-image",
        "multipart-without-boundary",
        "too-many-fields",
        "foreign-host",
        "json-nesting-bomb",
    ],  # fmt: skip
)
def test_malformed_requests_are_400_not_500(server, headers, body, message):
    url, _, _ = server
    response = requests.post(f"{url}/predict", data=body, headers=headers, timeout=30)
    assert response.status_code == 400, response.text
    assert message in response.json()["detail"]


def test_concurrent_requests_are_all_answered(server, known_images):
    url, _, _ = server
    paths, expected = known_images
    jobs = [(paths[i % len(paths)], expected[i % len(paths)]["label"]) for i in range(64)]

    def ask(job):
        path, label = job
        response = requests.post(f"{url}/predict", data=path.read_bytes(), timeout=60)
        return response.status_code, response.json().get("label"), label

    with ThreadPoolExecutor(max_workers=32) as pool:  # bounded: 64 requests, 60 s timeout each
        results = list(pool.map(ask, jobs))
    assert all(status == 200 and got == want for status, got, want in results)


def test_sigterm_answers_open_requests_and_stops_every_server_process(tmp_path):
    # An upload still arriving when SIGTERM comes is answered 503 (the server is stopping) as soon as
    # it is complete, and the server ends without a traceback (tests/test_http_app.py: one still
    # incomplete when the grace period ends is answered 503 too).
    import socket
    from urllib.parse import urlparse

    proc, url = start_server(tmp_path, save_checkpoint(tmp_path / "model.ckpt"), "--workers", "2")
    address = urlparse(url)
    image = png_bytes(np.zeros((32, 32, 3), np.uint8))
    with socket.create_connection((address.hostname, address.port), timeout=30) as slow:
        head = f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(image)}\r\n\r\n"
        slow.sendall(head.encode() + image[:10])
        time.sleep(0.3)
        proc.terminate()
        time.sleep(0.3)
        slow.sendall(image[10:])
        reply = read_reply(slow)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        proc.poll()  # reap serve.py itself: a zombie still counts as a member of its group
        if not group_alive(proc):
            break
        time.sleep(0.5)
    left = group_alive(proc, kill=True)
    assert not left, "SIGTERM left server processes running"
    assert reply.startswith(b"HTTP/1.1 503") and b"the server is stopping" in reply, reply
    log = (tmp_path / "server.log").read_text()
    assert "Traceback" not in log and log.strip().endswith("interrupted: the server has stopped"), log[-2000:]
    assert proc.returncode == 130


def test_a_declared_length_over_the_limit_is_refused_without_waiting_for_the_body(server):
    # The client says 99 MB and sends 5 bytes: answered 413 from the header, not after a timeout.
    import socket
    import time
    from urllib.parse import urlparse

    url, _, _ = server
    address = urlparse(url)
    start = time.perf_counter()
    with socket.create_connection((address.hostname, address.port), timeout=10) as conn:
        conn.sendall(
            b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Length: 99000000\r\n\r\nshort"
        )
        reply = read_reply(conn)
    text = reply.decode("latin-1")
    assert text.startswith("HTTP/1.1 413") and "over the" in text
    assert time.perf_counter() - start < 5
    assert requests.get(f"{url}/health", timeout=5).text == "ok"


def test_line_wrapped_base64_as_the_base64_command_prints_it_is_accepted(server, known_images):
    import base64
    import textwrap

    url, _, _ = server
    paths, expected = known_images
    wrapped = "\n".join(textwrap.wrap(base64.b64encode(paths[0].read_bytes()).decode(), 76)) + "\n"
    response = requests.post(f"{url}/predict", json={"image_b64": wrapped}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["label"] == expected[0]["label"]


def test_a_full_queue_is_answered_503_at_once_and_the_server_goes_on(tmp_path):
    # One request in progress at a time. The first holds its place by sending half its body; the
    # second is refused at once; once the first is complete it is answered, and so is the next.
    import socket
    from urllib.parse import urlparse

    ckpt = save_checkpoint(tmp_path / "model.ckpt")
    proc, url = start_server(tmp_path, ckpt, "--max_queue", "1")
    try:
        image = png_bytes(np.zeros((32, 32, 3), np.uint8))
        address = urlparse(url)
        with socket.create_connection((address.hostname, address.port), timeout=30) as slow:
            slow.sendall(
                b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n"
                + f"Content-Length: {len(image)}\r\n\r\n".encode()
                + image[:10]
            )
            deadline = time.monotonic() + 10
            while (busy := requests.post(f"{url}/predict", data=image, timeout=30)).status_code != 503:
                assert time.monotonic() < deadline, "the half-sent request never held the queue"
                time.sleep(0.05)  # the server may not have read the first one's headers yet
            assert "server busy" in busy.json()["detail"] and busy.headers["Retry-After"] == "1"
            slow.sendall(image[10:])
            reply = read_reply(slow)
        assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
        assert requests.post(f"{url}/predict", data=image, timeout=30).status_code == 200
    finally:
        stop(proc)


def read_reply(conn) -> bytes:
    """One whole HTTP reply from a socket: the headers and the body may come in separate packets."""
    reply = b""
    while b"\r\n\r\n" not in reply or len(reply.split(b"\r\n\r\n", 1)[1]) < body_length(reply):
        chunk = conn.recv(4096)
        if not chunk:
            break
        reply += chunk
    return reply


def body_length(reply: bytes) -> int:
    """The Content-Length of an HTTP reply's headers (0 until they have all arrived)."""
    head = reply.split(b"\r\n\r\n", 1)[0].decode("latin-1").lower()
    return next((int(line.split(":", 1)[1]) for line in head.splitlines() if line.startswith("content-length:")), 0)


def test_a_websocket_upgrade_is_answered_as_plain_http(server):
    url, _, _ = server
    upgrade = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}  # fmt: skip
    response = requests.get(f"{url}/predict", headers=upgrade, timeout=10)
    assert response.status_code == 405 and "POST the image" in response.json()["detail"]
